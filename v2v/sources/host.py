"""Source: a running Linux host, captured block by block through v2v-agent.pyz over ssh (DESIGN section 6).

``capture(target, copts, events)`` runs the agent on the host (``ssh ... python3 -c BOOTSTRAP``, host
key checking on), or, for a ``push:NAME`` target, waits for the agent to connect with mutual TLS
(sources/push.py); either way it is a transport (``_Session`` or ``push.TlsSession``) that carries the
same frames. It receives the agent's frames, verifies every chunk's sha256 and writes it into a sparse raw
staging image per disk, and records each verified chunk in a SQLite manifest (committed twice a second
and at the end). A rerun of the same command sends the manifest's digests back: the agent re-sends only
chunks that are missing or changed. ``convert_host`` then runs the normal pipeline on the images.
"""
import errno
import hashlib
import json
import logging
import mmap
import os
import queue
import re
import shlex
import shutil
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple, Union

from linux_capture import protocol

from .. import agent_bundle
from ..errors import IntegrityError, Interrupted, OutputError, SourceError, TransportError, V2VError
from ..events import Emitter
from . import push

log = logging.getLogger("v2v.sources.host")

MANIFEST = "manifest.sqlite"
_ALIGN = 4096
COMMIT_SECONDS = 0.5
PROGRESS_SECONDS = 5.0


@dataclass(frozen=True)
class HostTarget:
    user: str
    host: str
    port: int

    def __str__(self) -> str:
        host = "[{}]".format(self.host) if ":" in self.host else self.host
        return "{}@{}:{}".format(self.user, host, self.port)


def parse_target(text: str, port: Optional[int] = None) -> HostTarget:
    """USER@HOST[:PORT] (HOST may be [v6addr]); --ssh-port overrides a port in the text."""
    m = re.fullmatch(r"(?:([^@\s]+)@)?(\[[0-9a-fA-F:.]+\]|[^:@\s\[\]]+)(?::(\d{1,5}))?", text)
    if not m:
        raise SourceError("{!r} is not USER@HOST[:PORT]".format(text))
    user, host, p = m.group(1) or "root", m.group(2).strip("[]"), m.group(3)
    chosen = port if port is not None else int(p) if p else 22
    if not 0 < chosen < 65536:
        raise SourceError("port {} is out of range".format(chosen))
    return HostTarget(user, host, chosen)


@dataclass(frozen=True)
class CaptureOptions:
    disks: Tuple[str, ...] = ()            # whole-disk devices on the source; empty: every disk
    compress: str = "auto"                 # auto: zlib while the link is slower than compressing
    bandwidth: int = 0                     # bytes per second on the wire; 0 unlimited
    max_freeze: float = 2.0
    max_rounds: int = 4
    tracing: str = "auto"                  # auto | off (digest passes)
    ssh_key: Optional[str] = None
    ssh_accept_new: bool = False
    ssh_known_hosts: Optional[str] = None
    ssh_timeout: int = 10
    idle_timeout: float = 300.0            # no frame for this long: the session is dropped
    remote_python: str = "python3"
    dry_run: bool = False
    staging: Optional[str] = None          # directory; default under --workdir or /var/tmp
    resident: Optional[Dict[str, Any]] = None   # a standby's resident write tracker: {"id", "since"}


@dataclass(frozen=True)
class CaptureReport:
    target: str
    staging: str
    images: Tuple[str, ...]
    disks: Tuple[Dict[str, Any], ...]     # the agent's per-disk reports (mode, freeze, rounds, maps)
    plans: Tuple[Dict[str, Any], ...]
    received_bytes: int                    # raw bytes of chunks received in this run
    wire_bytes: int                        # frame bytes read from ssh in this run
    skipped_bytes: int                     # held verified from an earlier run, not sent again
    resent_bytes: int                      # sent again although an earlier run had written them
    resumed: bool
    seconds: float
    agent: Dict[str, Any] = field(default_factory=dict)   # the agent's END summary (CPU, wire bytes ...)
    hostname: str = ""                                      # as the source reports it


