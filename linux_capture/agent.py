"""The source-side agent: speaks the protocol on stdin/stdout and sends the disks' used blocks.

Run as root on the source, by the converter over ssh (``python3 v2v-agent.pyz`` or the stdin bootstrap),
or by hand in push mode (``--connect HOST:PORT --ca --cert --key``: linux_capture/push.py).
``python3 v2v-agent.pyz --plan [--disk /dev/sdX ...]`` prints what would be copied, as JSON, and exits.
Standard library only, Python 3.6+: nothing is installed on the source and no kernel module is loaded.
"""
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Tuple, Union

# Imported up front: the bootstrap removes the agent file once it is loaded, and nothing may be
# read from a filesystem this process is about to freeze.
import diskfmt.usedmap.ext4  # noqa: F401
import diskfmt.usedmap.fat  # noqa: F401
import diskfmt.usedmap.ntfs  # noqa: F401
import diskfmt.usedmap.swap  # noqa: F401
import diskfmt.usedmap.xfs  # noqa: F401

from diskfmt.extents import ExtentList

from . import lvm, protocol, resident
from .consistency import ConsistencyError, DigestPass, DiskCapture, capture_disks, choose_mode, rw_mounts, thaw_all
from .discover import Disk, DiscoveryError, Region, discover, lvm_summary
from .fsmap import RegionMap, map_disk, table_partitions
from .snapset import plan_map
from .tracer import Tracer

AGENT_VERSION = "0.1.0"


