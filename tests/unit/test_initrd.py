import glob
import gzip
import os
import subprocess

import pytest

from guest_fixups.linux.initrd import list_files, module_names
from v2v.errors import FixupError


def _cpio(tmp_path, files):
    root = tmp_path / "root"
    for name, content in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
    names = "\n".join(sorted(files)).encode() + b"\n"
    return subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=names,
                          stdout=subprocess.PIPE, check=True).stdout


def test_early_uncompressed_then_gzip_archive_are_both_listed(tmp_path):
    early = _cpio(tmp_path / "a", {"kernel/x86/microcode/GenuineIntel.bin": b"\1" * 100})
    main = _cpio(tmp_path / "b", {"usr/lib/modules/6.1/kernel/drivers/block/virtio_blk.ko": b"\0" * 5000,
                                  "usr/lib/modules/6.1/kernel/drivers/scsi/vmw_pvscsi.ko.xz": b"x" * 10,
                                  "init": b"#!/bin/sh\n"})
    names = list_files(early + b"\0" * 512 + gzip.compress(main))
    assert "kernel/x86/microcode/GenuineIntel.bin" in names
    assert "init" in names
    assert module_names(names) == ["virtio_blk", "vmw_pvscsi"]


def test_truncated_initramfs_is_an_error_not_a_short_list(tmp_path):
    data = _cpio(tmp_path, {"init": b"#!/bin/sh\n" * 100, "lib/big.ko": os.urandom(3000)})
    for cut in (60, len(data) // 2, 1500):
        with pytest.raises(FixupError, match="truncated|corrupt"):
            list_files(data[:cut])


@pytest.mark.skipif(not glob.glob("/boot/initrd.img-*"), reason="no initramfs on this host")
def test_real_debian_initramfs_matches_lsinitramfs():
    path = sorted(glob.glob("/boot/initrd.img-*"))[-1]
    with open(path, "rb") as f:
        ours = set(list_files(f.read()))
    theirs = subprocess.run(["lsinitramfs", path], stdout=subprocess.PIPE, check=True, text=True).stdout
    theirs = {ln for ln in theirs.splitlines() if ln and ln != "."}
    assert {n.lstrip("./") for n in ours if n != "."} == {n.lstrip("./") for n in theirs}
    assert len(module_names(list(ours))) > 10
