"""BCD device elements (Objects\\{guid}\\Elements\\11000001 and friends): what they say, and rewriting the
partition they name for a new disk.

A device element is a 16-byte options GUID (the ramdisk/VHD options object, or zeros) followed by a device
descriptor: DeviceType, Flags, Size (of the descriptor from its own start), Reserved, then a body that
depends on the type. A partition is always described by the same 0x48-byte "partition block":

    +0x00 DeviceType = 6 (partition)   +0x04 Flags = 0   +0x08 Size = 0x48   +0x0C 0
    +0x10 16 bytes: MBR byte offset of the partition (u64, then 8 zero bytes) | GPT partition GUID
    +0x20 u32 local device type = 0 (hard disk)    +0x24 u32 partition style: 1 = MBR, 0 = GPT
    +0x28 16 bytes: MBR disk signature (u32, then 12 zero bytes) | GPT disk GUID
    +0x38 16 zero bytes

Ramdisk ("[C:]\\Recovery\\WindowsRE\\Winre.wim"), file and VHD devices embed such a block for the partition
that holds their file, after their own header, followed by the file's UTF-16 path. A partition *inside* a
VHD has local type 6 and no trailing zeros: the VHD file's device starts at its +0x38, and is not a block.

Layout from mistyprojects.co.uk BCDEdit "Devices Partition - Data", ReactOS boot/environ/include/bl.h
(BL_DEVICE_DESCRIPTOR), a1ive/ntloader bcd.h (bcd_disk_info) and the pybcd device parser.

Pure: bytes in, bytes out. Standard library only, Python 3.6+.
"""
import struct
import uuid
from typing import List, NamedTuple, Optional, Tuple

OPTIONS_SIZE = 16
HEADER = struct.Struct("<IIII")  # DeviceType, Flags, Size, Reserved
BLOCK_SIZE = 0x48

DEVICE_DISK = 0             # a "local device": its body starts with the local type below
DEVICE_LEGACY_PARTITION = 2
DEVICE_SERIAL = 3
DEVICE_UDP = 4
DEVICE_BOOT = 5
DEVICE_PARTITION = 6
DEVICE_LOCATE = 8

LOCAL_HARDDISK = 0
LOCAL_FLOPPY = 1
LOCAL_CDROM = 2
LOCAL_RAMDISK = 3
LOCAL_FILE = 5
LOCAL_VIRTUAL_DISK = 6

STYLE_GPT = 0
STYLE_MBR = 1

VHD_FILE_AT = 0x38                         # header, partition id, local type, style, disk id
RAMDISK_HEADER = struct.Struct("<IQQI")    # local type 3, image base, image size, image offset
FILE_PATH_HEADER = struct.Struct("<III")   # 1, length of this header + parent device + path, 5
MAX_DEPTH = 4                               # a ramdisk in a file on a VHD is as deep as Windows goes

NO_GUID = ""


class BcdDeviceError(ValueError):
    """Bytes that are not a BCD device element; str() is one line."""


class PartitionLocation(NamedTuple):
    """Where a partition is, as Windows identifies it: MBR disk signature + byte offset of the partition,
    or GPT disk GUID + partition GUID (canonical upper case, no braces)."""
    style: str                  # "mbr" | "gpt"
    disk_signature: int = 0
    offset: int = 0
    disk_guid: str = NO_GUID
    partition_guid: str = NO_GUID

    def describe(self) -> str:
        if self.style == "mbr":
            return "disk 0x{:08x} @{}".format(self.disk_signature, self.offset)
        if not self.disk_guid:
            return "partition {{{}}}".format(self.partition_guid)
        return "disk {{{}}} partition {{{}}}".format(self.disk_guid, self.partition_guid)


def mbr_location(disk_signature: int, offset: int) -> PartitionLocation:
    """The location of the partition starting ``offset`` bytes into the MBR disk with that signature."""
    if not 0 <= disk_signature <= 0xFFFFFFFF:
        raise ValueError("an MBR disk signature is 32 bits, got {:#x}".format(disk_signature))
    if not 0 <= offset < 1 << 64:
        raise ValueError("a partition offset is a 64-bit byte count, got {}".format(offset))
    return PartitionLocation("mbr", disk_signature, offset, NO_GUID, NO_GUID)


def gpt_location(disk_guid: str, partition_guid: str) -> PartitionLocation:
    """The location of a GPT partition; GUIDs in any case, with or without braces."""
    return PartitionLocation("gpt", 0, 0, canonical_guid(disk_guid), canonical_guid(partition_guid))


def canonical_guid(text: str) -> str:
    try:
        return str(uuid.UUID(text.strip().strip("{}"))).upper()
    except ValueError:
        raise ValueError("{!r} is not a GUID".format(text)) from None


