"""GUID partition tables: header and partition array with their CRC32s, falling back to the backup
header at the last LBA when the primary is unusable.

Pure: parsers take bytes or a ``read(offset, length) -> bytes`` callable and do no I/O of their own.
Standard library only, Python 3.6+.
"""
import struct
import uuid
import zlib
from typing import Callable, List, NamedTuple, Optional, Tuple

from .errors import FormatError

ReadFn = Callable[[int, int], bytes]

SIGNATURE = b"EFI PART"
HEADER_MIN_SIZE = 92
ENTRY_MIN_SIZE = 128
MAX_ARRAY_BYTES = 16 * 1024 * 1024  # a CRC-valid header can still ask for absurd arrays: refuse them

# Well-known partition type GUIDs, in the canonical uppercase form guid_from_bytes returns.
TYPE_UNUSED = "00000000-0000-0000-0000-000000000000"
TYPE_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
TYPE_BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
TYPE_MS_BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
TYPE_MS_RESERVED = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE"
TYPE_MS_RECOVERY = "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC"
TYPE_MS_LDM_METADATA = "5808C8AA-7E8F-42E0-85D2-E1E90434CFB3"
TYPE_MS_LDM_DATA = "AF9B60A0-1431-4F62-BC68-3311714A69AD"
TYPE_LINUX_FILESYSTEM = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
TYPE_LINUX_LVM = "E6D6D379-F507-44C2-A23C-238F2A3DF928"
TYPE_LINUX_SWAP = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"
TYPE_LINUX_RAID = "A19D880F-05FC-4D3B-A006-743F0F84911E"
TYPE_LINUX_ROOT_X86_64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
TYPE_LINUX_XBOOTLDR = "BC13C2FF-59E6-4262-A352-B275FD6F7172"

TYPE_NAMES = {
    TYPE_ESP: "EFI system partition",
    TYPE_BIOS_BOOT: "BIOS boot partition",
    TYPE_MS_BASIC_DATA: "Microsoft basic data",
    TYPE_MS_RESERVED: "Microsoft reserved",
    TYPE_MS_RECOVERY: "Windows recovery environment",
    TYPE_MS_LDM_METADATA: "Windows LDM metadata",
    TYPE_MS_LDM_DATA: "Windows LDM data",
    TYPE_LINUX_FILESYSTEM: "Linux filesystem",
    TYPE_LINUX_LVM: "Linux LVM",
    TYPE_LINUX_SWAP: "Linux swap",
    TYPE_LINUX_RAID: "Linux RAID",
    TYPE_LINUX_ROOT_X86_64: "Linux root (x86-64)",
    TYPE_LINUX_XBOOTLDR: "Linux extended boot",
}

ATTR_REQUIRED = 1 << 0
ATTR_NO_BLOCK_IO = 1 << 1
ATTR_LEGACY_BIOS_BOOTABLE = 1 << 2
ATTR_MS_READ_ONLY = 1 << 60
ATTR_MS_SHADOW_COPY = 1 << 61
ATTR_MS_HIDDEN = 1 << 62
ATTR_MS_NO_DRIVE_LETTER = 1 << 63

_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
_ENTRY = struct.Struct("<16s16sQQQ72s")


class GptHeader(NamedTuple):
    """One GPT header, as found at ``current_lba``."""
    revision: int
    header_size: int
    current_lba: int
    backup_lba: int
    first_usable_lba: int
    last_usable_lba: int
    disk_guid: str
    entries_lba: int
    num_entries: int
    entry_size: int
    entries_crc32: int


class GptPartition(NamedTuple):
    """One used entry of the partition array; ``number`` is its 1-based index (Linux's numbering)."""
    number: int
    type_guid: str
    unique_guid: str
    first_lba: int
    last_lba: int  # inclusive
    attributes: int
    name: str


class Gpt(NamedTuple):
    """A parsed GPT. ``header`` is the one the partitions came from: the backup one when
    ``used_backup``. ``problems`` are one-line notes about what was wrong but worked around."""
    disk_guid: str
    sector_size: int
    header: GptHeader
    partitions: List[GptPartition]
    used_backup: bool
    problems: List[str]


def guid_from_bytes(raw: bytes) -> str:
    """The canonical uppercase text of a GUID stored mixed-endian (as GPT, VHDX and Windows do)."""
    if len(raw) != 16:
        raise ValueError(f"a GUID is 16 bytes, got {len(raw)}")
    return str(uuid.UUID(bytes_le=bytes(raw))).upper()


