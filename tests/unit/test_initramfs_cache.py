"""The host-side cache of rebuilt initramfs files a standby's refreshes reuse (guest_fixups/linux/initramfs.py)."""
import os

import pytest

from guest_fixups.linux.initramfs import InitramfsCache

KEY1 = "11161a9c4d1e3267775ebc7c74c69f3f"
KEY2 = "22161a9c4d1e3267775ebc7c74c69f3f"


def _writer(data: bytes):
    def fill(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
    return fill


def test_a_stored_initramfs_is_found_by_kernel_and_inputs_digest_only(tmp_path):
    cache = InitramfsCache(str(tmp_path / "c"))
    assert cache.get("6.1.0-50-amd64", KEY1) is None          # no directory yet
    cache.put("6.1.0-50-amd64", KEY1, _writer(b"initrd one"))
    got = cache.get("6.1.0-50-amd64", KEY1)
    assert got is not None and open(got, "rb").read() == b"initrd one"
    assert cache.get("6.1.0-50-amd64", KEY2) is None           # other inputs: rebuild
    assert cache.get("6.1.0-51-amd64", KEY1) is None           # another kernel


def test_a_new_rebuild_replaces_the_older_file_of_its_kernel_only(tmp_path):
    cache = InitramfsCache(str(tmp_path))
    cache.put("6.1.0-50-amd64", KEY1, _writer(b"old"))
    cache.put("5.10.0-9-amd64", KEY1, _writer(b"other kernel"))
    cache.put("6.1.0-50-amd64", KEY2, _writer(b"new"))
    assert cache.get("6.1.0-50-amd64", KEY1) is None
    assert open(cache.get("6.1.0-50-amd64", KEY2), "rb").read() == b"new"
    assert open(cache.get("5.10.0-9-amd64", KEY1), "rb").read() == b"other kernel"
    assert sorted(os.listdir(str(tmp_path))) == ["initrd.img-5.10.0-9-amd64." + KEY1, "initrd.img-6.1.0-50-amd64." + KEY2]


def test_a_failed_download_leaves_nothing_and_keeps_the_older_file(tmp_path):
    cache = InitramfsCache(str(tmp_path))
    cache.put("6.1.0-50-amd64", KEY1, _writer(b"old"))

    def broken(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise RuntimeError("download: appliance closed")
    with pytest.raises(RuntimeError):
        cache.put("6.1.0-50-amd64", KEY2, broken)
    assert os.listdir(str(tmp_path)) == ["initrd.img-6.1.0-50-amd64." + KEY1]


def test_a_part_file_left_by_a_killed_run_is_removed_by_the_next_store(tmp_path):
    (tmp_path / (".initrd.img-6.1.0-50-amd64." + KEY1 + ".part")).write_bytes(b"killed mid-download")
    cache = InitramfsCache(str(tmp_path))
    assert cache.get("6.1.0-50-amd64", KEY1) is None
    cache.put("6.1.0-50-amd64", KEY2, _writer(b"whole"))
    assert os.listdir(str(tmp_path)) == ["initrd.img-6.1.0-50-amd64." + KEY2]


@pytest.mark.parametrize("kernel", ["../../etc/passwd", "6.1/../../x", ".hidden", "", "a b"])
def test_kernel_names_that_are_no_plain_file_name_are_never_cached(tmp_path, kernel):
    cache = InitramfsCache(str(tmp_path / "c"))
    cache.put(kernel, KEY1, _writer(b"x"))
    assert cache.get(kernel, KEY1) is None
    assert not (tmp_path / "c").exists() or os.listdir(str(tmp_path / "c")) == []


def test_discard_removes_a_damaged_copy(tmp_path):
    cache = InitramfsCache(str(tmp_path))
    cache.put("6.1.0-50-amd64", KEY1, _writer(b"damaged"))
    cache.discard("6.1.0-50-amd64", KEY1)
    assert cache.get("6.1.0-50-amd64", KEY1) is None and os.listdir(str(tmp_path)) == []
