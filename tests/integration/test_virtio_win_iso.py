"""A virtio-win ISO gives the same drivers as the directory it was made from: a real ISO 9660 image is
built from tests/data/virtio-win/iso with xorriso, extracted by open_virtio_win (bsdtar) and scanned."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hv_drivers.catalog import scan
from hv_drivers.virtio_win import open_virtio_win
from v2v.errors import SourceError

pytestmark = pytest.mark.integration

TREE = Path(__file__).resolve().parent.parent / "data" / "virtio-win" / "iso"

# (os_major, os_minor, product_type, arch, build): every release and arch the synthetic tree has
GUESTS = [
    (6, 1, "server", "x86_64", 7601),   # 2k8r2, UTF-16 viostor.inf
    (6, 1, "client", "i686", 7601),     # w7 x86
    (6, 3, "server", "x86_64", 9600),   # 2k12r2
    (10, 0, "client", "x86_64", 19045),  # w10
    (10, 0, "client", "x86_64", 22631),  # w11
    (10, 0, "server", "x86_64", 17763),  # 2k19
    (10, 0, "server", "x86_64", 20348),  # 2k22: the flat amd64/2k22 copy competes
]


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail("{} is missing: apt-get install {} (scripts/setup.sh)".format(name, package))
    return path


@pytest.fixture(scope="module")
def iso(tmp_path_factory) -> Path:
    """The synthetic tree as an ISO made like virtio-win's: Rock Ridge with read-only modes, and Joliet."""
    _tool("bsdtar", "libarchive-tools")
    out = tmp_path_factory.mktemp("iso") / "virtio-win-0.1.240.iso"
    subprocess.run([_tool("xorriso", "xorriso"), "-as", "mkisofs", "-quiet", "-r", "-J",
                    "-V", "virtio-win-0.1.240", "-o", str(out), str(TREE)], check=True, timeout=120)
    return out


def _chosen(catalog, guest):
    """What select() picks, relative to the tree's root, so that two roots compare."""
    sel = catalog.select(*guest[:4], build=guest[4])
    rel = lambda p: os.path.relpath(p, catalog.root)  # noqa: E731
    drivers = [(d.name, d.os_token, d.arch, d.exact, str(d.driver_ver), d.hardware_ids,
                [rel(f) for f in d.files]) for d in sel.drivers]
    return sel.os_token, drivers, [m.name for m in sel.missing]


def test_iso_selects_the_same_drivers_as_the_directory(iso, tmp_path):
    from_dir = scan(TREE)
    with open_virtio_win(iso, tmp_dir=str(tmp_path)) as tree:
        assert Path(tree).parent == tmp_path
        from_iso = scan(tree)
        assert from_iso.names() == from_dir.names()
        assert from_iso.skipped == ()
        for guest in GUESTS:
            assert _chosen(from_iso, guest) == _chosen(from_dir, guest), guest
        # every file the directory offers is in the ISO's tree, byte for byte, but the debug symbols
        assert not list(Path(tree).rglob("*.pdb"))
        wanted = sorted(p.relative_to(TREE) for p in TREE.rglob("*") if p.is_file() and p.suffix != ".pdb")
        assert sorted(p.relative_to(tree) for p in Path(tree).rglob("*") if p.is_file()) == wanted
        for rel in wanted:
            assert (Path(tree) / rel).read_bytes() == (TREE / rel).read_bytes(), rel
    assert list(tmp_path.iterdir()) == []
    assert (TREE / "Balloon" / "w10" / "amd64" / "blnsvr.pdb").exists()  # the tree did have one


def test_a_truncated_iso_is_one_line_and_leaves_no_temporary_tree(iso, tmp_path):
    cut = tmp_path / "virtio-win-cut.iso"
    with open(iso, "rb") as src:
        cut.write_bytes(src.read(iso.stat().st_size // 2))
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(SourceError) as e:
        with open_virtio_win(cut, tmp_dir=str(work)):
            pytest.fail("a truncated ISO was opened")
    message = str(e.value)
    assert message.startswith(str(cut) + ": truncated ISO image") and "\n" not in message
    assert list(work.iterdir()) == []


def test_an_iso_with_damaged_directory_records_is_one_line_and_leaves_no_temporary_tree(iso, tmp_path):
    """Whole in size, so only bsdtar can tell: the root directories of the ISO 9660 and Joliet trees
    are overwritten."""
    data = bytearray(iso.read_bytes())
    for sector in (16, 17):  # the primary and the Joliet supplementary volume descriptors
        vd = data[sector * 2048:(sector + 1) * 2048]
        assert vd[0] in (1, 2) and vd[1:6] == b"CD001"
        extent, length = int.from_bytes(vd[158:162], "little"), int.from_bytes(vd[166:170], "little")
        data[extent * 2048:extent * 2048 + length] = b"\xff" * length
    damaged = tmp_path / "virtio-win-damaged.iso"
    damaged.write_bytes(bytes(data))
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(SourceError) as e:
        with open_virtio_win(damaged, tmp_dir=str(work)):
            pytest.fail("an ISO with damaged directories was opened")
    message = str(e.value)
    assert message.startswith(str(damaged) + ": cannot extract the virtio-win ISO: bsdtar: ")
    assert "Error exit delayed" not in message
    assert "\n" not in message
    assert list(work.iterdir()) == []