Target = Union[HostTarget, push.PushTarget]


def ssh_argv(t: HostTarget, o: CaptureOptions, remote: str) -> List[str]:
    argv = ["ssh", "-T", "-e", "none", "-p", str(t.port),
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking={}".format("accept-new" if o.ssh_accept_new else "yes"),
            "-o", "ConnectTimeout={}".format(o.ssh_timeout),
            "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=6",
            "-o", "Compression=no", "-o", "LogLevel=ERROR",
            # AES-GCM first: with AES-NI it moves about 1.6x the bytes of chacha20 per core
            "-o", "Ciphers=^aes128-gcm@openssh.com,aes256-gcm@openssh.com"]
    if o.ssh_key:
        argv += ["-i", o.ssh_key, "-o", "IdentitiesOnly=yes"]
    if o.ssh_known_hosts:
        argv += ["-o", "UserKnownHostsFile={}".format(o.ssh_known_hosts)]
    return argv + ["-l", t.user, "--", t.host, remote]


def staging_dir(t: Target, o: CaptureOptions, base: Optional[str]) -> str:
    if o.staging:
        return os.path.abspath(o.staging)
    key = hashlib.sha256(json.dumps([str(t), sorted(o.disks)]).encode()).hexdigest()[:12]
    parent = base or os.environ.get("V2V_WORKDIR") or "/var/tmp"
    return os.path.join(parent, "v2v-capture-{}-{}".format(re.sub(r"[^A-Za-z0-9.-]", "_", t.host), key))


