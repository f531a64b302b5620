"""The Windows conversion, in the one appliance session: refusals, then drivers, registry, firstboot,
WinRE and the BCD store, each reported in one line.

The steps themselves live in one module each (virtio, mergeide, conflicts, firstboot, winre, bcd,
mounteddevices); this module decides what applies and moves files and hives in and out of the guest.
"""
import ntpath
import os
import time
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from diskfmt import gpt as gptfmt
from diskfmt import mbr as mbrfmt
from diskfmt.errors import FormatError
from hv_drivers import catalog as catalogmod
from v2v.errors import FixupError, UnsupportedGuest
from v2v.types import FixLine, Guest

from ..appliance import Appliance
from . import bcd, conflicts, firstboot, mergeide, mounteddevices, refusals, virtio, winre
from .bcd_device import PartitionLocation, same_partition
from .registry import Hive, edit_guest_hive, read_guest_hive

SYSTEM_HIVE = "System32/config/SYSTEM"       # relative to the systemroot
SOFTWARE_HIVE = "System32/config/SOFTWARE"
BCD_PATHS = ("/Boot/BCD", "/EFI/Microsoft/Boot/BCD")
RUNONCE = "Microsoft\\Windows\\CurrentVersion\\RunOnce"


@dataclass(frozen=True)
class WindowsPlan:
    """What the Windows conversion will install, decided in preflight before anything is written."""
    selection: Optional[catalogmod.Selection]   # None: no virtio drivers (SATA disks, e1000e NIC)
    disk_bus: str                                # virtio | scsi | sata
    nic_model: str                               # virtio | e1000e
    virtio_win: str = ""                         # the tree the drivers come from
    notes: Tuple[str, ...] = ()


def product_type(guest: Guest) -> str:
    return "server" if "server" in (guest.product_variant or "").lower() else "client"


def _build(guest: Guest) -> Optional[int]:
    try:
        return int(guest.build) if guest.build else None
    except ValueError:
        return None


def preflight(app: Appliance, guest: Guest, virtio_win: Optional[str], allow_no_virtio: bool,
              disk_bus: str = "virtio") -> WindowsPlan:
    """Refuse hibernated, BitLocker and dynamic-disk guests; choose the drivers. Writes nothing."""
    reason = refusal(app, guest)
    if reason:
        raise UnsupportedGuest(reason)
    if guest.arch not in ("x86_64", "i386"):
        raise UnsupportedGuest("{} is a {} guest; only x86 Windows can be converted".format(
            guest.product_name, guest.arch))
    if not virtio_win:
        if allow_no_virtio:
            return WindowsPlan(None, "sata", "e1000e", notes=(
                "no virtio-win drivers given: the guest gets SATA disks and an e1000e NIC (slower than "
                "virtio); pass --virtio-win DIR|ISO for virtio",))
        raise UnsupportedGuest("{} needs virtio drivers to boot on KVM: pass --virtio-win with a virtio-win "
                               "directory or ISO, or --allow-no-virtio to convert it with SATA disks and an "
                               "e1000e NIC".format(guest.product_name))
    try:
        cat = catalogmod.scan(virtio_win)
    except catalogmod.CatalogError as e:
        raise UnsupportedGuest("--virtio-win {}: {}".format(virtio_win, e)) from None
    selection = cat.select(guest.major, guest.minor, product_type(guest), guest.arch, build=_build(guest))
    boot = selection.driver(catalogmod.BOOT_DRIVER_FOR_BUS.get(disk_bus, "viostor"))
    if boot is None:
        why = "; ".join("{}: {}".format(m.name, m.reason) for m in selection.missing) or "no boot driver"
        if allow_no_virtio:
            return WindowsPlan(None, "sata", "e1000e", virtio_win=virtio_win, notes=(
                "the virtio-win tree has no boot driver for {} ({}): SATA disks and an e1000e NIC "
                "instead".format(guest.product_name, why),))
        raise UnsupportedGuest("the virtio-win tree {} has no virtio boot driver for {} {} ({}); use a newer "
                               "virtio-win, or --allow-no-virtio for SATA disks".format(
                                   virtio_win, guest.product_name, guest.arch, why))
    nic = "virtio" if selection.driver("netkvm") is not None else "e1000e"
    return WindowsPlan(selection, disk_bus, nic, virtio_win=virtio_win)


