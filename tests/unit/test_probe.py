"""Container format detection on real images made by qemu-img, and on truncated or foreign files."""
from __future__ import annotations

import gzip
import io
import json
import random
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from diskfmt.errors import FormatError
from diskfmt.probe import ImageInfo, VmdkExtent, crc32c, probe, probe_file

MIB = 1024 * 1024

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")


def qemu_img(*argv: str) -> str:
    done = subprocess.run(["qemu-img"] + list(argv), capture_output=True, text=True, check=True)
    return done.stdout


def qemu_info(path: Path, fmt: str | None = None) -> tuple[str, int]:
    info = json.loads(qemu_img("info", "--output=json", *(["-f", fmt] if fmt else []), str(path)))
    return info["format"], info["virtual-size"]


def raw_with_data(tmp_path: Path, size: int = 64 * MIB) -> Path:
    """A raw disk with data in a few places, so converted images have allocated clusters and grains."""
    path = tmp_path / "source.raw"
    with open(str(path), "wb") as f:
        f.truncate(size)
        for offset, byte in ((0, 0xAB), (5 * MIB, 0x11), (40 * MIB, 0xCD), (size - MIB, 0xEF)):
            f.seek(offset)
            f.write(bytes([byte]) * MIB)
    return path


def convert(tmp_path: Path, fmt: str, name: str, *options: str) -> Path:
    out = tmp_path / name
    qemu_img("convert", "-f", "raw", "-O", fmt, *options, str(raw_with_data(tmp_path)), str(out))
    return out


def cut(path: Path, size: int, name: str | None = None) -> Path:
    """A copy of ``path`` cut to ``size`` bytes (the original stays whole)."""
    out = path.with_name(name or "cut-" + path.name)
    with open(str(path), "rb") as src, open(str(out), "wb") as dst:
        dst.write(src.read(size))
    return out


def patched(path: Path, offset: int, raw: bytes) -> Path:
    out = path.with_name("patched-" + path.name)
    data = bytearray(path.read_bytes())
    data[offset:offset + len(raw)] = raw
    out.write_bytes(bytes(data))
    return out


# --- what is detected, and that it agrees with qemu-img ------------------------------------------

@needs_qemu_img
@pytest.mark.parametrize("fmt, options, subformat", [
    ("qcow2", [], "1.1"),
    ("qcow2", ["-o", "compat=0.10"], "0.10"),
    ("vmdk", [], "monolithicSparse"),
    ("vmdk", ["-o", "subformat=streamOptimized"], "streamOptimized"),
    ("vpc", [], "dynamic"),
    ("vpc", ["-o", "subformat=fixed"], "fixed"),
    ("vhdx", [], "dynamic"),
    ("vhdx", ["-o", "subformat=fixed"], "fixed"),
    ("raw", [], None),
])
def test_format_and_virtual_size_agree_with_qemu_img(tmp_path: Path, fmt: str, options: list[str],
                                                    subformat: str | None) -> None:
    image = convert(tmp_path, fmt, "disk.img", *options)  # the name says nothing about the format
    info = probe_file(str(image))
    assert (info.format, info.subformat) == (fmt, subformat)
    assert info.virtual_size == qemu_info(image, fmt)[1]
    assert info.problems == []
    assert info.file_size == image.stat().st_size


@needs_qemu_img
def test_fixed_vhd_is_found_by_its_footer_though_qemu_img_guesses_raw(tmp_path: Path) -> None:
    image = convert(tmp_path, "vpc", "fixed.vhd", "-o", "subformat=fixed")
    assert qemu_info(image)[0] == "raw"  # qemu only looks for a VHD footer copy at offset 0
    assert probe_file(str(image)).format == "vpc"


@needs_qemu_img
def test_format_comes_from_the_bytes_not_the_file_name(tmp_path: Path) -> None:
    qcow2 = convert(tmp_path, "qcow2", "disk.raw")
    raw = raw_with_data(tmp_path)
    raw.rename(tmp_path / "disk.qcow2")
    assert probe_file(str(qcow2)).format == "qcow2"
    assert probe_file(str(tmp_path / "disk.qcow2")).format == "raw"


