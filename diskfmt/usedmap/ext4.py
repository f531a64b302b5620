"""Used-block map of ext2, ext3 and ext4: the block bitmap of every block group.

Reads the superblock at byte 1024, the group descriptors (32 bytes, or ``s_desc_size`` with 64bit; the
classic layout after the superblock or the meta_bg layout), and each group's block bitmap. A group whose
descriptor says BLOCK_UNINIT (trusted only with gdt_csum or metadata_csum, as the kernel does) has no
bitmap on disk: its used blocks are its own superblock/descriptor backups. Every group's bitmaps and
inode table, and every superblock/descriptor area, are added whatever the bitmaps say. bigalloc bitmaps
count clusters.

Two allocated areas are left out because nothing reads them: with gdt_csum or metadata_csum, the tail
of each inode table past both the last inode in use and ``bg_itable_unused`` (kernel and e2fsck read no
further, and initialise a new inode before use); and the body of an internal journal whose superblock
says there is nothing to replay (``s_start == 0``): only the journal superblock is kept. Without group
checksums e2fsck reads every inode, so ext2/ext3 inode tables are kept whole. A filesystem whose journal
needs recovery is refused unless ``allow_dirty``, and then its journal is kept whole. Standard library
only, Python 3.6+.
"""
import struct
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

from ..errors import FormatError
from ..extents import ExtentList
from . import ReadFn, UnsupportedFilesystem, add_bitmap, check_fits, keep_tail, read_exact

SUPERBLOCK_OFFSET = 1024
MAGIC = 0xEF53

COMPAT_HAS_JOURNAL = 0x4
COMPAT_SPARSE_SUPER2 = 0x200
INCOMPAT_RECOVER = 0x4
INCOMPAT_JOURNAL_DEV = 0x8
INCOMPAT_META_BG = 0x10
INCOMPAT_64BIT = 0x80
RO_COMPAT_SPARSE_SUPER = 0x1
RO_COMPAT_GDT_CSUM = 0x10
RO_COMPAT_BIGALLOC = 0x200
RO_COMPAT_METADATA_CSUM = 0x400
EXTENTS_FL = 0x80000
EXTENT_MAGIC = 0xF30A
JBD2_MAGIC = 0xC03B3998
BG_INODE_UNINIT = 0x1
BG_BLOCK_UNINIT = 0x2

# Features that make a filesystem "ext4" rather than ext3/ext2 (as blkid decides).
_EXT4_INCOMPAT = 0x40 | 0x80 | 0x200 | 0x10 | 0x100 | 0x400 | 0x1000 | 0x2000 | 0x4000 | 0x8000 | 0x10000
_EXT4_RO_COMPAT = 0x8 | 0x10 | 0x20 | 0x40 | 0x200 | 0x400
_MAX_READ = 1 << 20


