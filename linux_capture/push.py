"""Push mode, the agent's side: for a source the converter cannot reach by ssh (behind NAT), the agent
connects out to the converter with mutual TLS and serves the capture protocol on that connection.

    python3 v2v-agent.pyz --connect HOST:PORT --ca ca.pem --cert NAME.pem --key NAME.key

The converter's certificate must be signed by ca.pem and carry the name --server-name (default
v2v-converter, which `v2v agent certs` puts in every converter certificate, so that an address behind a
port forward works; pass the converter's host name to check that instead). The converter accepts the
agent when its CA signed NAME.pem and NAME is the source it waits for. Standard library only, Python 3.6+.
"""
import argparse
import socket
import ssl
import sys
import time
from typing import Any, List, Optional, Tuple

from . import lvm, protocol
from .agent import serve
from .consistency import ConsistencyError, thaw_all

SERVER_NAME = "v2v-converter"
CONNECT_SECONDS = 15.0               # one TCP connect and TLS handshake
IDLE_SECONDS = 300.0                 # a send or receive blocked this long: the converter is gone


class PushError(Exception):
    """Connecting to the converter failed; str() is the one line printed."""


def parse_address(text: str) -> Tuple[str, int]:
    """HOST:PORT or [V6ADDR]:PORT."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PushError("--connect {!r} is not HOST:PORT".format(text))
    return host, int(port)


def client_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    """TLS 1.2 or newer; the converter's certificate checked against ``ca`` and its name."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)      # CERT_REQUIRED and check_hostname
    if hasattr(ssl, "TLSVersion"):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # novermin
    else:                                             # Python 3.6
        ctx.options |= ssl.OP_NO_TLSv1 | ssl.OP_NO_TLSv1_1
    for what, path in (("--ca", ca), ("--cert", cert), ("--key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise PushError("{} {}: {}".format(what, path, e.strerror or e)) from None
    try:
        ctx.load_verify_locations(cafile=ca)
    except (ssl.SSLError, ValueError) as e:
        raise PushError("--ca {} is not a PEM certificate: {}".format(ca, _reason(e))) from None
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        raise PushError("--cert {} with --key {}: not a matching PEM certificate and key ({})".format(
            cert, key, _reason(e))) from None
    return ctx


def _reason(e: BaseException) -> str:
    """The short cause: "unable to get local issuer certificate", "tlsv13 alert certificate required" ..."""
    msg = getattr(e, "verify_message", None) or getattr(e, "reason", None) or getattr(e, "strerror", None) \
        or str(e) or type(e).__name__
    return str(msg).replace("_", " ").lower() if str(msg).isupper() else str(msg)


def connect(host: str, port: int, ctx: ssl.SSLContext, server_name: str, retry_for: float) -> ssl.SSLSocket:
    """A TLS connection to the converter, the TCP connect retried for ``retry_for`` seconds (it may not
    listen yet); a TLS failure is not retried."""
    deadline = time.monotonic() + retry_for
    where = "{}:{}".format(host, port)
    while True:
        try:
            raw = socket.create_connection((host, port), timeout=CONNECT_SECONDS)
        except OSError as e:
            if time.monotonic() + 1 >= deadline:
                raise PushError("cannot connect to the converter at {}: {}{}".format(
                    where, e.strerror or e, " (tried for {:.0f}s)".format(retry_for) if retry_for else "")) \
                    from None
            time.sleep(1)
            continue
        break
    try:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        tls = ctx.wrap_socket(raw, server_hostname=server_name)
    except ssl.SSLError as e:
        raw.close()
        if "CERTIFICATE_VERIFY_FAILED" in str(e) or getattr(e, "verify_message", None):
            raise PushError("the converter at {} is not trusted: {} (its certificate must be signed by --ca and "
                            "name {})".format(where, _reason(e), server_name)) from None
        raise PushError("TLS with the converter at {} failed: {}".format(where, _reason(e))) from None
    except OSError as e:
        raw.close()
        raise PushError("the converter at {} closed the connection during the TLS handshake: {}".format(
            where, e.strerror or e)) from None
    tls.settimeout(IDLE_SECONDS)
    return tls


class _CountingReader:
    """The converter's side of the stream; says once on stderr that the converter accepted this agent."""

    def __init__(self, f: Any, where: str, version: str) -> None:
        self.f = f
        self.where = where
        self.version = version
        self.count = 0

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if data and not self.count:
            sys.stderr.write("v2v-agent: the converter at {} accepted this agent ({}); capturing\n".format(
                self.where, self.version))
            sys.stderr.flush()
        self.count += len(data)
        return data


def _fail(message: str) -> int:
    sys.stderr.write("v2v-agent: error: {}\n".format(message))
    return 1


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="v2v-agent.pyz", description="Push mode: connect out to the converter "
                                "with mutual TLS and send this host's disks.")
    p.add_argument("--connect", required=True, metavar="HOST:PORT", help="the converter's --listen address")
    p.add_argument("--ca", required=True, metavar="PEM", help="ca.pem from `v2v agent certs`")
    p.add_argument("--cert", required=True, metavar="PEM", help="this source's certificate (NAME.pem)")
    p.add_argument("--key", required=True, metavar="KEY", help="this source's key (NAME.key)")
    p.add_argument("--server-name", default=SERVER_NAME,
                   help="name the converter's certificate must carry (default %(default)s)")
    p.add_argument("--retry-for", type=float, default=60.0, metavar="SECONDS",
                   help="keep trying to connect this long while the converter does not listen (default 60)")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        host, port = parse_address(a.connect)
        conn = connect(host, port, client_context(a.ca, a.cert, a.key), a.server_name, max(0.0, a.retry_for))
    except PushError as e:
        return _fail(str(e))
    where = "{}:{}".format(host, port)
    inp = _CountingReader(conn.makefile("rb"), where, conn.version() or "TLS")
    out = conn.makefile("wb")
    refused = ("the converter at {} refused this agent: its certificate is not signed by the converter's CA, "
               "or names a source the converter does not wait for".format(where))
    try:
        return serve(inp, out)               # type: ignore[arg-type]
    except (ssl.SSLError, ConnectionError, socket.timeout, protocol.ProtocolError) as e:
        if not inp.count:             # a TLS 1.3 server refuses a client certificate after the handshake
            alert = "ALERT" in str(getattr(e, "reason", None) or "")
            return _fail(refused + (" ({})".format(_reason(e)) if alert else ""))
        if isinstance(e, protocol.ProtocolError):
            return _fail("from the converter at {}: {}".format(where, e))
        return _fail("the connection to the converter at {} dropped ({}); run the converter's command and this "
                     "one again to resume".format(where, _reason(e)))
    except (OSError, ValueError, ConsistencyError) as e:
        try:
            out.write(protocol.encode_json(protocol.ERROR, {"message": str(e), "kind": type(e).__name__}))
            out.flush()
        except OSError:
            pass
        return _fail(str(e))
    finally:
        thaw_all()                      # as agent.main does after serve()
        lvm.remove_all()
        for f in (out, inp.f, conn):
            try:
                f.close()
            except OSError:
                pass
