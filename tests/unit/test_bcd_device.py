"""BCD device elements: the partition block's byte layout, finding it wherever it is embedded, rewriting
it without touching any other byte, and one-line errors on cut or garbage input."""
import random
import struct
import uuid

import pytest

from guest_fixups.windows.bcd_device import (BLOCK_SIZE, BcdDeviceError, decode_block, encode_block,
                                             encode_boot_device, encode_partition_device,
                                             encode_ramdisk_device, find_partition_blocks, gpt_location,
                                             mbr_location, parse_device, replace_partition, same_partition)

# `device partition=C:` of a Windows 8.1 loader on an MBR disk, as shown on mistyprojects.co.uk
# (BCDEdit notes, "Devices Partition - Data"): signature b3eba8f1, partition at byte 0x15f00000.
BCDEDIT_MBR_SAMPLE = bytes(int(b, 16) for b in (
    "00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,06,00,00,00,"
    "00,00,00,00,48,00,00,00,00,00,00,00,00,00,f0,15,00,00,00,00,"
    "00,00,00,00,00,00,00,00,00,00,00,00,01,00,00,00,f1,a8,eb,b3,"
    "00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,00,"
    "00,00,00,00,00,00,00,00").split(","))

DISK_GUID = "5B4C4E2A-9C1D-4F3E-8A7B-6C5D4E3F2A1B"
ESP_GUID = "0F1E2D3C-4B5A-4968-8776-A5B4C3D2E1F0"
WIN_GUID = "C0FFEE00-1234-4ABC-9DEF-0123456789AB"
RAMDISK_OPTIONS = "{7619dcc8-fafe-11d9-b411-000476eba25f}"
WINRE = "\\Recovery\\WindowsRE\\Winre.wim"

OLD_WIN = mbr_location(0xB3EBA8F1, 0x15F00000)
NEW_WIN = mbr_location(0x0BADF00D, 0x15F00000)


def test_mbr_partition_device_is_byte_for_byte_what_bcdedit_writes():
    assert encode_partition_device(mbr_location(0xB3EBA8F1, 368050176)) == BCDEDIT_MBR_SAMPLE


def test_bcdedit_mbr_sample_decodes_to_signature_and_byte_offset():
    dev = parse_device(BCDEDIT_MBR_SAMPLE)
    assert dev.kind == "partition"
    assert dev.locations == (mbr_location(0xB3EBA8F1, 368050176),)
    assert dev.options is None and dev.path is None
    assert dev.describe() == "partition=disk 0xb3eba8f1 @368050176"


def test_gpt_partition_device_holds_partition_guid_then_style_0_then_disk_guid_mixed_endian():
    data = encode_partition_device(gpt_location(DISK_GUID, WIN_GUID))
    assert len(data) == 0x58
    assert struct.unpack_from("<IIII", data, 0x10) == (6, 0, 0x48, 0)
    assert data[0x20:0x30] == uuid.UUID(WIN_GUID).bytes_le
    assert struct.unpack_from("<II", data, 0x30) == (0, 0)    # hard disk, GPT
    assert data[0x38:0x48] == uuid.UUID(DISK_GUID).bytes_le
    assert data[0x48:] == bytes(16)


def test_partition_devices_round_trip_for_both_styles():
    for loc in (mbr_location(0xFFFFFFFF, 5 << 40), mbr_location(0, 32256), gpt_location(DISK_GUID, ESP_GUID)):
        assert parse_device(encode_partition_device(loc)).locations == (loc,)


def test_gpt_guids_are_canonical_whatever_case_or_braces_they_came_in():
    loc = gpt_location("{" + DISK_GUID.lower() + "}", WIN_GUID.lower())
    assert loc.disk_guid == DISK_GUID and loc.partition_guid == WIN_GUID
    assert same_partition(loc, gpt_location(DISK_GUID, WIN_GUID))


def test_gpt_block_without_disk_guid_cannot_be_encoded():
    with pytest.raises(ValueError, match="disk GUID"):
        encode_block(gpt_location(DISK_GUID, WIN_GUID)._replace(disk_guid=""))


def test_boot_device_is_recognised_and_names_no_partition():
    dev = parse_device(encode_boot_device())
    assert dev.kind == "boot" and dev.locations == ()
    assert find_partition_blocks(encode_boot_device()) == []


def test_ramdisk_element_decodes_image_path_options_and_partition():
    data = encode_ramdisk_device(OLD_WIN, WINRE, RAMDISK_OPTIONS)
    dev = parse_device(data)
    assert dev.kind == "ramdisk"
    assert dev.path == WINRE
    assert dev.options == "7619DCC8-FAFE-11D9-B411-000476EBA25F"
    assert dev.locations == (OLD_WIN,)
    assert dev.describe() == ("ramdisk=[disk 0xb3eba8f1 @368050176]\\Recovery\\WindowsRE\\Winre.wim,"
                              "{7619DCC8-FAFE-11D9-B411-000476EBA25F}")


def test_ramdisk_element_embedded_partition_is_rewritten():
    data = encode_ramdisk_device(OLD_WIN, WINRE, RAMDISK_OPTIONS)
    (at, loc), = find_partition_blocks(data)
    assert at == 0x44 and loc == OLD_WIN       # after the options GUID, ramdisk header and file header
    out = replace_partition(data, OLD_WIN, NEW_WIN)
    assert len(out) == len(data)
    changed = [i for i in range(len(data)) if data[i] != out[i]]
    assert changed and all(at <= i < at + BLOCK_SIZE for i in changed)
    assert out == encode_ramdisk_device(NEW_WIN, WINRE, RAMDISK_OPTIONS)
    dev = parse_device(out)
    assert dev.locations == (NEW_WIN,) and dev.path == WINRE