class Superblock(NamedTuple):
    """The superblock fields the map needs; block numbers are in filesystem blocks."""
    block_size: int
    cluster_size: int
    blocks_count: int
    first_data_block: int
    blocks_per_group: int
    clusters_per_group: int
    inodes_per_group: int
    inode_size: int
    reserved_gdt_blocks: int
    desc_size: int
    first_meta_bg: int
    feature_compat: int
    feature_incompat: int
    feature_ro_compat: int
    backup_bgs: Tuple[int, int]
    free_blocks_count: int
    journal_inum: int

    @property
    def group_count(self) -> int:
        return -(-(self.blocks_count - self.first_data_block) // self.blocks_per_group)

    @property
    def itable_blocks(self) -> int:
        return -(-self.inodes_per_group * self.inode_size // self.block_size)

    @property
    def descs_per_block(self) -> int:
        return self.block_size // self.desc_size

    @property
    def gdt_blocks(self) -> int:
        return -(-self.group_count // self.descs_per_block)

    def has(self, incompat: int = 0, ro_compat: int = 0, compat: int = 0) -> bool:
        return bool(self.feature_incompat & incompat or self.feature_ro_compat & ro_compat
                    or self.feature_compat & compat)


class GroupDesc(NamedTuple):
    block_bitmap: int
    inode_bitmap: int
    inode_table: int
    flags: int
    itable_unused: int


def read_superblock(read: ReadFn) -> Superblock:
    """The primary superblock; FormatError when the magic or geometry is not ext2/3/4."""
    raw = read_exact(read, SUPERBLOCK_OFFSET, 1024, "ext superblock")
    if struct.unpack_from("<H", raw, 56)[0] != MAGIC:
        raise FormatError("no ext2/3/4 superblock magic at byte 1080")
    (blocks_lo, _r, free_lo, _fi, first_data_block, log_block, log_cluster, blocks_per_group,
     clusters_per_group, inodes_per_group) = struct.unpack_from("<10I", raw, 4)
    rev_level = struct.unpack_from("<I", raw, 76)[0]
    inode_size = struct.unpack_from("<H", raw, 88)[0] if rev_level >= 1 else 128
    compat, incompat, ro_compat = struct.unpack_from("<3I", raw, 92)
    reserved_gdt = struct.unpack_from("<H", raw, 206)[0]
    desc_size_field = struct.unpack_from("<H", raw, 254)[0]
    first_meta_bg = struct.unpack_from("<I", raw, 260)[0]
    blocks_hi = struct.unpack_from("<I", raw, 336)[0]
    free_hi = struct.unpack_from("<I", raw, 344)[0]
    backup_bgs = struct.unpack_from("<2I", raw, 0x24C)
    journal_inum = struct.unpack_from("<I", raw, 224)[0] if compat & COMPAT_HAS_JOURNAL else 0
    if log_block > 6 or rev_level > 1:
        raise FormatError("ext superblock has an impossible block size or revision")
    block_size = 1024 << log_block
    is64 = bool(incompat & INCOMPAT_64BIT)
    blocks_count = blocks_lo | (blocks_hi << 32 if is64 else 0)
    if ro_compat & RO_COMPAT_BIGALLOC:
        if log_cluster < log_block or log_cluster > 29:
            raise FormatError("ext superblock has an impossible bigalloc cluster size")
        cluster_size = 1024 << log_cluster
        ratio = cluster_size // block_size
        if clusters_per_group == 0 or clusters_per_group * ratio > 0xFFFFFFFF:
            raise FormatError("ext superblock has an impossible clusters-per-group count")
        blocks_per_group = clusters_per_group * ratio
        group_bits = clusters_per_group
    else:
        cluster_size = block_size
        clusters_per_group = blocks_per_group
        group_bits = blocks_per_group
    desc_size = desc_size_field if is64 else 32
    if is64 and (desc_size < 64 or desc_size > block_size or desc_size & (desc_size - 1)):
        raise FormatError("ext superblock has an impossible group descriptor size {}".format(desc_size))
    if (blocks_per_group == 0 or group_bits > 8 * block_size or inodes_per_group == 0
            or inode_size < 128 or inode_size > block_size or blocks_count <= first_data_block
            or first_data_block > 1):
        raise FormatError("ext superblock has impossible group geometry")
    return Superblock(block_size, cluster_size, blocks_count, first_data_block, blocks_per_group,
                      clusters_per_group, inodes_per_group, inode_size, reserved_gdt, desc_size,
                      first_meta_bg, compat, incompat, ro_compat, (backup_bgs[0], backup_bgs[1]),
                      free_lo | (free_hi << 32 if is64 else 0), journal_inum)


def probe(read: ReadFn, size: int) -> Optional[str]:
    """'ext4', 'ext3' or 'ext2' as blkid would name it, or None."""
    try:
        sb = read_superblock(read)
    except FormatError:
        return None
    if sb.has(incompat=INCOMPAT_JOURNAL_DEV):
        return None  # an external journal, not a filesystem
    if sb.has(incompat=_EXT4_INCOMPAT, ro_compat=_EXT4_RO_COMPAT):
        return "ext4"
    return "ext3" if sb.has(compat=COMPAT_HAS_JOURNAL) else "ext2"


def _is_power_of(n: int, base: int) -> bool:
    while n > 1 and n % base == 0:
        n //= base
    return n == 1


def has_super(sb: Superblock, group: int) -> bool:
    """Whether ``group`` starts with a superblock (and, outside meta_bg, descriptor) backup."""
    if group == 0:
        return True
    if sb.has(compat=COMPAT_SPARSE_SUPER2):
        return group in sb.backup_bgs
    if group <= 1 or not sb.has(ro_compat=RO_COMPAT_SPARSE_SUPER):
        return True
    if group % 2 == 0:
        return False
    return _is_power_of(group, 3) or _is_power_of(group, 5) or _is_power_of(group, 7)


def group_first_block(sb: Superblock, group: int) -> int:
    return sb.first_data_block + group * sb.blocks_per_group


def superblock_block(sb: Superblock) -> int:
    """Block holding the primary superblock (byte 1024): block 1 with 1 KiB blocks, even under bigalloc."""
    return 1 if sb.block_size == 1024 else 0


def base_meta_blocks(sb: Superblock, group: int) -> int:
    """Blocks at the start of ``group`` taken by superblock, descriptor and reserved-GDT copies."""
    num = 1 if has_super(sb, group) else 0
    if not sb.has(incompat=INCOMPAT_META_BG) or group < sb.first_meta_bg * sb.descs_per_block:
        if num:
            num += sb.first_meta_bg if sb.has(incompat=INCOMPAT_META_BG) else sb.gdt_blocks
            num += sb.reserved_gdt_blocks
    else:
        if group % sb.descs_per_block in (0, 1, sb.descs_per_block - 1):
            num += 1
    return num


def descriptor_block(sb: Superblock, index: int) -> int:
    """Block number of the ``index``-th group descriptor block (classic or meta_bg layout)."""
    sb_block = superblock_block(sb)
    if not sb.has(incompat=INCOMPAT_META_BG) or index < sb.first_meta_bg:
        return sb_block + index + 1
    group = sb.descs_per_block * index
    extra = 1 if has_super(sb, group) else 0
    if group == 0 and sb.block_size == 1024 and sb.first_data_block == 0:
        extra += 1  # bigalloc with 1 KiB blocks: block 0 is the boot block, block 1 the superblock
    return group_first_block(sb, group) + extra


def read_group_descs(read: ReadFn, sb: Superblock) -> List[GroupDesc]:
    """Every group's descriptor, in group order."""
    descs: List[GroupDesc] = []
    is64 = sb.has(incompat=INCOMPAT_64BIT) and sb.desc_size >= 64
    for index in range(sb.gdt_blocks):
        block = descriptor_block(sb, index)
        if block >= sb.blocks_count:
            raise FormatError("ext group descriptor block {} lies past the end".format(block))
        raw = read_exact(read, block * sb.block_size, sb.block_size, "ext group descriptor block")
        for off in range(0, sb.block_size - sb.desc_size + 1, sb.desc_size):
            if len(descs) == sb.group_count:
                break
            bb, ib, it = struct.unpack_from("<3I", raw, off)
            flags = struct.unpack_from("<H", raw, off + 18)[0]
            unused = struct.unpack_from("<H", raw, off + 28)[0]
            if is64:
                bb_hi, ib_hi, it_hi = struct.unpack_from("<3I", raw, off + 32)
                bb, ib, it = bb | bb_hi << 32, ib | ib_hi << 32, it | it_hi << 32
                unused |= struct.unpack_from("<H", raw, off + 50)[0] << 16
            descs.append(GroupDesc(bb, ib, it, flags, unused))
    return descs


def _metadata_blocks(sb: Superblock, descs: List[GroupDesc], itable_kept: List[int]) -> List[Tuple[int, int]]:
    """Block ranges [start, end) that are metadata whatever the bitmaps say."""
    ranges: List[Tuple[int, int]] = []
    for group, desc in enumerate(descs):
        first = superblock_block(sb) if group == 0 else group_first_block(sb, group)
        ranges.append((first, first + base_meta_blocks(sb, group)))
        ranges.append((desc.block_bitmap, desc.block_bitmap + 1))
        ranges.append((desc.inode_bitmap, desc.inode_bitmap + 1))
        ranges.append((desc.inode_table, desc.inode_table + itable_kept[group]))
    for index in range(sb.gdt_blocks):
        block = descriptor_block(sb, index)
        ranges.append((block, block + 1))
    itable_blocks = sb.itable_blocks
    for start, end in ranges + [(d.inode_table, d.inode_table + itable_blocks) for d in descs]:
        if end > sb.blocks_count or start < 0:
            raise FormatError("ext metadata blocks [{}, {}) lie outside the filesystem ({} blocks)".format(
                start, end, sb.blocks_count))
    return ranges


def _blocks(read: ReadFn, sb: Superblock, numbers: List[int], what: str) -> Iterator[Tuple[int, bytes]]:
    """(block number, content) for each distinct block, read in runs of consecutive blocks."""
    bs = sb.block_size
    blocks = sorted(set(numbers))
    for block in blocks:
        if not 0 < block < sb.blocks_count:
            raise FormatError("ext {} at block {} lies outside the filesystem".format(what, block))
    max_run = max(1, _MAX_READ // bs)
    i = 0
    while i < len(blocks):
        j = i + 1
        while j < len(blocks) and blocks[j] == blocks[j - 1] + 1 and j - i < max_run:
            j += 1
        raw = read_exact(read, blocks[i] * bs, (j - i) * bs, "ext " + what)
        for k in range(i, j):
            yield blocks[k], raw[(k - i) * bs:(k - i + 1) * bs]
        i = j


def _inode_table_kept(read: ReadFn, sb: Superblock, descs: List[GroupDesc], csum: bool) -> List[int]:
    """Per group, how many leading inode-table blocks the kernel or e2fsck may read.

    With group checksums that stops at the later of the last allocated inode (inode bitmap) and
    ``inodes_per_group - bg_itable_unused``; without them e2fsck scans every inode: the whole table.
    """
    ipg, isz, bs = sb.inodes_per_group, sb.inode_size, sb.block_size
    in_use = [ipg] * len(descs)
    if not csum:
        return [sb.itable_blocks] * len(descs)
    wanted: Dict[int, List[int]] = {}
    for group, desc in enumerate(descs):
        if desc.flags & BG_INODE_UNINIT:
            in_use[group] = 0  # no inode bitmap on disk: every inode of the group is free
        else:
            wanted.setdefault(desc.inode_bitmap, []).append(group)
    for block, bitmap in _blocks(read, sb, list(wanted), "inode bitmap"):
        used_bytes = bitmap[:(ipg + 7) // 8].rstrip(b"\x00")
        highest = 8 * (len(used_bytes) - 1) + used_bytes[-1].bit_length() if used_bytes else 0
        for group in wanted[block]:
            unused = descs[group].itable_unused
            in_use[group] = max(min(highest, ipg), ipg - unused if unused <= ipg else ipg)
    return [-(-n * isz // bs) for n in in_use]


def _file_blocks(read: ReadFn, sb: Superblock, inode: bytes) -> List[Tuple[int, int, int]]:
    """(logical block, physical block, count) runs of an inode's data (extent tree or block map)."""
    bs = sb.block_size
    i_block = inode[0x28:0x28 + 60]
    i_size = struct.unpack_from("<I", inode, 4)[0] | struct.unpack_from("<I", inode, 0x6C)[0] << 32
    nblocks = min(-(-i_size // bs), sb.blocks_count)
    runs: List[Tuple[int, int, int]] = []
    budget = [16 + nblocks // 64]  # mapping blocks left to read: bounds a looping or garbage tree

    def block(number: int) -> bytes:
        budget[0] -= 1
        if budget[0] < 0 or not 0 < number < sb.blocks_count:
            raise FormatError("ext journal mapping points at block {}".format(number))
        return read_exact(read, number * bs, bs, "ext journal mapping block")

    def extents(node: bytes, depth_left: int) -> None:
        magic, entries, _max, depth = struct.unpack_from("<4H", node, 0)
        if magic != EXTENT_MAGIC or depth > depth_left or 12 + 12 * entries > len(node):
            raise FormatError("ext journal inode has a malformed extent tree")
        for i in range(entries):
            off = 12 + 12 * i
            if depth == 0:
                lblk, length, start_hi, start_lo = struct.unpack_from("<IHHI", node, off)
                if length > 32768:
                    length -= 32768  # an unwritten extent
                runs.append((lblk, start_lo | start_hi << 32, length))
            else:
                _lblk, leaf_lo, leaf_hi = struct.unpack_from("<IIH", node, off)
                extents(block(leaf_lo | leaf_hi << 32), depth - 1)

    def indirect(number: int, level: int, lblk: int) -> int:
        per_block = bs // 4
        if number == 0 or lblk >= nblocks:
            return lblk + per_block ** level
        ptrs = struct.unpack("<{}I".format(per_block), block(number))
        for ptr in ptrs:
            if level == 1:
                if ptr:
                    runs.append((lblk, ptr, 1))
                lblk += 1
            else:
                lblk = indirect(ptr, level - 1, lblk)
        return lblk

    flags = struct.unpack_from("<I", inode, 0x20)[0]
    if flags & EXTENTS_FL:
        extents(i_block, 5)
    else:
        ptrs = struct.unpack("<15I", i_block)
        for lblk, ptr in enumerate(ptrs[:12]):
            if ptr:
                runs.append((lblk, ptr, 1))
        lblk = 12
        for level, ptr in zip((1, 2, 3), ptrs[12:]):
            lblk = indirect(ptr, level, lblk)
    for _lblk, start, count in runs:
        if start + count > sb.blocks_count:
            raise FormatError("ext journal extent at block {} lies past the end".format(start))
    return runs


def clean_journal_body(read: ReadFn, sb: Superblock, descs: List[GroupDesc]) -> List[Tuple[int, int]]:
    """Block ranges of an internal journal past its superblock, when the journal says it has nothing to
    replay (``s_start == 0``): mount and e2fsck then read only the journal superblock. [] otherwise.
    """
    inum = sb.journal_inum
    if not inum or sb.has(incompat=INCOMPAT_RECOVER):
        return []
    group, index = divmod(inum - 1, sb.inodes_per_group)
    if group >= len(descs):
        raise FormatError("ext journal inode {} lies past the last group".format(inum))
    inode = read_exact(read, descs[group].inode_table * sb.block_size + index * sb.inode_size, 0x70,
                       "ext journal inode")
    runs = _file_blocks(read, sb, inode)
    first = [start for lblk, start, count in runs if lblk == 0]
    if not first:
        return []
    jsb = read_exact(read, first[0] * sb.block_size, 32, "ext journal superblock")
    magic, blocktype = struct.unpack_from(">II", jsb, 0)
    s_start = struct.unpack_from(">I", jsb, 28)[0]
    if magic != JBD2_MAGIC or blocktype not in (3, 4) or s_start != 0:
        return []
    body = []
    for lblk, start, count in runs:
        if lblk == 0:
            start, count = start + 1, count - 1
        if count > 0:
            body.append((start, start + count))
    return body


def used_map(read: ReadFn, size: int, allow_dirty: bool = False) -> ExtentList:
    """Byte ranges of an ext2/3/4 filesystem in use: bitmaps, plus all metadata, plus the tail."""
    sb = read_superblock(read)
    if sb.has(incompat=INCOMPAT_JOURNAL_DEV):
        raise UnsupportedFilesystem("ext external journal device: no block bitmaps")
    if sb.has(incompat=INCOMPAT_RECOVER) and not allow_dirty:
        raise UnsupportedFilesystem("ext journal needs recovery (mounted or not cleanly unmounted): "
                                    "its block bitmaps may lag the journal")
    bs = sb.block_size
    fs_bytes = sb.blocks_count * bs
    check_fits("ext filesystem", fs_bytes, size)
    descs = read_group_descs(read, sb)
    csum = sb.has(ro_compat=RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM)
    itable_kept = _inode_table_kept(read, sb, descs, csum)

    used = ExtentList()
    used.add(0, max(2048, (superblock_block(sb) + 1) * bs))  # boot block and primary superblock
    for start, end in _metadata_blocks(sb, descs, itable_kept):
        used.add(start * bs, end * bs)

    # Block bitmaps of initialised groups (BLOCK_UNINIT groups have none: their metadata is added above).
    wanted: Dict[int, List[int]] = {}
    for group, desc in enumerate(descs):
        if not (csum and desc.flags & BG_BLOCK_UNINIT):
            wanted.setdefault(desc.block_bitmap, []).append(group)
    for block, bitmap in _blocks(read, sb, list(wanted), "block bitmap"):
        for group in wanted[block]:
            _add_group_bitmap(used, sb, group, bitmap)

    # The bitmaps mark whole inode tables and the whole journal: leave out inode-table tails that hold
    # no inode in use, and the body of a journal with nothing to replay.
    unneeded = ExtentList()
    for desc, kept in zip(descs, itable_kept):
        unneeded.add((desc.inode_table + kept) * bs, (desc.inode_table + sb.itable_blocks) * bs)
    try:
        journal_body = clean_journal_body(read, sb, descs)
    except FormatError:
        journal_body = []  # leaving the journal out is only a saving: keep it when its map looks wrong
    for start, end in journal_body:
        unneeded.add(start * bs, end * bs)
    used = used.subtract(unneeded).clip(0, fs_bytes)
    keep_tail(used, fs_bytes, size)
    return used


def _add_group_bitmap(used: ExtentList, sb: Superblock, group: int, bitmap: bytes) -> None:
    if sb.has(ro_compat=RO_COMPAT_BIGALLOC):
        # Cluster numbers are absolute (first_data_block is 0 with bigalloc).
        first_cluster = group * sb.clusters_per_group
        total_clusters = -(-sb.blocks_count // (sb.cluster_size // sb.block_size))
        nbits = min(sb.clusters_per_group, total_clusters - first_cluster)
        add_bitmap(used, bitmap, nbits, first_cluster, sb.cluster_size)
    else:
        first = group_first_block(sb, group)
        nbits = min(sb.blocks_per_group, sb.blocks_count - first)
        add_bitmap(used, bitmap, nbits, first, sb.block_size)

