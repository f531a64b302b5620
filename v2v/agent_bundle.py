"""v2v-agent.pyz: the agent (linux_capture + diskfmt) in one file, and the bootstrap that runs it over ssh.

The bootstrap is the remote command: ``python3 -c BOOTSTRAP SIZE ARGS``. It reads SIZE bytes of pyz from
stdin, loads the agent from a private temporary file (removed at once), and leaves the rest of stdin to
the protocol. It checks the Python version first, in syntax that even Python 2 parses.

Beside each module's source the archive holds its bytecode as compiled by the converter's Python
(an unchecked hash-based .pyc, PEP 552, so no timestamp or time zone is involved). zipimport uses it when
the source runs the same Python minor version (same magic number) and falls back to the source otherwise,
so other versions work as before; a matching one skips compiling the agent (zipimport compiles each
module twice, about 0.1 s of every session). Compiling costs the converter as much, so the built archive
is kept in the cache directory, named by the digest of what went into it and of what came out.
"""
import hashlib
import importlib.util
import io
import marshal
import os
import tempfile
import zipfile
from pathlib import Path
from typing import List, Optional, Tuple

from . import cache_dir

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("linux_capture", "diskfmt")
EXCLUDE = {"diskfmt/image.py"}        # the converter's qemu-img wrapper: not pure, not needed on the source
_EPOCH = (2020, 1, 1, 0, 0, 0)       # fixed timestamps: the same sources give the same bytes

MAIN = b"import sys\nfrom linux_capture.agent import main\nsys.exit(main())\n"

BOOTSTRAP = (
    "import sys\n"
    "if sys.version_info < (3, 6):\n"
    "    sys.stderr.write('v2v-agent: error: the source has Python %s; the agent needs Python 3.6 or newer\\n'"
    " % sys.version.split()[0])\n"
    "    sys.exit(3)\n"
    "import os, tempfile\n"
    "n = int(sys.argv[1])\n"
    "data = sys.stdin.buffer.read(n)\n"
    "if len(data) != n:\n"
    "    sys.stderr.write('v2v-agent: error: agent cut short on stdin\\n')\n"
    "    sys.exit(4)\n"
    "fd, path = tempfile.mkstemp(prefix='v2v-agent-', suffix='.pyz')\n"
    "try:\n"
    "    os.write(fd, data)\n"
    "    os.close(fd)\n"
    "    sys.path.insert(0, path)\n"
    "    from linux_capture import agent\n"
    "finally:\n"
    "    os.unlink(path)\n"
    "sys.exit(agent.main(sys.argv[2:]))\n"
)


def _sources() -> List[Path]:
    files: List[Path] = []
    for pkg in PACKAGES:
        files.extend(p for p in sorted((ROOT / pkg).rglob("*.py"))
                     if "__pycache__" not in p.parts and p.relative_to(ROOT).as_posix() not in EXCLUDE)
    return files


def agent_bytes() -> bytes:
    """The pyz archive: a shebang line, then a zip of the bundled packages and __main__.py (from the
    cache when the sources and the Python are those it was built from)."""
    sources = [(p.relative_to(ROOT).as_posix(), p.read_bytes()) for p in _sources()]
    key = hashlib.sha256(importlib.util.MAGIC_NUMBER + MAIN)
    for name, data in sources:
        key.update(b"%d:%s\0%d:" % (len(name), name.encode(), len(data)) + data)
    directory = os.path.join(cache_dir(), "agent")
    prefix = "v2v-agent-{}-".format(key.hexdigest()[:24])
    try:
        for n in os.listdir(directory):
            if n.startswith(prefix) and n.endswith(".pyz"):
                with open(os.path.join(directory, n), "rb") as f:
                    data = f.read()
                if hashlib.sha256(data).hexdigest()[:24] == n[len(prefix):-4]:
                    return data
    except OSError:
        pass
    data = _build(sources)
    _keep(directory, prefix + hashlib.sha256(data).hexdigest()[:24] + ".pyz", data)
    return data


def _keep(directory: str, name: str, data: bytes) -> None:
    """Replace the cached archive by ``data``; the cache is a nicety, so a failure is ignored."""
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(directory, name))
        for n in os.listdir(directory):
            if n != name and n.startswith("v2v-agent-"):
                os.unlink(os.path.join(directory, n))
    except OSError:
        pass


def _build(sources: List[Tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    buf.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(zipfile.ZipInfo("__main__.py", _EPOCH), MAIN, zipfile.ZIP_DEFLATED)
        for name, source in sources:
            info = zipfile.ZipInfo(name, _EPOCH)
            info.external_attr = 0o644 << 16
            z.writestr(info, source, zipfile.ZIP_DEFLATED)
            pyc = zipfile.ZipInfo(info.filename[:-3] + ".pyc", _EPOCH)
            pyc.external_attr = 0o644 << 16
            z.writestr(pyc, _bytecode(source, info.filename), zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def _bytecode(source: bytes, name: str) -> bytes:
    """An unchecked hash-based pyc of ``source``: magic, flags 0b01, the source hash, marshalled code."""
    code = compile(source, name, "exec", dont_inherit=True)
    return (importlib.util.MAGIC_NUMBER + (1).to_bytes(4, "little") + importlib.util.source_hash(source)
            + marshal.dumps(code))


def build_agent(path: Optional[str] = None) -> str:
    """Write v2v-agent.pyz (executable) to ``path``, atomically; returns the path."""
    target = os.path.abspath(path or "v2v-agent.pyz")
    data = agent_bytes()
    fd, tmp = tempfile.mkstemp(prefix=".v2v-agent-", dir=os.path.dirname(target))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target