def guid_to_bytes(text: str) -> bytes:
    """The mixed-endian 16 bytes of a GUID written as text (any case, with or without braces)."""
    return uuid.UUID(text).bytes_le


def type_name(type_guid: str) -> str:
    """A short human name for a partition type GUID, or the GUID itself when it is not well known."""
    return TYPE_NAMES.get(type_guid.upper(), type_guid.upper())


def is_dynamic_disk(gpt: Gpt) -> bool:
    """True when the disk is a Windows dynamic disk (it has LDM metadata or LDM data partitions)."""
    return any(p.type_guid in (TYPE_MS_LDM_METADATA, TYPE_MS_LDM_DATA) for p in gpt.partitions)


def parse_header(sector: bytes, lba: int) -> GptHeader:
    """Parse and verify the GPT header read from ``lba``: signature, header CRC32, and that it says it
    lives at ``lba``. Raises FormatError naming the LBA and what is wrong."""
    if len(sector) < HEADER_MIN_SIZE:
        raise FormatError(f"GPT header at LBA {lba} is cut short ({len(sector)} bytes): "
                          "truncated disk image?")
    (signature, revision, header_size, crc, _reserved, current_lba, backup_lba, first_usable, last_usable,
     disk_guid, entries_lba, num_entries, entry_size, entries_crc) = _HEADER.unpack_from(sector)
    if signature != SIGNATURE:
        raise FormatError(f"no GPT header signature ('EFI PART') at LBA {lba}")
    if not HEADER_MIN_SIZE <= header_size <= len(sector):
        raise FormatError(f"GPT header at LBA {lba} has an invalid size of {header_size} bytes "
                          "(corrupt partition table)")
    raw = bytearray(sector[:header_size])
    raw[16:20] = b"\0\0\0\0"
    if zlib.crc32(bytes(raw)) & 0xFFFFFFFF != crc:
        raise FormatError(f"GPT header CRC mismatch at LBA {lba} (corrupt partition table)")
    if current_lba != lba:
        raise FormatError(f"GPT header found at LBA {lba} says it belongs at LBA {current_lba} "
                          "(copied from another disk, or read with the wrong sector size?)")
    if entry_size < ENTRY_MIN_SIZE or entry_size % 8:
        raise FormatError(f"GPT header at LBA {lba} has an invalid partition entry size of "
                          f"{entry_size} bytes (corrupt partition table)")
    if num_entries * entry_size > MAX_ARRAY_BYTES:
        raise FormatError(f"GPT header at LBA {lba} declares a partition array of {num_entries} entries "
                          f"of {entry_size} bytes, more than the {MAX_ARRAY_BYTES} bytes this reader accepts")
    if first_usable > last_usable + 1:
        raise FormatError(f"GPT header at LBA {lba} has its first usable LBA {first_usable} after its "
                          f"last usable LBA {last_usable} (corrupt partition table)")
    return GptHeader(revision, header_size, current_lba, backup_lba, first_usable, last_usable,
                     guid_from_bytes(disk_guid), entries_lba, num_entries, entry_size, entries_crc)


def parse_entries(array: bytes, header: GptHeader) -> List[GptPartition]:
    """Verify the partition array's CRC32 against ``header`` and return its used entries.

    Raises FormatError on a CRC mismatch, an entry that ends before it starts, an entry outside the
    header's usable LBAs, or two overlapping entries.
    """
    length = header.num_entries * header.entry_size
    if len(array) < length:
        raise FormatError(f"GPT partition array at LBA {header.entries_lba} is cut short "
                          f"({len(array)} of {length} bytes): truncated disk image?")
    if zlib.crc32(bytes(array[:length])) & 0xFFFFFFFF != header.entries_crc32:
        raise FormatError(f"GPT partition array CRC mismatch at LBA {header.entries_lba} "
                          "(corrupt partition table)")
    parts = []
    for index in range(header.num_entries):
        type_raw, unique_raw, first, last, attributes, name_raw = _ENTRY.unpack_from(
            array, index * header.entry_size)
        if type_raw == bytes(16):
            continue
        part = GptPartition(index + 1, guid_from_bytes(type_raw), guid_from_bytes(unique_raw), first, last,
                            attributes, _utf16_name(name_raw))
        if last < first:
            raise FormatError(f"GPT partition {part.number} ends (LBA {last}) before it starts "
                              f"(LBA {first}) (corrupt partition table)")
        if first < header.first_usable_lba or last > header.last_usable_lba:
            raise FormatError(f"GPT {_describe(part)} lies outside the usable area "
                              f"(LBA {header.first_usable_lba}-{header.last_usable_lba}) "
                              "(corrupt partition table)")
        parts.append(part)
    ordered = sorted(parts, key=lambda p: (p.first_lba, p.number))
    for prev, cur in zip(ordered, ordered[1:]):
        if cur.first_lba <= prev.last_lba:
            first_part, second_part = sorted((prev, cur), key=lambda p: p.number)
            raise FormatError(f"GPT {_describe(first_part)} and {_describe(second_part)} overlap "
                              "(corrupt partition table)")
    return parts


