"""Certificates for push mode (DESIGN section 6): a private CA, the converter's server certificate and one
client certificate per source, made with the ``cryptography`` package when it is installed, else with the
openssl CLI. One directory holds them all::

    ca.pem ca.key            the CA (its key stays on the converter)
    server.pem server.key    the converter: CN and DNS name v2v-converter, plus any --server-name
    NAME.pem NAME.key        the source NAME: CN NAME, client use only (copy it with ca.pem to the source)

Every file is 0600 and the directory 0700. Files that exist are kept: a second run adds a source.
"""
import datetime
import ipaddress
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from .command import run
from .errors import OutputError, SourceError

SERVER_NAME = "v2v-converter"        # every converter certificate carries it; the agent checks it by default
CA_DAYS = 3650
LEAF_DAYS = 825
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_RESERVED = {"ca", "server", SERVER_NAME}


@dataclass(frozen=True)
class CertSet:
    directory: str
    backend: str                          # cryptography | openssl
    created: Tuple[str, ...]              # files written by this run
    kept: Tuple[str, ...]                 # files that existed and were left as they were
    sources: Tuple[str, ...]              # names with a client certificate in the directory, from this run


def check_source_name(name: str) -> str:
    if not _NAME.fullmatch(name) or name.lower() in _RESERVED:
        raise SourceError("{!r} cannot name a source: letters, digits, '.', '_' and '-' (at most 63, not "
                          "ca, server or {})".format(name, SERVER_NAME))
    return name


def _backend(choice: str) -> str:
    if choice in ("auto", "cryptography"):
        try:
            import cryptography  # noqa: F401
            return "cryptography"
        except ImportError:
            if choice == "cryptography":
                raise SourceError("the cryptography package is not installed (pip install cryptography, or "
                                  "--backend openssl)") from None
    if shutil.which("openssl") is None:
        raise SourceError("neither the cryptography package nor the openssl command is installed "
                          "(apt-get install openssl)")
    return "openssl"


def _sans(names: Sequence[str]) -> List[str]:
    out = ["DNS:" + SERVER_NAME]
    for n in names:
        try:
            out.append("IP:" + str(ipaddress.ip_address(n)))
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.-]{0,252})", n):
                raise SourceError("{!r} is neither a DNS name nor an IP address".format(n)) from None
            out.append("DNS:" + n)
    return list(dict.fromkeys(out))


