"""The agent's LVM snapshot parts that need no device-mapper: lvs/pvs reports parsed, when a PV can be
captured from snapshots and with how much copy-on-write space, reads redirected to a snapshot's view, and
a volume's used blocks mapped back through its segments to the PV (a real ext4 made by mkfs)."""
import os
import shutil
import subprocess

import pytest

from linux_capture import lvm
from linux_capture.discover import Disk, Region
from linux_capture.fsmap import DeviceReader, DiskReader
from linux_capture.snapset import _through_segments, volume_map

MiB = 1 << 20
EXT = 4 * MiB
PV_ROW = {"pv_name": "/dev/sda2", "vg_name": "vg0", "pe_start": str(MiB), "vg_extent_size": str(EXT),
          "vg_free": str(64 * MiB), "pv_mda_count": "1", "pv_count": "1"}


def _seg(lv, attr, size, start, seg_size, ranges):
    return {"vg_name": "vg0", "lv_name": lv, "lv_attr": attr, "lv_size": str(size), "lv_dm_path": "/dev/mapper/vg0-" + lv,
            "seg_start": str(start), "seg_size": str(seg_size), "seg_pe_ranges": ranges}


def _pv(segs, **row):
    return lvm.parse_reports("/dev/sda2", dict(PV_ROW, **row), segs, lambda name: name == "/dev/sda2")


def test_segments_are_placed_on_the_pv_after_its_metadata_area():
    pv = _pv([_seg("root", "-wi-ao----", 12 * MiB, 0, 8 * MiB, "/dev/sda2:4-5"),
              _seg("root", "-wi-ao----", 12 * MiB, 8 * MiB, 4 * MiB, "/dev/sda2:0-0"),
              _seg("swap", "-wi-a-----", 4 * MiB, 0, 4 * MiB, "/dev/sda2:1-1")])
    root, swap = pv.volumes
    assert root.name == "root" and root.active and root.kind == "-"
    assert root.segments == (lvm.Segment(0, MiB + 4 * EXT, 8 * MiB), lvm.Segment(8 * MiB, MiB, 4 * MiB))
    assert swap.segments == (lvm.Segment(0, MiB + EXT, 4 * MiB),)
    assert lvm.unsupported(pv) == ""


def test_a_segment_whose_extents_disagree_with_its_size_is_an_error():
    with pytest.raises(lvm.LvmError):
        _pv([_seg("root", "-wi-ao----", 12 * MiB, 0, 12 * MiB, "/dev/sda2:0-1")])


@pytest.mark.parametrize("segs, row, why", [
    ([_seg("root", "-wi-ao----", 8 * MiB, 0, 4 * MiB, "/dev/sda2:0-0"),
      _seg("root", "-wi-ao----", 8 * MiB, 4 * MiB, 4 * MiB, "/dev/sdb1:0-0")], {}, "span other disks"),
    ([_seg("root", "swi-a-s---", 8 * MiB, 0, 8 * MiB, "/dev/sda2:0-1")], {}, "snapshots, thin or RAID"),
    ([_seg("root", "-wi-ao----", 8 * MiB, 0, 8 * MiB, "/dev/sda2:0-1")], {"pv_mda_count": "2"}, "metadata areas"),
    ([_seg("root", "-wi-ao----", 8 * MiB, 0, 8 * MiB, "/dev/sda2:0-1")], {"pv_count": "2"}, "physical volumes"),
    ([_seg("v2v-snap-root-1", "-wi-a-----", 8 * MiB, 0, 8 * MiB, "/dev/sda2:0-1")], {}, "still there"),
])
def test_pvs_that_snapshots_cannot_capture_say_why(segs, row, why):
    assert why in lvm.unsupported(_pv(segs, **row))