class Staging:
    """Sparse raw images plus the manifest of verified chunks, in one directory."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.created_dir = not os.path.isdir(path)
        os.makedirs(path, exist_ok=True)
        self.created: List[str] = []
        # used by one thread at a time: the receiving thread, or the _Writer while it runs
        self.db = sqlite3.connect(os.path.join(path, MANIFEST), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self.db.execute("CREATE TABLE IF NOT EXISTS chunks (disk INTEGER, offset INTEGER, length INTEGER, "
                        "sha256 BLOB, PRIMARY KEY (disk, offset, length))")
        self.fds: Dict[int, int] = {}
        self.direct: Dict[int, int] = {}      # O_DIRECT descriptors of the same images
        self._buf = mmap.mmap(-1, protocol.MAX_CHUNK)   # page-aligned, as O_DIRECT needs
        self.sizes: Dict[int, int] = {}
        self._in_txn = False
        self._last_commit = time.monotonic()
        self.closed = False

    def image(self, disk: int) -> str:
        return os.path.join(self.path, "disk{}.raw".format(disk))

    def layout(self) -> Optional[List[Dict[str, Any]]]:
        row = self.db.execute("SELECT value FROM meta WHERE key='disks'").fetchone()
        return json.loads(row[0]) if row else None

    def reset(self, disks: List[Dict[str, Any]]) -> None:
        """Start afresh for these disks (device, size): old images and chunks are dropped."""
        self.db.execute("DELETE FROM chunks")
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('disks', ?)", (json.dumps(disks),))
        for i in range(64):
            if os.path.exists(self.image(i)):
                os.unlink(self.image(i))

    def open_images(self, sizes: Sequence[int]) -> None:
        for i, size in enumerate(sizes):
            path = self.image(i)
            if not os.path.exists(path):
                self.created.append(path)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.ftruncate(fd, size)
            self.fds[i] = fd
            self.sizes[i] = size
            # aligned chunks bypass the page cache: faulting in new cache pages costs more CPU than the copy
            try:
                self.direct[i] = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_DIRECT)
            except OSError:
                pass                      # tmpfs and some others refuse O_DIRECT: buffered writes only

    def _pwrite(self, disk: int, data: bytes, offset: int) -> int:
        fd = self.direct.get(disk)
        if fd is None or offset % _ALIGN or len(data) % _ALIGN or len(data) > len(self._buf):
            return os.pwrite(self.fds[disk], data, offset)
        self._buf[:len(data)] = data
        with memoryview(self._buf) as view:
            try:
                return os.pwrite(fd, view[:len(data)], offset)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
        del self.direct[disk]             # the filesystem accepted O_DIRECT at open but not for writes
        os.close(fd)
        return os.pwrite(self.fds[disk], data, offset)

    def held(self, disk: int) -> List[Tuple[int, int, bytes]]:
        return [(o, n, bytes(s)) for o, n, s in self.db.execute(
            "SELECT offset, length, sha256 FROM chunks WHERE disk=? ORDER BY offset", (disk,))]

    def held_bytes(self) -> int:
        return int(self.db.execute("SELECT COALESCE(SUM(length), 0) FROM chunks").fetchone()[0])

    def allocated(self, disk: int, offset: int, length: int) -> bool:
        """True when the staging image holds written bytes in [offset, offset+length)."""
        try:
            return os.lseek(self.fds[disk], offset, os.SEEK_DATA) < offset + length
        except OSError as e:
            if e.errno == errno.ENXIO:      # no data after offset
                return False
            raise

    def write(self, c: protocol.Chunk) -> bool:
        """Write a verified chunk and record it; True when it overwrote bytes already staged."""
        if c.disk not in self.fds or c.offset + c.length > self.sizes[c.disk]:
            raise IntegrityError("chunk for disk {} offset {} (+{}) lies outside the disks the agent "
                                 "announced".format(c.disk, c.offset, c.length))
        was = self.allocated(c.disk, c.offset, c.length)
        if c.data is not None or was:
            data = c.data if c.data is not None else bytes(c.length)
            done = 0
            while done < len(data):
                try:
                    # a filesystem that fills up first writes part of the chunk, then fails with ENOSPC
                    n = self._pwrite(c.disk, data[done:] if done else data, c.offset + done)
                except OSError as e:
                    if e.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise OutputError("staging directory {} is full (writing disk {} offset {}): {}".format(
                            self.path, c.disk, c.offset, os.strerror(e.errno))) from None
                    raise
                if n <= 0:
                    raise OutputError("short write to {} at offset {}".format(self.image(c.disk), c.offset + done))
                done += n
        if not self._in_txn:
            self.db.execute("BEGIN")
            self._in_txn = True
        # a chunk replaces every recorded chunk it overlaps (chunks never cross a 16 MiB boundary)
        self.db.execute("DELETE FROM chunks WHERE disk=? AND offset>=? AND offset<? AND offset+length>?",
                        (c.disk, c.offset - protocol.MAX_CHUNK, c.offset + c.length, c.offset))
        self.db.execute("INSERT OR REPLACE INTO chunks VALUES (?,?,?,?)", (c.disk, c.offset, c.length, c.digest))
        if time.monotonic() - self._last_commit >= COMMIT_SECONDS:
            self.commit()
        return was and c.data is not None

    def commit(self) -> None:
        if self._in_txn:
            self.db.execute("COMMIT")
            self._in_txn = False
        self._last_commit = time.monotonic()

    def finish(self) -> None:
        for fd in self.fds.values():
            os.fsync(fd)
        self.commit()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.commit()
        except sqlite3.Error:
            pass
        for fd in list(self.fds.values()) + list(self.direct.values()):
            os.close(fd)
        self.fds = {}
        self.direct = {}
        self._buf.close()
        self.db.close()

    def remove(self) -> None:
        """Remove what this capture wrote: images, manifest, and the directory when we made it."""
        self.close()
        if self.created_dir:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for name in [MANIFEST, MANIFEST + "-wal", MANIFEST + "-shm"] + [os.path.basename(p) for p in self.created]:
            p = os.path.join(self.path, name)
            if os.path.exists(p):
                os.unlink(p)


class _Writer:
    """Decodes, verifies and writes chunk frames into the staging images on a thread of its own, so that
    decompression, sha256 and writing overlap receiving the next frames."""

    def __init__(self, staging: Staging, source: str, depth: int = 8) -> None:
        self.staging = staging
        self.source = source
        self.q: "queue.Queue[Optional[protocol.Frame]]" = queue.Queue(depth)
        self.error: Optional[BaseException] = None
        self.resent = 0
        self.seen: set = set()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            f = self.q.get()
            if f is None:
                return
            if self.error is not None:
                continue                     # keep draining so that put() never blocks forever
            try:
                try:
                    c = protocol.decode_chunk(f)
                except protocol.CorruptFrame as e:
                    raise IntegrityError("from {}: {}".format(self.source, e)) from None
                key = (c.disk, c.offset, c.length)
                if self.staging.write(c) and key not in self.seen:
                    self.resent += c.length
                self.seen.add(key)
            except BaseException as e:       # handed to the receiving thread by put()/close()
                self.error = e

    def put(self, f: protocol.Frame) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(f)

    def close(self) -> None:
        """Wait for every queued chunk to be written; raise what the writer hit."""
        if self.thread.is_alive():
            self.q.put(None)
            self.thread.join()
        if self.error is not None:
            err, self.error = self.error, None
            raise err


class Transport(Protocol):
    """How capture() talks to the agent: ``_Session`` (ssh) or ``push.TlsSession`` (the agent connected)."""
    reader: protocol.FrameReader

    def send(self, data: bytes) -> None:
        """Frames to the agent; a broken connection is left for the reader side to report."""

    def close(self, kill: bool = False) -> Any:
        """Idempotent; ``kill`` ends the agent's side too."""

    def failure(self, started: bool) -> V2VError:
        """Close, and say why the stream from the agent ended (``started``: a HELLO had arrived)."""


