"""A realistic BCD store of an installed Windows Server 2019 / Windows 11, as a real hive file.

What ``bcdedit /enum all`` shows on such a system: the boot manager on the system partition (the active
partition on BIOS, the ESP on UEFI; plus {fwbootmgr} on UEFI), one OS loader on the Windows partition
whose recovery sequence is a WinRE loader booting ramdisk=[C:]\\Recovery\\WindowsRE\\Winre.wim, the
ramdisk's device options object (SDI device and path), the resume loader and the memory diagnostic, plus
the inherited settings objects. Element encodings follow what Windows writes: devices, integers (8 bytes),
booleans (1 byte) and integer lists as REG_BINARY, strings and objects as REG_SZ, object lists as
REG_MULTI_SZ; keys are lower-case.

No clock and no random input: the same arguments give the same bytes.
"""
import os
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

from guest_fixups.windows.bcd_device import (PartitionLocation, encode_partition_device,
                                             encode_ramdisk_device)
from guest_fixups.windows.registry import Hive
from testvms.windows.emptyhive import empty_hive

BOOTMGR = "{9dea862c-5cdd-4e70-acc1-f32b344d4795}"
FWBOOTMGR = "{a5a30fa2-3d06-4e9f-b5f4-a01df9d1fcba}"
MEMDIAG = "{b2721d73-1db4-4c62-bf78-c548a880142d}"
GLOBALSETTINGS = "{7ea2e1ac-2e61-4728-aaa3-896d9d0a9f0e}"
BOOTLOADERSETTINGS = "{6efb52bf-1766-41db-a6b3-0ee5eff72bd7}"
RESUMELOADERSETTINGS = "{1afa9c49-16ab-4a5c-901b-212802da9460}"
HYPERVISORSETTINGS = "{7ff607e0-4395-11db-b0de-0800200c9a66}"
DBGSETTINGS = "{4636856e-540f-4170-a130-a84776f4c654}"
EMSSETTINGS = "{0ce4991b-e6b3-4b16-b23c-5e0d9250e5d9}"
BADMEMORY = "{5189b25c-5558-4bf2-bca4-289b11bd29e2}"
RAMDISK_OPTIONS = "{7619dcc8-fafe-11d9-b411-000476eba25f}"

# The installation's own objects: Windows makes these GUIDs at setup; fixed here for reproducible files.
OS_LOADER = "{b4a1c5d2-7e31-11ee-9d5a-c8d9d2a1b001}"
WINRE_LOADER = "{b4a1c5d3-7e31-11ee-9d5a-c8d9d2a1b001}"
RESUME = "{b4a1c5d1-7e31-11ee-9d5a-c8d9d2a1b001}"

WINRE_WIM = "\\Recovery\\WindowsRE\\Winre.wim"
WINRE_SDI = "\\Recovery\\WindowsRE\\boot.sdi"

TYPE_FWBOOTMGR = 0x10100001
TYPE_BOOTMGR = 0x10100002
TYPE_OSLOADER = 0x10200003
TYPE_RESUME = 0x10200004
TYPE_MEMDIAG = 0x10200005
TYPE_DEVICE = 0x30000000
TYPE_INHERIT_ANY = 0x20100000
TYPE_INHERIT_OSLOADER = 0x20200003
TYPE_INHERIT_RESUME = 0x20200004

REG_SZ, REG_BINARY, REG_DWORD, REG_MULTI_SZ = 1, 3, 4, 7

ElementValue = Union[bytes, str, int, bool, List[str]]


@dataclass(frozen=True)
class BcdLayout:
    """What a built store points where, for tests to assert against."""
    firmware: str
    system: PartitionLocation
    windows: PartitionLocation
    recovery: PartitionLocation    # where Winre.wim and boot.sdi are
    default: str
    winre_options: str             # GUID of the WinRE ramdisk's device options object
    objects: Dict[str, int]        # GUID -> object type


def _integer(n: int) -> bytes:
    return struct.pack("<Q", n)


def _boolean(b: bool) -> bytes:
    return b"\x01" if b else b"\x00"


