"""LVM on the source (DESIGN section 6, consistency mode 1): the volumes of a physical volume and where
their extents lie, and snapshots of the active ones to read a still image of them from.

A PV partition is captured from a snapshot set: its metadata area as it was before the snapshots were
made (the converted guest must not see them), every active volume's extents from its snapshot (the used
blocks of the filesystem in it; swap its header; anything else whole), inactive volumes as they are, and
nothing of the free extents (where the snapshots' copy-on-write space lives). The snapshots are removed
when the capture ends, also on error and on SIGTERM; ones a killed agent left (``v2v-snap-*`` of a
process that is gone) are removed by the next one. The LVM tools run with metadata backups off, so that
nothing is written to /etc/lvm. Standard library only, Python 3.6+.
"""
import json
import os
import re
import subprocess
import threading
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from .discover import process_alive

LVM_TOOLS = ("/sbin/lvm", "/usr/sbin/lvm", "/usr/bin/lvm")
CONFIG = "backup { backup = 0 archive = 0 } log { verbose = 0 }"
SNAP_PREFIX = "v2v-snap-"
MIN_COW = 32 << 20               # copy-on-write space of a snapshot at least ...
COW_SHARE = 0.25                 # ... or this share of the volume, within the VG's free space
_RANGE = re.compile(r"^(.+):(\d+)-(\d+)$")


class LvmError(OSError):
    """An LVM tool failed or answered something this module does not understand."""


class Segment(NamedTuple):
    lv_offset: int      # bytes from the start of the volume
    pv_offset: int      # bytes from the start of the physical volume
    length: int


class Volume(NamedTuple):
    vg: str
    name: str
    attr: str
    size: int
    dm_path: str
    segments: Tuple[Segment, ...]

    @property
    def active(self) -> bool:
        return len(self.attr) > 4 and self.attr[4] == "a"

    @property
    def kind(self) -> str:
        """lvs' volume type letter: '-' linear/striped, 'o' origin, 's' snapshot, 't' thin pool ..."""
        return self.attr[:1]


class PhysicalVolume(NamedTuple):
    device: str
    vg: str
    pe_start: int
    extent_size: int
    vg_free: int
    mda_count: int
    volumes: Tuple[Volume, ...]         # volumes with an extent on this PV
    elsewhere: Tuple[str, ...]          # volumes of those that also have extents on other PVs
    pv_count: int = 1                   # PVs in the volume group


def lvm_tool() -> Optional[str]:
    for t in LVM_TOOLS:
        if os.path.exists(t):
            return t
    return None


def _lvm(*args: str) -> List[Dict[str, str]]:
    tool = lvm_tool()
    if tool is None:
        raise LvmError("the LVM tools are not installed")
    argv = [tool] + list(args[:1]) + ["--config", CONFIG] + list(args[1:])
    try:
        cp = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120,
                            env=dict(os.environ, LVM_SUPPRESS_FD_WARNINGS="1", LC_ALL="C"))
    except subprocess.TimeoutExpired:
        raise LvmError("{} {} did not finish within 120s".format(os.path.basename(tool), args[0])) from None
    if cp.returncode != 0:
        raise LvmError("lvm {}: {}".format(args[0], cp.stderr.decode(errors="replace").strip().splitlines()[-1:]
                                           or "exit {}".format(cp.returncode)))
    if "--reportformat" not in args:
        return []
    try:
        report = json.loads(cp.stdout.decode())["report"][0]
        return next(iter(report.values()))         # "pv", "lv" or "seg"
    except (ValueError, KeyError, IndexError, StopIteration) as e:
        raise LvmError("lvm {}: unexpected report ({})".format(args[0], e)) from None