class _Cryptography:
    """Keys (EC P-256) and certificates made in-process."""

    def __init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
        self.x509, self.hashes, self.ser, self.ec = x509, hashes, serialization, ec
        self.eku, self.oid = ExtendedKeyUsageOID, NameOID

    def _write_key(self, path: str) -> object:
        key = self.ec.generate_private_key(self.ec.SECP256R1())
        _write(path, key.private_bytes(self.ser.Encoding.PEM, self.ser.PrivateFormat.PKCS8,
                                       self.ser.NoEncryption()))
        return key

    def _builder(self, cn: str, pub: object, days: int) -> object:
        x = self.x509
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        return (x.CertificateBuilder().subject_name(x.Name([x.NameAttribute(self.oid.COMMON_NAME, cn)]))
                .public_key(pub).serial_number(x.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
                .add_extension(x.SubjectKeyIdentifier.from_public_key(pub), critical=False))

    def ca(self, cert: str, key: str, cn: str) -> None:
        x = self.x509
        k = self._write_key(key)
        b = (self._builder(cn, k.public_key(), CA_DAYS)           # type: ignore[attr-defined]
             .issuer_name(x.Name([x.NameAttribute(self.oid.COMMON_NAME, cn)]))
             .add_extension(x.BasicConstraints(ca=True, path_length=0), critical=True)
             .add_extension(x.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True))
        _write(cert, b.sign(k, self.hashes.SHA256()).public_bytes(self.ser.Encoding.PEM))

    def leaf(self, cert: str, key: str, cn: str, server: bool, sans: Sequence[str], ca_cert: str, ca_key: str) -> None:
        x = self.x509
        with open(ca_cert, "rb") as f:
            issuer = x.load_pem_x509_certificate(f.read())
        with open(ca_key, "rb") as f:
            signer = self.ser.load_pem_private_key(f.read(), password=None)
        k = self._write_key(key)
        names: List[object] = []
        for s in sans:
            kind, _, value = s.partition(":")
            names.append(x.DNSName(value) if kind == "DNS" else x.IPAddress(ipaddress.ip_address(value)))
        b = (self._builder(cn, k.public_key(), LEAF_DAYS)          # type: ignore[attr-defined]
             .issuer_name(issuer.subject)
             .add_extension(x.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                       crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
             .add_extension(x.ExtendedKeyUsage([self.eku.SERVER_AUTH if server else self.eku.CLIENT_AUTH]),
                            critical=False)
             .add_extension(x.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()), critical=False))
        if names:
            b = b.add_extension(x.SubjectAlternativeName(names), critical=False)
        _write(cert, b.sign(signer, self.hashes.SHA256()).public_bytes(self.ser.Encoding.PEM))


class _OpenSSL:
    """The same certificates through the openssl CLI (argv lists, a private config file)."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir

    def _config(self, cn: str, ext: List[str]) -> str:
        path = os.path.join(self.workdir, "openssl-{}.cnf".format(secrets.token_hex(4)))
        _write(path, "\n".join(["[req]", "distinguished_name = dn", "prompt = no", "[dn]", "CN = " + cn,
                                "[ext]"] + ext + [""]).encode())
        return path

    def _newkey(self) -> List[str]:
        return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def ca(self, cert: str, key: str, cn: str) -> None:
        cnf = self._config(cn, ["basicConstraints = critical,CA:TRUE,pathlen:0",
                                "keyUsage = critical,keyCertSign,cRLSign", "subjectKeyIdentifier = hash"])
        run(["openssl", "req", "-x509", "-config", cnf, "-extensions", "ext"] + self._newkey() +
            ["-keyout", key, "-out", cert, "-days", str(CA_DAYS), "-sha256"], what="openssl req (the CA)")

    def leaf(self, cert: str, key: str, cn: str, server: bool, sans: Sequence[str], ca_cert: str, ca_key: str) -> None:
        ext = ["basicConstraints = critical,CA:FALSE", "keyUsage = critical,digitalSignature",
               "extendedKeyUsage = " + ("serverAuth" if server else "clientAuth"), "subjectKeyIdentifier = hash",
               "authorityKeyIdentifier = keyid"]
        if sans:
            ext.append("subjectAltName = " + ",".join(sans))
        cnf = self._config(cn, ext)
        csr = cert + ".csr"
        run(["openssl", "req", "-new", "-config", cnf] + self._newkey() + ["-keyout", key, "-out", csr],
            what="openssl req ({})".format(cn))
        run(["openssl", "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key,
             "-set_serial", "0x" + secrets.token_hex(16), "-days", str(LEAF_DAYS), "-sha256",
             "-extfile", cnf, "-extensions", "ext", "-out", cert], what="openssl x509 ({})".format(cn))
        os.unlink(csr)


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_certs(directory: str, sources: Sequence[str] = (), server_names: Sequence[str] = (),
               backend: str = "auto") -> CertSet:
    """The CA and server certificate in ``directory`` (made when missing) and a client certificate for
    each source (made when missing); every file 0600."""
    for s in sources:
        check_source_name(s)
    sans = _sans(server_names)
    chosen = _backend(backend)
    directory = os.path.abspath(directory)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        # made in a private temporary directory, moved into place only when complete
        work = tempfile.mkdtemp(prefix=".v2v-certs-", dir=directory)
    except OSError as e:
        raise OutputError("cannot write to {}: {}".format(directory, e.strerror or e)) from None
    maker = _Cryptography() if chosen == "cryptography" else _OpenSSL(work)
    created: List[str] = []
    kept: List[str] = []

    def pair(stem: str) -> Tuple[str, str, bool]:
        cert, key = os.path.join(directory, stem + ".pem"), os.path.join(directory, stem + ".key")
        if os.path.exists(cert) and os.path.exists(key):
            kept.extend([cert, key])
            return cert, key, False
        if os.path.exists(cert) or os.path.exists(key):
            raise OutputError("{} has only one of {}.pem and {}.key: remove it or restore the other".format(
                directory, stem, stem))
        return cert, key, True

    def install(cert: str, key: str, fn: object) -> None:
        tmp_cert, tmp_key = os.path.join(work, os.path.basename(cert)), os.path.join(work, os.path.basename(key))
        fn(tmp_cert, tmp_key)                                       # type: ignore[operator]
        for tmp, final in ((tmp_key, key), (tmp_cert, cert)):
            os.chmod(tmp, 0o600)
            os.replace(tmp, final)
            created.append(final)

    try:
        ca_cert, ca_key, new = pair("ca")
        if new:
            install(ca_cert, ca_key, lambda c, k: maker.ca(c, k, "v2v push CA"))
        cert, key, new = pair("server")
        if new:
            install(cert, key, lambda c, k: maker.leaf(c, k, SERVER_NAME, True, sans, ca_cert, ca_key))
        for s in sources:
            cert, key, new = pair(s)
            if new:
                install(cert, key, lambda c, k, s=s: maker.leaf(c, k, s, False, [], ca_cert, ca_key))
    except OSError as e:
        raise OutputError("cannot write certificates to {}: {}".format(directory, e.strerror or e)) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return CertSet(directory, chosen, tuple(created), tuple(kept), tuple(sources))

