"""Consistent copies of disks in use, chosen per disk and reported (DESIGN section 6).

lvm-snapshot     a PV partition whose volume group has free extents: every active volume is snapshotted
                 (LVM suspends it for that instant: crash-consistent), the used blocks of the
                 filesystems in the snapshots are read, and the snapshots are removed (linux_capture/
                 lvm.py); read-write filesystems on other partitions of the disk still freeze-converge.
offline          nothing on the disk is mounted read-write: copied as it is, in one pass.
freeze-converge  copy the used blocks live; find what changed since (tracefs block_rq_complete, or a
                 second digest pass over the used chunks when tracing is unavailable); re-copy until
                 the dirty bytes converge (bounded rounds); then FIFREEZE every read-write filesystem of
                 the captured disks in one window for at most ``max_freeze`` seconds, map the used blocks
                 again (a mounted ext4's bitmaps lag its journal), read the last dirty chunks into
                 memory, FITHAW, and send them. The thaw runs in ``finally``, from a watchdog timer, and
                 on SIGTERM/SIGHUP/broken pipe.
A partition under device-mapper that cannot be snapshotted (crypt, no free extents, a volume spanning disks)
is sent whole, and the filesystems mounted from the volumes on it are frozen like the others (reported).
Standard library only, Python 3.6+.
"""
import errno
import fcntl
import os
import queue
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

from diskfmt.extents import ExtentList

from . import lvm, protocol
from .discover import Disk, Region
from .fsmap import DiskReader, RegionMap, chunks, map_disk
from .snapset import PvSnapshots

FIFREEZE = 0xC0045877     # _IOWR('X', 119, int)
FITHAW = 0xC0045878       # _IOWR('X', 120, int)

MAX_ROUNDS = 4
CONVERGED_BYTES = 16 << 20        # dirty bytes small enough to copy under the freeze
FREEZE_MEMORY = 512 << 20         # dirty data held in memory while frozen
FREEZE_ATTEMPTS = 2
READ_AHEAD = 8                    # chunks read and digested ahead of the one being sent

Key = Tuple[int, int]
SendFn = Callable[[int, bytes, bytes], None]       # (offset, data, sha256)
NoteFn = Callable[..., None]                       # note(kind, message, **fields)


class ConsistencyError(RuntimeError):
    """A consistent copy could not be made within the limits given."""


def rw_mounts(disk: Disk, holders: bool = True) -> List[Tuple[Region, str, str]]:
    """(region, mountpoint, fstype) of every read-write filesystem on the disk: mounted from its own
    partitions, and (``holders``) from device-mapper volumes on them (LVM, crypt)."""
    found = []
    for r in disk.regions:
        by_source: Dict[str, Tuple[Region, str, str]] = {}
        for m in r.mounts + (r.holder_mounts if holders else ()):
            # one mountpoint per filesystem: bind mounts of it share the one freeze
            if not m.readonly and m.source not in by_source:
                by_source[m.source] = (r, m.mountpoint, m.fstype)
        found.extend(by_source.values())
    return found


def choose_mode(disk: Disk) -> Tuple[str, str]:
    """(mode, one-line reason) for a disk."""
    rw = rw_mounts(disk)
    held = [h for r in disk.regions for h in r.holders]
    if rw:
        return "freeze-converge", "mounted read-write: {}".format(", ".join(mp for _, mp, _ in rw)) + (
            "; {} (device-mapper) sent whole, its filesystems frozen".format(", ".join(held)) if held else "")
    if held:
        return "offline", "in use by {}: copied as it is".format(", ".join(held))
    if any(m for r in disk.regions for m in r.mounts):
        return "offline", "mounted read-only: copied as it is"
    return "offline", "not mounted: copied as it is"


_frozen_lock = threading.Lock()
_frozen: Dict[str, int] = {}           # mountpoint -> fd, for the emergency thaw


