"""Used-block map of XFS: everything that is not in an allocation group's free-space B+tree.

Reads the (big-endian) superblock, then per allocation group the AGF and its by-block-number free-space
btree (bnobt), v4 (``ABTB``, 16-byte block headers) or v5 (``AB3B``, 56-byte CRC headers). Used = the data
device minus the free extents, so the log, inode chunks, btrees and the AG free list are kept without
naming them. The realtime device is separate and not mapped. XFS has no on-disk "needs recovery" flag
that is cheap to read: map a filesystem that is unmounted or frozen. Standard library only, Python 3.6+.
"""
import struct
from typing import List, NamedTuple, Optional, Set, Tuple

from ..errors import FormatError
from ..extents import ExtentList
from . import ReadFn, UnsupportedFilesystem, check_fits, keep_tail, read_exact

SB_MAGIC = b"XFSB"
AGF_MAGIC = b"XAGF"
BNOBT_MAGIC_V4 = b"ABTB"
BNOBT_MAGIC_V5 = b"AB3B"
SHORT_HDR_V4 = 16
SHORT_HDR_V5 = 56
MAX_LEVELS = 16


class Superblock(NamedTuple):
    block_size: int
    dblocks: int
    agblocks: int
    agcount: int
    sect_size: int
    version: int
    fdblocks: int
    inprogress: int


def read_superblock(read: ReadFn) -> Superblock:
    raw = read_exact(read, 0, 512, "XFS superblock")
    if raw[:4] != SB_MAGIC:
        raise FormatError("no XFS superblock magic at byte 0")
    block_size, dblocks = struct.unpack_from(">IQ", raw, 4)
    agblocks, agcount = struct.unpack_from(">II", raw, 84)
    versionnum, sect_size = struct.unpack_from(">HH", raw, 100)
    inprogress = raw[126]
    fdblocks = struct.unpack_from(">Q", raw, 144)[0]
    version = versionnum & 0xF
    if (block_size < 512 or block_size > 65536 or block_size & (block_size - 1) or sect_size < 512
            or sect_size > block_size or sect_size & (sect_size - 1) or agblocks == 0 or agcount == 0
            or version not in (4, 5) or dblocks > agblocks * agcount or dblocks <= agblocks * (agcount - 1)):
        raise FormatError("XFS superblock has impossible geometry")
    return Superblock(block_size, dblocks, agblocks, agcount, sect_size, version, fdblocks, inprogress)


def probe(read: ReadFn, size: int) -> Optional[str]:
    try:
        read_superblock(read)
    except FormatError:
        return None
    return "xfs"


class _AG(NamedTuple):
    number: int
    length: int
    bno_root: int
    bno_level: int


def _read_agf(read: ReadFn, sb: Superblock, agno: int) -> _AG:
    offset = agno * sb.agblocks * sb.block_size + sb.sect_size
    raw = read_exact(read, offset, 64, "XFS AGF of AG {}".format(agno))
    if raw[:4] != AGF_MAGIC:
        raise FormatError("XFS AG {} has no AGF magic".format(agno))
    _version, seqno, length, bno_root, _cnt_root, _rmap_root, bno_level = struct.unpack_from(">7I", raw, 4)
    expected_len = min(sb.agblocks, sb.dblocks - agno * sb.agblocks)
    if seqno != agno or length != expected_len:
        raise FormatError("XFS AGF of AG {} has sequence {} and length {} (expected {})".format(
            agno, seqno, length, expected_len))
    if not 1 <= bno_level <= MAX_LEVELS or not 0 < bno_root < length:
        raise FormatError("XFS AG {} has an impossible free-space btree root".format(agno))
    return _AG(agno, length, bno_root, bno_level)


def free_extents(read: ReadFn, sb: Superblock, ag: _AG) -> List[Tuple[int, int]]:
    """Free extents of one AG from its bnobt, as AG-relative (start block, block count) pairs."""
    magic = BNOBT_MAGIC_V5 if sb.version == 5 else BNOBT_MAGIC_V4
    hdr = SHORT_HDR_V5 if sb.version == 5 else SHORT_HDR_V4
    leaf_max = (sb.block_size - hdr) // 8
    node_max = (sb.block_size - hdr) // 12
    base = ag.number * sb.agblocks * sb.block_size
    out: List[Tuple[int, int]] = []
    seen: Set[int] = set()
    # Depth-first, left to right: the leaves come out in block order.
    stack = [(ag.bno_root, ag.bno_level - 1)]
    while stack:
        agbno, level = stack.pop()
        if agbno in seen or not 0 < agbno < ag.length:
            raise FormatError("XFS AG {} free-space btree points at block {} twice or outside the AG".format(
                ag.number, agbno))
        seen.add(agbno)
        raw = read_exact(read, base + agbno * sb.block_size, sb.block_size, "XFS free-space btree block")
        blk_level, numrecs = struct.unpack_from(">HH", raw, 4)
        if raw[:4] != magic or blk_level != level:
            raise FormatError("XFS AG {} block {} is not a level-{} free-space btree block".format(
                ag.number, agbno, level))
        if level == 0:
            if numrecs > leaf_max:
                raise FormatError("XFS AG {} btree leaf {} holds too many records".format(ag.number, agbno))
            for i in range(numrecs):
                start, count = struct.unpack_from(">II", raw, hdr + 8 * i)
                if count == 0 or start + count > ag.length:
                    raise FormatError("XFS AG {} free extent ({}, {}) lies outside the AG".format(
                        ag.number, start, count))
                out.append((start, count))
        else:
            if numrecs == 0 or numrecs > node_max:
                raise FormatError("XFS AG {} btree node {} holds {} pointers".format(
                    ag.number, agbno, numrecs))
            ptrs = struct.unpack_from(">{}I".format(numrecs), raw, hdr + 8 * node_max)
            stack.extend((ptr, level - 1) for ptr in reversed(ptrs))
    return out


def used_map(read: ReadFn, size: int, allow_dirty: bool = False) -> ExtentList:
    """Byte ranges of an XFS data device in use: all of it but the bnobt free extents, plus the tail."""
    sb = read_superblock(read)
    if sb.inprogress:
        raise UnsupportedFilesystem("XFS superblock says mkfs did not finish")
    bs = sb.block_size
    fs_bytes = sb.dblocks * bs
    check_fits("XFS filesystem", fs_bytes, size)
    free = ExtentList()
    for agno in range(sb.agcount):
        ag = _read_agf(read, sb, agno)
        base = agno * sb.agblocks
        for start, count in free_extents(read, sb, ag):
            free.add((base + start) * bs, (base + start + count) * bs)
    if 0 in free:
        raise FormatError("XFS free-space btree claims the superblock is free")
    used = ExtentList([(0, fs_bytes)]).subtract(free)
    keep_tail(used, fs_bytes, size)
    return used

