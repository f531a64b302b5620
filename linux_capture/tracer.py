"""Which sectors of the captured disks were written: tracefs ``block:block_rq_complete`` in a private
trace instance, read from its trace_pipe by a thread.

``take()`` returns the byte ranges written since the previous ``take()``, or None when the record may be
incomplete (events lost to a ring-buffer overrun, or the reader lagging): the caller then reads and
digests every chunk. No kernel module, nothing left behind: the instance is removed on ``close()``.
Standard library only, Python 3.6+.
"""
import os
import re
import threading
import time
from typing import Dict, List, Optional

from diskfmt.extents import ExtentList

from .discover import process_alive

TRACEFS_ROOTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
_EVENT = re.compile(r"block_rq_complete: (\d+),(\d+) (\S+) \(.*?\) (\d+) \+ (\d+)")
_MARK = re.compile(r"tracing_mark_write: (v2v-mark-\d+-\d+)")
SECTOR = 512


def parse_event(line: str) -> Optional[tuple]:
    """(major, minor, start byte, end byte) of a completed write or discard, or None."""
    m = _EVENT.search(line)
    if not m:
        return None
    rwbs = m.group(3)
    if "W" not in rwbs and "D" not in rwbs:
        return None
    sector, count = int(m.group(4)), int(m.group(5))
    if count == 0:
        return None
    return int(m.group(1)), int(m.group(2)), sector * SECTOR, (sector + count) * SECTOR


def _tracefs() -> str:
    for root in TRACEFS_ROOTS:
        if os.path.isdir(os.path.join(root, "instances")):
            return root
    raise OSError("tracefs is not mounted (looked in {})".format(", ".join(TRACEFS_ROOTS)))


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def remove_stale_instances(root: str) -> List[str]:
    """Trace instances of agents that are gone (SIGKILL: no ``close()``) hold a ring buffer of kernel
    memory each: remove them; the names removed."""
    removed = []
    base = os.path.join(root, "instances")
    for name in os.listdir(base):
        m = re.match(r"^v2v-agent-(\d+)$", name)
        if not m or process_alive(int(m.group(1))):
            continue
        try:
            os.rmdir(os.path.join(base, name))
            removed.append(name)
        except OSError:
            pass
    return removed


class Tracer:
    name = "tracefs block_rq_complete"

    def __init__(self, devices: List[str], buffer_kb: int = 16384, name: str = "") -> None:
        root = _tracefs()
        self.stale_removed = remove_stale_instances(root)
        self.devs: Dict[tuple, str] = {}
        for dev in devices:
            rdev = os.stat(dev).st_rdev
            self.devs[(os.major(rdev), os.minor(rdev))] = dev
        self.inst = os.path.join(root, "instances", name or "v2v-agent-{}".format(os.getpid()))
        os.mkdir(self.inst)
        self._lock = threading.Lock()
        self._pending: Dict[str, ExtentList] = {d: ExtentList() for d in devices}
        self._marks: List[str] = []
        self._seq = 0
        self._stop = False
        self._lost = False
        try:
            _write(os.path.join(self.inst, "buffer_size_kb"), str(buffer_kb))
            event = os.path.join(self.inst, "events", "block", "block_rq_complete")
            # kernel dev_t is MAJOR << 20 | MINOR
            _write(os.path.join(event, "filter"), " || ".join(
                "dev == {}".format(ma << 20 | mi) for ma, mi in self.devs))
            _write(os.path.join(event, "enable"), "1")
            self._overruns = self._overrun_count()
            self._pipe = open(os.path.join(self.inst, "trace_pipe"), "rb", buffering=0)
        except BaseException:
            self._remove()
            raise
        self._thread = threading.Thread(target=self._reader, daemon=True)
        self._thread.start()

    def _overrun_count(self) -> int:
        total = 0
        base = os.path.join(self.inst, "per_cpu")
        for cpu in os.listdir(base):
            try:
                with open(os.path.join(base, cpu, "stats")) as f:
                    for line in f:
                        if line.startswith("overrun:"):
                            total += int(line.split()[1])
            except (OSError, ValueError):
                self._lost = True
        return total

    def _reader(self) -> None:
        rest = b""
        while not self._stop:
            try:
                data = self._pipe.read(65536)
            except OSError:
                self._lost = True
                return
            if not data:
                time.sleep(0.01)
                continue
            lines = (rest + data).split(b"\n")
            rest = lines.pop()
            for raw in lines:
                line = raw.decode("ascii", "replace")
                ev = parse_event(line)
                if ev is not None:
                    dev = self.devs.get((ev[0], ev[1]))
                    if dev is not None:
                        with self._lock:
                            self._pending[dev].add(ev[2], ev[3])
                    continue
                m = _MARK.search(line)
                if m:
                    with self._lock:
                        self._marks.append(m.group(1))

    def _sync(self, timeout: float = 2.0) -> bool:
        """Wait until the reader has consumed every event recorded before now."""
        self._seq += 1
        token = "v2v-mark-{}-{}".format(os.getpid(), self._seq)
        _write(os.path.join(self.inst, "trace_marker"), token)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if token in self._marks:
                    self._marks = []
                    return True
            time.sleep(0.002)
        return False

    def take(self, device: Optional[str] = None) -> Optional[ExtentList]:
        """Bytes written on ``device`` (the only device when None) since the last take; None if unknown."""
        synced = self._sync()
        overruns = self._overrun_count()
        lost = self._lost or not synced or overruns != self._overruns
        self._overruns = overruns
        self._lost = False
        dev = device if device is not None else next(iter(self._pending))
        with self._lock:
            got = self._pending[dev]
            self._pending[dev] = ExtentList()
        return None if lost else got

    def take_all(self) -> Optional[Dict[str, ExtentList]]:
        """Bytes written on every device since the last take, by device; None if the record may be
        incomplete for any of them."""
        synced = self._sync()
        overruns = self._overrun_count()
        lost = self._lost or not synced or overruns != self._overruns
        self._overruns = overruns
        self._lost = False
        with self._lock:
            got = self._pending
            self._pending = {d: ExtentList() for d in got}
        return None if lost else got

    def _remove(self) -> None:
        try:
            _write(os.path.join(self.inst, "events", "block", "block_rq_complete", "enable"), "0")
        except OSError:
            pass
        for _ in range(50):
            try:
                os.rmdir(self.inst)
                return
            except OSError:
                time.sleep(0.05)      # busy while the pipe is still open

    def close(self) -> None:
        self._stop = True
        try:
            _write(os.path.join(self.inst, "trace_marker"), "v2v-stop")
        except OSError:
            pass
        self._thread.join(timeout=2)
        try:
            self._pipe.close()
        except OSError:
            pass
        self._remove()
