"""open_virtio_win without external tools: directories pass through, non-ISO files and truncated ISO
headers are refused with one line naming the file, and the temporary tree goes away when extraction fails."""
from pathlib import Path

import pytest

from hv_drivers import virtio_win
from hv_drivers.virtio_win import ISO_SECTOR, iso_size, open_virtio_win
from v2v.errors import CommandError, SourceError


def _descriptor(kind: int, blocks: int = 0, block_size: int = ISO_SECTOR) -> bytes:
    vd = bytearray(ISO_SECTOR)
    vd[0] = kind
    vd[1:6] = b"CD001"
    vd[6] = 1
    vd[80:84] = blocks.to_bytes(4, "little")
    vd[84:88] = blocks.to_bytes(4, "big")
    vd[128:130] = block_size.to_bytes(2, "little")
    vd[130:132] = block_size.to_bytes(2, "big")
    return bytes(vd)


def _iso_header(blocks: int, boot_record_first: bool = False) -> bytes:
    """System area + descriptor set (optionally an El Torito boot record before the primary one)."""
    vds = [_descriptor(1, blocks), _descriptor(255)]
    if boot_record_first:
        vds.insert(0, _descriptor(0))
    return bytes(16 * ISO_SECTOR) + b"".join(vds)


def _reader(data: bytes):
    return lambda offset, length: data[offset:offset + length]


def _fake_bsdtar(argv, **kw):
    """Extracts one INF, as bsdtar would from a tiny ISO."""
    (Path(argv[argv.index("-C") + 1]) / "viostor.inf").write_bytes(b"")


def test_iso_size_is_volume_blocks_times_block_size():
    assert iso_size(_reader(_iso_header(300))) == 300 * ISO_SECTOR
    assert iso_size(_reader(_iso_header(300, boot_record_first=True))) == 300 * ISO_SECTOR


@pytest.mark.parametrize("data", [b"", bytes(40000), b"\x00" * 32768 + b"\x01CD002" + bytes(2042)])
def test_iso_size_refuses_what_is_not_iso9660(data):
    with pytest.raises(ValueError):
        iso_size(_reader(data))


def test_a_directory_is_used_as_it_is(tmp_path):
    with open_virtio_win(tmp_path) as tree:
        assert tree == str(tmp_path)
    assert tmp_path.is_dir()


def test_a_file_that_is_not_an_iso_is_one_line_naming_it(tmp_path):
    f = tmp_path / "virtio-win.zip"
    f.write_bytes(b"PK\x03\x04" + bytes(50000))
    with pytest.raises(SourceError) as e:
        with open_virtio_win(f):
            pass
    assert str(f) in str(e.value) and "\n" not in str(e.value)
    assert "not a virtio-win directory or ISO 9660 image" in str(e.value)


def test_a_missing_path_is_one_line_naming_it(tmp_path):
    with pytest.raises(SourceError, match="no such virtio-win directory or ISO"):
        with open_virtio_win(tmp_path / "nope.iso"):
            pass


def test_an_iso_shorter_than_its_volume_is_truncated_and_nothing_is_extracted(tmp_path, monkeypatch):
    iso = tmp_path / "virtio-win.iso"
    iso.write_bytes(_iso_header(1000))  # says 2 MB, holds 38 KB
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(virtio_win, "run", lambda *a, **k: pytest.fail("extracted a truncated ISO"))
    with pytest.raises(SourceError) as e:
        with open_virtio_win(iso, tmp_dir=str(work)):
            pass
    assert str(e.value) == "{}: truncated ISO image: {} bytes of the {} its volume descriptor gives".format(
        iso, 18 * ISO_SECTOR, 1000 * ISO_SECTOR)
    assert list(work.iterdir()) == []


def test_a_failed_extraction_is_one_line_and_leaves_no_temporary_tree(tmp_path, monkeypatch):
    iso = tmp_path / "virtio-win.iso"
    iso.write_bytes(_iso_header(18))
    work = tmp_path / "work"
    work.mkdir()

    def failing_bsdtar(argv, **kw):
        (Path(argv[argv.index("-C") + 1]) / "half.inf").write_bytes(b"")  # a partial extraction
        raise CommandError(argv, 1, "bsdtar: Damaged 9660 header\n"
                                    "bsdtar: Error exit delayed from previous errors.\n")
    monkeypatch.setattr(virtio_win, "run", failing_bsdtar)
    with pytest.raises(SourceError) as e:
        with open_virtio_win(iso, tmp_dir=str(work)):
            pass
    assert str(e.value) == "{}: cannot extract the virtio-win ISO: bsdtar: Damaged 9660 header".format(iso)
    assert list(work.iterdir()) == []


def test_missing_bsdtar_names_the_debian_package(tmp_path, monkeypatch):
    iso = tmp_path / "virtio-win.iso"
    iso.write_bytes(_iso_header(18))

    def no_bsdtar(argv, **kw):
        raise CommandError(argv, 127, "bsdtar: command not found")
    monkeypatch.setattr(virtio_win, "run", no_bsdtar)
    with pytest.raises(SourceError, match="apt-get install libarchive-tools"):
        with open_virtio_win(iso, tmp_dir=str(tmp_path)):
            pass


def test_the_temporary_tree_is_removed_when_the_block_raises(tmp_path, monkeypatch):
    iso = tmp_path / "virtio-win.iso"
    iso.write_bytes(_iso_header(18))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(virtio_win, "run", _fake_bsdtar)
    with pytest.raises(RuntimeError):
        with open_virtio_win(iso, tmp_dir=str(work)) as tree:
            assert tree.startswith(str(work))
            raise RuntimeError("scan failed")
    assert list(work.iterdir()) == []


def test_an_iso_that_extracts_to_nothing_is_refused_and_leaves_no_temporary_tree(tmp_path, monkeypatch):
    iso = tmp_path / "virtio-win.iso"
    iso.write_bytes(_iso_header(18))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(virtio_win, "run", lambda *a, **k: None)
    with pytest.raises(SourceError, match="the ISO image holds no files"):
        with open_virtio_win(iso, tmp_dir=str(work)):
            pass
    assert list(work.iterdir()) == []


def test_an_iso_is_extracted_with_bsdtar_without_debug_symbols(tmp_path, monkeypatch):
    iso = tmp_path / "virtio-win.iso"
    iso.write_bytes(_iso_header(18))
    calls = []
    monkeypatch.setattr(virtio_win, "run", lambda argv, **k: (calls.append(argv), _fake_bsdtar(argv)))
    with open_virtio_win(iso, tmp_dir=str(tmp_path)) as tree:
        assert (Path(tree) / "viostor.inf").exists()
    (argv,) = calls
    assert argv[:2] == ["bsdtar", "-x"] and argv[argv.index("-f") + 1] == str(iso)
    assert argv[argv.index("-C") + 1] == tree
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--exclude"] == ["*.pdb", "*.PDB"]
    assert not Path(tree).exists()