def test_copy_on_write_space_is_shared_out_of_the_free_extents():
    vols = [_seg("root", "-wi-ao----", 800 * MiB, 0, 800 * MiB, "/dev/sda2:0-199"),
            _seg("swap", "-wi-ao----", 128 * MiB, 0, 128 * MiB, "/dev/sda2:200-231"),
            _seg("old", "-wi-------", 64 * MiB, 0, 64 * MiB, "/dev/sda2:232-247")]   # inactive: no snapshot
    cows = lvm.cow_sizes(_pv(vols, vg_free=str(256 * MiB)))
    assert set(cows) == {"root", "swap"}
    assert all(c % EXT == 0 and c >= lvm.MIN_COW for c in cows.values())
    assert sum(cows.values()) <= 256 * MiB - 2 * EXT and cows["root"] > cows["swap"]
    assert lvm.cow_sizes(_pv(vols, vg_free=str(40 * MiB))) is None


def _file_disk(path, size, regions=()):
    with open(path, "wb") as f:
        f.truncate(size)
    return Disk("img", path, size, False, "", tuple(regions))


def test_disk_reads_of_overridden_ranges_come_from_the_override(tmp_path):
    path = str(tmp_path / "disk.img")
    disk = _file_disk(path, 4 * MiB)
    with open(path, "r+b") as f:
        f.write(b"D" * (4 * MiB))
    r = DiskReader(disk)
    try:
        r.override(MiB, 2 * MiB, lambda o, n: b"S" * n)
        data = r.read(MiB - 4096, MiB + 8192)
        assert data == b"D" * 4096 + b"S" * MiB + b"D" * 4096
        assert r.read(0, 4096) == b"D" * 4096
    finally:
        r.close()


def test_a_volume_used_blocks_land_where_its_segments_put_them_and_free_extents_are_not_sent(tmp_path):
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("needs mkfs.ext4")
    fs = str(tmp_path / "lv.img")
    with open(fs, "wb") as f:
        f.truncate(12 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", fs], check=True, timeout=60)
    # the PV: 1 MiB metadata, extent 0 = the volume's last 4 MiB, extents 1-2 free, 3-4 = its first 8 MiB
    pv_file = str(tmp_path / "pv.img")
    with open(fs, "rb") as src, open(pv_file, "wb") as pvf:
        pvf.truncate(MiB + 5 * EXT)
        data = src.read()
        pvf.seek(MiB + 3 * EXT)
        pvf.write(data[:8 * MiB])
        pvf.seek(MiB)
        pvf.write(data[8 * MiB:])
    pv = _pv([_seg("root", "-wi-ao----", 12 * MiB, 0, 8 * MiB, "/dev/sda2:3-4"),
              _seg("root", "-wi-ao----", 12 * MiB, 8 * MiB, 4 * MiB, "/dev/sda2:0-0")])
    region = Region("sda2", pv_file, 2 * MiB, os.path.getsize(pv_file), (), ("dm-0",), True, ())
    reader = DeviceReader(pv_file)
    try:
        read = _through_segments(pv.volumes[0].segments, reader.read)
        assert read(0, 12 * MiB) == data, "the volume read through its segments differs from the filesystem"
        ext, lines, exact = volume_map(region, pv, {"root": read})
    finally:
        reader.close()
    from diskfmt.usedmap import map_filesystem
    own = map_filesystem(lambda o, n: data[o:o + n], len(data)).extents
    assert exact and "ext4" in lines[0]
    assert ext.covers(2 * MiB, 3 * MiB), "the metadata area is not sent"
    free = (2 * MiB + MiB + EXT, 2 * MiB + MiB + 3 * EXT)
    assert not ext.clip(*free), "free extents are sent"
    for start, end in own:
        for s, e in ([(start, end)] if end <= 8 * MiB or start >= 8 * MiB else [(start, 8 * MiB), (8 * MiB, end)]):
            base = 2 * MiB + (MiB + 3 * EXT if s < 8 * MiB else MiB - 8 * MiB)
            assert ext.covers(base + s, base + e), (s, e)
    assert ext.total() == MiB + own.total()