class TokenBucket:
    """At most ``rate`` bytes a second on average, bursts of ``burst``; rate 0 means unlimited."""

    def __init__(self, rate: float, burst: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = float(rate)
        self.capacity = float(burst if burst is not None else max(self.rate / 4.0, 256 << 10))
        self.tokens = self.capacity
        self.clock = clock
        self.sleep = sleep
        self.stamp = clock()
        self.slept = 0.0

    def consume(self, n: int) -> None:
        if self.rate <= 0:
            return
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        if self.tokens < 0:
            wait = -self.tokens / self.rate
            self.sleep(wait)
            self.slept += wait
            self.tokens = 0.0
            self.stamp = self.clock()


class AutoCodec:
    """``--compress auto``: zlib while it pays, raw while the link carries raw bytes faster than zlib
    makes them fewer (DESIGN section 6). Both rates are measured as the capture goes (moving averages);
    every ``SAMPLE_EVERY``-th chunk is compressed anyway, so the estimates follow the data and the link."""
    SAMPLE_EVERY = 16
    ALPHA = 0.25

    def __init__(self) -> None:
        self.compress_rate: Optional[float] = None   # raw bytes per second that zlib takes in
        self.ratio: Optional[float] = None           # wire bytes / raw bytes when compressed
        self.link_rate: Optional[float] = None       # wire bytes per second written (throttle included)
        self.asked = 0
        self.raw = 0                                 # chunks this chose to send raw

    def _ema(self, old: Optional[float], new: float) -> float:
        return new if old is None else old + self.ALPHA * (new - old)

    def want_compress(self) -> bool:
        self.asked += 1
        if self.compress_rate is None or self.ratio is None or self.link_rate is None \
                or self.asked % self.SAMPLE_EVERY == 0:
            return True
        # seconds per raw byte: compressed = compress + write fewer bytes; raw = write all of them
        if 1.0 / self.compress_rate + self.ratio / self.link_rate < 1.0 / self.link_rate:
            return True
        self.raw += 1
        return False

    def compressed(self, raw: int, wire: int, seconds: float) -> None:
        self.compress_rate = self._ema(self.compress_rate, raw / max(seconds, 1e-6))
        self.ratio = self._ema(self.ratio, min(1.0, wire / float(max(raw, 1))))

    def wrote(self, wire: int, seconds: float) -> None:
        if wire >= 65536:                            # small control frames say nothing about the link
            self.link_rate = self._ema(self.link_rate, wire / max(seconds, 1e-6))


class Wire:
    """Frames out, throttled; a chunk whose sample does not compress is sent raw; with ``auto`` the
    codec is zlib only while compressing is faster than the link."""

    def __init__(self, out: BinaryIO, codec: int = protocol.CODEC_ZLIB, level: int = 1,
                 bandwidth: float = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.codec = codec
        self.level = level
        self.auto: Optional[AutoCodec] = None
        self.clock = clock
        self.bucket = TokenBucket(bandwidth)
        self.bytes_on_wire = 0
        self.raw_bytes = 0
        self.zero_bytes = 0
        self.chunks = 0

    def write(self, frame: Union[bytes, List[protocol.Buffer]]) -> None:
        """One frame, as bytes or as the pieces ``protocol.frame_parts`` gives (written without joining)."""
        parts = [frame] if isinstance(frame, bytes) else frame
        size = sum(len(p) for p in parts)
        t0 = self.clock()
        self.bucket.consume(size)
        for p in parts:
            self.out.write(p)
        self.out.flush()
        if self.auto is not None:
            self.auto.wrote(size, self.clock() - t0)
        self.bytes_on_wire += size

    def json(self, ftype: int, obj: Any, disk: int = 0) -> None:
        self.write(protocol.encode_json(ftype, obj, disk))

    def chunk(self, disk: int, offset: int, data: protocol.Buffer, sha: bytes) -> None:
        codec = self.codec
        if self.auto is not None and not self.auto.want_compress():
            codec = protocol.CODEC_NONE
        if codec != protocol.CODEC_NONE and not protocol.worth_compressing(data, codec, self.level):
            codec = protocol.CODEC_NONE
        t0 = self.clock()
        parts = protocol.chunk_frame_parts(disk, offset, data, codec, self.level, sha)
        ftype = parts[0][4]
        if self.auto is not None and codec != protocol.CODEC_NONE and ftype == protocol.CHUNK:
            self.auto.compressed(len(data), sum(len(p) for p in parts), self.clock() - t0)
        self.raw_bytes += len(data)
        if ftype == protocol.ZERO:
            self.zero_bytes += len(data)
        self.chunks += 1
        self.write(parts)


def lower_io_priority() -> str:
    """Idle IO class for this process (best effort); the line says what was done."""
    numbers = {"x86_64": 251, "aarch64": 30, "i686": 289, "i386": 289, "ppc64le": 273, "s390x": 282}
    nr = numbers.get(platform.machine())
    if nr is not None:
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.syscall(nr, 1, 0, 3 << 13) == 0:      # IOPRIO_WHO_PROCESS, self, IOPRIO_CLASS_IDLE
                return "idle IO priority (ioprio_set)"
        except (OSError, AttributeError, ImportError):
            pass
    try:
        subprocess.run(["ionice", "-c", "3", "-p", str(os.getpid())], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=10, check=True)
        return "idle IO priority (ionice)"
    except (OSError, subprocess.SubprocessError):
        return "IO priority unchanged (neither ioprio_set nor ionice worked)"


def _statvfs_used(mountpoint: str) -> Optional[int]:
    try:
        st = os.statvfs(mountpoint)
    except OSError:
        return None
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def describe(disk: Disk) -> Dict[str, Any]:
    return {"name": disk.name, "device": disk.device, "size": disk.size, "readonly": disk.readonly,
            "model": disk.model,
            "regions": [{"name": r.name, "device": r.device, "offset": r.offset, "size": r.size,
                         "partition": r.partition, "holders": list(r.holders),
                         "holder_mounts": [{"mountpoint": m.mountpoint, "fstype": m.fstype, "readonly": m.readonly,
                                            "source": m.source} for m in r.holder_mounts],
                         "mounts": [{"mountpoint": m.mountpoint, "fstype": m.fstype, "readonly": m.readonly,
                                     "df_used": _statvfs_used(m.mountpoint)} for m in r.mounts]}
                        for r in disk.regions]}


def _snapshot_plan(disk: Disk) -> Tuple[List[Tuple[Region, ExtentList, str]], List[str]]:
    """The PV partitions a capture would read from LVM snapshots, with what it would send of them (mapped
    through the live volumes), and one line on each PV that it would not."""
    found, notes = [], []
    if lvm.lvm_tool() is None:
        return found, notes
    for r in disk.regions:
        pv = lvm.physical_volume(r.device) if r.holders else None
        if pv is None:
            continue
        cows, why = lvm.snapshot_sizes(pv)
        if cows is None:
            notes.append("{}: no LVM snapshot ({})".format(r.device, why))
            continue
        ext, lines = plan_map(disk, r, pv)
        found.append((r, ext, "LVM snapshots of {}; {}".format(
            ", ".join(v.vg + "/" + v.name for v in pv.volumes if v.active), "; ".join(lines))))
    return found, notes


def plan(disk: Disk) -> Dict[str, Any]:
    """What would be copied of ``disk`` and how, before anything is copied."""
    mode, reason = choose_mode(disk)
    live = {r.name: True for r, _, _ in rw_mounts(disk, holders=False)}
    extents, maps = map_disk(disk, live)
    snaps, notes = _snapshot_plan(disk)
    if snaps:
        names = {r.name for r, _, _ in snaps}
        frozen = [mp for r, mp, _ in rw_mounts(disk) if r.name not in names]
        mode = "lvm-snapshot+freeze-converge" if frozen else "lvm-snapshot"
        reason = "; ".join(why for _, _, why in snaps) + ("; frozen: {}".format(", ".join(frozen)) if frozen else "")
        for r, ext, why in snaps:
            extents = extents.subtract(ExtentList([(r.offset, r.offset + r.size)])).union(ext)
            maps = [RegionMap(m.region, "LVM2_member", ext, True, why) if m.region == r.name else m for m in maps]
    if notes:
        reason += "; " + "; ".join(notes)
    return {"device": disk.device, "size": disk.size, "mode": mode, "reason": reason,
            "used_bytes": extents.total(),
            "regions": [{"region": m.region, "fstype": m.fstype, "bytes": m.extents.total(), "exact": m.exact,
                         "reason": m.reason} for m in maps]}


def _make_tracker(disks: List[Disk], mode: str) -> Tuple[Any, str]:
    """The write tracker, and why the digest pass is used when it is."""
    if mode == "off":
        return DigestPass(), "tracing off (--tracing off)"
    try:
        return Tracer([d.device for d in disks]), ""
    except OSError as e:
        return DigestPass(), "tracefs unavailable ({}): digest passes instead".format(e)


def _resident(req: Optional[Dict[str, Any]], disks: List[Disk]
              ) -> Tuple[Optional[Dict[str, Any]], Optional[Dict[str, Any]]]:
    """The resident tracker a standby asked for (started when not running) and this capture's epoch in it;
    (report, bytes written per device since the epoch asked for, or None: read every used chunk)."""
    if not req:
        return None, None
    try:
        report, written = resident.rotate(str(req.get("id", "")), [d.device for d in disks], req.get("since"),
                                          float(req.get("ttl", resident.DEFAULT_TTL)))
    except (OSError, ValueError) as e:
        return {"epoch": None, "since": req.get("since"), "started": False, "reason": str(e),
                "message": "no resident write tracker ({}): every used chunk is read".format(e)}, None
    if written is not None:
        report["message"] = "resident tracker: {} bytes written since epoch {}; only those chunks are read".format(
            report["tracked_bytes"], report["since"])
    else:
        report["message"] = "resident tracker {} (epoch {}); every used chunk is read: {}".format(
            "started" if report["started"] else "running", report["epoch"], report["reason"])
    return report, written


def serve(inp: BinaryIO, out: BinaryIO) -> int:
    """One capture session on a protocol stream; the exit code."""
    reader = protocol.FrameReader(inp.read)
    wire = Wire(out)
    wire.json(protocol.HELLO, {"protocol": protocol.PROTOCOL_VERSION, "agent": AGENT_VERSION,
                               "python": platform.python_version(), "host": platform.node(),
                               "kernel": platform.release(), "uid": os.getuid()})
    frame = reader.read_frame()
    if frame is None or frame.type != protocol.OPTIONS:
        raise protocol.CorruptFrame("expected OPTIONS from the converter")
    opts = protocol.decode_json(frame)
    if os.getuid() != 0:
        raise PermissionError("the agent must run as root to read disks and freeze filesystems")
    codec = opts.get("compress", "zlib")
    wire.codec = protocol.CODECS["zlib" if codec == "auto" else codec]
    wire.auto = AutoCodec() if codec == "auto" else None
    wire.level = int(opts.get("level", 1))
    wire.bucket = TokenBucket(float(opts.get("bandwidth", 0)))
    chunk = int(opts.get("chunk", 1 << 20))
    notes = [lower_io_priority()]
    tools = lvm_summary()
    if tools:
        notes.append(tools + ": volumes of a volume group with free extents are read from snapshots")
    disks = [table_partitions(d) for d in discover(opts.get("disks") or None)]
    if not disks:
        raise DiscoveryError("no disks found to capture")
    wire.json(protocol.DISCOVERY, {"disks": [describe(d) for d in disks], "notes": notes})
    for i, d in enumerate(disks):
        wire.json(protocol.PLAN, plan(d), disk=i)
    if opts.get("dry_run"):
        wire.json(protocol.END, {"dry_run": True})
        return 0
    have: Dict[int, Dict[Any, bytes]] = {}
    while True:
        frame = reader.read_frame()
        if frame is None:
            return 0
        if frame.type == protocol.GO:
            break
        if frame.type != protocol.HAVE:
            raise protocol.CorruptFrame("expected HAVE or GO, got {}".format(protocol.frame_name(frame.type)))
        have.setdefault(frame.disk, {}).update(((o, n), sha) for o, n, sha in protocol.decode_have(frame))
    resident_report, tracked = _resident(opts.get("resident"), disks)
    if resident_report is not None:
        wire.json(protocol.INFO, {"kind": "resident", "message": resident_report["message"],
                                  "report": resident_report})
    tracker, why = _make_tracker(disks, opts.get("tracing", "auto"))
    wire.json(protocol.INFO, {"kind": "tracking", "message": "change tracking: {}{}".format(
        tracker.name, "; " + why if why else "")})
    reports = []
    caps: List[DiskCapture] = []
    try:
        for i, d in enumerate(disks):
            def send(off: int, data: bytes, sha: bytes, i: int = i) -> None:
                wire.chunk(i, off, data, sha)

            def note(kind: str, message: str, i: int = i, **fields: Any) -> None:
                wire.json(protocol.INFO, dict(fields, kind=kind, message=message), disk=i)

            caps.append(DiskCapture(d, send, note, have.get(i, {}), chunk))
        done = capture_disks(caps, tracker, float(opts.get("max_freeze", 2.0)), int(opts.get("max_rounds", 4)),
                             tracked)
        for i, (d, rep) in enumerate(zip(disks, done)):
            reports.append(rep._asdict())
            wire.json(protocol.INFO, {"kind": "disk-done", "message": "{} captured ({})".format(d.device, rep.mode),
                                      "report": rep._asdict()}, disk=i)
    finally:
        for cap in caps:
            cap.close()
        tracker.close()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    wire.json(protocol.END, {"bytes_on_wire": wire.bytes_on_wire, "raw_bytes": wire.raw_bytes,
                             "zero_bytes": wire.zero_bytes, "chunks": wire.chunks,
                             "cpu_seconds": round(ru.ru_utime + ru.ru_stime, 3),
                             "throttled_seconds": round(wire.bucket.slept, 3), "disks": reports,
                             "auto_raw_chunks": wire.auto.raw if wire.auto is not None else None,
                             "resident": resident_report})
    return 0


def _on_signal(signum: int, _frame: Any) -> None:
    thaw_all()                       # first, before anything that could block; snapshots go in finally
    raise SystemExit(128 + signum)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _on_signal)
    if "--version" in argv:
        print("v2v-agent {} (protocol {})".format(AGENT_VERSION, protocol.PROTOCOL_VERSION))
        return 0
    if "--connect" in argv:          # push mode: connect out to the converter with mutual TLS
        from . import push
        return push.main(argv)
    if "--plan" in argv:
        names = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--disk"]
        try:
            disks = [table_partitions(d) for d in discover(names or None)]
            print(json.dumps({"disks": [describe(d) for d in disks], "plans": [plan(d) for d in disks]},
                             indent=2, sort_keys=True))
        except OSError as e:
            sys.stderr.write("v2v-agent: error: {}\n".format(e))
            return 1
        return 0
    out = sys.stdout.buffer
    sys.stdout = sys.stderr          # a stray print must not corrupt the frame stream
    try:
        return serve(sys.stdin.buffer, out)
    except (BrokenPipeError, ConnectionResetError):
        return 1                     # the converter went away; the finally blocks have thawed
    except (OSError, ValueError, ConsistencyError, protocol.ProtocolError) as e:
        try:
            out.write(protocol.encode_json(protocol.ERROR, {"message": str(e), "kind": type(e).__name__}))
            out.flush()
        except OSError:
            pass
        sys.stderr.write("v2v-agent: error: {}\n".format(e))
        return 1
    finally:
        thaw_all()
        lvm.remove_all()
