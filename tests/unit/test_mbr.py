"""MBR parsing: tables built byte by byte here, and tables written by sfdisk and parted."""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

import pytest

from diskfmt import mbr
from diskfmt.errors import FormatError

Entry = tuple[int, int, int, int]  # status, type, start LBA, sector count


def table_sector(entries: Sequence[Entry], disk_signature: int = 0, signature: bool = True,
                 size: int = 512) -> bytes:
    sector = bytearray(size)
    struct.pack_into("<I", sector, 0x1B8, disk_signature)
    for i, (status, type_id, start, count) in enumerate(entries):
        struct.pack_into("<B3sB3sII", sector, 0x1BE + 16 * i, status, b"\xfe\xff\xff", type_id,
                         b"\xfe\xff\xff", start, count)
    if signature:
        sector[510:512] = b"\x55\xaa"
    return bytes(sector)


class Disk:
    """A sparse in-memory disk: only written sectors are stored."""

    def __init__(self, sectors: int, sector_size: int = 512) -> None:
        self.sector_size = sector_size
        self.size = sectors * sector_size
        self.blocks: dict[int, bytes] = {}
        self.reads: list[tuple[int, int]] = []

    def write(self, lba: int, data: bytes) -> None:
        self.blocks[lba] = data

    def read(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        out = bytearray()
        while length > 0 and offset < self.size:
            lba, within = divmod(offset, self.sector_size)
            block = self.blocks.get(lba, bytes(self.sector_size))
            chunk = block[within:within + length]
            out += chunk
            offset += len(chunk)
            length -= len(chunk)
        return bytes(out)


def disk_with_logicals(sector_size: int = 512) -> Disk:
    """Primary 1 (bootable Linux), extended 2 holding logicals 5 (swap) and 6 (LVM), primary 3 (NTFS)."""
    disk = Disk(100000, sector_size)
    disk.write(0, table_sector([(0x80, 0x83, 2048, 8192), (0, 0x0F, 10240, 40960), (0, 0x07, 51200, 20480)],
                               disk_signature=0xDEADBEEF, size=sector_size))
    # EBR 1 at the start of the extended partition: logical 5 two sectors further on, link to EBR 2
    disk.write(10240, table_sector([(0, 0x82, 2048, 4096), (0, 0x05, 8192, 8192)], size=sector_size))
    # EBR 2 at 10240 + 8192: logical 6, no further link
    disk.write(18432, table_sector([(0, 0x8E, 2048, 6144)], size=sector_size))
    return disk


def test_primary_entries_give_status_type_start_and_count() -> None:
    table = mbr.parse_mbr(table_sector([(0x80, 0x83, 2048, 4096), (0, 0x07, 6144, 1000)],
                                       disk_signature=0x12345678))
    assert table.disk_signature == 0x12345678
    assert table.protective is False
    assert table.partitions == [
        mbr.MbrPartition(1, 0x83, True, 2048, 4096, False),
        mbr.MbrPartition(2, 0x07, False, 6144, 1000, False),
    ]
    assert mbr.end_lba(table.partitions[0]) == 6143


def test_empty_entries_are_skipped_but_keep_their_numbers() -> None:
    table = mbr.parse_mbr(table_sector([(0, 0, 0, 0), (0, 0x83, 2048, 100), (0, 0x83, 4096, 0)]))
    assert [p.number for p in table.partitions] == [2]


def test_missing_boot_signature_is_rejected() -> None:
    with pytest.raises(FormatError, match=r"no MBR boot signature \(0x55AA\)"):
        mbr.parse_mbr(table_sector([(0, 0x83, 2048, 100)], signature=False))


def test_invalid_status_byte_means_not_an_mbr() -> None:
    with pytest.raises(FormatError, match=r"entry 1 has an invalid status byte 0x12"):
        mbr.parse_mbr(table_sector([(0x12, 0x83, 2048, 100)]))


def test_ntfs_boot_sector_is_named_instead_of_parsed() -> None:
    sector = bytearray(table_sector([(0x12, 0x34, 0x56, 0x78)]))
    sector[3:11] = b"NTFS    "
    with pytest.raises(FormatError, match="NTFS boot sector, not an MBR"):
        mbr.parse_mbr(bytes(sector))


def test_partition_starting_on_the_mbr_is_rejected() -> None:
    with pytest.raises(FormatError, match="starts at sector 0"):
        mbr.parse_mbr(table_sector([(0, 0x83, 0, 100)]))


def test_overlapping_primary_partitions_are_rejected() -> None:
    with pytest.raises(FormatError, match=r"partition 1 \(sectors 2048-6143\) and partition 2 "
                                          r"\(sectors 6000-6999\) overlap"):
        mbr.parse_mbr(table_sector([(0, 0x83, 2048, 4096), (0, 0x83, 6000, 1000)]))


def test_adjacent_partitions_do_not_overlap() -> None:
    table = mbr.parse_mbr(table_sector([(0, 0x83, 2048, 4096), (0, 0x83, 6144, 1000)]))
    assert len(table.partitions) == 2


def test_logical_partitions_follow_the_ebr_chain() -> None:
    disk = disk_with_logicals()
    table = mbr.read_mbr(disk.read, disk.size)
    assert table.disk_signature == 0xDEADBEEF
    assert [(p.number, p.type_id, p.start_lba, p.sectors, p.logical) for p in table.partitions] == [
        (1, 0x83, 2048, 8192, False),
        (2, 0x0F, 10240, 40960, False),
        (3, 0x07, 51200, 20480, False),
        (5, 0x82, 12288, 4096, True),  # relative to its EBR at 10240
        (6, 0x8E, 20480, 6144, True),  # EBR 2 is at 10240 + 8192 (relative to the extended partition)
    ]
    assert mbr.is_extended_type(table.partitions[1].type_id)


def test_logical_partitions_on_4096_byte_sectors() -> None:
    disk = disk_with_logicals(sector_size=4096)
    table = mbr.read_mbr(disk.read, disk.size, sector_size=4096)
    assert [p.start_lba for p in table.partitions if p.logical] == [12288, 20480]
    assert table.sector_size == 4096
    assert (10240 * 4096, 4096) in disk.reads


def test_empty_extended_partition_has_no_logical_partitions() -> None:
    disk = Disk(100000)
    disk.write(0, table_sector([(0, 0x05, 2048, 8192)]))
    table = mbr.read_mbr(disk.read, disk.size)
    assert [p.number for p in table.partitions] == [1]


def test_looping_ebr_chain_is_rejected() -> None:
    disk = disk_with_logicals()
    disk.write(18432, table_sector([(0, 0x8E, 2048, 6144), (0, 0x05, 1, 100)]))  # link to 10241
    disk.write(10241, table_sector([(0, 0, 0, 0), (0, 0x05, 8192, 100)]))  # back to 18432
    with pytest.raises(FormatError, match="loops back to sector 18432"):
        mbr.read_mbr(disk.read, disk.size)


def test_ebr_without_signature_is_rejected() -> None:
    disk = disk_with_logicals()
    disk.write(18432, table_sector([(0, 0x8E, 2048, 6144)], signature=False))
    with pytest.raises(FormatError, match="extended boot record at sector 18432 has no 0x55AA signature"):
        mbr.read_mbr(disk.read, disk.size)


def test_logical_partition_outside_its_extended_partition_is_rejected() -> None:
    disk = disk_with_logicals()
    disk.write(18432, table_sector([(0, 0x8E, 2048, 60000)]))
    with pytest.raises(FormatError, match=r"logical partition 6 .* lies outside its extended partition 2"):
        mbr.read_mbr(disk.read, disk.size)


def test_overlapping_logical_partitions_are_rejected() -> None:
    disk = disk_with_logicals()
    disk.write(18432, table_sector([(0, 0x8E, 1, 6144)]))  # logical 6 starts at 18433
    disk.write(10240, table_sector([(0, 0x82, 2048, 8192), (0, 0x05, 8192, 8192)]))  # logical 5 to 20479
    with pytest.raises(FormatError, match="logical partition 5 .* and logical partition 6 .* overlap"):
        mbr.read_mbr(disk.read, disk.size)


def test_partition_beyond_the_disk_is_rejected_only_when_the_size_is_known() -> None:
    disk = Disk(10000)
    disk.write(0, table_sector([(0, 0x83, 2048, 8000)]))
    assert mbr.read_mbr(disk.read).partitions[0].sectors == 8000
    with pytest.raises(FormatError, match=r"partition 1 \(sectors 2048-10047\) extends beyond the end of "
                                          r"the disk \(10000 sectors"):
        mbr.read_mbr(disk.read, disk.size)


def test_protective_mbr_is_detected_and_may_claim_more_than_the_disk() -> None:
    disk = Disk(10000)
    disk.write(0, table_sector([(0, 0xEE, 1, 0xFFFFFFFF)]))
    table = mbr.read_mbr(disk.read, disk.size)
    assert table.protective is True
    assert [p.type_id for p in table.partitions] == [mbr.TYPE_GPT_PROTECTIVE]


def test_more_than_one_extended_partition_is_rejected() -> None:
    disk = Disk(100000)
    disk.write(0, table_sector([(0, 0x05, 2048, 1000), (0, 0x0F, 4096, 1000)]))
    with pytest.raises(FormatError, match="2 extended partitions"):
        mbr.read_mbr(disk.read, disk.size)


def test_dynamic_disk_and_esp_types_are_told_apart() -> None:
    assert mbr.is_dynamic_disk_type(0x42) and not mbr.is_dynamic_disk_type(0x07)
    assert mbr.is_esp_type(0xEF) and not mbr.is_esp_type(0xEE)
    dynamic = mbr.parse_mbr(table_sector([(0, 0x42, 63, 1000)]))
    basic = mbr.parse_mbr(table_sector([(0, 0x07, 63, 1000), (0, 0xEF, 2048, 100)]))
    assert mbr.is_dynamic_disk(dynamic) is True
    assert mbr.is_dynamic_disk(basic) is False


def test_disk_image_ending_inside_the_table_reports_truncation() -> None:
    data = table_sector([(0, 0x05, 2048, 1000)])
    with pytest.raises(FormatError, match=r"sector 2048 \(byte 1048576\) lies beyond the end of the disk "
                                          r"image \(truncated\?\)"):
        mbr.read_mbr(lambda offset, length: data[offset:offset + length])


# --- tables written by real tools ---------------------------------------------------------------

def file_reader(path: Path) -> tuple[Callable[[int, int], bytes], int]:
    data = path.read_bytes()
    return (lambda offset, length: data[offset:offset + length]), len(data)


def sparse_file(tmp_path: Path, size: int, name: str = "disk.img") -> Path:
    path = tmp_path / name
    with open(str(path), "wb") as f:
        f.truncate(size)
    return path


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


def test_sfdisk_dos_table_with_logical_partitions_reads_the_same(tmp_path: Path) -> None:
    need("sfdisk")
    path = sparse_file(tmp_path, 64 * 1024 * 1024)
    run("sfdisk", "-q", str(path), stdin="label: dos\nlabel-id: 0x1234abcd\n"
        "2048,8192,83,*\n,16384,7\n,,5\n,4096,82\n,4096,8e\n")
    read, size = file_reader(path)
    table = mbr.read_mbr(read, size)
    assert table.disk_signature == 0x1234ABCD
    oracle = json.loads(run("sfdisk", "--json", str(path)))["partitiontable"]["partitions"]
    expected = [(int(o["node"][len(str(path)):]), int(o["type"], 16), o["start"], o["size"],
                 o.get("bootable", False)) for o in oracle]
    got = [(p.number, p.type_id, p.start_lba, p.sectors, p.bootable) for p in table.partitions]
    assert got == expected
    assert [p.number for p in table.partitions if p.logical] == [5, 6]


def test_parted_msdos_table_reads_the_same(tmp_path: Path) -> None:
    need("parted")
    path = sparse_file(tmp_path, 32 * 1024 * 1024)
    run("parted", "-s", str(path), "mklabel", "msdos", "mkpart", "primary", "ext4", "1MiB", "9MiB",
        "mkpart", "extended", "9MiB", "100%", "mkpart", "logical", "linux-swap", "10MiB", "14MiB",
        "set", "1", "boot", "on")
    read, size = file_reader(path)
    table = mbr.read_mbr(read, size)
    summary = [(p.number, p.start_lba, p.sectors, p.logical, p.bootable) for p in table.partitions]
    assert summary == [
        (1, 2048, 16384, False, True),
        (2, 18432, 65536 - 18432, False, False),
        (5, 20480, 8192, True, False),
    ]
    assert table.partitions[2].type_id == mbr.TYPE_LINUX_SWAP


def test_sgdisk_gpt_disk_has_a_protective_mbr(tmp_path: Path) -> None:
    need("sgdisk")
    path = sparse_file(tmp_path, 16 * 1024 * 1024)
    run("sgdisk", "-o", "-n", "1:2048:0", str(path))
    read, size = file_reader(path)
    table = mbr.read_mbr(read, size)
    assert table.protective is True
    assert table.partitions[0].start_lba == 1


def test_fdisk_dos_table_on_4096_byte_sectors_reads_the_same(tmp_path: Path) -> None:
    need("fdisk")
    path = sparse_file(tmp_path, 64 * 1024 * 1024)
    # o: new DOS table; primary 1 of 8 MiB; extended 2 over the rest; logicals 5 and 6 of 4 MiB; write
    run("fdisk", "-b", "4096", str(path), stdin="o\nn\np\n1\n\n+8M\nn\ne\n2\n\n\nn\n\n+4M\nn\n\n+4M\nw\n")
    expected = []
    for line in run("fdisk", "-b", "4096", "-l", str(path)).splitlines():
        if line.startswith(str(path)):
            fields = line[len(str(path)):].replace("*", " ").split()
            expected.append((int(fields[0]), int(fields[1]), int(fields[3]), int(fields[5], 16)))
    read, size = file_reader(path)
    table = mbr.read_mbr(read, size, sector_size=4096)
    assert [(p.number, p.start_lba, p.sectors, p.type_id) for p in table.partitions] == expected
    assert [p.number for p in table.partitions if p.logical] == [5, 6]
