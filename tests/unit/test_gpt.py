"""GPT parsing: tables built byte by byte here, and tables written by sgdisk, sfdisk, parted and fdisk."""
from __future__ import annotations

import json
import random
import shutil
import struct
import subprocess
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

import pytest

from diskfmt import gpt
from diskfmt.errors import FormatError

DISK_GUID = "6F2D6A5E-3B1C-4D2E-9A7B-1C2D3E4F5A6B"
PART1_GUID = "11111111-2222-3333-4444-555555555555"
PART2_GUID = "AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE"

Part = tuple[str, str, int, int, int, str]  # type GUID, unique GUID, first LBA, last LBA, attributes, name


def header_bytes(current: int, backup: int, first_usable: int, last_usable: int, entries_lba: int,
                 array_crc: int, disk_guid: str = DISK_GUID, num_entries: int = 128) -> bytes:
    raw = bytearray(struct.pack("<8sIIIIQQQQ16sQIII", b"EFI PART", 0x10000, 92, 0, 0, current, backup,
                                first_usable, last_usable, gpt.guid_to_bytes(disk_guid), entries_lba,
                                num_entries, 128, array_crc))
    struct.pack_into("<I", raw, 16, zlib.crc32(bytes(raw)) & 0xFFFFFFFF)
    return bytes(raw)


def array_bytes(parts: Sequence[Part], num_entries: int = 128) -> bytes:
    raw = bytearray(num_entries * 128)
    for i, (type_guid, unique_guid, first, last, attributes, name) in enumerate(parts):
        struct.pack_into("<16s16sQQQ72s", raw, i * 128, gpt.guid_to_bytes(type_guid),
                         gpt.guid_to_bytes(unique_guid), first, last, attributes, name.encode("utf-16-le"))
    return bytes(raw)


class GptImage:
    """A whole disk image in memory with a protective MBR, primary and backup GPT."""

    def __init__(self, sectors: int, parts: Sequence[Part], sector_size: int = 512) -> None:
        self.sector_size = sector_size
        self.data = bytearray(sectors * sector_size)
        self.last_lba = sectors - 1
        array = array_bytes(parts)
        array_sectors = len(array) // sector_size
        self.first_usable = 2 + array_sectors
        self.last_usable = self.last_lba - 1 - array_sectors
        crc = zlib.crc32(array) & 0xFFFFFFFF
        self.put(0, bytes(446) + struct.pack("<B3sB3sII", 0, b"\0\2\0", 0xEE, b"\xff\xff\xff", 1,
                                             min(sectors - 1, 0xFFFFFFFF)) + bytes(48) + b"\x55\xaa")
        self.put(1, header_bytes(1, self.last_lba, self.first_usable, self.last_usable, 2, crc))
        self.put(2, array)
        self.put(self.last_lba - array_sectors, array)
        self.put(self.last_lba, header_bytes(self.last_lba, 1, self.first_usable, self.last_usable,
                                             self.last_lba - array_sectors, crc))

    def put(self, lba: int, raw: bytes) -> None:
        offset = lba * self.sector_size
        self.data[offset:offset + len(raw)] = raw

    def flip(self, lba: int, byte: int) -> None:
        self.data[lba * self.sector_size + byte] ^= 0xFF

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset:offset + length])

    @property
    def size(self) -> int:
        return len(self.data)


def two_partitions(sectors: int = 4096) -> list[Part]:
    return [(gpt.TYPE_ESP, PART1_GUID, 2048, 2559, gpt.ATTR_REQUIRED, "EFI system partition"),
            (gpt.TYPE_LINUX_FILESYSTEM, PART2_GUID, 2560, sectors - 40, 0, "root \u00e9t\u00e9")]


def test_guids_are_stored_mixed_endian_and_printed_uppercase() -> None:
    esp_on_disk = bytes.fromhex("28732AC11FF8D211BA4B00A0C93EC93B")
    assert gpt.guid_from_bytes(esp_on_disk) == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    assert gpt.guid_to_bytes("c12a7328-f81f-11d2-ba4b-00a0c93ec93b") == esp_on_disk


