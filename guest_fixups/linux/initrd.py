"""List the files in an initramfs: concatenated cpio (newc) archives, each optionally compressed.

Pure data parsing on the conversion host, so the check after a rebuild costs no emulated processes.
"""
import bz2
import gzip
import lzma
import subprocess
from typing import List

from v2v.errors import FixupError

_NEWC = (b"070701", b"070702")
_HEADER = 110
# magic -> how to decompress (None: Python's own; else a host tool reading stdin)
_COMPRESSED = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x5d\x00\x00", "lzma"),
    (b"BZh", "bzip2"),
    (b"\x02\x21\x4c\x18", "lz4"),
)


def _decompress(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return gzip.decompress(data)
    if kind in ("xz", "lzma"):
        return lzma.decompress(data)
    if kind == "bzip2":
        return bz2.decompress(data)
    tool = {"zstd": ["zstd", "-dcq"], "lz4": ["lz4", "-dcq"]}[kind]
    try:
        cp = subprocess.run(tool, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise FixupError("cannot read a {}-compressed initramfs: install {} on the conversion host".format(
            kind, tool[0])) from None
    if cp.returncode != 0 and not cp.stdout:
        raise FixupError("the initramfs is not valid {} data: {}".format(kind, cp.stderr.decode(errors="replace")))
    return cp.stdout


def list_files(data: bytes) -> List[str]:
    """Every member name of every archive in the initramfs image, in order."""
    names: List[str] = []
    pos = 0
    while pos < len(data):
        if data[pos:pos + 1] == b"\0":          # padding between archives
            pos += 1
            continue
        magic = data[pos:pos + 6]
        if magic in _NEWC:
            pos = _read_cpio(data, pos, names)
            continue
        kind = next((k for m, k in _COMPRESSED if data.startswith(m, pos)), None)
        if kind is None:
            raise FixupError("unrecognised data at byte {} of the initramfs".format(pos))
        names += list_files(_decompress(kind, data[pos:]))
        break                                    # a compressed archive runs to the end of the image
    return names


def _read_cpio(data: bytes, pos: int, names: List[str]) -> int:
    """Parse one newc archive from pos; return the offset after its trailer."""
    while True:
        hdr = data[pos:pos + _HEADER]
        if len(hdr) < _HEADER or hdr[:6] not in _NEWC:
            raise FixupError("truncated or corrupt cpio header at byte {} of the initramfs".format(pos))
        try:
            filesize = int(hdr[54:62], 16)
            namesize = int(hdr[94:102], 16)
        except ValueError:
            raise FixupError("corrupt cpio header at byte {} of the initramfs".format(pos)) from None
        name = data[pos + _HEADER:pos + _HEADER + namesize - 1].decode("utf-8", "surrogateescape")
        pos = _align4(pos + _HEADER + namesize)
        if pos + filesize > len(data):
            raise FixupError("the initramfs is truncated: {} needs {} bytes past its end".format(
                name, pos + filesize - len(data)))
        pos = _align4(pos + filesize)
        if name == "TRAILER!!!":
            return pos
        names.append(name)


def _align4(n: int) -> int:
    return (n + 3) & ~3


def module_names(paths: List[str]) -> List[str]:
    """Kernel module names (underscores) among initramfs paths."""
    out = set()
    for p in paths:
        base = p.rsplit("/", 1)[-1]
        if ".ko" in base:
            stem, _, ext = base.partition(".ko")
            if ext in ("", ".xz", ".zst", ".gz"):
                out.add(stem.replace("-", "_"))
    return sorted(out)
