"""Push mode of the host source (DESIGN section 6): for a source the converter cannot reach by ssh, the
agent connects out to the converter with mutual TLS, and ``host.capture`` speaks the same protocol over
that connection as over ssh.

``accept(target, idle_timeout, events)`` listens on --listen and waits, at most --accept-timeout seconds,
for ONE agent that offers TLS 1.2 or newer with a client certificate signed by the CA in --tls-dir whose
CN is the source's name. Anything else (no certificate, another CA, another name, not TLS) is refused
with a warning naming the peer and why, and the wait goes on; when the time is up the error says what
was refused. The listening socket is closed once an agent is accepted.
"""
import os
import re
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any, List, Optional

from linux_capture import protocol

from ..agent_certs import SERVER_NAME, check_source_name
from ..errors import SourceError, TransportError, V2VError
from ..events import Emitter

HANDSHAKE_SECONDS = 10.0             # a peer that connects but does not finish TLS within this is dropped
_WILDCARD = {"", "0.0.0.0", "::"}


@dataclass(frozen=True)
class PushTarget:
    name: str                        # the CN of the source's client certificate
    listen_host: str
    listen_port: int
    tls_dir: str
    accept_timeout: float = 600.0

    @property
    def host(self) -> str:
        """What names the source in staging directories and as the default guest name."""
        return self.name

    @property
    def listen(self) -> str:
        host = "[{}]".format(self.listen_host) if ":" in self.listen_host else self.listen_host
        return "{}:{}".format(host, self.listen_port)

    def __str__(self) -> str:
        return "push:" + self.name


def parse_push_target(text: str, listen: str, tls_dir: str, accept_timeout: float = 600.0) -> PushTarget:
    """``push:NAME`` with --listen HOST:PORT ([V6ADDR]:PORT, or :PORT for every address)."""
    if not text.startswith("push:"):
        raise SourceError("{!r} is not push:NAME".format(text))
    name = check_source_name(text[len("push:"):])
    m = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\[\]\s]*):(\d{1,5})", listen)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise SourceError("--listen {!r} is not HOST:PORT (or :PORT for every address)".format(listen))
    return PushTarget(name, m.group(1).strip("[]"), int(m.group(2)), os.path.abspath(tls_dir), accept_timeout)


def server_context(tls_dir: str) -> ssl.SSLContext:
    """TLS 1.2+, the converter's certificate, and client certificates required and checked against ca.pem."""
    paths = {n: os.path.join(tls_dir, n) for n in ("ca.pem", "server.pem", "server.key")}
    missing = [n for n, p in paths.items() if not os.path.exists(p)]
    if missing:
        raise SourceError("{} has no {}: make the certificates with `v2v agent certs {} --source NAME`".format(
            tls_dir, " and no ".join(missing), tls_dir))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_cert_chain(paths["server.pem"], paths["server.key"])
        ctx.load_verify_locations(cafile=paths["ca.pem"])
    except (ssl.SSLError, OSError) as e:
        raise SourceError("the certificates in {} cannot be loaded: {}".format(tls_dir, _reason(e))) from None
    return ctx


def agent_command(t: PushTarget) -> str:
    """What to run on the source, with the file names `v2v agent certs` gave it."""
    host = socket.getfqdn() if t.listen_host in _WILDCARD else t.listen_host
    host = "[{}]".format(host) if ":" in host else host
    return "python3 v2v-agent.pyz --connect {}:{} --ca ca.pem --cert {n}.pem --key {n}.key".format(
        host, t.listen_port, n=t.name)


def _reason(e: BaseException) -> str:
    msg = getattr(e, "verify_message", None) or getattr(e, "reason", None) or getattr(e, "strerror", None) \
        or str(e) or type(e).__name__
    return str(msg).replace("_", " ").lower() if str(msg).isupper() else str(msg)


def _refusal(e: BaseException, tls_dir: str) -> str:
    """Why a TLS handshake with a peer failed, in the terms of push mode."""
    reason = getattr(e, "reason", None) or ""
    if getattr(e, "verify_message", None):
        return "its client certificate is not signed by the CA in {} ({})".format(tls_dir, _reason(e))
    if reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "NO_CERTIFICATE_RETURNED"):
        return "it sent no client certificate"
    if reason in ("TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_UNKNOWN"):
        return ("it does not accept this converter's certificate ({}): give the agent the ca.pem of {}, and "
                "--server-name only with a name made with `v2v agent certs --server-name`".format(_reason(e), tls_dir))
    if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNSUPPORTED_PROTOCOL", "UNKNOWN_PROTOCOL"):
        return "it does not speak TLS 1.2 or newer ({})".format(_reason(e))
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "no TLS handshake within {:.0f}s".format(HANDSHAKE_SECONDS)
    return "TLS handshake failed ({})".format(_reason(e))


