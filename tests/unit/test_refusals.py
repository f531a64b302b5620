"""Refusals of Windows guests we cannot convert: pure checks on bytes and parsed partition tables."""
import struct

import pytest

from diskfmt.gpt import TYPE_MS_LDM_DATA, TYPE_MS_LDM_METADATA, Gpt, GptHeader, GptPartition
from diskfmt.mbr import parse_mbr
from guest_fixups.windows.refusals import bitlocker_reason, dynamic_disk_reason, hibernation_reason

BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B9B6EF7C7B"


def mbr_sector(*types: int) -> bytes:
    sector = bytearray(512)
    struct.pack_into("<I", sector, 440, 0x5EED1234)
    for n, type_id in enumerate(types):
        struct.pack_into("<B3sB3sII", sector, 446 + 16 * n, 0x80 if n == 0 else 0, b"\0" * 3, type_id,
                         b"\0" * 3, 2048 + n * 204800, 204800)
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def gpt_with(*type_guids: str) -> Gpt:
    header = GptHeader(0x10000, 92, 1, 2097151, 34, 2097118, "0E4F3A2B-0000-4000-8000-000000000001", 2, 128,
                       128, 0)
    parts = [GptPartition(n, t, "0E4F3A2B-0000-4000-8000-0000000000{:02X}".format(n), 2048 * n,
                          2048 * n + 2047, 0, "") for n, t in enumerate(type_guids, 1)]
    return Gpt(header.disk_guid, 512, header, parts, False, [])


@pytest.mark.parametrize("magic", [b"hibr", b"HIBR", b"wake", b"WAKE", b"rstr", b"RSTR"])
def test_hibernated_windows_refused(magic):
    reason = hibernation_reason(magic + b"\0" * 4092)
    assert reason is not None and "hibernated" in reason and magic.decode() in reason
    assert "\n" not in reason


def test_fast_startup_named_when_hiberboot_is_enabled():
    reason = hibernation_reason(b"HIBR" + bytes(60), hiberboot_enabled=True)
    assert "Fast Startup" in reason and "powercfg /h off" in reason


@pytest.mark.parametrize("header", [bytes(4096), b"", b"\0\0\0\0", b"PAGE" + bytes(12)])
def test_clean_shutdown_hiberfil_is_accepted(header):
    assert hibernation_reason(header) is None
    assert hibernation_reason(header, hiberboot_enabled=True) is None


def test_bitlocker_volume_refused():
    sector = b"\xeb\x58\x90-FVE-FS-" + bytes(501)
    reason = bitlocker_reason(sector, "/dev/sda2")
    assert reason.startswith("/dev/sda2 is encrypted with BitLocker") and "manage-bde -off" in reason


def test_ntfs_volume_is_not_bitlocker():
    assert bitlocker_reason(b"\xeb\x52\x90NTFS    " + bytes(501), "/dev/sda2") is None
    assert bitlocker_reason(b"", "/dev/sda2") is None


def test_dynamic_mbr_disk_refused():
    reason = dynamic_disk_reason("disk 1", mbr=parse_mbr(mbr_sector(0x42, 0x42)))
    assert reason == "disk 1 is a Windows dynamic disk (MBR partition type 0x42): convert it to a basic " \
                     "disk in the guest first"


def test_basic_mbr_disk_accepted():
    assert dynamic_disk_reason("disk 1", mbr=parse_mbr(mbr_sector(0x07, 0x07))) is None


@pytest.mark.parametrize("ldm", [TYPE_MS_LDM_METADATA, TYPE_MS_LDM_DATA])
def test_dynamic_gpt_disk_refused(ldm):
    reason = dynamic_disk_reason("disk 2", gpt=gpt_with(BASIC_DATA, ldm))
    assert reason is not None and "GPT LDM" in reason


def test_basic_gpt_disk_accepted():
    assert dynamic_disk_reason("disk 2", gpt=gpt_with(BASIC_DATA)) is None
    assert dynamic_disk_reason("disk 2") is None