class _Session:
    """The ssh child: frames in from its stdout, frames out to its stdin, its stderr kept for errors."""

    def __init__(self, argv: List[str], target: HostTarget, o: CaptureOptions) -> None:
        self.target = target
        self.o = o
        idle_timeout = o.idle_timeout
        log.debug("run: %s", " ".join(shlex.quote(a) for a in argv))
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, start_new_session=True)
        except FileNotFoundError:
            raise TransportError("ssh is not installed (the OpenSSH client is needed)") from None
        self.stderr: List[str] = []
        self.last = time.monotonic()
        self.idle_timeout = idle_timeout
        self.timed_out = False
        self._done = threading.Event()
        self._t_err = threading.Thread(target=self._read_stderr, daemon=True)
        self._t_err.start()
        self._t_idle = threading.Thread(target=self._watch_idle, daemon=True)
        self._t_idle.start()
        self.reader = protocol.FrameReader(self._read)

    def _read(self, n: int) -> bytes:
        assert self.proc.stdout is not None
        data = self.proc.stdout.read(n)
        self.last = time.monotonic()
        return data

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                log.debug("ssh: %s", line)
                self.stderr = (self.stderr + [line])[-20:]

    def _watch_idle(self) -> None:
        while not self._done.wait(1.0):
            if time.monotonic() - self.last > self.idle_timeout and self.proc.poll() is None:
                self.timed_out = True
                self.proc.kill()
                return

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass             # the reader side reports why the session ended

    def close(self, kill: bool = False) -> int:
        self._done.set()
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        if kill and self.proc.poll() is None:
            self.proc.terminate()
        try:
            rc = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(timeout=15)
        self._t_err.join(timeout=5)
        if self.proc.stdout:
            self.proc.stdout.close()
        if self.proc.stderr:
            self.proc.stderr.close()
        return rc

    def failure(self, started: bool) -> V2VError:
        rc = self.close()
        return _session_error(self.target, self.o, self, rc, started)


