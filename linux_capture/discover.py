"""What the source host has: disks, partitions, LVM holders and mounts, from /sys and /proc.

``discover(names)`` returns one ``Disk`` per whole disk (all real disks, or only the named devices).
Reads /sys/block and /proc/self/mountinfo only; nothing is written. Standard library only, Python 3.6+.
"""
import os
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

SYS_BLOCK = "/sys/block"
SECTOR = 512
# Kernel devices that are not disks of the host: RAM disks, optical drives, device-mapper/md views
# (their members are captured), zram swap, network block devices, unnamed loop devices.
_SKIP_PREFIXES = ("ram", "loop", "sr", "dm-", "md", "zram", "nbd", "fd")


class Mount(NamedTuple):
    mountpoint: str
    fstype: str
    readonly: bool
    source: str


class Region(NamedTuple):
    """A partition (or the whole unpartitioned disk): where it lies and what uses it."""
    name: str               # kernel name, e.g. sda1 or loop3p1
    device: str             # /dev node to read it through
    offset: int             # bytes from the start of the disk
    size: int
    mounts: Tuple[Mount, ...]
    holders: Tuple[str, ...]   # dm-* devices on top (LVM, crypt)
    partition: bool
    holder_mounts: Tuple[Mount, ...]   # filesystems mounted from those dm devices (or from dm on top of them)


class Disk(NamedTuple):
    name: str
    device: str
    size: int
    readonly: bool
    model: str
    regions: Tuple[Region, ...]   # partitions in disk order; the whole disk when it has none


class DiscoveryError(OSError):
    """A named device is not a disk this host has."""


def _read(path: str, default: str = "") -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def _unescape(text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 3 < len(text) and text[i + 1:i + 4].isdigit():
            out.append(chr(int(text[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> List[Tuple[str, str, Mount]]:
    """(major:minor, source, Mount) for each line of /proc/self/mountinfo."""
    found = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        f = left.split()
        r = right.split()
        if len(f) < 6 or len(r) < 2:
            continue
        opts = f[5].split(",")
        found.append((f[2], _unescape(r[1]),
                      Mount(_unescape(f[4]), r[0], "ro" in opts, _unescape(r[1]))))
    return found


def _mounts_by_dev(mountinfo: str) -> Dict[str, List[Mount]]:
    by_dev: Dict[str, List[Mount]] = {}
    for majmin, source, mount in parse_mountinfo(mountinfo):
        keys = {majmin}
        if source.startswith("/dev/"):
            try:
                rdev = os.stat(source).st_rdev
                keys.add("{}:{}".format(os.major(rdev), os.minor(rdev)))
            except OSError:
                pass
        for k in keys:
            by_dev.setdefault(k, []).append(mount)
    return by_dev


def _dev_node(name: str) -> str:
    return "/dev/" + name.replace("!", "/")


def _holders(sysdir: str) -> Tuple[str, ...]:
    try:
        return tuple(sorted(os.listdir(os.path.join(sysdir, "holders"))))
    except OSError:
        return ()


def _holder_mounts(holders: Tuple[str, ...], mounts: Dict[str, List[Mount]], depth: int = 0) -> List[Mount]:
    """Mounts of the dm devices stacked on a region, followed up the stack (LV on crypt on PV ...)."""
    found: List[Mount] = []
    if depth > 8:
        return found
    for h in holders:
        hdir = os.path.join(SYS_BLOCK, h)
        found.extend(mounts.get(_read(os.path.join(hdir, "dev")), ()))
        found.extend(_holder_mounts(_holders(hdir), mounts, depth + 1))
    return found


def _region(sysdir: str, name: str, offset: int, size: int, partition: bool,
            mounts: Dict[str, List[Mount]]) -> Region:
    majmin = _read(os.path.join(sysdir, "dev"))
    holders = _holders(sysdir)
    return Region(name, _dev_node(name), offset, size, tuple(mounts.get(majmin, ())), holders, partition,
                  tuple(_holder_mounts(holders, mounts)))


def read_disk(name: str, mounts: Dict[str, List[Mount]]) -> Disk:
    sysdir = os.path.join(SYS_BLOCK, name)
    size = int(_read(os.path.join(sysdir, "size"), "0")) * SECTOR
    parts = []
    for entry in sorted(os.listdir(sysdir)):
        pdir = os.path.join(sysdir, entry)
        if not os.path.exists(os.path.join(pdir, "partition")):
            continue
        start = int(_read(os.path.join(pdir, "start"), "0")) * SECTOR
        psize = int(_read(os.path.join(pdir, "size"), "0")) * SECTOR
        parts.append(_region(pdir, entry, start, psize, True, mounts))
    parts.sort(key=lambda r: r.offset)
    regions = tuple(parts) if parts else (_region(sysdir, name, 0, size, False, mounts),)
    model = _read(os.path.join(sysdir, "device", "model")) or _read(os.path.join(sysdir, "loop", "backing_file"))
    return Disk(name, _dev_node(name), size, _read(os.path.join(sysdir, "ro")) == "1", model, regions)


def _kernel_name(device: str) -> str:
    """The /sys/block name of a whole-disk device node, e.g. /dev/loop3 -> loop3."""
    real = os.path.realpath(device)
    try:
        rdev = os.stat(real).st_rdev
    except OSError:
        raise DiscoveryError("{}: no such device".format(device)) from None
    link = "/sys/dev/block/{}:{}".format(os.major(rdev), os.minor(rdev))
    if not os.path.exists(link):
        raise DiscoveryError("{} is not a block device".format(device))
    target = os.path.realpath(link)
    if os.path.exists(os.path.join(target, "partition")):
        raise DiscoveryError("{} is a partition; name the whole disk ({})".format(
            device, _dev_node(os.path.basename(os.path.dirname(target)))))
    return os.path.basename(target)


def discover(names: Optional[Sequence[str]] = None, mountinfo: Optional[str] = None) -> List[Disk]:
    """The named whole disks (e.g. ['/dev/sda']), or every real disk of the host when names is empty."""
    info = mountinfo if mountinfo is not None else _read("/proc/self/mountinfo")
    mounts = _mounts_by_dev(info)
    if names:
        kernel = [_kernel_name(n) for n in names]
    else:
        kernel = sorted(n for n in os.listdir(SYS_BLOCK) if not n.startswith(_SKIP_PREFIXES))
    disks = []
    for name in kernel:
        d = read_disk(name, mounts)
        if d.size > 0:
            disks.append(d)
    return disks


def lvm_summary() -> Optional[str]:
    """One line on LVM when the tools are present (snapshots: linux_capture/lvm.py)."""
    for tool in ("/sbin/lvs", "/usr/sbin/lvs"):
        if os.path.exists(tool):
            return "LVM tools present ({})".format(tool)
    return None


def process_alive(pid: int) -> bool:
    """True when a process with this pid exists (someone else's counts)."""
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