def test_well_known_partition_types_have_their_published_guids() -> None:
    assert gpt.TYPE_ESP == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    assert gpt.TYPE_MS_BASIC_DATA == "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
    assert gpt.TYPE_MS_RESERVED == "E3C9E316-0B5C-4DB8-817D-F92DF00215AE"
    assert gpt.TYPE_MS_RECOVERY == "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC"
    assert gpt.TYPE_MS_LDM_METADATA == "5808C8AA-7E8F-42E0-85D2-E1E90434CFB3"
    assert gpt.TYPE_MS_LDM_DATA == "AF9B60A0-1431-4F62-BC68-3311714A69AD"
    assert gpt.TYPE_LINUX_FILESYSTEM == "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
    assert gpt.TYPE_LINUX_LVM == "E6D6D379-F507-44C2-A23C-238F2A3DF928"
    assert gpt.TYPE_LINUX_SWAP == "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"
    assert gpt.TYPE_BIOS_BOOT == "21686148-6449-6E6F-744E-656564454649"
    assert gpt.type_name(gpt.TYPE_ESP.lower()) == "EFI system partition"
    assert gpt.type_name("01234567-89AB-CDEF-0123-456789ABCDEF") == "01234567-89AB-CDEF-0123-456789ABCDEF"


def test_gpt_entries_give_guids_lbas_attributes_and_names() -> None:
    image = GptImage(4096, two_partitions())
    table = gpt.read_gpt(image.read, image.size)
    assert table.disk_guid == DISK_GUID
    assert table.used_backup is False
    assert table.problems == []
    assert table.header.first_usable_lba == 34 and table.header.last_usable_lba == 4062
    assert table.partitions == [
        gpt.GptPartition(1, gpt.TYPE_ESP, PART1_GUID, 2048, 2559, gpt.ATTR_REQUIRED, "EFI system partition"),
        gpt.GptPartition(2, gpt.TYPE_LINUX_FILESYSTEM, PART2_GUID, 2560, 4056, 0, "root \u00e9t\u00e9"),
    ]


def test_gpt_header_crc_mismatch_is_named_with_its_lba() -> None:
    image = GptImage(4096, two_partitions())
    image.flip(1, 60)  # inside the disk GUID: covered by the header CRC
    with pytest.raises(FormatError, match=r"^GPT header CRC mismatch at LBA 1 \(corrupt partition table\)$"):
        gpt.parse_header(image.read(512, 512), 1)


def test_gpt_falls_back_to_backup_header_when_primary_crc_is_bad() -> None:
    image = GptImage(4096, two_partitions())
    image.flip(1, 60)
    table = gpt.read_gpt(image.read, image.size)
    assert table.used_backup is True
    assert table.header.current_lba == 4095
    assert [p.unique_guid for p in table.partitions] == [PART1_GUID, PART2_GUID]
    assert table.problems == [("primary GPT is unusable (GPT header CRC mismatch at LBA 1 (corrupt "
                               "partition table)); used the backup header at LBA 4095")]


def test_gpt_falls_back_to_backup_when_the_primary_partition_array_crc_is_bad() -> None:
    image = GptImage(4096, two_partitions())
    image.flip(2, 32)  # first LBA of partition 1 in the primary array
    table = gpt.read_gpt(image.read, image.size)
    assert table.used_backup is True
    assert table.partitions[0].first_lba == 2048
    assert "GPT partition array CRC mismatch at LBA 2" in table.problems[0]


def test_gpt_with_both_copies_corrupt_names_both_problems() -> None:
    image = GptImage(4096, two_partitions())
    image.flip(1, 60)
    image.flip(4095, 0)
    with pytest.raises(FormatError, match=r"CRC mismatch at LBA 1 .*backup GPT at the last LBA is unusable "
                                          r"too: no GPT header signature \('EFI PART'\) at LBA 4095"):
        gpt.read_gpt(image.read, image.size)