def _describe(part: GptPartition) -> str:
    return f"partition {part.number} (LBA {part.first_lba}-{part.last_lba})"


def _utf16_name(raw: bytes) -> str:
    name = raw.decode("utf-16-le", errors="replace")
    end = name.find("\0")
    return name if end < 0 else name[:end]


def _read_exact(read: ReadFn, lba: int, length: int, sector_size: int, what: str) -> bytes:
    start = lba * sector_size
    data = read(start, length)
    if len(data) != length:
        raise FormatError(f"the {what} at LBA {lba} (bytes {start}-{start + length - 1}) runs past the end "
                          "of the disk image (truncated?)")
    return data


def _read_table(read: ReadFn, lba: int, sector_size: int) -> Tuple[GptHeader, List[GptPartition]]:
    header = parse_header(_read_exact(read, lba, sector_size, sector_size, "GPT header"), lba)
    array = _read_exact(read, header.entries_lba, header.num_entries * header.entry_size, sector_size,
                        "GPT partition array")
    return header, parse_entries(array, header)


def read_gpt(read: ReadFn, disk_size: Optional[int] = None, sector_size: int = 512) -> Gpt:
    """Read the GPT of a disk through ``read``: the primary header at LBA 1 and its partition array,
    or, when either is unusable and ``disk_size`` (bytes) is known, the backup header at the last LBA
    and its array (reported in ``problems`` and ``used_backup``).

    Raises FormatError when neither copy is usable, or when a partition ends beyond the disk.
    """
    if sector_size not in (512, 1024, 2048, 4096):
        raise ValueError(f"unsupported sector size {sector_size}")
    disk_sectors = None if disk_size is None else disk_size // sector_size
    problems: List[str] = []
    used_backup = False
    try:
        header, parts = _read_table(read, 1, sector_size)
    except FormatError as primary_error:
        if disk_sectors is None or disk_sectors < 3:
            raise
        last_lba = disk_sectors - 1
        try:
            header, parts = _read_table(read, last_lba, sector_size)
        except FormatError as backup_error:
            raise FormatError(f"{primary_error}; the backup GPT at the last LBA is unusable too: "
                              f"{backup_error}") from None
        used_backup = True
        problems.append(f"primary GPT is unusable ({primary_error}); "
                        f"used the backup header at LBA {last_lba}")
    else:
        if disk_sectors is not None:
            problems.extend(_backup_problems(read, header, disk_sectors, sector_size))
    if disk_sectors is not None:
        for part in parts:
            if part.last_lba >= disk_sectors:
                raise FormatError(f"GPT {_describe(part)} extends beyond the end of the disk "
                                  f"({disk_sectors} sectors of {sector_size} bytes): "
                                  "the image is truncated or was shrunk")
    return Gpt(header.disk_guid, sector_size, header, parts, used_backup, problems)


def _backup_problems(read: ReadFn, primary: GptHeader, disk_sectors: int, sector_size: int) -> List[str]:
    """Notes about the backup GPT when the primary one is fine: it is where tools look after a resize."""
    last_lba = disk_sectors - 1
    if primary.backup_lba >= disk_sectors:
        note = (f"the backup GPT header should be at LBA {primary.backup_lba}, beyond the end of the disk "
                f"(last LBA {last_lba}): the image is truncated or was shrunk")
        return [note]
    notes = []
    if primary.backup_lba != last_lba:
        notes.append(f"the backup GPT header is at LBA {primary.backup_lba}, not at the last LBA "
                     f"{last_lba}: the disk was enlarged ('sgdisk -e' moves it)")
    try:
        _read_table(read, primary.backup_lba, sector_size)
    except FormatError as error:
        notes.append(f"the backup GPT is unusable: {error}")
    return notes
