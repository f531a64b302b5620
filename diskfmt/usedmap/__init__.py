"""Used-block maps: which bytes of a filesystem hold files or metadata, read from its own structures.

Every parser is pure: it reads through ``read(offset, length) -> bytes`` (offsets relative to the start
of the filesystem) and is told the size of the partition or volume that holds it. A map is *sound*: every
block a file or the filesystem's metadata uses is in it; blocks the filesystem calls free may be left
out, and what is left out may read as anything on the receiver (zeros, or an older generation's bytes).
Space past the filesystem's own end, up to ``size``, is always kept (md 1.0 superblocks and NTFS's
backup boot sector live there). Unknown filesystems, and features no parser understands, raise
``UnsupportedFilesystem`` (or make ``map_filesystem`` return the whole range) so the caller sends all.

Standard library only, Python 3.6+: the live-capture agent bundles this package.
"""
import importlib
import re
from types import ModuleType
from typing import Callable, List, NamedTuple, Optional, Tuple

from ..errors import FormatError
from ..extents import ExtentList

ReadFn = Callable[[int, int], bytes]

# fstype -> parser module; each has used_map(read, size, allow_dirty) and probe(read, size).
_MODULES = {
    "ext2": "ext4", "ext3": "ext4", "ext4": "ext4",
    "xfs": "xfs",
    "vfat": "fat", "fat": "fat", "fat12": "fat", "fat16": "fat", "fat32": "fat", "msdos": "fat",
    "ntfs": "ntfs",
    "swap": "swap",
}
FSTYPES = tuple(sorted(_MODULES))
_PROBE_ORDER = ("ext4", "xfs", "ntfs", "fat", "swap")


class UnsupportedFilesystem(FormatError):
    """No parser for this filesystem, or it uses a feature the parser cannot map: send it whole."""


class UsedBlockMap(NamedTuple):
    """What ``map_filesystem`` decided for one filesystem.

    extents: byte ranges to send, relative to the filesystem start. exact: True when they come from the
    filesystem's allocation structures, False when the whole range is sent. reason: one line saying which
    structures were read, or why the whole range is sent.
    """
    fstype: Optional[str]
    extents: ExtentList
    exact: bool
    reason: str


def used_map(read: ReadFn, size: int, fstype: str, allow_dirty: bool = False) -> ExtentList:
    """The byte ranges of a ``fstype`` filesystem that hold data or metadata.

    Raises ``UnsupportedFilesystem`` for a type or feature without a parser, ``FormatError`` when the
    structures are inconsistent. ``allow_dirty`` accepts a filesystem whose journal still needs recovery
    (mounted, or not cleanly unmounted): its on-disk bitmaps may then lag the journal, so a caller that
    sets it must map again once the filesystem is frozen.
    """
    module = _MODULES.get(fstype.lower())
    if module is None:
        raise UnsupportedFilesystem("no used-block parser for filesystem type {!r}".format(fstype))
    if size <= 0:
        raise FormatError("filesystem size must be positive, not {}".format(size))
    return _module(module).used_map(read, size, allow_dirty)


def detect(read: ReadFn, size: int) -> Optional[str]:
    """The filesystem type named by its superblock magic ('ext2', 'ext3', 'ext4', 'xfs', 'vfat', 'ntfs',
    'swap'), or None when no parser recognises it or more than one does (an ambiguous device is sent whole).
    """
    found: List[str] = []
    for name in _PROBE_ORDER:
        try:
            fstype = _module(name).probe(read, size)
        except FormatError:
            fstype = None
        if fstype is not None:
            found.append(fstype)
    return found[0] if len(found) == 1 else None


def map_filesystem(read: ReadFn, size: int, fstype: Optional[str] = None,
                   allow_dirty: bool = False) -> UsedBlockMap:
    """``used_map`` that never fails on the filesystem's content: when the type is unknown (detected when
    ``fstype`` is None), unsupported or inconsistent, the whole ``[0, size)`` is kept, with the reason.
    """
    whole = ExtentList([(0, size)])
    if fstype is None:
        fstype = detect(read, size)
        if fstype is None:
            return UsedBlockMap(None, whole, False, "no known filesystem signature: sending it whole")
    try:
        extents = used_map(read, size, fstype, allow_dirty)
    except FormatError as e:
        return UsedBlockMap(fstype, whole, False, "{}: sending it whole".format(e))
    return UsedBlockMap(fstype, extents, True, "{} allocation map".format(fstype))


def _module(name: str) -> ModuleType:
    # Imported on first use so that a parser module can import the helpers defined here.
    return importlib.import_module("{}.{}".format(__name__, name))


# -- helpers shared by the parsers


def read_exact(read: ReadFn, offset: int, length: int, what: str) -> bytes:
    """``read`` that raises FormatError naming ``what`` when fewer than ``length`` bytes come back."""
    if offset < 0 or length < 0:
        raise FormatError("{} lies at a negative offset ({})".format(what, offset))
    data = read(offset, length)
    if len(data) != length:
        raise FormatError("{} at offset {} is cut short ({} of {} bytes)".format(
            what, offset, len(data), length))
    return bytes(data)


def _runs_in_byte(value: int) -> Tuple[Tuple[int, int], ...]:
    runs: List[Tuple[int, int]] = []
    bit = 0
    while bit < 8:
        if value >> bit & 1:
            start = bit
            while bit < 8 and value >> bit & 1:
                bit += 1
            runs.append((start, bit))
        else:
            bit += 1
    return tuple(runs)


_BYTE_RUNS = tuple(_runs_in_byte(v) for v in range(256))
_FULL_OR_MIXED = re.compile(b"\xff+|[^\x00\xff]")


def add_bitmap(extents: ExtentList, bitmap: bytes, nbits: int, first_unit: int, unit_bytes: int,
               base: int = 0) -> None:
    """Add to ``extents`` every allocation unit whose bit is set in an LSB-first ``bitmap``.

    Bit i (i < nbits) stands for unit ``first_unit + i``, which covers bytes
    ``[base + unit * unit_bytes, base + (unit + 1) * unit_bytes)``. Bits past ``nbits`` are ignored.
    """
    nbits = min(nbits, len(bitmap) * 8)
    if nbits <= 0:
        return
    data = bitmap[:(nbits + 7) // 8]
    for m in _FULL_OR_MIXED.finditer(data):
        pos = m.start()
        if data[pos] == 0xFF:
            runs: Tuple[Tuple[int, int], ...] = ((0, 8 * (m.end() - pos)),)
        else:
            runs = _BYTE_RUNS[data[pos]]
        for lo, hi in runs:
            lo += 8 * pos
            hi = min(hi + 8 * pos, nbits)
            if lo >= hi:
                break
            extents.add(base + (first_unit + lo) * unit_bytes, base + (first_unit + hi) * unit_bytes)


def check_fits(kind: str, fs_bytes: int, size: int) -> None:
    """FormatError when the filesystem claims more bytes than its partition holds (truncated or misread)."""
    if fs_bytes > size:
        raise FormatError("{} of {} bytes is larger than its {}-byte partition".format(kind, fs_bytes, size))


def keep_tail(extents: ExtentList, fs_bytes: int, size: int) -> None:
    """Keep ``[fs_bytes, size)``: bytes of the partition past the filesystem's own end."""
    if fs_bytes < size:
        extents.add(fs_bytes, size)