def _session_error(t: HostTarget, o: CaptureOptions, s: _Session, rc: int, started: bool) -> V2VError:
    tail = [ln for ln in s.stderr if not ln.startswith("Warning: Permanently added")]
    text = " ".join(tail[-3:])
    if s.timed_out:
        return TransportError("no data from {} for {:.0f}s; the session was dropped (rerun the same command "
                              "to resume)".format(t, o.idle_timeout))
    if "Host key verification failed" in text or "REMOTE HOST IDENTIFICATION HAS CHANGED" in text or \
            "No ED25519 host key is known" in text or "host key" in text.lower() and not started:
        return TransportError("the host key of {} is not trusted (ssh StrictHostKeyChecking=yes): {}; check "
                              "it and add it to known_hosts, or pass --ssh-accept-new for a host seen for the "
                              "first time".format(t, text or "verification failed"))
    if "Permission denied" in text:
        return TransportError("ssh login to {} refused: {}".format(t, text))
    agent_err = [ln for ln in tail if ln.startswith("v2v-agent: error:")]
    if agent_err:
        return SourceError("on {}: {}".format(t, agent_err[-1][len("v2v-agent: error:"):].strip()))
    if rc == 127 or "not found" in text:
        return SourceError("{} has no {} (the agent needs Python 3.6 or newer): {}".format(
            t, o.remote_python, text))
    if not started:
        return TransportError("cannot reach {}: {}".format(t, text or "ssh exited {}".format(rc)))
    return TransportError("the connection to {} dropped (ssh exit {}{}); rerun the same command to "
                          "resume".format(t, rc, ": " + text if text else ""))


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return "{:.1f} {}".format(n, unit) if unit != "B" else "{:.0f} B".format(n)
        n /= 1024.0
    return str(n)


def _open(target: Target, o: CaptureOptions, events: Emitter) -> Transport:
    """The agent running and connected: started over ssh (and sent the pyz), or accepted in push mode."""
    if isinstance(target, push.PushTarget):
        return push.accept(target, o.idle_timeout, events)
    pyz = agent_bundle.agent_bytes()
    remote = " ".join(shlex.quote(a) for a in [o.remote_python, "-c", agent_bundle.BOOTSTRAP, str(len(pyz))])
    events.stage("capture", "connecting to {} (ssh, host key checking {})".format(
        target, "accept-new" if o.ssh_accept_new else "on"))
    s = _Session(ssh_argv(target, o, remote), target, o)
    try:
        s.send(pyz)
    except BaseException:
        s.close(kill=True)
        raise
    return s


