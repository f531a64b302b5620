"""The virtio-win drivers as a directory, whether the user gave a directory or a virtio-win ISO.

``open_virtio_win(path)`` yields a directory for ``catalog.scan``: the path itself when it is a directory;
for an ISO 9660 image, a temporary directory holding the ISO's files (extracted with bsdtar, from
Debian's libarchive-tools: no root, no mount, no loop device), removed when the block ends.
"""
import contextlib
import os
import shutil
import stat
import tempfile
from typing import Callable, Iterator, Optional, Union

from v2v.command import run
from v2v.errors import CommandError, SourceError

ISO_SECTOR = 2048
_FIRST_DESCRIPTOR = 16  # sectors 0-15 are the system area
_MAX_DESCRIPTORS = 64  # a real descriptor set ends long before this; stops a loop on garbage
_PRIMARY, _TERMINATOR = 1, 255
# Debug symbols: the largest files of the ISO, never copied into a guest (the catalog skips them too).
SKIPPED_PATTERNS = ("*.pdb", "*.PDB")
_EXTRACT_TIMEOUT = 3600.0

Read = Callable[[int, int], bytes]


def iso_size(read: Read) -> int:
    """Bytes the ISO 9660 image says it holds (volume space size x logical block size), from its primary
    volume descriptor. Raises ValueError when read() does not give an ISO 9660 volume descriptor set."""
    for n in range(_FIRST_DESCRIPTOR, _FIRST_DESCRIPTOR + _MAX_DESCRIPTORS):
        vd = read(n * ISO_SECTOR, ISO_SECTOR)
        if len(vd) < ISO_SECTOR or vd[1:6] != b"CD001":
            raise ValueError("no ISO 9660 volume descriptor at sector {}".format(n))
        if vd[0] == _TERMINATOR:
            break
        if vd[0] == _PRIMARY:
            blocks = int.from_bytes(vd[80:84], "little")  # both-endian fields: the little-endian half
            block_size = int.from_bytes(vd[128:130], "little")
            if blocks == 0 or block_size not in (512, 1024, 2048):
                raise ValueError("primary volume descriptor gives {} blocks of {} bytes".format(
                    blocks, block_size))
            return blocks * block_size
    raise ValueError("no primary volume descriptor")


def _check_iso(path: str) -> None:
    """Raise SourceError unless path is a whole ISO 9660 image."""
    with open(path, "rb") as f:
        def read(offset: int, length: int) -> bytes:
            f.seek(offset)
            return f.read(length)
        try:
            expected = iso_size(read)
        except ValueError as e:
            raise SourceError("{}: not a virtio-win directory or ISO 9660 image ({})".format(
                path, e)) from None
        actual = os.fstat(f.fileno()).st_size
    if actual < expected:
        raise SourceError("{}: truncated ISO image: {} bytes of the {} its volume descriptor gives".format(
            path, actual, expected))


def _remove_tree(directory: str) -> None:
    """rmtree that also removes read-only directories (ISO files are often r-x / r--)."""
    def allow_and_retry(func: Callable[[str], None], path: str, _exc: object) -> None:
        for d in (os.path.dirname(path), path):
            if os.path.isdir(d) and not os.path.islink(d):
                os.chmod(d, os.stat(d).st_mode | stat.S_IRWXU)
        func(path)
    shutil.rmtree(directory, onerror=allow_and_retry)


def _extract(iso: str, into: str) -> None:
    argv = ["bsdtar", "-x", "--no-same-owner", "-f", iso, "-C", into]
    for pattern in SKIPPED_PATTERNS:
        argv += ["--exclude", pattern]
    try:
        run(argv, timeout=_EXTRACT_TIMEOUT, what="bsdtar")
    except CommandError as e:
        if e.returncode == 127:
            raise SourceError("{}: cannot extract the ISO: bsdtar is missing (apt-get install "
                              "libarchive-tools)".format(iso)) from None
        # bsdtar ends with "Error exit delayed from previous errors.": the first other line is the cause
        causes = [ln.strip() for ln in e.stderr.splitlines() if ln.strip() and "Error exit delayed" not in ln]
        cause = causes[0] if causes else "exit {}".format(e.returncode)
        raise SourceError("{}: cannot extract the virtio-win ISO: {}".format(iso, cause)) from None
    with os.scandir(into) as entries:
        if not any(True for _ in entries):
            # libarchive skips directories placed beyond the volume's end and still exits 0
            raise SourceError("{}: the ISO image holds no files".format(iso))


@contextlib.contextmanager
def open_virtio_win(path: Union[str, "os.PathLike[str]"], tmp_dir: Optional[str] = None) -> Iterator[str]:
    """Yield a directory holding the virtio-win tree at path (a directory or an ISO 9660 image).

    An ISO is extracted (all but *.pdb) into a new directory under tmp_dir (default: the system's
    temporary directory), removed when the block ends, also on error. Raises SourceError, one line naming
    path, when path is missing, neither a directory nor an ISO, a truncated ISO, or cannot be extracted.
    """
    where = os.fspath(path)
    if os.path.isdir(where):
        yield where
        return
    if not os.path.exists(where):
        raise SourceError("{}: no such virtio-win directory or ISO".format(where))
    if not os.path.isfile(where):
        raise SourceError("{}: not a virtio-win directory or ISO 9660 image".format(where))
    try:
        _check_iso(where)
    except OSError as e:
        raise SourceError("{}: cannot read: {}".format(where, e.strerror or e)) from None
    tree = tempfile.mkdtemp(prefix="v2v-virtio-win-", dir=tmp_dir)
    try:
        _extract(where, tree)
        yield tree
    finally:
        _remove_tree(tree)