def _same_device(a: str, b: str) -> bool:
    try:
        return os.stat(a).st_rdev == os.stat(b).st_rdev
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def physical_volume(device: str) -> Optional[PhysicalVolume]:
    """The PV on ``device`` and the volumes on it, or None when it is no PV (crypt, multipath ...)."""
    try:
        pvs = _lvm("pvs", "--reportformat", "json", "--units", "b", "--nosuffix",
                   "-o", "pv_name,vg_name,pe_start,vg_extent_size,vg_free,pv_mda_count,pv_count", device)
    except LvmError:
        return None
    if not pvs or not pvs[0].get("vg_name"):
        return None
    segs = _lvm("lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "--segments", "-a",
                "-o", "vg_name,lv_name,lv_attr,lv_size,lv_dm_path,seg_start,seg_size,seg_pe_ranges",
                pvs[0]["vg_name"])
    return parse_reports(device, pvs[0], segs, lambda name: _same_device(name, device))


def parse_reports(device: str, pv: Dict[str, str], segs: List[Dict[str, str]], on_pv: Callable[[str], bool]
                  ) -> PhysicalVolume:
    """The PV from its ``pvs`` row and its VG's ``lvs --segments`` rows (JSON report, bytes); ``on_pv``
    tells whether a device name in seg_pe_ranges is this PV."""
    vg = pv["vg_name"]
    extent = int(pv["vg_extent_size"])
    pe_start = int(pv["pe_start"])
    by_lv: Dict[str, Dict[str, Any]] = {}
    for s in segs:
        lv = by_lv.setdefault(s["lv_name"], {"attr": s["lv_attr"], "size": int(s["lv_size"]),
                                             "dm": s.get("lv_dm_path", ""), "segs": [], "other": False})
        ranges = s.get("seg_pe_ranges", "").split()
        m = _RANGE.match(ranges[0]) if len(ranges) == 1 else None
        if m is None or not on_pv(m.group(1)):
            lv["other"] = True              # striped, mirrored, thin (no extents of its own), another PV
            continue
        first, last = int(m.group(2)), int(m.group(3))
        length = (last - first + 1) * extent
        if length != int(s["seg_size"]):
            raise LvmError("lvm: segment of {}/{} is {} bytes, its extents {}".format(vg, s["lv_name"],
                                                                                     s["seg_size"], length))
        lv["segs"].append(Segment(int(s["seg_start"]), pe_start + first * extent, length))
    vols = tuple(Volume(vg, n, v["attr"], v["size"], v["dm"], tuple(v["segs"]))
                 for n, v in sorted(by_lv.items()) if v["segs"])
    return PhysicalVolume(device, vg, pe_start, extent, int(pv["vg_free"]), int(pv["pv_mda_count"]), vols,
                          tuple(sorted(n for n, v in by_lv.items() if v["other"] and v["segs"])),
                          int(pv.get("pv_count") or 1))


def unsupported(pv: PhysicalVolume) -> str:
    """Why this PV cannot be captured from snapshots ('' when it can)."""
    if pv.pv_count != 1:
        return "volume group {} has {} physical volumes (each holds its metadata; only one is handled)".format(
            pv.vg, pv.pv_count)
    if pv.mda_count != 1:
        return "{} has {} metadata areas (only one, at its start, is handled)".format(pv.device, pv.mda_count)
    if pv.elsewhere:
        return "{} span other disks or are not linear".format(", ".join(pv.vg + "/" + n for n in pv.elsewhere))
    odd = [v for v in pv.volumes if v.kind not in ("-", "o")]
    if odd:
        return "{} {} snapshots, thin or RAID volumes".format(", ".join(v.vg + "/" + v.name for v in odd),
                                                              "is" if len(odd) == 1 else "are")
    if any(v.name.startswith(SNAP_PREFIX) for v in pv.volumes):
        return "a capture's snapshot is still there"
    return ""