def canonical(loc: PartitionLocation) -> PartitionLocation:
    """``loc`` with its GUIDs in canonical form and the fields of the other style zeroed, for comparing."""
    if loc.style == "mbr":
        return mbr_location(loc.disk_signature, loc.offset)
    if loc.style == "gpt":
        return PartitionLocation("gpt", 0, 0, canonical_guid(loc.disk_guid) if loc.disk_guid else NO_GUID,
                                 canonical_guid(loc.partition_guid))
    raise ValueError("partition style must be 'mbr' or 'gpt', got {!r}".format(loc.style))


class Device(NamedTuple):
    """A decoded device element. ``locations`` are the partition blocks it embeds, outermost first;
    ``path`` is the file of a ramdisk, file or VHD device; ``options`` the options object's GUID."""
    kind: str                   # partition | boot | ramdisk | file | vhd | locate | disk | unknown
    locations: Tuple[PartitionLocation, ...]
    path: Optional[str]
    options: Optional[str]

    def describe(self) -> str:
        where = ", ".join(loc.describe() for loc in self.locations) or "boot"
        if self.kind == "partition":
            text = "partition=" + where
        elif self.kind in ("ramdisk", "file", "vhd"):
            text = "{}=[{}]{}".format(self.kind, where, self.path or "")
        else:
            text = self.kind
        return text + (",{" + self.options + "}" if self.options else "")


def _guid_text(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=bytes(raw))).upper()


def _zero(raw: bytes) -> bool:
    return not any(raw)


def encode_block(loc: PartitionLocation) -> bytes:
    """The 0x48-byte partition descriptor for ``loc``."""
    loc = canonical(loc)
    if loc.style == "mbr":
        part = struct.pack("<Q8x", loc.offset)
        disk = struct.pack("<I12x", loc.disk_signature)
        style = STYLE_MBR
    else:
        if not loc.disk_guid:
            raise ValueError("a GPT partition device needs the disk GUID too")
        part = uuid.UUID(loc.partition_guid).bytes_le
        disk = uuid.UUID(loc.disk_guid).bytes_le
        style = STYLE_GPT
    return (HEADER.pack(DEVICE_PARTITION, 0, BLOCK_SIZE, 0) + part + struct.pack("<II", LOCAL_HARDDISK, style)
            + disk + bytes(16))


def decode_block(data: bytes, at: int = 0) -> Optional[PartitionLocation]:
    """The location in the partition block at ``at``, or None when the bytes there are not one."""
    raw = bytes(data[at:at + BLOCK_SIZE])
    if len(raw) < BLOCK_SIZE:
        return None
    dtype, _flags, size, _reserved = HEADER.unpack_from(raw)
    local, style = struct.unpack_from("<II", raw, 0x20)
    if dtype != DEVICE_PARTITION or size != BLOCK_SIZE or local != LOCAL_HARDDISK or not _zero(raw[0x38:]):
        return None
    if style == STYLE_MBR:
        if not (_zero(raw[0x18:0x20]) and _zero(raw[0x2C:0x38])):
            return None
        return mbr_location(struct.unpack_from("<I", raw, 0x28)[0], struct.unpack_from("<Q", raw, 0x10)[0])
    if style == STYLE_GPT:
        return PartitionLocation("gpt", 0, 0, _guid_text(raw[0x28:0x38]), _guid_text(raw[0x10:0x20]))
    return None


def encode_partition_device(loc: PartitionLocation) -> bytes:
    """The element bcdedit writes for ``device partition=C:``: no options GUID, then the partition block."""
    return bytes(OPTIONS_SIZE) + encode_block(loc)


def encode_ramdisk_device(loc: PartitionLocation, path: str, options: str) -> bytes:
    """The element for ``ramdisk=[C:]<path>,{options}``: a ramdisk whose image is ``path`` on ``loc``."""
    name = (path + "\0").encode("utf-16-le")
    tail = encode_block(loc) + name
    file_header = FILE_PATH_HEADER.pack(1, FILE_PATH_HEADER.size + len(tail), LOCAL_FILE)
    body = RAMDISK_HEADER.pack(LOCAL_RAMDISK, 0, 0, 0) + file_header + tail
    return (uuid.UUID(canonical_guid(options)).bytes_le
            + HEADER.pack(DEVICE_DISK, 1, HEADER.size + len(body), 0) + body)


def encode_boot_device() -> bytes:
    """The element for ``device boot``: the partition the boot manager was loaded from."""
    return bytes(OPTIONS_SIZE) + HEADER.pack(DEVICE_BOOT, 1, BLOCK_SIZE, 0) + bytes(BLOCK_SIZE - HEADER.size)


def find_partition_blocks(data: bytes) -> List[Tuple[int, PartitionLocation]]:
    """(byte offset, location) of every partition block inside ``data``, wherever it is embedded."""
    found = []
    needle = struct.pack("<I", DEVICE_PARTITION)
    start = 0
    while True:
        at = data.find(needle, start)
        if at < 0 or at + BLOCK_SIZE > len(data):
            return found
        loc = decode_block(data, at)
        if loc is not None:
            found.append((at, loc))
            start = at + BLOCK_SIZE
        else:
            start = at + 1


