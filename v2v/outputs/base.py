"""What every output does: check the target early, give temporary disk paths, put things in place."""
import os
import shutil
from dataclasses import dataclass
from typing import List, Optional, Sequence

from diskfmt import image

from ..domain import DiskSpec, DomainSpec, NicSpec, disk_targets
from ..errors import OutputError
from ..types import Overlay, Plan, Result, TargetDisk

FORMAT_EXT = {"qcow2": "qcow2", "raw": "img"}


@dataclass(frozen=True)
class OutputOptions:
    kind: str                      # local | libvirt
    name: str
    format: str = "qcow2"          # qcow2 | raw
    out_dir: Optional[str] = None  # local: where disks and XML go
    storage: Optional[str] = None  # libvirt: where disks go (default: the 'default' pool)
    uri: str = "qemu:///system"
    network: str = "default"
    bridge: str = ""
    overwrite: bool = False
    domain_type: str = "kvm"


class Output:
    """One output kind. Disks are written to temporary names and renamed in finalize()."""

    kind = ""

    def __init__(self, opts: OutputOptions) -> None:
        self.opts = opts
        self._temps: List[str] = []
        self._placed: List[str] = []

    # Each output says where its disks go.
    def disk_dir(self) -> str:
        raise NotImplementedError

    def check(self, overlays: Sequence[Overlay]) -> None:
        """Before any long work: the target can be written and does not exist (unless --overwrite)."""
        d = self.disk_dir()
        if os.path.exists(d) and not os.path.isdir(d):
            raise OutputError("{}: exists and is not a directory".format(d))
        parent = d if os.path.isdir(d) else os.path.dirname(os.path.abspath(d))
        if not os.access(parent, os.W_OK):
            raise OutputError("{}: not writable".format(parent))
        if not self.opts.overwrite:
            for path in self.final_paths(len(overlays)):
                if os.path.exists(path):
                    raise OutputError("{} already exists; choose another --name or output, or pass "
                                      "--overwrite".format(path))
        # the source's data is what the copy will need, give or take the fixups: fail now, not after them
        self._check_space(parent, sum(self.measure(o) for o in overlays))

    def _check_space(self, directory: str, needed: int) -> None:
        free = shutil.disk_usage(directory).free
        if needed > free:
            raise OutputError("not enough free space in {}: the disks need {:.2f} GiB, {:.2f} GiB are free".format(
                directory, needed / 2**30, free / 2**30))

    def final_paths(self, count: int) -> List[str]:
        ext = FORMAT_EXT[self.opts.format]
        return [os.path.join(self.disk_dir(), "{}-sd{}.{}".format(self.opts.name, t[2:], ext))
                for t in disk_targets(count)]

    def prepare(self, overlays: Sequence[Overlay], needed: int, bus: str = "virtio") -> List[TargetDisk]:
        """Temporary target paths for each overlay, after checking there is room for `needed` bytes."""
        d = self.disk_dir()
        os.makedirs(d, exist_ok=True)
        self._check_space(d, needed)
        targets = []
        for ov, final, dev in zip(overlays, self.final_paths(len(overlays)), disk_targets(len(overlays), bus)):
            tmp = os.path.join(d, ".{}.part".format(os.path.basename(final)))
            self._temps.append(tmp)
            targets.append(TargetDisk(path=tmp, format=self.opts.format, source=ov.source, target_dev=dev))
        return targets

    def place(self, targets: Sequence[TargetDisk]) -> List[TargetDisk]:
        """Rename the finished temporary disks to their final names."""
        placed = []
        for t, final in zip(targets, self.final_paths(len(targets))):
            os.replace(t.path, final)
            self._temps.remove(t.path)
            self._placed.append(final)
            placed.append(TargetDisk(path=final, format=t.format, source=t.source, target_dev=t.target_dev,
                                     sha256=t.sha256))
        return placed

    def domain_spec(self, plan: Plan, disks: Sequence[TargetDisk]) -> DomainSpec:
        nic = NicSpec(mac=plan.network.mac, model=plan.network.model,
                      network="" if self.opts.bridge else self.opts.network, bridge=self.opts.bridge)
        nvram = None
        if plan.firmware == "uefi":
            nvram = os.path.join(self.disk_dir(), "{}_VARS.fd".format(plan.name))
        return DomainSpec(
            name=plan.name, memory_mib=plan.memory_mib, vcpus=plan.vcpus,
            disks=tuple(DiskSpec(path=d.path, format=d.format, target_dev=d.target_dev, bus=plan.disk_bus)
                        for d in disks),
            nics=(nic,), domain_type=self.opts.domain_type, machine=plan.machine, firmware=plan.firmware,
            osinfo_id=plan.osinfo_id, nvram=nvram, os_type=plan.os_type, secure_boot=plan.secure_boot,
            tpm=plan.tpm,
            description="Converted by v2v from {}".format(", ".join(d.source.path for d in disks)))

    def finalize(self, plan: Plan, targets: Sequence[TargetDisk]) -> Result:
        raise NotImplementedError

    def abort(self) -> None:
        """Remove whatever this output wrote: temporaries always, placed files when finalize failed."""
        for p in self._temps + self._placed:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        self._temps.clear()
        self._placed.clear()

    def measure(self, overlay: Overlay) -> int:
        """Bytes the target file of overlay will need."""
        # qcow2 measure counts only allocated data, also for a sparse raw target
        data = image.measure(overlay.path, "qcow2", "qcow2")
        return int(data.get("required", 0))


def write_atomically(path: str, text: str) -> None:
    tmp = os.path.join(os.path.dirname(path) or ".", ".{}.part".format(os.path.basename(path)))
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)

