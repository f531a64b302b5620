"""Every input format is detected from its content (not its name) and reads back as the same guest."""
import os
import subprocess

import pytest

from diskfmt import image
from v2v.pipeline import make_overlays
from v2v.sources.disk import open_disks

pytestmark = pytest.mark.integration

FORMATS = [
    # (qemu-img -O, options, expected format, expected subformat)
    ("qcow2", [], "qcow2", None),
    ("vmdk", ["-o", "subformat=monolithicSparse"], "vmdk", "monolithicSparse"),
    ("vmdk", ["-o", "subformat=streamOptimized"], "vmdk", "streamOptimized"),
    ("vpc", ["-o", "subformat=dynamic"], "vpc", "dynamic"),
    ("vpc", ["-o", "subformat=fixed"], "vpc", "fixed"),
    ("vhdx", [], "vhdx", None),
]


@pytest.fixture(scope="module")
def small_guest_disk(tmp_path_factory):
    """A small partitioned disk with a filesystem and files: quick to convert into every format."""
    d = tmp_path_factory.mktemp("fmt")
    root = d / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("fmt-test\n")
    (root / "blob").write_bytes(os.urandom(3 << 20))
    fs = d / "fs.img"
    with open(fs, "wb") as f:
        f.truncate(48 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(fs)], check=True)
    disk = d / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["sfdisk", "-q", str(disk)], input=b"label: dos\nstart=2048, size=98304, type=83\n", check=True)
    subprocess.run(["dd", "if=" + str(fs), "of=" + str(disk), "bs=1M", "seek=1", "conv=notrunc,sparse",
                    "status=none"], check=True)
    return disk


@pytest.mark.parametrize("ofmt,opts,fmt,sub", FORMATS, ids=[f[0] + "-" + (f[3] or "default") for f in FORMATS])
def test_format_is_detected_from_content_and_reads_back_identically(tmp_path, small_guest_disk, ofmt, opts, fmt, sub):
    img = tmp_path / "guest.img"          # the name says nothing about the format on purpose
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", ofmt] + opts + [str(small_guest_disk), str(img)],
                   check=True)
    before = img.read_bytes()
    [disk] = open_disks([str(img)])
    assert disk.format == fmt
    if sub:
        assert disk.subformat == sub
    assert disk.virtual_size >= 64 << 20
    [ov] = make_overlays([disk], str(tmp_path))
    # the overlay shows exactly the source disk's content (qemu-img compare: exit 0 = identical)
    cp = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", ov.path, str(small_guest_disk)],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # (a VHD's size is rounded up to its geometry: compare treats the larger image's zero tail as equal)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert img.read_bytes() == before, "opening the source must not write it"


def test_input_format_option_overrides_detection(tmp_path, small_guest_disk):
    [disk] = open_disks([str(small_guest_disk)], "raw")
    assert disk.format == "raw"
    assert image.info(disk.path, "raw")["virtual-size"] == 64 << 20
