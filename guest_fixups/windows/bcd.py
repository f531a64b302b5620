"""The BCD store (\\Boot\\BCD or \\EFI\\Microsoft\\Boot\\BCD) as a registry hive: list its objects and
point every device element at the partitions of the target disk.

A BCD hive holds Description\\KeyName = "BCD00000000" and Objects\\{guid}\\Description\\Type plus
Objects\\{guid}\\Elements\\<type as 8 hex digits>\\Element. An element type's bits 24-27 give its format:
1 device (REG_BINARY, see bcd_device), 2 string, 3 object, 4 object list, 5 integer, 6 boolean.
"""
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

from diskfmt import gpt as gptfmt
from diskfmt import mbr as mbrfmt
from diskfmt.errors import FormatError
from guest_fixups.windows.bcd_device import (BLOCK_SIZE, BcdDeviceError, Device, PartitionLocation, canonical,
                                             encode_block, find_partition_blocks, gpt_location, mbr_location,
                                             parse_device, same_partition)
from guest_fixups.windows.registry import REG_BINARY, REG_MULTI_SZ, REG_SZ, Hive, decode
from v2v.errors import FixupError

BOOTMGR = "{9dea862c-5cdd-4e70-acc1-f32b344d4795}"
STORE_KEY_NAME = "BCD00000000"

FORMAT_DEVICE = 1

ELEMENT_APPLICATION_DEVICE = 0x11000001
ELEMENT_APPLICATION_PATH = 0x12000002
ELEMENT_DESCRIPTION = 0x12000004
ELEMENT_DEFAULT_OBJECT = 0x23000003
ELEMENT_OS_DEVICE = 0x21000001

OBJECT_OS_LOADER = 0x10200003   # Windows Boot Loader (winload), WinRE's ramdisk loader included
OBJECT_RESUME = 0x10200004

WELL_KNOWN = {
    BOOTMGR: "Windows Boot Manager",
    "{a5a30fa2-3d06-4e9f-b5f4-a01df9d1fcba}": "Firmware Boot Manager",
    "{b2721d73-1db4-4c62-bf78-c548a880142d}": "Windows Memory Diagnostic",
    "{466f5a88-0af2-4f76-9038-095b170dc21c}": "Legacy OS loader",
    "{7ea2e1ac-2e61-4728-aaa3-896d9d0a9f0e}": "globalsettings",
    "{6efb52bf-1766-41db-a6b3-0ee5eff72bd7}": "bootloadersettings",
    "{1afa9c49-16ab-4a5c-901b-212802da9460}": "resumeloadersettings",
    "{ae5534e0-a924-466c-b836-758539a3ee3a}": "ramdiskoptions",
    "{4636856e-540f-4170-a130-a84776f4c654}": "dbgsettings",
    "{0ce4991b-e6b3-4b16-b23c-5e0d9250e5d9}": "emssettings",
    "{5189b25c-5558-4bf2-bca4-289b11bd29e2}": "badmemory",
    "{7ff607e0-4395-11db-b0de-0800200c9a66}": "hypervisorsettings",
    "{7619dcc8-fafe-11d9-b411-000476eba25f}": "Ramdisk Options",
}

DEVICE_ELEMENT_NAMES = {
    0x11000001: "device",
    0x11000043: "bsdlogdevice",
    0x21000001: "osdevice",
    0x31000003: "ramdisksdidevice",
}

ReadFn = Callable[[int, int], bytes]


@dataclass(frozen=True)
class BcdObject:
    """One object of the store: its key name, Description\\Type, description element and device elements
    (element key name, e.g. "11000001", to decoded device)."""
    guid: str
    type: int
    description: Optional[str]
    devices: Mapping[str, Device]

    @property
    def name(self) -> str:
        return self.description or WELL_KNOWN.get(self.guid.lower(), self.guid)


def _store_name(hive: Hive) -> str:
    return os.path.basename(hive.path)


def check_store(hive: Hive) -> None:
    """Raise FixupError unless ``hive`` is a BCD store."""
    if hive.get("Description", "KeyName") != STORE_KEY_NAME:
        raise FixupError("{} is not a BCD store: it has no Description\\KeyName {}".format(
            _store_name(hive), STORE_KEY_NAME))
    if not hive.has_key("Objects"):
        raise FixupError("{} is not a BCD store: it has no Objects key".format(_store_name(hive)))


def _element_type(name: str) -> Optional[int]:
    try:
        return int(name, 16)
    except ValueError:
        return None


def _is_device_element(etype: int) -> bool:
    return (etype >> 24) & 0xF == FORMAT_DEVICE


def _element(hive: Hive, guid: str, element: str) -> Optional[Tuple[int, bytes]]:
    for name, value in hive.raw_values("Objects\\{}\\Elements\\{}".format(guid, element)).items():
        if name.lower() == "element":
            return value
    return None


def _device_elements(hive: Hive, guid: str) -> List[Tuple[str, bytes]]:
    out = []
    for element in hive.subkeys("Objects\\{}\\Elements".format(guid)):
        etype = _element_type(element)
        if etype is None or not _is_device_element(etype):
            continue
        value = _element(hive, guid, element)
        if value is not None and value[0] == REG_BINARY:
            out.append((element, bytes(value[1])))
    return out


