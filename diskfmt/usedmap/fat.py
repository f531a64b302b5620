"""Used-block map of FAT12, FAT16 and FAT32: the reserved sectors, the FATs, the FAT12/16 root directory,
and every data cluster whose FAT entry is non-zero (allocated, end of chain, or marked bad).

The FAT width follows the Linux kernel: FAT32 when the 16-bit FAT size is zero, else FAT12 below 4085
clusters and FAT16 above. With FAT32 mirroring turned off, the active FAT is read. Standard library only,
Python 3.6+.
"""
import re
import struct
from typing import Iterator, NamedTuple, Optional, Tuple

from ..errors import FormatError
from ..extents import ExtentList
from . import ReadFn, check_fits, keep_tail, read_exact

MAX_FAT12_CLUSTERS = 4084
_CHUNK_ENTRIES = 1 << 18
_NONZERO = re.compile(b"[^\x00]+")
_LOW_NIBBLE = bytes(v & 0x0F for v in range(256))


class BootSector(NamedTuple):
    bytes_per_sector: int
    sectors_per_cluster: int
    reserved_sectors: int
    num_fats: int
    root_entries: int
    total_sectors: int
    fat_sectors: int
    fat_bits: int
    active_fat: int

    @property
    def cluster_size(self) -> int:
        return self.bytes_per_sector * self.sectors_per_cluster

    @property
    def root_dir_sectors(self) -> int:
        return -(-self.root_entries * 32 // self.bytes_per_sector)

    @property
    def data_start(self) -> int:
        """Byte offset of cluster 2."""
        return (self.reserved_sectors + self.num_fats * self.fat_sectors + self.root_dir_sectors) * \
            self.bytes_per_sector

    @property
    def cluster_count(self) -> int:
        data_sectors = self.total_sectors - self.data_start // self.bytes_per_sector
        return max(0, data_sectors // self.sectors_per_cluster)


def read_boot_sector(read: ReadFn) -> BootSector:
    raw = read_exact(read, 0, 512, "FAT boot sector")
    if raw[0] not in (0xEB, 0xE9) or raw[510:512] != b"\x55\xaa":
        raise FormatError("no FAT boot sector jump and signature")
    if raw[3:11] in (b"NTFS    ", b"EXFAT   "):
        raise FormatError("boot sector is NTFS or exFAT, not FAT")
    bps, spc, reserved, nfats, root_entries, total16, _media, fat16 = struct.unpack_from("<HBHBHHBH", raw, 11)
    total32 = struct.unpack_from("<I", raw, 32)[0]
    if bps not in (512, 1024, 2048, 4096) or spc == 0 or spc & (spc - 1) or reserved == 0 or nfats == 0:
        raise FormatError("FAT boot sector has impossible geometry")
    total = total16 or total32
    if fat16:
        fat_sectors, active = fat16, 0
        fat_bits = 0
    else:
        fat_sectors, ext_flags = struct.unpack_from("<IH", raw, 36)
        if root_entries:
            raise FormatError("FAT32 boot sector lists fixed root directory entries")
        active = ext_flags & 0xF if ext_flags & 0x80 else 0
        fat_bits = 32
    if fat_sectors == 0 or total == 0 or active >= nfats:
        raise FormatError("FAT boot sector has no FAT or no sectors")
    bs = BootSector(bps, spc, reserved, nfats, root_entries, total, fat_sectors, fat_bits, active)
    if bs.data_start // bps >= total:
        raise FormatError("FAT areas are larger than the volume")
    if not fat_bits:
        bs = bs._replace(fat_bits=12 if bs.cluster_count <= MAX_FAT12_CLUSTERS else 16)
    if (bs.cluster_count + 2) * bs.fat_bits > fat_sectors * bps * 8:
        raise FormatError("FAT of {} sectors is too small for {} clusters".format(
            fat_sectors, bs.cluster_count))
    return bs


def probe(read: ReadFn, size: int) -> Optional[str]:
    try:
        read_boot_sector(read)
    except FormatError:
        return None
    return "vfat"


def _used_runs(entries: bytes, width: int, first: int) -> Iterator[Tuple[int, int]]:
    """Runs [a, b) of entry numbers (``first`` + index) whose FAT12/16/32 entry is non-zero."""
    if width == 32:
        # A FAT32 entry's top 4 bits are reserved: free means the low 28 bits are zero.
        flags = (int.from_bytes(entries[0::4], "little") | int.from_bytes(entries[1::4], "little")
                 | int.from_bytes(entries[2::4], "little")
                 | int.from_bytes(entries[3::4].translate(_LOW_NIBBLE), "little"))
        count = len(entries) // 4
    elif width == 16:
        flags = int.from_bytes(entries[0::2], "little") | int.from_bytes(entries[1::2], "little")
        count = len(entries) // 2
    else:
        marks = bytearray()
        for i in range(0, len(entries) - 2, 3):
            b0, b1, b2 = entries[i], entries[i + 1], entries[i + 2]
            marks.append(1 if b0 or b1 & 0x0F else 0)
            marks.append(1 if b1 & 0xF0 or b2 else 0)
        for m in _NONZERO.finditer(bytes(marks)):
            yield first + m.start(), first + m.end()
        return
    per_entry = flags.to_bytes(count, "little")
    for m in _NONZERO.finditer(per_entry):
        yield first + m.start(), first + m.end()


def used_map(read: ReadFn, size: int, allow_dirty: bool = False) -> ExtentList:
    """Byte ranges of a FAT volume in use: reserved area, FATs, root directory, used clusters, the tail."""
    bs = read_boot_sector(read)
    fs_bytes = bs.total_sectors * bs.bytes_per_sector
    check_fits("FAT volume", fs_bytes, size)
    used = ExtentList([(0, bs.data_start)])
    fat_offset = (bs.reserved_sectors + bs.active_fat * bs.fat_sectors) * bs.bytes_per_sector
    last_entry = bs.cluster_count + 2  # entries 0 and 1 are reserved; clusters are 2 .. count+1
    # FAT12 entries come in 3-byte pairs; the others are whole bytes; read whole pairs per chunk.
    chunk_entries = _CHUNK_ENTRIES
    entry = 0
    while entry < last_entry:
        n = min(chunk_entries, last_entry - entry)
        if bs.fat_bits == 12:
            n += n % 2
            raw = read_exact(read, fat_offset + entry * 3 // 2, n * 3 // 2, "FAT")
        else:
            width = bs.fat_bits // 8
            raw = read_exact(read, fat_offset + entry * width, n * width, "FAT")
        for lo, hi in _used_runs(raw, bs.fat_bits, entry):
            lo, hi = max(lo, 2), min(hi, last_entry)
            if lo < hi:
                used.add(bs.data_start + (lo - 2) * bs.cluster_size,
                         bs.data_start + (hi - 2) * bs.cluster_size)
        entry += n
    data_end = bs.data_start + bs.cluster_count * bs.cluster_size
    used.add(data_end, fs_bytes)  # sectors past the last whole cluster
    keep_tail(used, fs_bytes, size)
    return used