@needs_qemu_img
def test_qcow2_overlay_reports_its_backing_file_and_format(tmp_path: Path) -> None:
    base = convert(tmp_path, "qcow2", "base.qcow2")
    overlay = tmp_path / "overlay.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", str(overlay))
    info = probe_file(str(overlay))
    assert (info.format, info.backing_file, info.backing_format) == ("qcow2", "base.qcow2", "qcow2")
    assert info.virtual_size == 64 * MIB
    assert probe_file(str(base)).backing_file is None


@needs_qemu_img
def test_qcow2_dirty_bit_and_internal_snapshots_are_reported_as_problems(tmp_path: Path) -> None:
    image = convert(tmp_path, "qcow2", "disk.qcow2")
    qemu_img("snapshot", "-c", "before", str(image))
    dirty = patched(image, 72, struct.pack(">Q", 1))  # incompatible_features: dirty
    problems = probe_file(str(dirty)).problems
    assert any("dirty bit set" in p for p in problems)
    assert any("1 internal snapshot(s)" in p for p in problems)


@needs_qemu_img
def test_vmdk_descriptor_gives_create_type_extents_and_size(tmp_path: Path) -> None:
    image = tmp_path / "web1.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", str(image), "10M")
    info = probe_file(str(image))
    assert (info.format, info.subformat, info.virtual_size) == ("vmdk", "monolithicFlat", 10 * MIB)
    assert info.extents == [VmdkExtent("RW", 20480, "FLAT", "web1-flat.vmdk", 0)]


@needs_qemu_img
def test_split_vmdk_descriptor_lists_every_extent(tmp_path: Path) -> None:
    image = tmp_path / "split.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", str(image), "5G")
    info = probe_file(str(image))
    assert info.subformat == "twoGbMaxExtentSparse"
    assert [e.filename for e in info.extents] == ["split-s001.vmdk", "split-s002.vmdk", "split-s003.vmdk"]
    assert all(e.kind == "SPARSE" for e in info.extents)
    assert info.virtual_size == qemu_info(image)[1] == 5 * 1024 * MIB
    extent = probe_file(str(tmp_path / "split-s002.vmdk"))
    assert extent.format == "vmdk" and any("without a descriptor of its own" in p for p in extent.problems)


@needs_qemu_img
def test_vmdk_overlay_reports_its_parent(tmp_path: Path) -> None:
    convert(tmp_path, "vmdk", "base.vmdk")
    overlay = tmp_path / "delta.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", str(overlay))
    assert probe_file(str(overlay)).backing_file == "base.vmdk"


# --- truncated images: the error names the file and the structure that is missing ----------------

@needs_qemu_img
def test_truncated_vmdk_names_the_grain_directory(tmp_path: Path) -> None:
    image = convert(tmp_path, "vmdk", "whole.vmdk")
    gd_sector = struct.unpack_from("<Q", image.read_bytes(), 56)[0]
    short = cut(image, 12288, "web1.vmdk")  # after the embedded descriptor, before the grain directory
    with pytest.raises(FormatError) as error:
        probe_file(str(short))
    assert str(error.value) == (f"{short}: truncated VMDK: grain directory at byte {gd_sector * 512} is "
                                "beyond the end of the file (size 12288)")


@needs_qemu_img
def test_vmdk_cut_inside_its_grains_is_truncated(tmp_path: Path) -> None:
    image = convert(tmp_path, "vmdk", "disk.vmdk")
    short = cut(image, image.stat().st_size - 4096)
    with pytest.raises(FormatError, match=r"truncated VMDK: grain at bytes \d+-\d+ runs past the end of the "
                                          r"file"):
        probe_file(str(short))


