"""SYSTEM\\MountedDevices values: MBR (signature + byte offset) and GPT ("DMIO:ID:" + partition GUID)
encodings, and rewriting them for a new disk while leaving every other value alone."""
import struct
import uuid
from typing import Dict, Tuple

from guest_fixups.windows.bcd_device import gpt_location, mbr_location
from guest_fixups.windows.mounteddevices import (decode_mounted_device, encode_mounted_device,
                                                 rewrite_mounted_devices)

DISK_GUID = "5B4C4E2A-9C1D-4F3E-8A7B-6C5D4E3F2A1B"
WIN_GUID = "C0FFEE00-1234-4ABC-9DEF-0123456789AB"
NEW_WIN_GUID = "D0FFEE00-1234-4ABC-9DEF-0123456789AB"
USB_PATH = ("_??_USBSTOR#Disk&Ven_Kingston&Prod_DataTraveler&Rev_PMAP#0701"
            "#{53f56307-b6bf-11d0-94f2-00a0c91efb8b}")


class FakeSystemHive:
    """The two Hive calls rewrite_mounted_devices makes, over a dict."""

    def __init__(self, values: Dict[str, Tuple[int, bytes]]) -> None:
        self.values = dict(values)
        self.writes = []

    def raw_values(self, path: str) -> Dict[str, Tuple[int, bytes]]:
        return dict(self.values) if path == "MountedDevices" else {}

    def set_binary(self, path: str, name: str, data: bytes) -> None:
        assert path == "MountedDevices"
        self.writes.append(name)
        self.values[name] = (3, data)


def test_mbr_value_is_signature_then_byte_offset_little_endian():
    data = encode_mounted_device(mbr_location(0x1234ABCD, 1048576))
    assert data == bytes.fromhex("cdab3412" "0000100000000000")
    assert decode_mounted_device(data) == mbr_location(0x1234ABCD, 1048576)


def test_gpt_value_is_dmio_id_and_partition_guid_mixed_endian():
    data = encode_mounted_device(gpt_location(DISK_GUID, WIN_GUID))
    assert data == b"DMIO:ID:" + uuid.UUID(WIN_GUID).bytes_le
    loc = decode_mounted_device(data)
    assert loc.style == "gpt" and loc.partition_guid == WIN_GUID and loc.disk_guid == ""


def test_device_paths_and_odd_sizes_name_no_partition():
    assert decode_mounted_device((USB_PATH + "\0").encode("utf-16-le")) is None
    assert decode_mounted_device(b"\0" * 11) is None
    assert decode_mounted_device(b"DMIO:ID:" + b"\0" * 15) is None


def test_rewrite_points_drive_letter_and_volume_guid_at_the_new_disk():
    old, new = mbr_location(0x1234ABCD, 1048576), mbr_location(0x0BADF00D, 1048576)
    hive = FakeSystemHive({
        "\\DosDevices\\C:": (3, encode_mounted_device(old)),
        "\\??\\Volume{3f9a2b64-1c0d-11ef-9a3b-806e6f6e6963}": (3, encode_mounted_device(old)),
        "\\DosDevices\\D:": (3, encode_mounted_device(mbr_location(0x1234ABCD, 1 << 30))),
        "\\DosDevices\\E:": (3, (USB_PATH + "\0").encode("utf-16-le")),
    })
    before = dict(hive.values)
    lines = rewrite_mounted_devices(hive, {old: new})
    assert sorted(hive.writes) == ["\\??\\Volume{3f9a2b64-1c0d-11ef-9a3b-806e6f6e6963}", "\\DosDevices\\C:"]
    assert hive.values["\\DosDevices\\C:"] == (3, struct.pack("<IQ", 0x0BADF00D, 1048576))
    assert hive.values["\\DosDevices\\D:"] == before["\\DosDevices\\D:"]
    assert hive.values["\\DosDevices\\E:"] == before["\\DosDevices\\E:"]
    assert "\\DosDevices\\C: disk 0x1234abcd @1048576 -> disk 0x0badf00d @1048576" in lines


def test_gpt_values_match_on_partition_guid_alone():
    old, new = gpt_location(DISK_GUID, WIN_GUID), gpt_location(DISK_GUID, NEW_WIN_GUID)
    hive = FakeSystemHive({"\\DosDevices\\C:": (3, encode_mounted_device(old))})
    assert rewrite_mounted_devices(hive, {old: new}) == [
        "\\DosDevices\\C: partition {C0FFEE00-1234-4ABC-9DEF-0123456789AB} -> "
        "partition {D0FFEE00-1234-4ABC-9DEF-0123456789AB}"]
    assert hive.values["\\DosDevices\\C:"][1] == b"DMIO:ID:" + uuid.UUID(NEW_WIN_GUID).bytes_le


def test_mbr_volume_moved_to_gpt_disk_gets_the_dmio_form():
    old, new = mbr_location(0x1234ABCD, 1048576), gpt_location(DISK_GUID, WIN_GUID)
    hive = FakeSystemHive({"\\DosDevices\\C:": (3, encode_mounted_device(old))})
    rewrite_mounted_devices(hive, {old: new})
    assert decode_mounted_device(hive.values["\\DosDevices\\C:"][1]).partition_guid == WIN_GUID


def test_values_already_right_are_not_written():
    loc = mbr_location(0x1234ABCD, 1048576)
    hive = FakeSystemHive({"\\DosDevices\\C:": (3, encode_mounted_device(loc))})
    assert rewrite_mounted_devices(hive, {loc: loc}) == [] and hive.writes == []