def _set_element(hive: Hive, guid: str, etype: int, value: ElementValue) -> None:
    path = "Objects\\{}\\Elements\\{:08x}".format(guid, etype)
    fmt = (etype >> 24) & 0xF
    if fmt in (1, 5, 6, 7):
        assert isinstance(value, bytes), (guid, hex(etype))
        hive.set_binary(path, "Element", value)
    elif fmt in (2, 3):
        assert isinstance(value, str), (guid, hex(etype))
        hive.set_sz(path, "Element", value)
    elif fmt == 4:
        assert isinstance(value, list), (guid, hex(etype))
        hive.set_multi_sz(path, "Element", value)
    else:
        raise ValueError("unknown BCD element format {} in {:#x}".format(fmt, etype))


def _add_object(hive: Hive, guid: str, otype: int, elements: Dict[int, ElementValue]) -> None:
    hive.set_dword("Objects\\{}\\Description".format(guid), "Type", otype)
    hive.ensure_key("Objects\\{}\\Elements".format(guid))
    for etype in sorted(elements):
        _set_element(hive, guid, etype, elements[etype])


def _objects(system: PartitionLocation, windows: PartitionLocation, recovery: PartitionLocation, uefi: bool,
             winre_options: str, description: str) -> Dict[str, Tuple[int, Dict[int, ElementValue]]]:
    ext = ".efi" if uefi else ".exe"
    boot_dir = "\\EFI\\Microsoft\\Boot" if uefi else "\\Boot"
    system_device = encode_partition_device(system)
    windows_device = encode_partition_device(windows)
    winre_device = encode_ramdisk_device(recovery, WINRE_WIM, winre_options)
    bootmgr: Dict[int, ElementValue] = {
        0x11000001: system_device,
        0x12000004: "Windows Boot Manager",
        0x12000005: "en-US",
        0x14000006: [GLOBALSETTINGS],
        0x23000003: OS_LOADER,
        0x23000006: RESUME,
        0x24000001: [OS_LOADER],
        0x24000010: [MEMDIAG],
        0x25000004: _integer(30),
    }
    if uefi:
        bootmgr[0x12000002] = "\\EFI\\Microsoft\\Boot\\bootmgfw.efi"
    objects = {
        BOOTMGR: (TYPE_BOOTMGR, bootmgr),
        OS_LOADER: (TYPE_OSLOADER, {
            0x11000001: windows_device,
            0x12000002: "\\Windows\\system32\\winload" + ext,
            0x12000004: description,
            0x12000005: "en-US",
            0x14000006: [BOOTLOADERSETTINGS],
            0x14000008: [WINRE_LOADER],      # recoverysequence
            0x16000009: _boolean(True),      # recoveryenabled
            0x16000060: _boolean(True),      # isolatedcontext
            0x17000077: struct.pack("<Q", 0x15000075),   # allowedinmemorysettings
            0x21000001: windows_device,
            0x22000002: "\\Windows",
            0x23000009: RESUME,
            0x25000020: _integer(0),         # nx OptIn
            0x250000c2: _integer(1),         # bootmenupolicy Standard
        }),
        WINRE_LOADER: (TYPE_OSLOADER, {
            0x11000001: winre_device,
            0x12000002: "\\windows\\system32\\winload" + ext,
            0x12000004: "Windows Recovery Environment",
            0x12000005: "en-US",
            0x14000006: [BOOTLOADERSETTINGS],
            0x16000060: _boolean(True),
            0x17000077: struct.pack("<Q", 0x15000075),
            0x21000001: winre_device,
            0x22000002: "\\windows",
            0x25000020: _integer(0),
            0x26000010: _boolean(True),      # detecthal
            0x26000022: _boolean(True),      # winpe
        }),
        winre_options: (TYPE_DEVICE, {
            0x12000004: "Windows Recovery",
            0x31000003: encode_partition_device(recovery),   # ramdisksdidevice
            0x32000004: WINRE_SDI,           # ramdisksdipath
        }),
        RESUME: (TYPE_RESUME, {
            0x11000001: windows_device,
            0x12000002: "\\Windows\\system32\\winresume" + ext,
            0x12000004: "Windows Resume Application",
            0x12000005: "en-US",
            0x14000006: [RESUMELOADERSETTINGS],
            0x16000060: _boolean(True),
            0x17000077: struct.pack("<Q", 0x15000075),
            0x21000001: windows_device,      # filedevice: where hiberfil.sys is
            0x22000002: "\\hiberfil.sys",
            0x26000006: _boolean(False),     # debugoptionenabled
        }),
        MEMDIAG: (TYPE_MEMDIAG, {
            0x11000001: system_device,
            0x12000002: boot_dir + "\\memtest" + ext,
            0x12000004: "Windows Memory Diagnostic",
            0x12000005: "en-US",
            0x14000006: [GLOBALSETTINGS],
            0x1600000b: _boolean(True),      # badmemoryaccess
        }),
        GLOBALSETTINGS: (TYPE_INHERIT_ANY, {
            0x14000006: [DBGSETTINGS, EMSSETTINGS, BADMEMORY],
        }),
        BOOTLOADERSETTINGS: (TYPE_INHERIT_OSLOADER, {
            0x14000006: [GLOBALSETTINGS, HYPERVISORSETTINGS],
        }),
        RESUMELOADERSETTINGS: (TYPE_INHERIT_RESUME, {
            0x14000006: [GLOBALSETTINGS],
        }),
        HYPERVISORSETTINGS: (TYPE_INHERIT_OSLOADER, {
            0x250000f3: _integer(0),         # hypervisordebugtype Serial
            0x250000f4: _integer(1),         # hypervisordebugport
            0x250000f5: _integer(115200),    # hypervisorbaudrate
        }),
        DBGSETTINGS: (TYPE_INHERIT_ANY, {
            0x15000011: _integer(0),         # debugtype Serial
            0x15000013: _integer(1),         # debugport
            0x15000014: _integer(115200),    # baudrate
        }),
        EMSSETTINGS: (TYPE_INHERIT_ANY, {
            0x16000020: _boolean(False),     # bootems
        }),
        BADMEMORY: (TYPE_INHERIT_ANY, {}),
    }
    if uefi:
        objects[FWBOOTMGR] = (TYPE_FWBOOTMGR, {
            0x12000004: "Firmware Boot Manager",
            0x24000001: [BOOTMGR],
            0x25000004: _integer(0),
        })
    return objects


