"""MBR (DOS) partition tables: the four primary entries, logical partitions through the EBR chain,
protective MBRs of GPT disks.

Pure: parsers take bytes or a ``read(offset, length) -> bytes`` callable and do no I/O of their own.
Standard library only, Python 3.6+.
"""
import struct
from typing import Callable, List, NamedTuple, Optional, Set

from .errors import FormatError

ReadFn = Callable[[int, int], bytes]

SECTOR_SIZE = 512
BOOT_SIGNATURE = b"\x55\xaa"
BOOT_SIGNATURE_OFFSET = 0x1FE
DISK_SIGNATURE_OFFSET = 0x1B8
TABLE_OFFSET = 0x1BE
ENTRY_SIZE = 16
MAX_LOGICAL_PARTITIONS = 256  # guards against EBR chains that never end

TYPE_EMPTY = 0x00
TYPE_FAT12 = 0x01
TYPE_FAT16_SMALL = 0x04
TYPE_EXTENDED_CHS = 0x05
TYPE_FAT16 = 0x06
TYPE_NTFS = 0x07  # also exFAT and HPFS
TYPE_FAT32_CHS = 0x0B
TYPE_FAT32_LBA = 0x0C
TYPE_FAT16_LBA = 0x0E
TYPE_EXTENDED_LBA = 0x0F
TYPE_WINDOWS_RECOVERY = 0x27
TYPE_DYNAMIC_DISK = 0x42  # Windows LDM: the real layout lives in the LDM database, not here
TYPE_LINUX_SWAP = 0x82
TYPE_LINUX = 0x83
TYPE_LINUX_EXTENDED = 0x85
TYPE_LINUX_LVM = 0x8E
TYPE_GPT_PROTECTIVE = 0xEE
TYPE_ESP = 0xEF
TYPE_LINUX_RAID = 0xFD

EXTENDED_TYPES = frozenset((TYPE_EXTENDED_CHS, TYPE_EXTENDED_LBA, TYPE_LINUX_EXTENDED))

STATUS_ACTIVE = 0x80

_ENTRY = struct.Struct("<B3sB3sII")  # status, CHS first, type, CHS last, start LBA, sector count


class MbrPartition(NamedTuple):
    """One partition: numbered as Linux does (1-4 primary, 5 and up logical)."""
    number: int
    type_id: int
    bootable: bool
    start_lba: int  # absolute, in sectors of the table's sector size
    sectors: int
    logical: bool


class Mbr(NamedTuple):
    """A parsed MBR. ``partitions`` holds the non-empty entries in number order, the extended
    container included; ``protective`` is True when an entry has type 0xEE (the disk is GPT)."""
    disk_signature: int
    sector_size: int
    partitions: List[MbrPartition]
    protective: bool


class _Entry(NamedTuple):
    status: int
    type_id: int
    start: int
    sectors: int


def end_lba(part: MbrPartition) -> int:
    """The last sector of ``part`` (inclusive)."""
    return part.start_lba + part.sectors - 1


def is_extended_type(type_id: int) -> bool:
    """True for the container types that hold logical partitions (0x05, 0x0F, 0x85)."""
    return type_id in EXTENDED_TYPES


def is_dynamic_disk_type(type_id: int) -> bool:
    """True for 0x42, the type Windows gives every partition of a dynamic (LDM) disk."""
    return type_id == TYPE_DYNAMIC_DISK


def is_esp_type(type_id: int) -> bool:
    """True for 0xEF, the EFI system partition on an MBR disk."""
    return type_id == TYPE_ESP



def is_dynamic_disk(mbr: Mbr) -> bool:
    """True when the disk is a Windows dynamic disk (any partition of type 0x42)."""
    return any(is_dynamic_disk_type(p.type_id) for p in mbr.partitions)


def _entries(sector: bytes) -> List[_Entry]:
    out = []
    for i in range(4):
        status, _chs1, type_id, _chs2, start, count = _ENTRY.unpack_from(
            sector, TABLE_OFFSET + i * ENTRY_SIZE)
        out.append(_Entry(status, type_id, start, count))
    return out


def _describe(part: MbrPartition) -> str:
    kind = "logical partition" if part.logical else "partition"
    return f"{kind} {part.number} (sectors {part.start_lba}-{end_lba(part)})"


def _boot_sector_kind(sector: bytes) -> Optional[str]:
    # A partitionless volume's boot sector also ends in 0x55AA: name it instead of reporting garbage entries
    if sector[3:11] == b"NTFS    ":
        return "an NTFS boot sector"
    if sector[3:11] == b"EXFAT   ":
        return "an exFAT boot sector"
    if sector[0x52:0x57] == b"FAT32" or sector[0x36:0x39] == b"FAT":
        return "a FAT boot sector"
    return None