def test_gpt_without_disk_size_cannot_fall_back() -> None:
    image = GptImage(4096, two_partitions())
    image.flip(1, 60)
    with pytest.raises(FormatError, match="^GPT header CRC mismatch at LBA 1"):
        gpt.read_gpt(image.read)


def test_gpt_on_4096_byte_sectors() -> None:
    parts = [(gpt.TYPE_MS_BASIC_DATA, PART1_GUID, 256, 1000, 0, "Basic data partition")]
    image = GptImage(2048, parts, sector_size=4096)
    table = gpt.read_gpt(image.read, image.size, sector_size=4096)
    assert table.sector_size == 4096
    assert table.header.entries_lba == 2 and table.header.first_usable_lba == 6  # 16 KiB array = 4 sectors
    assert table.partitions[0].name == "Basic data partition"
    with pytest.raises(FormatError, match="no GPT header signature"):
        gpt.read_gpt(image.read, sector_size=512)  # LBA 1 of a 4Kn disk is not at byte 512


def test_gpt_on_4096_byte_sectors_falls_back_to_the_backup() -> None:
    parts = [(gpt.TYPE_MS_BASIC_DATA, PART1_GUID, 256, 1000, 0, "data")]
    image = GptImage(2048, parts, sector_size=4096)
    image.flip(1, 60)
    table = gpt.read_gpt(image.read, image.size, sector_size=4096)
    assert table.used_backup and table.header.current_lba == 2047


def test_overlapping_gpt_partitions_are_rejected() -> None:
    parts = two_partitions()
    parts[1] = (gpt.TYPE_LINUX_FILESYSTEM, PART2_GUID, 2500, 3000, 0, "root")
    image = GptImage(4096, parts)
    with pytest.raises(FormatError, match=r"partition 1 \(LBA 2048-2559\) and partition 2 \(LBA 2500-3000\) "
                                          r"overlap"):
        gpt.read_gpt(image.read, image.size)


def test_gpt_partition_outside_the_usable_area_is_rejected() -> None:
    parts = [(gpt.TYPE_LINUX_FILESYSTEM, PART1_GUID, 20, 100, 0, "over the array")]
    image = GptImage(4096, parts)
    with pytest.raises(FormatError, match=r"partition 1 \(LBA 20-100\) lies outside the usable area "
                                          r"\(LBA 34-4062\)"):
        gpt.read_gpt(image.read, image.size)


def test_gpt_partition_beyond_a_truncated_disk_is_rejected() -> None:
    image = GptImage(4096, two_partitions())
    truncated = bytes(image.data[:3000 * 512])
    with pytest.raises(FormatError, match=r"partition 2 \(LBA 2560-4056\) extends beyond the end of the disk "
                                          r"\(3000 sectors"):
        gpt.read_gpt(lambda offset, length: truncated[offset:offset + length], len(truncated))


def test_enlarged_disk_reports_the_backup_header_not_at_the_end() -> None:
    image = GptImage(4096, two_partitions())
    image.data += bytes(1024 * 512)
    table = gpt.read_gpt(image.read, image.size)
    assert table.used_backup is False
    assert table.problems == [("the backup GPT header is at LBA 4095, not at the last LBA 5119: the disk "
                               "was enlarged ('sgdisk -e' moves it)")]


def test_header_read_from_the_wrong_lba_is_rejected() -> None:
    image = GptImage(4096, two_partitions())
    with pytest.raises(FormatError, match="found at LBA 1 says it belongs at LBA 4095"):
        gpt.parse_header(image.read(4095 * 512, 512), 1)


def test_dynamic_disks_are_recognised_by_their_ldm_partitions() -> None:
    ldm = GptImage(4096, [(gpt.TYPE_MS_LDM_METADATA, PART1_GUID, 34, 2047, 0, "LDM metadata partition"),
                          (gpt.TYPE_MS_LDM_DATA, PART2_GUID, 2048, 4000, 0, "LDM data partition")])
    basic = GptImage(4096, two_partitions())
    assert gpt.is_dynamic_disk(gpt.read_gpt(ldm.read, ldm.size)) is True
    assert gpt.is_dynamic_disk(gpt.read_gpt(basic.read, basic.size)) is False