def refusal(app: Appliance, guest: Optional[Guest]) -> Optional[str]:
    """Why this guest must not be converted (dynamic disk, BitLocker, hibernation), or None."""
    g = app.g
    for dev in g.list_devices():
        read = _reader(g, dev)
        size = g.blockdev_getsize64(dev)
        try:
            table = mbrfmt.read_mbr(read, size)
            gpt = gptfmt.read_gpt(read, size) if table.protective else None
        except FormatError:
            continue   # no partition table (or a damaged one): nothing of Windows' own to refuse
        why = refusals.dynamic_disk_reason(dev, mbr=table, gpt=gpt)
        if why:
            return why
    for part in g.list_partitions():
        try:
            sector = g.pread_device(part, 512, 0)
        except RuntimeError:
            continue
        why = refusals.bitlocker_reason(sector, part)
        if why:
            return why
    if guest is None or guest.type != "windows":
        return None
    hiberfil = _existing(g, "/hiberfil.sys")
    if hiberfil:
        header = g.pread(hiberfil, 4096, 0)
        with read_guest_hive(app, _sysroot_path(guest, SYSTEM_HIVE)) as system:
            enabled = refusals.hiberboot_enabled(system)
        why = refusals.hibernation_reason(header, enabled)
        if why:
            return why
    return None


def convert(app: Appliance, guest: Guest, plan: WindowsPlan, dry_run: bool = False) -> List[FixLine]:
    """Every Windows fixup; FixLine per step ('would' lines when dry_run, which writes nothing)."""
    changed = "would" if dry_run else "changed"
    lines = _TimedLines()
    sel = plan.selection
    boot = virtio.boot_driver(sel, plan.disk_bus) if sel is not None else None
    copies = virtio.driver_file_copies(sel, boot) if sel is not None else []
    if copies and not dry_run:
        _upload(app, guest, [(c.host, c.guest) for c in copies])
    if sel is not None:
        lines.append(FixLine("virtio-drivers", changed, "{} copied to %SystemRoot%\\{} ({} files, {})".format(
            ", ".join(d.name for d in sel.drivers), virtio.VIRTIO_DIR, len(copies), plan.virtio_win)))
    runner = firstboot.find_service_runner(_runner_dirs())
    agent_msi = firstboot.find_guest_agent_msi(plan.virtio_win, guest.arch) if plan.virtio_win else None
    system_path = _sysroot_path(guest, SYSTEM_HIVE)
    software_path = _sysroot_path(guest, SOFTWARE_HIVE)
    with edit_guest_hive(app, system_path, dry_run=dry_run) as system, \
            edit_guest_hive(app, software_path, dry_run=dry_run) as software:
        if sel is not None:
            out = virtio.install_virtio_drivers(system, software, sel, plan.disk_bus, guest.major, guest.minor)
            lines.append(FixLine("virtio-boot-driver", changed, "; ".join(out)))
        out = mergeide.enable_ide_fallback(system, guest.major, guest.minor)
        lines.append(FixLine("ide-fallback", changed if out else "unchanged",
                             "; ".join(out) or "storage drivers already boot-start"))
        out = conflicts.disable_conflicting_drivers(system)
        lines.append(FixLine("conflicting-drivers", changed if out else "unchanged",
                             "; ".join(out) or "no VMware, Xen, Hyper-V, Parallels or replication drivers"))
        uninstallers = conflicts.old_tools_uninstallers(software)
        nics = firstboot.static_nic_configs(system)
        scripts = firstboot.firstboot_scripts(install_drivers=sel is not None, nics=nics,
                                              uninstallers=uninstallers,
                                              guest_agent_msi=os.path.basename(agent_msi) if agent_msi else None)
        if runner:
            firstboot.register_firstboot_service(system, runner=os.path.basename(runner))
            how = "the v2vfirstboot service ({})".format(os.path.basename(runner))
        else:
            # no service wrapper on this host: Windows runs HKLM RunOnce at the first administrator logon
            software.set_sz(RUNONCE, "v2v-firstboot", "cmd.exe /c \"%SystemRoot%\\{}\\firstboot.bat\"".format(
                firstboot.FIRSTBOOT_DIR))
            how = ("RunOnce at the first administrator logon (no rhsrvany.exe/pvvxsvc.exe in {}: install it "
                   "there for a boot-time service)".format(" or ".join(_runner_dirs())))
        tasks = []
        if sel is not None:
            tasks.append("pnputil for the staged drivers")
        if nics:
            tasks.append("restore {} static IP{}".format(len(nics), "s" if len(nics) > 1 else ""))
        tasks += ["uninstall " + u.display_name for u in uninstallers]
        if agent_msi:
            tasks.append("install the QEMU guest agent")
        lines.append(FixLine("firstboot", changed if runner else "warning", "{} via {}".format(
            ", ".join(tasks) or "nothing to do", how)))
        out = _repair_mounted_devices(app, system)
        if out:
            lines.append(FixLine("mounted-devices", changed, "; ".join(out)))
    if not dry_run:
        _upload_bytes(app, guest, scripts)
        extra = [(c.host, c.guest) for c in firstboot.firstboot_file_copies(runner, agent_msi)] if runner else []
        if agent_msi and not runner:
            extra.append((agent_msi, ntpath.join(firstboot.FIRSTBOOT_DIR, os.path.basename(agent_msi))))
        _upload(app, guest, extra)
    if boot is not None:
        lines.append(_winre(app, guest, boot, dry_run))
    for line in _fix_bcd(app, guest, dry_run):
        lines.append(line)
    return list(lines)