def test_replace_changes_only_the_signature_bytes_of_an_mbr_partition():
    out = replace_partition(BCDEDIT_MBR_SAMPLE, OLD_WIN, NEW_WIN)
    assert [i for i in range(len(out)) if out[i] != BCDEDIT_MBR_SAMPLE[i]] == [0x38, 0x39, 0x3A, 0x3B]


def test_replace_leaves_elements_naming_other_partitions_identical():
    other = encode_partition_device(mbr_location(0xB3EBA8F1, 1048576))
    assert replace_partition(other, OLD_WIN, NEW_WIN) == other
    gpt = encode_partition_device(gpt_location(DISK_GUID, ESP_GUID))
    assert replace_partition(gpt, gpt_location(DISK_GUID, WIN_GUID), NEW_WIN) == gpt


def test_mbr_partition_can_become_gpt_in_place():
    new = gpt_location(DISK_GUID, WIN_GUID)
    out = replace_partition(encode_ramdisk_device(OLD_WIN, WINRE, RAMDISK_OPTIONS), OLD_WIN, new)
    assert out == encode_ramdisk_device(new, WINRE, RAMDISK_OPTIONS)


def test_every_embedded_copy_of_the_old_partition_is_rewritten():
    data = encode_partition_device(OLD_WIN) + encode_ramdisk_device(OLD_WIN, WINRE, RAMDISK_OPTIONS)
    out = replace_partition(data, OLD_WIN, NEW_WIN)
    assert [loc for _, loc in find_partition_blocks(out)] == [NEW_WIN, NEW_WIN]


def _vhd_element(inner: bytes, host: bytes, path: str) -> bytes:
    """``vhd=[host]path`` as laid out by Windows (the shape update_device.sh by J. Zeller reproduces): a
    partition inside the VHD, then a file device for the .vhd whose parent is the host partition."""
    name = (path + "\0").encode("utf-16-le")
    file_tail = struct.pack("<III", 1, 12 + len(host) + len(name), 5) + host + name
    file_dev = struct.pack("<IIII", 0, 0, 16 + 4 + len(file_tail), 0) + struct.pack("<I", 5) + file_tail
    part = bytearray(inner[16:16 + 0x38])                        # the VHD's partition, no trailing zeros
    struct.pack_into("<I", part, 0x20, 6)                        # local device: virtual disk
    struct.pack_into("<I", part, 0x08, len(part) + len(file_dev))
    return bytes(16) + bytes(part) + file_dev


def test_vhd_element_rewrites_the_host_partition_not_the_partition_inside_the_vhd():
    inside = encode_partition_device(mbr_location(0x11111111, 1048576))
    data = _vhd_element(inside, encode_partition_device(OLD_WIN)[16:], "\\vhd\\win.vhdx")
    dev = parse_device(data)
    assert dev.kind == "vhd" and dev.locations == (OLD_WIN,) and dev.path == "\\vhd\\win.vhdx"
    assert [at for at, _ in find_partition_blocks(data)] == [0x68]
    out = replace_partition(data, OLD_WIN, NEW_WIN)
    assert out[:0x68] == data[:0x68]
    assert parse_device(out).locations == (NEW_WIN,)


def test_unknown_device_type_is_reported_not_refused():
    data = bytes(16) + struct.pack("<IIII", 4, 0, 0x20, 0) + bytes(16)
    assert parse_device(data).kind == "unknown"


def test_look_alike_block_with_trailing_bytes_is_not_a_partition():
    block = bytearray(encode_block(OLD_WIN))
    block[0x40] = 1
    assert decode_block(bytes(block)) is None
    assert replace_partition(bytes(block), OLD_WIN, NEW_WIN) == bytes(block)


@pytest.mark.parametrize("data,message", [
    (b"", "0 bytes long"),
    (bytes(20), "20 bytes long"),
    (bytes(16) + struct.pack("<IIII", 6, 0, 0x48, 0), "cut short"),
    (bytes(16) + struct.pack("<IIII", 6, 0, 0x08, 0), "cut short"),
    (bytes(16) + struct.pack("<IIII", 6, 0, 0x20, 0) + bytes(16), "expected at least 0x48"),
])
def test_truncated_elements_raise_one_line_value_error(data, message):
    with pytest.raises(BcdDeviceError, match=message) as info:
        parse_device(data)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_every_prefix_of_a_ramdisk_element_parses_or_raises_bcd_device_error():
    data = encode_ramdisk_device(OLD_WIN, WINRE, RAMDISK_OPTIONS)
    for n in range(len(data)):
        try:
            parse_device(data[:n])
        except BcdDeviceError as e:
            assert "\n" not in str(e)


def test_garbage_never_raises_anything_but_bcd_device_error():
    rng = random.Random(4)
    seeds = [encode_ramdisk_device(OLD_WIN, WINRE, RAMDISK_OPTIONS), BCDEDIT_MBR_SAMPLE, encode_boot_device()]
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = bytearray(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))
        try:
            parse_device(bytes(data))
        except BcdDeviceError as e:
            assert "\n" not in str(e)
        find_partition_blocks(bytes(data))
        replace_partition(bytes(data), OLD_WIN, NEW_WIN)