@needs_qemu_img
def test_stream_optimized_vmdk_cut_inside_its_grains_is_truncated(tmp_path: Path) -> None:
    image = convert(tmp_path, "vmdk", "disk.vmdk", "-o", "subformat=streamOptimized")
    with pytest.raises(FormatError, match="truncated VMDK: (compressed grain|grain table)"):
        probe_file(str(cut(image, image.stat().st_size // 2)))


@needs_qemu_img
def test_stream_optimized_vmdk_with_its_directory_at_the_end_needs_its_footer(tmp_path: Path) -> None:
    image = convert(tmp_path, "vmdk", "disk.vmdk", "-o", "subformat=streamOptimized")
    at_end = patched(image, 56, struct.pack("<Q", 0xFFFFFFFFFFFFFFFF))  # gdOffset = GD_AT_END
    with pytest.raises(FormatError, match=r"truncated VMDK: the streamOptimized footer is missing at the end "
                                          r"of the file \(size \d+\)"):
        probe_file(str(at_end))


@needs_qemu_img
def test_stream_optimized_vmdk_with_its_directory_at_the_end_is_read_through_its_footer(
        tmp_path: Path) -> None:
    image = convert(tmp_path, "vmdk", "disk.vmdk", "-o", "subformat=streamOptimized")
    data = image.read_bytes()
    header = data[:512]
    assert data[-512:] == bytes(512)  # qemu ends the stream with an end-of-stream marker
    # as VMware writes it: the header defers the directory to the footer, a header copy before the end
    footer_marker = struct.pack("<QII", 1, 0, 3).ljust(512, b"\0")
    vmware = (header[:56] + struct.pack("<Q", 0xFFFFFFFFFFFFFFFF) + header[64:] + data[512:-512]
              + footer_marker + header + bytes(512))
    path = tmp_path / "vmware.vmdk"
    path.write_bytes(vmware)
    info = probe_file(str(path))
    assert (info.subformat, info.virtual_size, info.problems) == ("streamOptimized", 64 * MIB, [])
    with pytest.raises(FormatError, match="streamOptimized footer is missing"):
        probe_file(str(cut(path, len(vmware) - 512)))


@needs_qemu_img
def test_vmdk_with_zero_capacity_is_rejected(tmp_path: Path) -> None:
    image = convert(tmp_path, "vmdk", "disk.vmdk")
    empty = patched(image, 12, struct.pack("<Q", 0))
    with pytest.raises(FormatError, match="capacity is 0 sectors"):
        probe_file(str(empty))


@needs_qemu_img
def test_qcow2_cut_before_its_l1_table_is_truncated(tmp_path: Path) -> None:
    image = tmp_path / "empty.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(image), "1G")
    l1_offset = struct.unpack_from(">Q", image.read_bytes(), 40)[0]
    short = cut(image, l1_offset)
    with pytest.raises(FormatError) as error:
        probe_file(str(short))
    assert str(error.value) == (f"{short}: truncated qcow2: L1 table at byte {l1_offset} is beyond the end "
                                f"of the file (size {l1_offset})")


@needs_qemu_img
def test_qcow2_cut_inside_its_refcount_table_is_truncated(tmp_path: Path) -> None:
    image = tmp_path / "empty.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(image), "1G")
    header = image.read_bytes()
    l1_offset, refcount_offset = struct.unpack_from(">QQ", header, 40)
    assert refcount_offset < l1_offset  # qemu-img's layout: header, refcount table, block, L1
    with pytest.raises(FormatError, match=r"truncated qcow2: refcount table at bytes 65536-131071 runs past"):
        probe_file(str(cut(image, refcount_offset + 100)))


@needs_qemu_img
def test_qcow2_cut_before_its_last_clusters_is_truncated(tmp_path: Path) -> None:
    image = convert(tmp_path, "qcow2", "disk.qcow2")
    short = cut(image, image.stat().st_size - 3 * 65536)
    with pytest.raises(FormatError, match=r"truncated qcow2: (allocated cluster|L2 table|refcount block) at"):
        probe_file(str(short))


@needs_qemu_img
def test_dynamic_vhd_cut_before_its_bat_is_truncated(tmp_path: Path) -> None:
    image = convert(tmp_path, "vpc", "disk.vhd")
    table_offset = struct.unpack_from(">Q", image.read_bytes(), 512 + 16)[0]
    short = cut(image, table_offset)
    with pytest.raises(FormatError) as error:
        probe_file(str(short))
    assert str(error.value) == (f"{short}: truncated VHD: block allocation table (BAT) at byte "
                                f"{table_offset} is beyond the end of the file (size {table_offset})")


@needs_qemu_img
def test_dynamic_vhd_cut_inside_a_data_block_is_truncated(tmp_path: Path) -> None:
    image = convert(tmp_path, "vpc", "disk.vhd")
    with pytest.raises(FormatError, match=r"truncated VHD: data block at bytes \d+-\d+ runs past the end"):
        probe_file(str(cut(image, image.stat().st_size - 1024 * 1024)))


@needs_qemu_img
def test_dynamic_vhd_without_its_closing_footer_is_reported(tmp_path: Path) -> None:
    image = convert(tmp_path, "vpc", "disk.vhd")
    info = probe_file(str(cut(image, image.stat().st_size - 512)))
    assert info.format == "vpc"
    assert info.problems == [("VHD footer is missing at the end of the file "
                              "(truncated, or still being written?)")]


@needs_qemu_img
def test_fixed_vhd_smaller_than_its_disk_is_truncated(tmp_path: Path) -> None:
    image = convert(tmp_path, "vpc", "fixed.vhd", "-o", "subformat=fixed")
    data = image.read_bytes()
    footer = data[-512:]
    current_size = struct.unpack_from(">Q", footer, 48)[0]
    short = image.with_name("short.vhd")
    short.write_bytes(data[:current_size - 4096] + footer)  # lost data, kept footer
    with pytest.raises(FormatError, match=f"truncated VHD: a fixed disk of {current_size} bytes needs a file "
                                          f"of at least {current_size + 512} bytes, but the file has "
                                          f"{current_size - 4096 + 512}"):
        probe_file(str(short))


@needs_qemu_img
def test_raw_disk_ending_in_a_foreign_vhd_footer_stays_raw(tmp_path: Path) -> None:
    vhd = tmp_path / "small.vhd"
    qemu_img("create", "-q", "-f", "vpc", "-o", "subformat=fixed", str(vhd), "1M")
    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(8 * MIB - 512) + vhd.read_bytes()[-512:])  # a VHD file stored at the disk's end
    info = probe_file(str(disk))
    assert info.format == "raw"
    assert "does not match the file size; treated as raw" in info.problems[0]


@needs_qemu_img
def test_vhdx_cut_inside_a_data_block_is_truncated(tmp_path: Path) -> None:
    image = convert(tmp_path, "vhdx", "disk.vhdx")
    with pytest.raises(FormatError, match=r"truncated VHDX: data block at bytes \d+-\d+ runs past the end"):
        probe_file(str(cut(image, image.stat().st_size - 512)))


@needs_qemu_img
def test_vhdx_cut_before_its_region_table_is_truncated(tmp_path: Path) -> None:
    image = convert(tmp_path, "vhdx", "disk.vhdx")
    with pytest.raises(FormatError, match=r"truncated VHDX: region table at bytes 196608-262143 runs past"):
        probe_file(str(cut(image, 200000)))


# --- not disk images ----------------------------------------------------------------------------

def probe_bytes(data: bytes, name: str = "") -> ImageInfo:
    return probe(lambda offset, length: data[offset:offset + length], len(data), name)


def test_empty_file_is_not_a_disk_image() -> None:
    with pytest.raises(FormatError, match=r"^x.img: empty file \(0 bytes\): not a disk image$"):
        probe_bytes(b"", "x.img")


def test_odd_sized_file_is_not_a_raw_disk(tmp_path: Path) -> None:
    path = tmp_path / "odd.img"
    path.write_bytes(b"\x00\xff" * 1000 + b"\x01")
    with pytest.raises(FormatError) as error:
        probe_file(str(path))
    assert str(error.value) == (f"{path}: size 2001 is not a multiple of 512 bytes: not a raw disk image "
                                "(truncated, or not a disk image at all)")


def test_text_file_is_not_a_disk_image_even_when_sector_sized(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(b"<!DOCTYPE html>\n<html>404 Not Found</html>\n".ljust(1024, b" "))
    with pytest.raises(FormatError, match=r"this is a text file, not a disk image \(it starts with "
                                          r"'<!DOCTYPE html>'\)"):
        probe_file(str(path))


def test_compressed_and_archived_images_are_refused_with_advice() -> None:
    with pytest.raises(FormatError, match="gzip-compressed file, not a disk image: decompress it first"):
        probe_bytes(gzip.compress(bytes(4096)))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        member = tarfile.TarInfo("disk1.vmdk")
        member.size = 512
        tar.addfile(member, io.BytesIO(bytes(512)))
    with pytest.raises(FormatError, match=r"tar archive \(an OVA\?\)"):
        probe_bytes(buffer.getvalue())


def test_raw_disk_with_an_mbr_is_raw() -> None:
    disk = bytearray(MIB)
    disk[510:512] = b"\x55\xaa"
    info = probe_bytes(bytes(disk))
    assert info == ImageInfo("raw", MIB, None, None, [], None, [], MIB)


def test_probe_reads_only_inside_the_file() -> None:
    data = bytearray(4 * MIB)
    data[0:4] = b"QFI\xfb"
    struct.pack_into(">IQIIQIIQQI", data, 4, 3, 0, 0, 16, 4 * MIB, 0, 1, 3 * 65536, 65536, 1)
    struct.pack_into(">QQQII", data, 72, 0, 0, 0, 4, 112)
    reads = []

    def read(offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return bytes(data[offset:offset + length])

    info = probe(read, len(data))
    assert (info.format, info.virtual_size) == ("qcow2", 4 * MIB)
    assert reads and all(0 <= offset and offset + length <= len(data) for offset, length in reads)


def test_crc32c_matches_the_castagnoli_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283


@needs_qemu_img
@pytest.mark.parametrize("fmt, options", [
    ("qcow2", []), ("vmdk", []), ("vmdk", ["-o", "subformat=streamOptimized"]), ("vpc", []), ("vhdx", []),
])
def test_corrupt_headers_raise_format_error_and_nothing_else(tmp_path: Path, fmt: str,
                                                             options: list[str]) -> None:
    base = convert(tmp_path, fmt, "disk.img", *options).read_bytes()
    rng = random.Random(fmt + "".join(options))
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(40 if fmt == "vhdx" else 300):  # VHDX checksums are pure-Python CRC-32C: slow
        patch = {}
        for _ in range(rng.randint(1, 6)):
            # header fields live in the first KiB (VHD: also the dynamic header; VHDX: its headers)
            start = rng.choice([0, 0, 512, 64 * 1024, 192 * 1024, len(base) - 512])
            patch[start + rng.randrange(1024 if start < len(base) - 512 else 512)] = rng.randrange(256)
        size = len(base) if rng.random() < 0.8 else rng.randrange(len(base))

        def read(offset: int, length: int, patch: dict[int, int] = patch, size: int = size) -> bytes:
            assert 0 <= offset and length <= 64 * MIB
            chunk = bytearray(base[offset:min(offset + length, size)])
            for where, value in patch.items():
                if offset <= where < offset + len(chunk):
                    chunk[where - offset] = value
            return bytes(chunk)

        try:
            probe(read, size)
            outcomes["ok"] += 1
        except FormatError as error:
            assert "\n" not in str(error)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0 and outcomes["ok"] > 0