def cow_sizes(pv: PhysicalVolume) -> Optional[Dict[str, int]]:
    """Copy-on-write bytes for a snapshot of each active volume, or None when the VG's free space is
    too small to give every one of them ``MIN_COW``."""
    active = [v for v in pv.volumes if v.active]
    if not active:
        return {}
    usable = pv.vg_free - pv.extent_size * len(active)      # each snapshot also rounds up to an extent
    want = {v.name: max(MIN_COW, int(v.size * COW_SHARE)) for v in active}
    if usable < MIN_COW * len(active):
        return None
    scale = min(1.0, usable / float(sum(want.values())))
    return {n: max(MIN_COW, int(w * scale)) // pv.extent_size * pv.extent_size for n, w in want.items()}


def remove_stale(vg: str) -> List[str]:
    """Remove the snapshots of agents that are gone (SIGKILL, a crash); the names removed."""
    removed = []
    try:
        lvs = _lvm("lvs", "--reportformat", "json", "-o", "lv_name", vg)
    except LvmError:
        return removed
    for lv in lvs:
        name = lv.get("lv_name", "")
        if not name.startswith(SNAP_PREFIX):
            continue
        pid = name.rsplit("-", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            _lvm("lvremove", "-f", "{}/{}".format(vg, name))
            removed.append("{}/{}".format(vg, name))
    return removed


def snapshot_sizes(pv: PhysicalVolume) -> Tuple[Optional[Dict[str, int]], str]:
    """(copy-on-write bytes per active volume, '') when the PV can be captured from snapshots, else
    (None, why not): what the plan and the capture both decide by."""
    why = unsupported(pv)
    if why:
        return None, why
    cows = cow_sizes(pv)
    if cows is None:
        return None, "volume group {} has {} MiB free, too little for a snapshot of each active volume".format(
            pv.vg, pv.vg_free >> 20)
    return cows, ""


_snap_lock = threading.Lock()
_snapshots: List[Tuple[str, str]] = []          # (vg, name) made by this process, for the emergency removal


class Snapshot(NamedTuple):
    volume: Volume
    name: str
    path: str
    cow: int


def snapshot(v: Volume, cow: int) -> Snapshot:
    """lvcreate --snapshot of ``v`` (LVM suspends the volume for it: the filesystem on it is frozen for
    that instant, so the snapshot is crash-consistent)."""
    name = "{}{}-{}".format(SNAP_PREFIX, v.name, os.getpid())
    with _snap_lock:
        _snapshots.append((v.vg, name))
    _lvm("lvcreate", "--snapshot", "--yes", "--name", name, "--size", "{}b".format(cow), "{}/{}".format(v.vg, v.name))
    got = _lvm("lvs", "--reportformat", "json", "-o", "lv_dm_path", "{}/{}".format(v.vg, name))
    path = got[0].get("lv_dm_path", "") if got else ""
    if not path or not os.path.exists(path):
        path = "/dev/mapper/{}-{}".format(v.vg.replace("-", "--"), name.replace("-", "--"))
    if not os.path.exists(path):
        raise LvmError("the snapshot {}/{} has no device node".format(v.vg, name))
    return Snapshot(v, name, path, cow)


def invalid(s: Snapshot) -> bool:
    """True when the snapshot overflowed its copy-on-write space (its contents are lost)."""
    got = _lvm("lvs", "--reportformat", "json", "-o", "lv_attr,snap_percent", "{}/{}".format(s.volume.vg, s.name))
    attr = got[0].get("lv_attr", "") if got else ""
    return len(attr) > 4 and attr[4] in "IS"


def remove(s: Snapshot) -> None:
    _lvm("lvremove", "-f", "{}/{}".format(s.volume.vg, s.name))
    with _snap_lock:
        if (s.volume.vg, s.name) in _snapshots:
            _snapshots.remove((s.volume.vg, s.name))


def remove_all() -> List[str]:
    """Remove every snapshot this process made (on error and on signals); the names removed."""
    with _snap_lock:
        items = list(_snapshots)
        del _snapshots[:]
    done = []
    for vg, name in items:
        try:
            _lvm("lvremove", "-f", "{}/{}".format(vg, name))
            done.append("{}/{}".format(vg, name))
        except LvmError:
            pass
    return done