def capture(target: Target, o: CaptureOptions, events: Emitter, workdir: Optional[str] = None) -> CaptureReport:
    """Capture the host's disks into staging images (or only report the plan with ``dry_run``)."""
    t0 = time.monotonic()
    s = _open(target, o, events)
    staging: Optional[Staging] = None
    writer: Optional[_Writer] = None
    keep = ok = False
    started = False
    where = ""
    try:
        s.send(protocol.encode_json(protocol.OPTIONS, {
            "disks": list(o.disks), "compress": o.compress, "bandwidth": o.bandwidth,
            "max_freeze": o.max_freeze, "max_rounds": o.max_rounds, "tracing": o.tracing,
            "dry_run": o.dry_run, "chunk": 1 << 20, "resident": o.resident}))

        def next_frame() -> protocol.Frame:
            try:
                f = s.reader.read_frame()
            except protocol.TruncatedFrame as e:
                err = s.failure(started)
                raise type(err)("{} ({})".format(err, e)) from None
            except protocol.CorruptFrame as e:
                raise IntegrityError("from {}: {}".format(target, e)) from None
            if f is None:
                raise s.failure(started)
            if f.type == protocol.ERROR:
                msg = protocol.decode_json(f).get("message", "unknown error")
                raise SourceError("the agent on {} failed: {}".format(target, msg))
            return f

        hello = protocol.decode_json(_expect(next_frame(), protocol.HELLO))
        started = True
        if hello.get("protocol") != protocol.PROTOCOL_VERSION:
            raise SourceError("the agent on {} speaks protocol {}, this converter {}".format(
                target, hello.get("protocol"), protocol.PROTOCOL_VERSION))
        events.info("agent {} on {} (Python {}, kernel {})".format(hello.get("agent"), hello.get("host"),
                                                                 hello.get("python"), hello.get("kernel")))
        disc = protocol.decode_json(_expect(next_frame(), protocol.DISCOVERY))
        for n in disc.get("notes", []):
            events.info("agent: " + n)
        plans = [protocol.decode_json(_expect(next_frame(), protocol.PLAN)) for _ in disc["disks"]]
        for i, p in enumerate(plans):
            events.info("disk {} {}: {} ({} to send of {}): {}".format(
                i, p["device"], p["mode"], _human(p["used_bytes"]), _human(p["size"]), p["reason"]))
            for r in p["regions"]:
                events.info("  {} {}: {} ({})".format(r["region"], r["fstype"] or "unknown",
                                                     _human(r["bytes"]), r["reason"]))
        if o.dry_run:
            _expect(next_frame(), protocol.END)
            s.close()
            return CaptureReport(str(target), "", (), (), tuple(plans), 0, s.reader.position, 0, 0, False,
                                 time.monotonic() - t0, hostname=str(hello.get("host", "")))

        staging = Staging(staging_dir(target, o, workdir))
        layout = [{"device": p["device"], "size": p["size"]} for p in plans]
        resumed = staging.layout() == layout
        if not resumed:
            if staging.layout() is not None:
                events.warning("staging {} holds another capture; starting afresh".format(staging.path))
            staging.reset(layout)
        staging.open_images([p["size"] for p in plans])
        skipped = staging.held_bytes() if resumed else 0
        need = sum(p["used_bytes"] for p in plans) - skipped
        st = os.statvfs(staging.path)
        free = st.f_bavail * st.f_frsize
        if need > free:
            raise OutputError("staging directory {} has {} free; the capture needs {}".format(
                staging.path, _human(free), _human(need)))
        if resumed and skipped:
            events.info("resuming: {} verified earlier in {} are not sent again".format(
                _human(skipped), staging.path))
        for i in range(len(plans)):
            s.send(protocol.encode_have(i, staging.held(i)))
        s.send(protocol.encode_frame(protocol.GO))

        events.stage("capture", "capturing {} disk(s) from {} into {}".format(len(plans), target, staging.path))
        total = max(1, sum(p["used_bytes"] for p in plans) - skipped)
        received = 0
        writer = _Writer(staging, str(target))
        reports: List[Dict[str, Any]] = []
        last_info = last_progress = time.monotonic()
        t_copy = time.monotonic()
        while True:
            f = next_frame()
            if f.type in (protocol.CHUNK, protocol.ZERO):
                try:
                    offset, length = protocol.chunk_header(f)
                except protocol.CorruptFrame as e:
                    raise IntegrityError("from {}: {}".format(target, e)) from None
                where = "disk {} offset {}".format(f.disk, offset)
                writer.put(f)                # decoded, verified and written on the writer's thread
                received += length
                total = max(total, received)
                now = time.monotonic()
                if now - last_progress >= 0.2:
                    last_progress = now
                    events.progress("capture", received, total)
                if now - last_info >= PROGRESS_SECONDS:
                    last_info = now
                    rate = received / max(1e-6, now - t_copy)
                    events.info("captured {} of {} at {}/s, ETA {:.0f}s".format(
                        _human(received), _human(total), _human(rate), max(0, total - received) / max(1, rate)))
            elif f.type == protocol.INFO:
                info = protocol.decode_json(f)
                if info.get("kind") == "disk-done":
                    reports.append(info["report"])
                (events.warning if info.get("kind") == "warning" else events.info)(info.get("message", ""))
            elif f.type == protocol.END:
                end = protocol.decode_json(f)
                break
            else:
                raise IntegrityError("from {}: unexpected {} frame during the capture".format(
                    target, protocol.frame_name(f.type)))
        writer.close()
        resent = writer.resent
        staging.finish()
        s.close()
        events.progress("capture", total, total)
        for rep in reports:
            if rep.get("not_frozen"):
                events.warning("{} could not be frozen: copied live (not crash-consistent)".format(
                    ", ".join(rep["not_frozen"])))
        images = tuple(staging.image(i) for i in range(len(plans)))
        report = CaptureReport(str(target), staging.path, images, tuple(reports), tuple(plans), received,
                               s.reader.position, skipped, resent, resumed, time.monotonic() - t0, end,
                               str(hello.get("host", "")))
        auto_raw = end.get("auto_raw_chunks")
        events.info("captured {} ({} on the wire{}{}) in {:.1f}s; agent CPU {:.1f}s{}".format(
            _human(received), _human(report.wire_bytes),
            ", {} skipped as verified earlier".format(_human(skipped)) if resumed else "",
            ", {} re-sent".format(_human(resent)), report.seconds, end.get("cpu_seconds", 0.0),
            "" if auto_raw is None else "; --compress auto sent {} of {} chunks raw (the link was faster than "
            "zlib)".format(auto_raw, end.get("chunks", 0))))
        ok = True
        return report
    except TransportError as e:
        keep = staging is not None
        if writer is not None:
            writer.close()                   # what was received is written and recorded before we stop
        if staging is not None:
            staging.commit()
            raise TransportError("{}{}; {} verified are kept in {}".format(
                e, " at " + where if where else "", _human(staging.held_bytes()), staging.path)) from None
        raise
    except (Interrupted, KeyboardInterrupt) as e:
        keep = staging is not None
        _drain_quietly(writer)               # what was received is written before it is recorded
        if staging is not None:
            staging.commit()
            msg = str(e).split(";")[0] if isinstance(e, Interrupted) else "interrupted"
            raise Interrupted("{}; {} verified are kept in {} (rerun the same command to resume)".format(
                msg, _human(staging.held_bytes()), staging.path)) from None
        raise
    except OSError as e:
        raise OutputError("staging {}: {}".format(staging.path if staging else "", e)) from None
    except sqlite3.Error as e:
        raise OutputError("staging manifest in {}: {}".format(staging.path if staging else "", e)) from None
    finally:
        s.close(kill=True)
        _drain_quietly(writer)
        if staging is not None:
            if ok or keep:
                staging.close()
            else:
                staging.remove()