class _TimedLines(List[FixLine]):
    """FixLines that each get the seconds since the previous one was added (the time of its step)."""

    def __init__(self) -> None:
        super().__init__()
        self._last = time.monotonic()

    def append(self, line: FixLine) -> None:
        now = time.monotonic()
        super().append(replace(line, seconds=round(now - self._last, 1)))
        self._last = now


def _winre(app: Appliance, guest: Guest, boot: catalogmod.Driver, dry_run: bool) -> FixLine:
    sys_file = [c for c in virtio.driver_file_copies(catalogmod.Selection(None, "", (boot,), ()), boot)
                if c.guest.lower().startswith("system32\\drivers\\")]

    def edit_system(hive: Hive) -> List[str]:
        return virtio.install_boot_driver(hive, boot, guest.major, guest.minor)

    files = [(c.host, "\\Windows\\" + c.guest) for c in sys_file]
    out = winre.fix_winre(app, edit_system, files, dry_run=dry_run)
    status = "would" if dry_run else "changed"
    if out and out[0].startswith(("no WinRE", "WinRE not updated")):
        status = "unchanged" if out[0].startswith("no WinRE") else "warning"
    return FixLine("winre", status, "; ".join(out))


def _fix_bcd(app: Appliance, guest: Guest, dry_run: bool) -> List[FixLine]:
    """Point BCD device elements that name partitions missing from the converted disks at the partitions
    that are there (a disk signature changed by a cloning tool is the classic 0xc000000e)."""
    g = app.g
    targets = _target_locations(app)
    lines: List[FixLine] = []
    g.umount_all()
    app.mounted = []
    try:
        for part in g.list_partitions():
            try:
                g.mount(part, "/")
            except RuntimeError:
                continue
            try:
                for p in BCD_PATHS:
                    real = _existing(g, p)
                    if real is None:
                        continue
                    with edit_guest_hive(app, real, dry_run=dry_run) as store:
                        if not bcd.os_loaders(store):
                            raise FixupError("the BCD store {} on {} has no Windows Boot Loader entry, so the "
                                             "guest cannot boot; repair it in Windows (bcdboot C:\\Windows) "
                                             "before converting".format(real, part))
                        mapping = _repair_mapping(_bcd_locations(store), targets)
                        out = bcd.rewrite_bcd(store, mapping) if mapping else []
                    if out:
                        lines.append(FixLine("bcd", "would" if dry_run else "changed",
                                             "{} on {}: {}".format(real, part, "; ".join(out))))
                    else:
                        lines.append(FixLine("bcd", "unchanged", "{} on {}: every device element names a "
                                             "partition of the converted disks".format(real, part)))
            finally:
                g.umount("/")
    finally:
        app.mount_guest(guest.mountpoints)
    if not lines:
        lines.append(FixLine("bcd", "warning", "no BCD store found (\\Boot\\BCD or \\EFI\\Microsoft\\Boot\\BCD) "
                             "on any partition; the boot manager is elsewhere"))
    return lines