def _object(hive: Hive, guid: str) -> BcdObject:
    otype = hive.get("Objects\\{}\\Description".format(guid), "Type", 0)
    value = _element(hive, guid, "{:08x}".format(ELEMENT_DESCRIPTION))
    text = decode(*value) if value is not None and value[0] == REG_SZ else None
    devices = {}
    for element, data in _device_elements(hive, guid):
        try:
            devices[element] = parse_device(data)
        except BcdDeviceError:
            # still list it: what cannot be decoded may hold blocks that rewrite_bcd finds by scanning
            found = tuple(loc for _, loc in find_partition_blocks(data))
            devices[element] = Device("invalid", found, None, None)
    return BcdObject(guid, otype if isinstance(otype, int) else 0, text if isinstance(text, str) else None,
                     devices)


def describe_bcd(hive: Hive) -> List[BcdObject]:
    """Every object of the store, in key order. Raises FixupError when ``hive`` is not a BCD store."""
    check_store(hive)
    return [_object(hive, guid) for guid in hive.subkeys("Objects")]


def os_loaders(hive: Hive) -> List[BcdObject]:
    """The Windows Boot Loader objects of the store (an OS entry of bcdedit, or WinRE's)."""
    return [obj for obj in describe_bcd(hive) if obj.type == OBJECT_OS_LOADER]


def default_loader(hive: Hive) -> Optional[str]:
    """The GUID (as "{...}", lower case) of the boot manager's default object, or None when unset."""
    check_store(hive)
    value = _element(hive, BOOTMGR, "{:08x}".format(ELEMENT_DEFAULT_OBJECT))
    if value is None or value[0] not in (REG_SZ, REG_MULTI_SZ):
        return None
    text = decode(*value)
    if isinstance(text, list):
        text = text[0] if text else ""
    return text.strip().lower() or None


def _target(mapping: Mapping[PartitionLocation, PartitionLocation],
            loc: PartitionLocation) -> Optional[PartitionLocation]:
    for old, new in mapping.items():
        if same_partition(old, loc):
            return new
    return None


def _element_label(obj: BcdObject, element: str) -> str:
    etype = _element_type(element) or 0
    if etype == ELEMENT_OS_DEVICE and obj.type == OBJECT_RESUME:
        name = "filedevice"
    else:
        name = DEVICE_ELEMENT_NAMES.get(etype, "element " + element)
    kind = obj.devices.get(element)
    if kind is not None and kind.kind not in ("partition", "invalid"):
        name += " ({})".format(kind.kind)
    return "{} {}".format(obj.name, name)


def rewrite_bcd(hive: Hive, mapping: Mapping[PartitionLocation, PartitionLocation]) -> List[str]:
    """Point every device element naming an old partition of ``mapping`` at its new location: the
    partition block is rewritten wherever it is embedded (device, osdevice, ramdisk and its SDI device,
    VHD parents), every other byte is kept. ``hive`` is open for writing; the caller commits.

    Returns one line per changed block, e.g. "Windows Boot Manager device: disk 0x1234abcd @1048576 ->
    disk 0x00005678 @1048576". Raises FixupError when ``hive`` is not a BCD store or ``mapping`` names a
    GPT target without a disk GUID; nothing is written then.
    """
    check_store(hive)
    for new in mapping.values():
        try:
            encode_block(new)
        except ValueError as e:
            raise FixupError("cannot write BCD device for {}: {}".format(new.describe(), e)) from None
    writes = []
    lines = []
    for guid in hive.subkeys("Objects"):
        obj = _object(hive, guid)
        for element, data in _device_elements(hive, guid):
            out = bytearray(data)
            for at, loc in find_partition_blocks(data):
                new = _target(mapping, loc)
                if new is None:
                    continue
                block = encode_block(new)
                if block == data[at:at + BLOCK_SIZE]:
                    continue
                out[at:at + BLOCK_SIZE] = block
                lines.append("{}: {} -> {}".format(_element_label(obj, element), loc.describe(),
                                                     canonical(new).describe()))
            if bytes(out) != data:
                writes.append(("Objects\\{}\\Elements\\{}".format(guid, element), bytes(out)))
    for path, data in writes:
        hive.set_binary(path, "Element", data)
    return lines


def partition_locations(disk: Union[bytes, bytearray, ReadFn], disk_size: Optional[int] = None,
                        sector_size: int = mbrfmt.SECTOR_SIZE) -> Dict[int, PartitionLocation]:
    """Partition number (Linux numbering: 1-4 primary, 5+ logical, GPT entry index) -> where Windows
    thinks it is, for every partition of the disk read through ``disk`` (its first sectors as bytes, or a
    ``read(offset, length)`` callable). Extended containers are left out: nothing boots from them.

    Raises FixupError with the parser's one-line reason when the partition table is unreadable.
    """
    read = _bytes_reader(bytes(disk)) if isinstance(disk, (bytes, bytearray)) else disk
    try:
        table = mbrfmt.read_mbr(read, disk_size, sector_size)
        if table.protective:
            gpt = gptfmt.read_gpt(read, disk_size, sector_size)
            return {p.number: gpt_location(gpt.disk_guid, p.unique_guid) for p in gpt.partitions}
        return {p.number: mbr_location(table.disk_signature, p.start_lba * sector_size)
                for p in table.partitions if not mbrfmt.is_extended_type(p.type_id)}
    except FormatError as e:
        raise FixupError("cannot locate the Windows partitions: {}".format(e)) from None


def _bytes_reader(image: bytes) -> ReadFn:
    def read(offset: int, length: int) -> bytes:
        return image[offset:offset + length]
    return read


def mapping_by_number(old: Mapping[int, PartitionLocation],
                      new: Mapping[int, PartitionLocation]) -> Dict[PartitionLocation, PartitionLocation]:
    """old location -> new location for every partition number present on both disks and moved."""
    return {old[n]: new[n] for n in sorted(old) if n in new and not same_partition(old[n], new[n])}