def _drain_quietly(writer: Optional[_Writer]) -> None:
    """Let the writer finish what it holds while another error is already on its way up."""
    if writer is not None:
        try:
            writer.close()
        except BaseException:
            pass


def _expect(f: protocol.Frame, ftype: int) -> protocol.Frame:
    if f.type != ftype:
        raise IntegrityError("expected a {} frame from the agent, got {}".format(
            protocol.frame_name(ftype), protocol.frame_name(f.type)))
    return f


def convert_host(target: Target, copts: CaptureOptions, opts: Any, events: Emitter) -> Tuple[CaptureReport, Any]:
    """Capture the host, then convert its staging images with the normal pipeline; staging is removed
    after a successful conversion and kept (for a rerun without re-sending) when the conversion fails."""
    from ..pipeline import convert
    report = capture(target, copts, events, opts.workdir)
    if copts.dry_run:
        return report, None
    if not opts.output.name:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", report.hostname.split(".")[0]) or target.host
        opts = replace(opts, output=replace(opts.output, name=name))
    try:
        result = convert(list(report.images), replace(opts, input_format="raw"), events)
    except V2VError:
        events.warning("the capture is kept in {}: the same command converts it again without sending it "
                       "again (only what changed on the host); remove the directory to discard it".format(
                           report.staging))
        raise
    shutil.rmtree(report.staging, ignore_errors=True)
    return report, result