# --- tables written by real tools ---------------------------------------------------------------

def tool_path(tool: str) -> str | None:
    # partitioning tools live in sbin, which a non-login PATH may lack
    return shutil.which(tool) or shutil.which("/usr/sbin/" + tool) or shutil.which("/sbin/" + tool)


def need(tool: str) -> None:
    if tool_path(tool) is None:
        pytest.skip(tool + " is not installed")


def run(*argv: str, stdin: str | None = None) -> str:
    done = subprocess.run([tool_path(argv[0]) or argv[0]] + list(argv[1:]), input=stdin,
                          capture_output=True, text=True, check=True)
    return done.stdout


def sparse_file(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "disk.img"
    with open(str(path), "wb") as f:
        f.truncate(size)
    return path


def file_reader(path: Path) -> tuple[Callable[[int, int], bytes], int]:
    data = path.read_bytes()
    return (lambda offset, length: data[offset:offset + length]), len(data)


def test_sgdisk_table_reads_the_same(tmp_path: Path) -> None:
    need("sgdisk")
    path = sparse_file(tmp_path, 64 * 1024 * 1024)
    run("sgdisk", "-o", "-U", DISK_GUID, "-n", "1:2048:+1M", "-t", "1:ef00", "-c", "1:EFI system",
        "-u", "1:" + PART1_GUID, "-A", "1:set:0", "-n", "2:0:+8M", "-t", "2:0700", "-c", "2:Basic data",
        "-n", "3:0:0", "-t", "3:8e00", str(path))
    read, size = file_reader(path)
    table = gpt.read_gpt(read, size)
    assert table.disk_guid == DISK_GUID
    assert table.problems == []
    summary = [(p.number, p.type_guid, p.first_lba, p.last_lba, p.name) for p in table.partitions]
    assert summary == [
        (1, gpt.TYPE_ESP, 2048, 4095, "EFI system"),
        (2, gpt.TYPE_MS_BASIC_DATA, 4096, 20479, "Basic data"),
        (3, gpt.TYPE_LINUX_LVM, 20480, table.header.last_usable_lba, ""),
    ]
    assert table.partitions[0].unique_guid == PART1_GUID
    assert table.partitions[0].attributes == gpt.ATTR_REQUIRED
    info = run("sgdisk", "-i", "2", str(path))
    assert "Partition unique GUID: " + table.partitions[1].unique_guid in info


def test_sgdisk_table_with_zeroed_primary_header_is_read_from_the_backup(tmp_path: Path) -> None:
    need("sgdisk")
    path = sparse_file(tmp_path, 16 * 1024 * 1024)
    run("sgdisk", "-o", "-n", "1:2048:0", "-t", "1:8200", str(path))
    with open(str(path), "r+b") as f:
        f.seek(512)
        f.write(bytes(512))
    read, size = file_reader(path)
    table = gpt.read_gpt(read, size)
    assert table.used_backup is True
    assert table.partitions[0].type_guid == gpt.TYPE_LINUX_SWAP
    assert "no GPT header signature ('EFI PART') at LBA 1" in table.problems[0]


def test_sfdisk_gpt_table_reads_the_same(tmp_path: Path) -> None:
    need("sfdisk")
    path = sparse_file(tmp_path, 32 * 1024 * 1024)
    run("sfdisk", "-q", str(path), stdin="label: gpt\nlabel-id: " + DISK_GUID + "\n"
        "start=2048, size=2048, type=" + gpt.TYPE_MS_RESERVED + ", name=\"Microsoft reserved partition\"\n"
        "size=8192, type=" + gpt.TYPE_MS_RECOVERY + ", uuid=" + PART2_GUID + "\n"
        "type=" + gpt.TYPE_BIOS_BOOT + "\n")
    read, size = file_reader(path)
    table = gpt.read_gpt(read, size)
    assert table.disk_guid == DISK_GUID
    assert [p.type_guid for p in table.partitions] == [gpt.TYPE_MS_RESERVED, gpt.TYPE_MS_RECOVERY,
                                                       gpt.TYPE_BIOS_BOOT]
    assert table.partitions[1].unique_guid == PART2_GUID
    oracle = json.loads(run("sfdisk", "--json", str(path)))["partitiontable"]
    assert (table.header.first_usable_lba, table.header.last_usable_lba) == (oracle["firstlba"],
                                                                             oracle["lastlba"])
    assert [(p.first_lba, p.last_lba - p.first_lba + 1, p.type_guid, p.unique_guid, p.name)
            for p in table.partitions] == [(o["start"], o["size"], o["type"], o["uuid"], o.get("name", ""))
                                           for o in oracle["partitions"]]


def test_parted_gpt_table_reads_the_same(tmp_path: Path) -> None:
    need("parted")
    path = sparse_file(tmp_path, 32 * 1024 * 1024)
    run("parted", "-s", str(path), "mklabel", "gpt", "mkpart", "boot", "fat32", "1MiB", "5MiB",
        "set", "1", "esp", "on", "mkpart", "data", "ext4", "5MiB", "20MiB")
    read, size = file_reader(path)
    table = gpt.read_gpt(read, size)
    assert [(p.name, p.type_guid, p.first_lba, p.last_lba) for p in table.partitions] == [
        ("boot", gpt.TYPE_ESP, 2048, 10239), ("data", gpt.TYPE_LINUX_FILESYSTEM, 10240, 40959)]


def test_fdisk_gpt_on_4096_byte_sectors_reads_the_same(tmp_path: Path) -> None:
    need("fdisk")
    path = sparse_file(tmp_path, 64 * 1024 * 1024)
    # g: new GPT; n: partition 1 from the default start, 4 MiB; w: write
    run("fdisk", "-b", "4096", str(path), stdin="g\nn\n1\n\n+4M\nw\n")
    read, size = file_reader(path)
    table = gpt.read_gpt(read, size, sector_size=4096)
    assert table.sector_size == 4096
    assert table.header.entries_lba == 2
    assert table.header.backup_lba == 64 * 1024 * 1024 // 4096 - 1
    assert [(p.first_lba, p.last_lba - p.first_lba + 1) for p in table.partitions] == [(256, 1024)]
    assert table.problems == []


def test_corrupt_but_checksummed_headers_raise_format_error_and_nothing_else() -> None:
    rng = random.Random(7)
    image = GptImage(4096, two_partitions())
    good = bytearray(image.read(512, 512))
    refused = 0
    for _ in range(500):
        header = bytearray(good)
        for _ in range(rng.randint(1, 3)):
            field = rng.choice([(12, "<I"), (24, "<Q"), (32, "<Q"), (40, "<Q"), (48, "<Q"), (72, "<Q"),
                                (80, "<I"), (84, "<I")])
            bits = 32 if field[1] == "<I" else 64
            value = rng.choice([0, 1, 2, 127, 128, 4095, 4096, 2 ** 31, 2 ** bits - 1, rng.getrandbits(bits)])
            struct.pack_into(field[1], header, field[0], value)
        header_size = struct.unpack_from("<I", header, 12)[0]
        struct.pack_into("<I", header, 16, 0)
        struct.pack_into("<I", header, 16, zlib.crc32(bytes(header[:header_size])) & 0xFFFFFFFF)
        copy = GptImage(4096, two_partitions())
        copy.put(1, bytes(header))
        copy.put(4095, bytes(512))  # no backup to fall back to

        def read(offset: int, length: int, copy: GptImage = copy) -> bytes:
            assert length <= gpt.MAX_ARRAY_BYTES
            return copy.read(offset, length)

        try:
            gpt.read_gpt(read, copy.size)
        except FormatError as error:
            assert "\n" not in str(error)
            refused += 1
    assert 0 < refused < 500