def thaw_all() -> List[str]:
    """FITHAW every filesystem this process froze; safe to call from signal handlers and twice."""
    thawed = []
    with _frozen_lock:
        items = list(_frozen.items())
        _frozen.clear()
    for mp, fd in items:
        try:
            fcntl.ioctl(fd, FITHAW, 0)
            thawed.append(mp)
        except OSError:
            pass            # EINVAL: not frozen (any more)
        finally:
            try:
                os.close(fd)
            except OSError:
                pass
    return thawed


class Freeze:
    """FIFREEZE the mountpoints on entry; FITHAW on exit, and from a watchdog after ``limit`` seconds."""

    def __init__(self, mountpoints: List[str], limit: float) -> None:
        self.mountpoints = mountpoints
        self.limit = limit
        self.unsupported: List[str] = []
        self.frozen: List[str] = []
        self.seconds = 0.0
        self.expired = threading.Event()
        self._t0 = 0.0
        self._timer: Optional[threading.Timer] = None

    def __enter__(self) -> "Freeze":
        self._t0 = time.monotonic()
        self._timer = threading.Timer(self.limit + 0.5, self._expire)
        self._timer.daemon = True
        self._timer.start()
        try:
            for mp in self.mountpoints:
                fd = os.open(mp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    fcntl.ioctl(fd, FIFREEZE, 0)
                except OSError as e:
                    os.close(fd)
                    if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
                        self.unsupported.append(mp)
                        continue
                    raise
                with _frozen_lock:
                    _frozen[mp] = fd
                self.frozen.append(mp)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _expire(self) -> None:
        self.expired.set()
        thaw_all()

    def remaining(self) -> float:
        return self.limit - (time.monotonic() - self._t0)

    def __exit__(self, *exc: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        thaw_all()
        self.seconds = time.monotonic() - self._t0


class DigestPass:
    """No write tracing: every pass reads and digests every used chunk."""
    name = "digest pass"

    def take(self, device: Optional[str] = None) -> Optional[ExtentList]:
        return None

    def close(self) -> None:
        pass


class DiskReport(NamedTuple):
    mode: str
    reason: str
    tracking: str
    rounds: Tuple[int, ...]           # bytes sent per pass (the first is the full copy)
    freeze_seconds: float
    frozen: Tuple[str, ...]
    not_frozen: Tuple[str, ...]       # read-write filesystems that refused FIFREEZE (FUSE ...)
    used_bytes: int
    maps: Tuple[Dict[str, Any], ...]
    consistent: bool
    full_passes: int = 0              # passes that read every chunk (digest pass, or trace events lost)
    tracked_bytes: Optional[int] = None   # the first pass read only these (the resident tracker's record)
    snapshots: Tuple[str, ...] = ()   # LVM volumes read from snapshots (vg/lv)


def _map_json(rm: RegionMap) -> Dict[str, Any]:
    return {"region": rm.region, "fstype": rm.fstype, "bytes": rm.extents.total(), "exact": rm.exact,
            "reason": rm.reason}


class DiskCapture:
    """Copies one disk into ``send``, remembering the digest of every chunk the converter holds."""

    def __init__(self, disk: Disk, send: SendFn, note: NoteFn, have: Dict[Key, bytes],
                 chunk: int = protocol.MAX_CHUNK // 16) -> None:
        self.disk = disk
        self.send = send
        self.note = note
        self.held: Dict[Key, bytes] = {}     # (offset, length) -> sha256 the converter has verified
        self._cells: Dict[int, List[Key]] = {}
        self.chunk = chunk
        self.reader = DiskReader(disk)
        self.live = {r.name: True for r, _, _ in rw_mounts(disk, holders=False)}
        self.snapsets: List[PvSnapshots] = []
        for (off, n), sha in have.items():
            self.remember(off, n, sha)

    def take_snapshots(self) -> List[str]:
        """Snapshot the volumes of every PV partition of the disk that allows it; one line per PV on what
        was done or why not. Reads of those ranges come from the snapshots from now on."""
        lines = []
        for r in self.disk.regions:
            if not r.holders or lvm.lvm_tool() is None:
                continue
            pv = lvm.physical_volume(r.device)
            if pv is None:
                continue
            gone = lvm.remove_stale(pv.vg)
            for name in gone:
                lines.append("removed {}, left by an agent that is gone".format(name))
            if gone:
                pv = lvm.physical_volume(r.device) or pv
            cows, why = lvm.snapshot_sizes(pv)
            if cows is None:
                lines.append("{}: no LVM snapshot ({}): sent whole, its filesystems frozen".format(r.device, why))
                continue
            ss = PvSnapshots(self.disk, r, pv, cows)
            self.snapsets.append(ss)
            for start, end, read in ss.overrides():
                self.reader.override(start, end, read)
            lines.append("{}: {}".format(r.device, ss.map.reason))
        return lines

    def snapshotted(self) -> List[str]:
        return [n for ss in self.snapsets for n in ss.names()]

    def check_snapshots(self) -> None:
        """ConsistencyError when a snapshot overflowed during the copy (what was read from it is lost)."""
        bad = [n for ss in self.snapsets for n in ss.overflowed()]
        if bad:
            raise ConsistencyError("the LVM snapshot of {} overflowed its copy-on-write space during the "
                                   "copy; free more extents in the volume group, or capture when the host "
                                   "writes less".format(", ".join(bad)))

    def remember(self, off: int, n: int, sha: bytes) -> None:
        """The converter now holds these bytes: any other chunk it held that overlaps them is stale."""
        cell = self._cells.setdefault(off // self.chunk, [])
        for key in list(cell):
            if key != (off, n) and key[0] < off + n and off < key[0] + key[1]:
                cell.remove(key)
                self.held.pop(key, None)
        if (off, n) not in self.held:
            cell.append((off, n))
        self.held[(off, n)] = sha

    def close(self) -> None:
        for ss in self.snapsets:
            ss.close()
        self.snapsets = []
        self.reader.close()

    def map(self, live: bool) -> Tuple[ExtentList, List[RegionMap]]:
        extents, maps = map_disk(self.disk, self.live if live else {})
        for ss in self.snapsets:
            r = ss.region
            extents = extents.subtract(ExtentList([(r.offset, r.offset + r.size)])).union(ss.extents)
            maps = [ss.map if m.region == r.name else m for m in maps]
        return extents, maps

    def _candidates(self, extents: ExtentList, changed: Optional[ExtentList]) -> List[Key]:
        keys = list(chunks(extents, self.disk.size, self.chunk))
        if changed is None:
            return keys
        return [k for k in keys if k not in self.held or changed.clip(k[0], k[0] + k[1])]

    def _read(self, off: int, n: int) -> bytes:
        data = self.reader.read(off, n)
        if len(data) != n:
            raise OSError(errno.EIO, "short read of {} at offset {} ({} of {} bytes)".format(
                self.disk.device, off, len(data), n))
        return data

    def read_ahead(self, keys: List[Key], depth: int = READ_AHEAD) -> Iterator[Tuple[int, int, bytes, bytes]]:
        """(offset, length, data, sha256) of every key, in order, read and digested by a thread that
        stays at most ``depth`` chunks ahead, so that the disk reads while the last chunk is compressed
        and sent. The thread owns the reader until this generator ends; an error it meets is raised
        here, at the chunk it concerns; closing the generator early stops and joins it."""
        if len(keys) <= 1:
            for off, n in keys:
                data = self._read(off, n)
                yield off, n, data, protocol.digest(data)
            return
        out: "queue.Queue[Any]" = queue.Queue(maxsize=depth)
        stop = threading.Event()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                for off, n in keys:
                    if stop.is_set():
                        return
                    data = self._read(off, n)
                    if not put((off, n, data, protocol.digest(data))):
                        return
            except BaseException as e:      # handed to the consumer, raised there
                put(e)
                return
            put(None)

        thread = threading.Thread(target=work, name="v2v-read-ahead", daemon=True)
        thread.start()
        try:
            while True:
                item = out.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join()

    def copy_pass(self, extents: ExtentList, changed: Optional[ExtentList]) -> int:
        """Send every chunk whose bytes differ from what the converter holds; bytes sent."""
        sent = 0
        ahead = self.read_ahead(self._candidates(extents, changed))
        try:
            for off, n, data, sha in ahead:
                if self.held.get((off, n)) == sha:
                    continue
                self.send(off, data, sha)
                self.remember(off, n, sha)
                sent += n
        finally:
            ahead.close()       # the reading thread is joined before anything else uses the reader
        return sent

    def frozen_pass(self, fz: Freeze, extents: ExtentList, changed: Optional[ExtentList],
                    memory: int = FREEZE_MEMORY) -> Tuple[List[Tuple[int, bytes, bytes]], bool]:
        """Read the chunks that changed into memory while frozen (at most ``memory`` bytes);
        (pending, complete)."""
        pending: List[Tuple[int, bytes, bytes]] = []
        held = 0
        for off, n in self._candidates(extents, changed):
            if fz.remaining() <= 0 or fz.expired.is_set() or held > memory:
                return pending, False
            data = self.reader.read(off, n)
            sha = protocol.digest(data)
            if self.held.get((off, n)) != sha:
                pending.append((off, data, sha))
                held += n
        return pending, not fz.expired.is_set() and fz.remaining() > 0


class _Progress:
    """What one disk went through, while ``capture_disks`` runs."""

    def __init__(self, cap: DiskCapture, tracked: Optional[ExtentList] = None) -> None:
        self.cap = cap
        self.tracked = tracked
        self.mode, self.reason = choose_mode(cap.disk)
        snapped = {ss.region.name for ss in cap.snapsets}
        self.mountpoints = [mp for r, mp, _ in rw_mounts(cap.disk) if r.name not in snapped]
        if snapped:
            self.reason = "LVM snapshots of {}".format(", ".join(cap.snapshotted()) or "no active volume") + (
                "; frozen: {}".format(", ".join(self.mountpoints)) if self.mountpoints else "")
            self.mode = "lvm-snapshot+freeze-converge" if self.mountpoints else "lvm-snapshot"
        self.converge = bool(self.mountpoints)
        self.rounds: List[int] = []
        self.full = 0
        self.extents = ExtentList()
        self.maps: List[RegionMap] = []

    def copy(self, tracker: Any, first: bool) -> int:
        dev = self.cap.disk.device
        changed = tracker.take(dev)
        if first:
            changed = self.tracked             # the first pass reads everything, or what was written since
        self.full += changed is None
        self.extents, self.maps = self.cap.map(live=self.mode != "offline")
        sent = self.cap.copy_pass(self.extents, changed)
        self.rounds.append(sent)
        what = "converge round {} ({})".format(len(self.rounds) - 1, tracker.name) if not first else \
            (self.mode if self.mode in ("offline", "lvm-snapshot") else "live") + (
                " copy" if self.tracked is None else " copy of what was written since the last capture ({} "
                "bytes recorded by the resident tracker)".format(self.tracked.total()))
        self.cap.note("round", "{} of {}: {} bytes sent".format(what, dev, sent), disk=dev, sent=sent)
        return sent

    def report(self, tracker: Any, fz: Optional[Freeze], consistent: bool) -> DiskReport:
        if not self.converge or fz is None:
            return DiskReport(self.mode, self.reason, "none", tuple(self.rounds), 0.0, (), (),
                              self.extents.total(), tuple(_map_json(m) for m in self.maps), True, self.full,
                              self.tracked_bytes(), tuple(self.cap.snapshotted()))
        mine = set(self.mountpoints)
        unsupported = tuple(mp for mp in fz.unsupported if mp in mine)
        reason = self.reason
        if unsupported:
            reason += "; {} cannot be frozen (FIFREEZE unsupported): copied live, converged but not " \
                      "crash-consistent".format(", ".join(unsupported))
        return DiskReport(self.mode, reason, tracker.name, tuple(self.rounds), round(fz.seconds, 4),
                          tuple(mp for mp in fz.frozen if mp in mine), unsupported, self.extents.total(),
                          tuple(_map_json(m) for m in self.maps), consistent and not unsupported, self.full,
                          self.tracked_bytes(), tuple(self.cap.snapshotted()))

    def tracked_bytes(self) -> Optional[int]:
        return None if self.tracked is None else self.tracked.total()


def capture_disks(caps: List[DiskCapture], tracker: Any, max_freeze: float, max_rounds: int = MAX_ROUNDS,
                  tracked: Optional[Dict[str, ExtentList]] = None) -> List[DiskReport]:
    """Copy every disk with the mode ``choose_mode`` picks; the reports say what was done.

    The read-write filesystems of all freeze-converge disks are frozen in one window, so that a volume
    spanning disks (LVM, md) is captured at one instant. ``tracked`` (device -> bytes written since the
    converter's copy was made, a superset) lets the first pass read only those chunks and the chunks the
    converter does not hold."""
    for c in caps:
        for line in c.take_snapshots():
            c.note("snapshot", line, disk=c.disk.device)
    states = [_Progress(c, tracked.get(c.disk.device) if tracked is not None else None) for c in caps]
    live = [st for st in states if st.converge]
    for st in states:
        st.copy(tracker, first=True)
    if not live:
        for c in caps:
            c.check_snapshots()
        return [st.report(tracker, None, True) for st in states]
    mountpoints: List[str] = []
    for st in live:
        mountpoints.extend(mp for mp in st.mountpoints if mp not in mountpoints)
    limit = max_rounds
    fz = Freeze(mountpoints, max_freeze)
    for attempt in range(FREEZE_ATTEMPTS):
        while max(len(st.rounds) for st in live) < limit:
            if sum(st.copy(tracker, first=False) for st in live) <= CONVERGED_BYTES:
                break
        fz = Freeze(mountpoints, max_freeze)
        pending: Dict[int, List[Tuple[int, bytes, bytes]]] = {}
        complete = True
        budget = FREEZE_MEMORY
        with fz:
            for i, st in enumerate(live):
                changed = tracker.take(st.cap.disk.device)
                st.full += changed is None
                st.extents, st.maps = st.cap.map(live=True)
                pending[i], ok = st.cap.frozen_pass(fz, st.extents, changed, budget)
                budget -= sum(len(d) for _, d, _ in pending[i])
                if not ok:
                    complete = False
                    break
        for i, st in enumerate(live):
            sent = 0
            for off, data, sha in pending.get(i, ()):
                st.cap.send(off, data, sha)
                st.cap.remember(off, len(data), sha)
                sent += len(data)
            st.rounds.append(sent)
            st.cap.note("freeze", "{} frozen {:.3f}s ({}), {} bytes of {} copied from the frozen state{}".format(
                ", ".join(fz.frozen) or "nothing", fz.seconds, tracker.name, sent, st.cap.disk.device,
                "" if complete else ": INCOMPLETE, over --max-freeze"),
                disk=st.cap.disk.device, seconds=round(fz.seconds, 4), frozen=fz.frozen, sent=sent,
                complete=complete)
        if complete:
            for c in caps:
                c.check_snapshots()
            return [st.report(tracker, fz if st.converge else None, True) for st in states]
        limit = max(len(st.rounds) for st in live) + 2
    raise ConsistencyError(
        "{}: the dirty chunks could not be read within --max-freeze {:g}s ({} tried {} times); the "
        "filesystems were thawed; raise --max-freeze or capture when the host is quieter".format(
            ", ".join(st.cap.disk.device for st in live), max_freeze, tracker.name, FREEZE_ATTEMPTS))


def capture_disk(cap: DiskCapture, tracker: Any, max_freeze: float, max_rounds: int = MAX_ROUNDS) -> DiskReport:
    """``capture_disks`` for one disk."""
    return capture_disks([cap], tracker, max_freeze, max_rounds)[0]