def parse_mbr(sector: bytes, sector_size: int = SECTOR_SIZE) -> Mbr:
    """Parse the primary table of sector 0 (no EBR chain: see ``read_mbr``).

    Raises FormatError when there is no 0x55AA signature, an entry's status byte is neither 0x00 nor
    0x80 (a filesystem boot sector, not an MBR), a partition starts at sector 0, or two primary
    partitions overlap.
    """
    if len(sector) < 512:
        raise FormatError(f"MBR sector is {len(sector)} bytes long, expected 512 (truncated disk image?)")
    if sector[BOOT_SIGNATURE_OFFSET:BOOT_SIGNATURE_OFFSET + 2] != BOOT_SIGNATURE:
        raise FormatError("no MBR boot signature (0x55AA) at byte 510 of sector 0: "
                          "the disk has no MBR partition table")
    disk_signature = struct.unpack_from("<I", sector, DISK_SIGNATURE_OFFSET)[0]
    parts = []
    protective = False
    for number, entry in enumerate(_entries(sector), 1):
        if entry.status not in (0x00, STATUS_ACTIVE):
            kind = _boot_sector_kind(sector)
            if kind:
                raise FormatError(f"sector 0 is {kind}, not an MBR: "
                                  "the disk holds one volume and no partition table")
            raise FormatError(f"MBR entry {number} has an invalid status byte 0x{entry.status:02X} "
                              "(expected 0x00 or 0x80): sector 0 is not a valid MBR")
        if entry.type_id == TYPE_EMPTY or entry.sectors == 0:
            continue
        if entry.type_id == TYPE_GPT_PROTECTIVE:
            protective = True
        elif entry.start == 0:
            raise FormatError(f"MBR partition {number} starts at sector 0, on top of the MBR itself "
                              "(corrupt partition table)")
        parts.append(MbrPartition(number, entry.type_id, entry.status == STATUS_ACTIVE, entry.start,
                                  entry.sectors, False))
    _check_no_overlap([p for p in parts if p.type_id != TYPE_GPT_PROTECTIVE])
    return Mbr(disk_signature, sector_size, parts, protective)


def read_mbr(read: ReadFn, disk_size: Optional[int] = None, sector_size: int = SECTOR_SIZE) -> Mbr:
    """Parse the MBR of a disk read through ``read``, following the EBR chain of logical partitions.

    With ``disk_size`` (bytes), a partition that ends beyond the disk raises FormatError; overlapping
    partitions, logical partitions outside their extended partition, and broken or looping EBR chains
    always do. A protective (0xEE) entry may claim more than the disk, as GPT tools write it so.
    """
    mbr = parse_mbr(_read_sector(read, 0, sector_size), sector_size)
    extended = [p for p in mbr.partitions if is_extended_type(p.type_id)]
    if len(extended) > 1:
        numbers = ", ".join(str(p.number) for p in extended)
        raise FormatError(f"MBR has {len(extended)} extended partitions ({numbers}); only one is allowed")
    logical = _read_logical(read, extended[0], sector_size) if extended else []
    _check_no_overlap(logical)
    parts = mbr.partitions + logical
    if disk_size is not None:
        disk_sectors = disk_size // sector_size
        for part in parts:
            if part.type_id != TYPE_GPT_PROTECTIVE and part.start_lba + part.sectors > disk_sectors:
                raise FormatError(f"MBR {_describe(part)} extends beyond the end of the disk "
                                  f"({disk_sectors} sectors of {sector_size} bytes): "
                                  "the image is truncated or the table is corrupt")
    return mbr._replace(partitions=parts)


def _read_sector(read: ReadFn, lba: int, sector_size: int) -> bytes:
    data = read(lba * sector_size, sector_size)
    if len(data) != sector_size:
        raise FormatError(f"sector {lba} (byte {lba * sector_size}) lies beyond the end of the disk image "
                          "(truncated?)")
    return data


def _read_logical(read: ReadFn, ext: MbrPartition, sector_size: int) -> List[MbrPartition]:
    """Walk the EBR chain: each EBR holds one logical partition (relative to the EBR) and a link to the
    next EBR (relative to the start of the extended partition)."""
    ext_end = end_lba(ext)
    where = f"extended partition {ext.number} (sectors {ext.start_lba}-{ext_end})"
    parts: List[MbrPartition] = []
    seen: Set[int] = set()
    ebr_lba = ext.start_lba
    number = 5
    while True:
        if ebr_lba in seen:
            raise FormatError(f"the chain of extended boot records loops back to sector {ebr_lba} "
                              "(corrupt logical partition table)")
        if len(seen) >= MAX_LOGICAL_PARTITIONS:
            raise FormatError(f"more than {MAX_LOGICAL_PARTITIONS} extended boot records in the logical "
                              "partition chain (corrupt partition table)")
        seen.add(ebr_lba)
        sector = _read_sector(read, ebr_lba, sector_size)
        if sector[BOOT_SIGNATURE_OFFSET:BOOT_SIGNATURE_OFFSET + 2] != BOOT_SIGNATURE:
            if ebr_lba == ext.start_lba and not any(sector):
                return parts  # an extended partition with no logical partitions yet
            raise FormatError(f"extended boot record at sector {ebr_lba} has no 0x55AA signature "
                              "(broken logical partition chain)")
        data, link = _entries(sector)[:2]
        if data.type_id != TYPE_EMPTY and data.sectors != 0:
            if data.start == 0:
                raise FormatError(f"logical partition {number} starts on its own extended boot record at "
                                  f"sector {ebr_lba} (corrupt partition table)")
            part = MbrPartition(number, data.type_id, data.status == STATUS_ACTIVE, ebr_lba + data.start,
                                data.sectors, True)
            if end_lba(part) > ext_end:
                raise FormatError(f"{_describe(part)} lies outside its {where} (corrupt partition table)")
            parts.append(part)
            number += 1
        if not is_extended_type(link.type_id) or link.start == 0 or link.sectors == 0:
            return parts
        next_lba = ext.start_lba + link.start
        if next_lba > ext_end:
            raise FormatError(f"extended boot record at sector {ebr_lba} links to sector {next_lba}, "
                              f"outside {where} (corrupt partition table)")
        ebr_lba = next_lba


def _check_no_overlap(parts: List[MbrPartition]) -> None:
    ordered = sorted(parts, key=lambda p: (p.start_lba, p.number))
    for prev, cur in zip(ordered, ordered[1:]):
        if cur.start_lba <= end_lba(prev):
            first, second = sorted((prev, cur), key=lambda p: p.number)
            raise FormatError(f"MBR {_describe(first)} and {_describe(second)} overlap "
                              "(corrupt partition table)")
