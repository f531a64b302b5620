"""What differs between Linux families, behind one base class; one file per family."""
import time
from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple, Type

from v2v.errors import UnsupportedGuest
from v2v.types import FixLine, Guest, Plan

from ..appliance import Appliance


class LinuxDistro:
    """A Linux family: how it rebuilds the initramfs, updates the bootloader and removes packages."""

    family = "linux"
    distros: Sequence[str] = ()

    def __init__(self, app: Appliance, guest: Guest, dry_run: bool = False,
                 initramfs_cache: Optional[str] = None) -> None:
        self.app = app
        self.guest = guest
        self.dry_run = dry_run      # report what would change; write nothing (v2v inspect)
        # a host directory of initramfs files rebuilt earlier, kept by the digest of their inputs (a standby's)
        self.initramfs_cache = initramfs_cache

    @property
    def changed(self) -> str:
        """The status of a line that changes the guest: 'would' in a dry run."""
        return "would" if self.dry_run else "changed"

    # --- what each family provides ---------------------------------------------------------
    def installed_packages(self) -> List[str]:
        return list(self.guest.applications)

    def remove_packages(self, names: Sequence[str]) -> str:
        raise NotImplementedError

    def initramfs_command(self, kernel: str, add: Sequence[str], omit: Sequence[str]) -> List[str]:
        """Prepare the guest's initramfs configuration (add, omit) and return the command that rebuilds it."""
        raise NotImplementedError

    def initramfs_path(self, kernel: str) -> str:
        raise NotImplementedError

    def initramfs_inputs(self, kernel: str) -> Tuple[List[str], List[str]]:
        """Files and directory trees of the guest that its rebuilt initramfs of kernel is made from.

        The first file is the guest's own initramfs: an update of a binary or hook that goes into it makes
        the guest's package manager rebuild that file, so its digest stands for them.
        """
        raise NotImplementedError

    def initramfs_modules(self, kernel: str) -> List[str]:
        """Module names inside the kernel's initramfs, read on the host (no emulated lsinitramfs)."""
        from .initrd import list_files, module_names
        return module_names(list_files(self.app.download_bytes(self.initramfs_path(kernel))))

    def bootloader_config_files(self) -> List[str]:
        raise NotImplementedError

    def bootloader_command(self) -> Tuple[List[str], str]:
        """The command that regenerates the bootloader configuration, and the line that reports it."""
        raise NotImplementedError

    # --- the conversion, the same for every family ------------------------------------------
    def convert(self, plan: Plan) -> List[FixLine]:
        from . import bootloader, fstab, hvtools, initramfs, network
        steps = (
            lambda: hvtools.remove_hypervisor_tools(self),
            lambda: fstab.fix_device_names(self),
            lambda: network.fix_network(self, plan),
            lambda: bootloader.fix_bootloader_config(self),
        )
        lines: List[FixLine] = []
        for step in steps:
            t0 = time.monotonic()
            out = step()
            secs = round((time.monotonic() - t0) / max(1, len(out)), 1)
            lines += [replace(ln, seconds=secs) for ln in out]
        # after package removal (it may change modules); the bootloader last: grub.cfg lists the initramfs
        lines += initramfs.rebuild_and_update_bootloader(self)
        return lines


_FAMILIES: List[Type[LinuxDistro]] = []


def register(cls: Type[LinuxDistro]) -> Type[LinuxDistro]:
    _FAMILIES.append(cls)
    return cls


def for_guest(app: Appliance, guest: Guest, dry_run: bool = False,
              initramfs_cache: Optional[str] = None) -> LinuxDistro:
    """The family class for the guest, or UnsupportedGuest naming what is supported."""
    from . import debian  # noqa: F401 - registers itself; one import line per family
    for cls in _FAMILIES:
        if guest.distro in cls.distros:
            return cls(app, guest, dry_run, initramfs_cache)
    supported = sorted(d for cls in _FAMILIES for d in cls.distros)
    raise UnsupportedGuest("{} ({}) is not supported yet; supported Linux distributions: {}".format(
        guest.product_name, guest.distro, ", ".join(supported)))


def supported_distros() -> Dict[str, str]:
    from . import debian  # noqa: F401
    return {d: cls.family for cls in _FAMILIES for d in cls.distros}


def find_first(app: Appliance, paths: Sequence[str]) -> Optional[str]:
    for p in paths:
        if app.is_file(p):
            return p
    return None
