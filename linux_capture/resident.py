"""The resident write tracker of a standby (DESIGN section 7): what was written on the source's disks
between two refreshes, so that a refresh reads only those chunks instead of every used one.

A standby capture asks the agent for it (OPTIONS ``resident``). The agent forks it off before the copy
begins: a detached process (``v2v-tracker`` in ps) holding its own tracefs instance (the ``Tracer`` of
the capture) and an abstract unix socket ``@v2v-tracker-ID`` that only root may talk to. Nothing is
written to the source's filesystems and no kernel module is loaded. A reboot, a kill or lost trace events
end the record; the next refresh is then told why and reads every used chunk, as without a tracker. It
exits on its own after ``ttl`` seconds without a request (a standby that is no longer refreshed).

Epochs: every capture opens a new epoch, and the tracker keeps, for each epoch it holds, the bytes written
since the epoch began. A refresh asks for the bytes written since the epoch of the generation the
converter last completed: that covers every write after that capture began, which is more than every write
after its freeze, so nothing is missed. An epoch is named ``INSTANCE:N``: a restarted tracker never
answers for the epochs of an earlier one. Standard library only, Python 3.6+.
"""
import binascii
import json
import os
import re
import select
import signal
import socket
import struct
import time
from typing import Any, Dict, List, Optional, Tuple

from diskfmt.extents import ExtentList

from .tracer import Tracer

DEFAULT_TTL = 8 * 86400          # a nightly standby asks daily; one missed week ends the tracker
BUFFER_KB = 4096                 # per CPU; the reader drains the ring continuously
DRAIN_SECONDS = 60.0             # trace events are moved into the epochs at least this often
MAX_EPOCHS = 16                  # epochs held at most (a converter that never completes one)
MAX_REQUEST = 1 << 16
START_SECONDS = 10.0
_IDENT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_PEERCRED = struct.Struct("3i")   # pid, uid, gid


class TrackerError(OSError):
    """The resident tracker could not be started or asked."""


def address(ident: str) -> str:
    """The abstract socket name (a leading NUL: no file, gone with the process)."""
    if not _IDENT.match(ident):
        raise ValueError("tracker id {!r} is not [A-Za-z0-9_.-]{{1,64}}".format(ident))
    return "\0v2v-tracker-" + ident


class Epochs:
    """The epoch bookkeeping of one tracker; pure."""

    def __init__(self, devices: List[str], instance: str) -> None:
        self.devices = list(devices)
        self.instance = instance
        self.held: Dict[int, Dict[str, ExtentList]] = {}
        self.next = 1
        self.valid_from = 1            # epochs before this one lost trace events

    def record(self, written: Optional[Dict[str, ExtentList]]) -> None:
        """Add what the tracer saw to every epoch held; None (events lost) spoils every epoch held."""
        if written is None:
            self.valid_from = self.next
            return
        for dev, ext in written.items():
            if ext:
                for epoch in self.held.values():
                    epoch[dev] = epoch.get(dev, ExtentList()).union(ext)

    def rotate(self, since: Optional[str]) -> Dict[str, Any]:
        """Open a new epoch and answer for ``since``: ``ranges`` (device -> compact extents) of what was
        written since it began, or ``reason`` why that is not known. Epochs before ``since`` are dropped
        (the converter has completed a later one)."""
        out: Dict[str, Any] = {"epoch": "{}:{}".format(self.instance, self.next)}
        number = None
        if since is None:
            out["reason"] = "no earlier epoch was asked for (the first capture of this standby)"
        else:
            inst, _, n = since.rpartition(":")
            number = int(n) if n.isdigit() else None
            if inst != self.instance or number is None:
                out["reason"] = "the tracker that recorded epoch {} is gone (rebooted, killed or expired); " \
                                "this tracker began at epoch {}:{}".format(since, self.instance, min(
                                    self.held or [self.next]))
                number = None
            elif number not in self.held:
                out["reason"] = "epoch {} is no longer held".format(since)
                number = None
            elif number < self.valid_from:
                out["reason"] = "trace events were lost (ring buffer overrun) since epoch {}".format(since)
            else:
                out["ranges"] = {dev: self.held[number].get(dev, ExtentList()).to_compact() for dev in self.devices}
        self.held[self.next] = {d: ExtentList() for d in self.devices}
        self.next += 1
        if number is not None:
            for e in [e for e in self.held if e < number]:
                del self.held[e]
        while len(self.held) > MAX_EPOCHS:
            del self.held[min(self.held)]
        return out