def same_partition(a: PartitionLocation, b: PartitionLocation) -> bool:
    """True when ``a`` and ``b`` name the same partition; a GPT location without a disk GUID (as
    MountedDevices stores it) matches on the partition GUID alone."""
    a, b = canonical(a), canonical(b)
    if a.style != b.style:
        return False
    if a.style == "mbr":
        return a == b
    if not a.disk_guid or not b.disk_guid:
        return a.partition_guid == b.partition_guid
    return a == b


def replace_partition(data: bytes, old: PartitionLocation, new: PartitionLocation) -> bytes:
    """``data`` with every embedded partition block naming ``old`` rewritten to ``new``; every other
    byte unchanged (the block has a fixed size, so MBR and GPT can replace each other)."""
    replacement = encode_block(new)
    out = bytearray(data)
    for at, loc in find_partition_blocks(data):
        if same_partition(loc, old):
            out[at:at + BLOCK_SIZE] = replacement
    return bytes(out)


def _utf16_path(data: bytes, at: int, end: int) -> str:
    raw = bytes(data[at:end])
    raw = raw[:len(raw) & ~1]
    text = raw.decode("utf-16-le", "replace")
    return text.split("\0", 1)[0]


def _descriptor(data: bytes, at: int, depth: int) -> Tuple[str, List[PartitionLocation], Optional[str], int]:
    """Decode the device descriptor at ``at``: (kind, locations, path, end offset)."""
    if depth > MAX_DEPTH:
        raise BcdDeviceError("BCD device element nests devices more than {} deep".format(MAX_DEPTH))
    if at + HEADER.size > len(data):
        raise BcdDeviceError("BCD device element is cut short: {} bytes, a device header needs {} at "
                             "offset {:#x}".format(len(data), HEADER.size, at))
    dtype, _flags, size, _reserved = HEADER.unpack_from(data, at)
    end = at + size
    if size < HEADER.size or end > len(data):
        raise BcdDeviceError("BCD device element is cut short: its device at offset {:#x} says {:#x} bytes, "
                             "only {:#x} are there".format(at, size, len(data) - at))
    if dtype == DEVICE_BOOT:
        return "boot", [], None, end
    if dtype == DEVICE_LOCATE:
        return "locate", [loc for _, loc in find_partition_blocks(data[at:end])], None, end
    if dtype == DEVICE_PARTITION:
        if size < BLOCK_SIZE:
            raise BcdDeviceError("BCD partition device at offset {:#x} is {:#x} bytes, expected at least "
                                 "{:#x}".format(at, size, BLOCK_SIZE))
        local, = struct.unpack_from("<I", data, at + 0x20)
        if local == LOCAL_VIRTUAL_DISK:
            # a partition inside a VHD: the disk GUID/signature is followed by the VHD file's own device
            _kind, locs, path, _ = _descriptor(data[:end], at + VHD_FILE_AT, depth + 1)
            return "vhd", locs, path, end
        loc = decode_block(data, at)
        if loc is None:
            style, = struct.unpack_from("<I", data, at + 0x24)
            raise BcdDeviceError("BCD partition device at offset {:#x} has an unknown disk layout "
                                 "(local type {}, style {})".format(at, local, style))
        return "partition", [loc], None, end
    if dtype == DEVICE_DISK:
        if at + HEADER.size + 4 > end:
            raise BcdDeviceError("BCD disk device at offset {:#x} is cut short".format(at))
        local, = struct.unpack_from("<I", data, at + HEADER.size)
        if local == LOCAL_RAMDISK:
            parent = at + HEADER.size + RAMDISK_HEADER.size + FILE_PATH_HEADER.size
            kind = "ramdisk"
        elif local == LOCAL_FILE:
            parent = at + HEADER.size + 4 + FILE_PATH_HEADER.size
            kind = "file"
        else:
            return "disk", [], None, end
        if parent > end:
            raise BcdDeviceError("BCD {} device at offset {:#x} is cut short before its parent device"
                                 .format(kind, at))
        _pkind, locs, _ppath, parent_end = _descriptor(data[:end], parent, depth + 1)
        return kind, locs, _utf16_path(data, parent_end, end), end
    return "unknown", [loc for _, loc in find_partition_blocks(data[at:end])], None, end


def parse_device(data: bytes) -> Device:
    """Decode a device element. Raises BcdDeviceError (a ValueError) with one line when the bytes are cut
    short or inconsistent; an unknown device type gives kind "unknown" and the partition blocks found."""
    data = bytes(data)
    if len(data) < OPTIONS_SIZE + HEADER.size:
        raise BcdDeviceError("BCD device element is {} bytes long, at least {} are needed (truncated?)"
                             .format(len(data), OPTIONS_SIZE + HEADER.size))
    options = None if _zero(data[:OPTIONS_SIZE]) else _guid_text(data[:OPTIONS_SIZE])
    kind, locs, path, _end = _descriptor(data, OPTIONS_SIZE, 0)
    return Device(kind, tuple(locs), path, options)