def _common_name(cert: Optional[Any]) -> str:
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


def _peer(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return "[{}]:{}".format(host, port) if ":" in host else "{}:{}".format(host, port)


class TlsSession:
    """The accepted agent: frames in and out over one TLS connection (the transport ``capture`` uses)."""

    def __init__(self, sock: ssl.SSLSocket, peer: str, target: PushTarget, idle_timeout: float) -> None:
        sock.settimeout(idle_timeout)       # no byte for this long: the connection is dropped
        self.sock = sock
        self.peer = peer
        self.target = target
        self.idle_timeout = idle_timeout
        self.rfile = sock.makefile("rb")
        self.reader = protocol.FrameReader(self._read)
        self.timed_out = False
        self.why = ""
        self.closed = False

    def _read(self, n: int) -> bytes:
        try:
            return self.rfile.read(n)
        except (socket.timeout, TimeoutError):
            self.timed_out = True
        except (OSError, ValueError) as e:
            self.why = _reason(e)
        return b""

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (OSError, ValueError) as e:
            self.why = self.why or _reason(e)   # the reader side reports why the session ended

    def close(self, kill: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if kill:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for f in (self.rfile, self.sock):
            try:
                f.close()
            except OSError:
                pass

    def failure(self, started: bool) -> V2VError:
        """Why the stream ended (the session is closed)."""
        self.close()
        who = "the agent {} ({})".format(self.target, self.peer)
        if self.timed_out:
            return TransportError("no data from {} for {:.0f}s; the connection was dropped (run this command and "
                                  "the agent again to resume)".format(who, self.idle_timeout))
        if not started:
            return TransportError("{} closed the connection before its HELLO{}".format(
                who, ": " + self.why if self.why else ""))
        return TransportError("the connection from {} dropped{}; run this command and the agent again to "
                              "resume".format(who, " (" + self.why + ")" if self.why else ""))


def accept(t: PushTarget, idle_timeout: float, events: Emitter) -> TlsSession:
    """Wait for the agent named ``t.name``; refused peers are reported and the wait goes on."""
    ctx = server_context(t.tls_dir)
    family = socket.AF_INET6 if ":" in t.listen_host else socket.AF_INET
    try:
        srv = socket.create_server((t.listen_host, t.listen_port), family=family, backlog=8)
    except OSError as e:
        raise TransportError("cannot listen on {}: {}".format(t.listen, e.strerror or e)) from None
    command = agent_command(t)
    events.stage("capture", "waiting up to {:.0f}s on {} for the agent of {} (mutual TLS, certificates in {}); "
                 "on the source run: {}".format(t.accept_timeout, t.listen, t.name, t.tls_dir, command))
    refused: List[str] = []
    deadline = time.monotonic() + t.accept_timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransportError("no agent connected as {} to {} within {:.0f}s ({}); on the source run: "
                                     "{}".format(t.name, t.listen, t.accept_timeout,
                                                 "{} refused, the last: {}".format(len(refused), refused[-1])
                                                 if refused else "nobody connected", command))
            srv.settimeout(left)
            try:
                conn, addr = srv.accept()
            except (socket.timeout, TimeoutError):
                continue
            peer = _peer(addr)
            conn.settimeout(HANDSHAKE_SECONDS)
            try:
                tls = ctx.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError) as e:
                conn.close()
                refused.append("{}: {}".format(peer, _refusal(e, t.tls_dir)))
                events.warning("refused a connection from " + refused[-1])
                continue
            cn = _common_name(tls.getpeercert())
            if cn != t.name:
                tls.close()
                refused.append("{}: its certificate names {!r}, this converter waits for {!r}{}".format(
                    peer, cn, t.name, " (the converter's own certificate)" if cn == SERVER_NAME else ""))
                events.warning("refused a connection from " + refused[-1])
                continue
            cipher = tls.cipher()
            events.info("agent {} connected from {} ({}, {})".format(cn, peer, tls.version(),
                                                                   cipher[0] if cipher else "?"))
            return TlsSession(tls, peer, t, idle_timeout)
    finally:
        srv.close()