def request(ident: str, obj: Dict[str, Any], timeout: float = 15.0) -> Optional[Dict[str, Any]]:
    """One request to the tracker of ``ident``; None when no tracker listens."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(address(ident))
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        s.sendall(json.dumps(obj).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            got = s.recv(1 << 20)
            if not got:
                raise TrackerError("the resident tracker {} closed the connection without an answer".format(ident))
            data += got
        return json.loads(data.decode())
    except (ConnectionResetError, BrokenPipeError):
        return None                             # it exited while we asked
    except socket.timeout:
        raise TrackerError("the resident tracker {} did not answer within {:.0f}s".format(ident, timeout)) from None
    finally:
        s.close()


class _Daemon:
    def __init__(self, ident: str, devices: List[str], ttl: float) -> None:
        self.ident = ident
        self.ttl = ttl
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(address(ident))          # EADDRINUSE: another tracker of this id serves
        self.sock.listen(4)
        name = "v2v-tracker-" + ident
        for root in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
            stale = os.path.join(root, "instances", name)
            if os.path.isdir(stale):
                os.rmdir(stale)                 # left by a killed tracker: we hold the socket, it is gone
        self.tracer = Tracer(devices, buffer_kb=BUFFER_KB, name=name)
        self.epochs = Epochs(devices, binascii.hexlify(os.urandom(6)).decode())
        self.started = time.time()
        self.stop = False

    def drain(self) -> None:
        self.epochs.record(self.tracer.take_all())

    def answer(self, req: Dict[str, Any]) -> Dict[str, Any]:
        op = req.get("op")
        if op == "hello":
            return {"ok": True, "devices": self.epochs.devices, "instance": self.epochs.instance,
                    "started": self.started, "pid": os.getpid(), "epochs": sorted(self.epochs.held)}
        if op == "rotate":
            self.drain()
            return dict(self.epochs.rotate(req.get("since")), ok=True)
        if op == "stop":
            self.stop = True
            return {"ok": True}
        return {"ok": False, "reason": "unknown request {!r}".format(op)}

    def serve(self, conn: socket.socket) -> None:
        conn.settimeout(5.0)
        uid = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))[1]
        data = b""
        while not data.endswith(b"\n") and len(data) < MAX_REQUEST:
            got = conn.recv(4096)
            if not got:
                return
            data += got
        if uid != 0:
            conn.sendall(b'{"ok": false, "reason": "only root may ask the tracker"}\n')
            return
        try:
            reply = self.answer(json.loads(data.decode()))
        except (ValueError, AttributeError) as e:
            reply = {"ok": False, "reason": "bad request: {}".format(e)}
        conn.sendall(json.dumps(reply).encode() + b"\n")

    def run(self) -> None:
        last_request = last_drain = time.monotonic()
        try:
            while not self.stop and time.monotonic() - last_request < self.ttl:
                ready, _, _ = select.select([self.sock], [], [], min(DRAIN_SECONDS, self.ttl))
                if ready:
                    conn, _ = self.sock.accept()
                    try:
                        self.serve(conn)
                    except OSError:
                        pass
                    finally:
                        conn.close()
                    last_request = time.monotonic()
                if time.monotonic() - last_drain >= DRAIN_SECONDS:
                    self.drain()
                    last_drain = time.monotonic()
        finally:
            self.sock.close()              # first: nobody may connect to a tracker on its way out
            self.tracer.close()


def _on_term(signum: int, _frame: Any) -> None:
    raise SystemExit(0)


def _daemon_main(ident: str, devices: List[str], ttl: float, status_fd: int) -> None:
    """In the detached grandchild: set up, tell the starter 'ok' or the error, then serve."""
    try:
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)              # ssh's pipes: the session must end when the agent does
        os.close(null)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, _on_term)
        try:
            with open("/proc/self/comm", "w") as f:
                f.write("v2v-tracker")
        except OSError:
            pass
        daemon = _Daemon(ident, devices, ttl)
    except OSError as e:
        os.write(status_fd, "error: {}\n".format(e).encode())
        os.close(status_fd)
        return
    os.write(status_fd, b"ok\n")
    os.close(status_fd)
    daemon.run()


def start(ident: str, devices: List[str], ttl: float = DEFAULT_TTL) -> None:
    """Fork the tracker off this process (call it before this process starts threads); returns once it
    listens, or raises TrackerError with its reason."""
    address(ident)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:                                # the first child: detach, fork the tracker, go
        code = 0
        try:
            os.close(rfd)
            os.setsid()
            if os.fork() == 0:
                _daemon_main(ident, devices, ttl, wfd)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    os.waitpid(pid, 0)
    data = b""
    deadline = time.monotonic() + START_SECONDS
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([rfd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            got = os.read(rfd, 4096)
            if not got:
                break
            data += got
    finally:
        os.close(rfd)
    text = data.decode(errors="replace").strip()
    if text == "ok":
        return
    if not text and request(ident, {"op": "hello"}) is not None:
        return                                  # another tracker of this id won the race: it serves
    raise TrackerError("the resident tracker did not start: {}".format(text or "no answer within {:.0f}s".format(
        START_SECONDS)))


def rotate(ident: str, devices: List[str], since: Optional[str], ttl: float = DEFAULT_TTL
           ) -> Tuple[Dict[str, Any], Optional[Dict[str, ExtentList]]]:
    """Make sure the tracker of ``ident`` runs over ``devices`` and open this capture's epoch.

    Returns (report, written): the report holds ``epoch`` (to give back as ``since`` next time),
    ``started`` (a new tracker) and ``reason`` when ``written`` (device -> bytes written since ``since``)
    is None."""
    hello = request(ident, {"op": "hello"})
    started = False
    reason = ""
    if hello is not None and sorted(hello.get("devices", [])) != sorted(devices):
        request(ident, {"op": "stop"})
        reason = "the tracker watched {}, not {}: restarted".format(", ".join(hello.get("devices", [])),
                                                                    ", ".join(devices))
        hello = None
        for _ in range(50):                     # the old one releases the socket name as it exits
            if request(ident, {"op": "hello"}) is None:
                break
            time.sleep(0.1)
    if hello is None:
        start(ident, devices, ttl)
        started = True
    reply = request(ident, {"op": "rotate", "since": since})
    if reply is None or not reply.get("ok"):
        raise TrackerError("the resident tracker {} refused: {}".format(
            ident, "gone" if reply is None else reply.get("reason", "no reason")))
    report: Dict[str, Any] = {"epoch": reply["epoch"], "started": started, "since": since}
    if "ranges" not in reply:
        why = reply.get("reason", "")
        if started and since is not None:
            why = "no tracker was running since epoch {} (rebooted, killed or expired)".format(since)
        report["reason"] = "; ".join(r for r in (reason, why) if r)
        return report, None
    written = {dev: ExtentList.from_compact(v) for dev, v in reply["ranges"].items()}
    report["tracked_bytes"] = sum(e.total() for e in written.values())
    return report, written