def _bcd_locations(store: Hive) -> List[PartitionLocation]:
    return [loc for obj in bcd.describe_bcd(store) for dev in obj.devices.values() for loc in dev.locations]


def _repair_mounted_devices(app: Appliance, system: Hive) -> List[str]:
    locations = []
    for _name, (_t, data) in system.raw_values(mounteddevices.KEY).items():
        loc = mounteddevices.decode_mounted_device(data)
        if loc is not None:
            locations.append(loc)
    mapping = _repair_mapping(locations, _target_locations(app))
    return mounteddevices.rewrite_mounted_devices(system, mapping) if mapping else []


def _repair_mapping(named: Sequence[PartitionLocation], targets: Sequence[PartitionLocation]) \
        -> Dict[PartitionLocation, PartitionLocation]:
    """Each named location absent from the target disks -> the one target partition that is surely the
    same: an MBR partition at the same byte offset, or a GPT partition with the same partition GUID."""
    mapping: Dict[PartitionLocation, PartitionLocation] = {}
    for loc in named:
        if any(same_partition(loc, t) for t in targets) or loc in mapping:
            continue
        if loc.style == "mbr":
            same = [t for t in targets if t.style == "mbr" and t.offset == loc.offset]
        else:
            same = [t for t in targets if t.style == "gpt" and t.partition_guid == loc.partition_guid]
        if len(same) == 1:
            mapping[loc] = same[0]
    return mapping


def _target_locations(app: Appliance) -> List[PartitionLocation]:
    g = app.g
    out: List[PartitionLocation] = []
    for dev in g.list_devices():
        try:
            out += list(bcd.partition_locations(_reader(g, dev), g.blockdev_getsize64(dev)).values())
        except FixupError:
            continue
    return out


def _reader(g, dev: str) -> Callable[[int, int], bytes]:
    return lambda offset, length: g.pread_device(dev, length, offset)


def _existing(g, path: str) -> Optional[str]:
    """The guest's real spelling of path (Windows names are case-insensitive), or None."""
    try:
        real = g.case_sensitive_path(path)
    except RuntimeError:
        return None
    return real if g.exists(real) else None


def _sysroot_path(guest: Guest, rel: str) -> str:
    return (guest.windows_systemroot or "/Windows").rstrip("/") + "/" + rel


def _guest_target(app: Appliance, guest: Guest, rel: str) -> str:
    """The guest path of rel (relative to %SystemRoot%, backslashes), creating its directory."""
    g = app.g
    parts = rel.replace("\\", "/").split("/")
    parent = _sysroot_path(guest, "/".join(parts[:-1])).rstrip("/")
    try:
        parent = g.case_sensitive_path(parent)
    except RuntimeError:
        pass
    g.mkdir_p(parent)
    return parent + "/" + parts[-1]


def _upload(app: Appliance, guest: Guest, copies: Sequence[Tuple[str, str]]) -> None:
    for host, rel in copies:
        try:
            app.g.upload(host, _guest_target(app, guest, rel))
        except RuntimeError as e:
            raise FixupError("could not copy {} into the guest: {}".format(host, e)) from None


def _upload_bytes(app: Appliance, guest: Guest, files: Dict[str, bytes]) -> None:
    for rel, data in files.items():
        app.g.write(_guest_target(app, guest, rel), data)


def _runner_dirs() -> Sequence[str]:
    extra = os.environ.get("V2V_FIRSTBOOT_RUNNER_DIR")
    return ((extra,) if extra else ()) + tuple(firstboot.RUNNER_DIRS)