def build_bcd(path: Union[str, "os.PathLike[str]"], system: PartitionLocation, windows: PartitionLocation,
              firmware: str = "bios", recovery: Optional[PartitionLocation] = None,
              winre_options: str = RAMDISK_OPTIONS, description: str = "Windows Server") -> BcdLayout:
    """Write a BCD store to ``path`` whose boot manager lives on ``system`` and whose Windows and
    hibernation file live on ``windows``; Winre.wim and boot.sdi live on ``recovery`` (a recovery partition,
    as Windows 10/11 setup makes) or, when None, on ``windows`` (as older setups and upgrades leave them).
    ``firmware`` is "bios" or "uefi"; ``description`` is the loader's menu entry ("Windows 11" on clients).
    """
    if firmware not in ("bios", "uefi"):
        raise ValueError("firmware must be 'bios' or 'uefi', got {!r}".format(firmware))
    path = os.fspath(path)
    with open(path, "wb") as f:
        store = "\\Boot\\BCD" if firmware == "bios" else "\\EFI\\Microsoft\\Boot\\BCD"
        f.write(empty_hive("NewStoreRoot", store))
    hive = Hive(path, write=True)
    hive.set_sz("Description", "KeyName", "BCD00000000")
    hive.set_dword("Description", "System", 1)
    hive.set_dword("Description", "TreatAsSystem", 1)
    winre_options = winre_options.lower()
    recovery = windows if recovery is None else recovery
    objects = _objects(system, windows, recovery, firmware == "uefi", winre_options, description)
    for guid in sorted(objects):
        otype, elements = objects[guid]
        _add_object(hive, guid, otype, elements)
    hive.commit()
    return BcdLayout(firmware, system, windows, recovery, OS_LOADER, winre_options,
                     {g: t for g, (t, _) in objects.items()})


def device_elements(layout: BcdLayout) -> Dict[str, Sequence[str]]:
    """GUID -> element key names that hold a device, in a store built with ``layout``."""
    return {
        BOOTMGR: ("11000001",),
        OS_LOADER: ("11000001", "21000001"),
        WINRE_LOADER: ("11000001", "21000001"),
        layout.winre_options: ("31000003",),
        RESUME: ("11000001", "21000001"),
        MEMDIAG: ("11000001",),
    }
