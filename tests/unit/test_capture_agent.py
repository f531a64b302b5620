"""The agent's copy passes on a file that stands in for a disk (no root): only chunks whose bytes differ
from what the converter holds are sent, and a chunk replaces every held chunk it overlaps."""
import os
import threading

import pytest

from diskfmt.extents import ExtentList
from linux_capture import protocol
from linux_capture.consistency import DiskCapture, capture_disk, choose_mode, DigestPass
from linux_capture.discover import Disk, Region

MiB = 1 << 20


def _disk(path, size):
    return Disk("file", path, size, False, "", (Region("file", path, 0, size, (), (), False, ()),))


def _capture(tmp_path, data, have=None):
    path = str(tmp_path / "disk.img")
    with open(path, "wb") as f:
        f.write(data)
    sent = []
    cap = DiskCapture(_disk(path, len(data)), lambda off, d, sha: sent.append((off, d, sha)),
                      lambda *a, **k: None, have or {})
    return path, cap, sent


def test_second_pass_sends_only_the_changed_chunk(tmp_path):
    data = os.urandom(4 * MiB)
    path, cap, sent = _capture(tmp_path, data)
    try:
        whole = ExtentList([(0, len(data))])
        assert cap.copy_pass(whole, None) == 4 * MiB
        assert [off for off, _, _ in sent] == [0, MiB, 2 * MiB, 3 * MiB]
        assert all(sha == protocol.digest(d) for _, d, sha in sent)
        with open(path, "r+b") as f:
            f.seek(2 * MiB + 12345)
            f.write(b"\xff")
        del sent[:]
        assert cap.copy_pass(whole, None) == MiB
        assert [off for off, _, _ in sent] == [2 * MiB]
        assert cap.copy_pass(whole, None) == 0
    finally:
        cap.close()


def test_read_ahead_sends_every_chunk_in_order_with_its_own_bytes(tmp_path):
    data = os.urandom(40 * MiB + 8192)
    path, cap, sent = _capture(tmp_path, data)
    try:
        assert cap.copy_pass(ExtentList([(0, len(data))]), None) == len(data)
        assert [off for off, _, _ in sent] == list(range(0, len(data), MiB))
        assert b"".join(d for _, d, _ in sent) == data
        assert all(sha == protocol.digest(d) for _, d, sha in sent)
    finally:
        cap.close()


def test_a_failed_send_stops_the_read_ahead_thread_before_the_pass_returns(tmp_path):
    data = os.urandom(32 * MiB)
    path = str(tmp_path / "disk.img")
    with open(path, "wb") as f:
        f.write(data)
    calls = []

    def send(off, d, sha):
        calls.append(off)
        if calls == [0, MiB, 2 * MiB]:
            raise BrokenPipeError(32, "Broken pipe")

    cap = DiskCapture(_disk(path, len(data)), send, lambda *a, **k: None, {})
    try:
        with pytest.raises(BrokenPipeError):
            cap.copy_pass(ExtentList([(0, len(data))]), None)
        assert [t.name for t in threading.enumerate() if t.name == "v2v-read-ahead"] == []
        assert calls == [0, MiB, 2 * MiB]
        assert set(cap.held) == {(0, MiB), (MiB, MiB)}
        # the reader is free again: the next pass sends what the failed one did not
        assert cap.copy_pass(ExtentList([(0, len(data))]), None) == 30 * MiB
    finally:
        cap.close()


def test_a_short_read_in_the_read_ahead_thread_is_an_error_naming_the_offset(tmp_path):
    data = os.urandom(8 * MiB)
    path, cap, sent = _capture(tmp_path, data)
    try:
        os.truncate(path, 5 * MiB + 4096)
        with pytest.raises(OSError, match="short read of .* at offset {} ".format(5 * MiB)):
            cap.copy_pass(ExtentList([(0, len(data))]), None)
        assert [off for off, _, _ in sent] == [0, MiB, 2 * MiB, 3 * MiB, 4 * MiB]
        assert [t.name for t in threading.enumerate() if t.name == "v2v-read-ahead"] == []
    finally:
        cap.close()


def test_held_digests_from_an_earlier_run_are_not_sent_again(tmp_path):
    data = os.urandom(2 * MiB)
    have = {(0, MiB): protocol.digest(data[:MiB]), (MiB, MiB): protocol.digest(b"stale")}
    path, cap, sent = _capture(tmp_path, data, have)
    try:
        assert cap.copy_pass(ExtentList([(0, len(data))]), None) == MiB
        assert [off for off, _, _ in sent] == [MiB]
    finally:
        cap.close()


def test_a_sent_chunk_forgets_the_held_chunks_it_overlaps(tmp_path):
    data = bytes(range(256)) * (MiB // 256)
    path, cap, sent = _capture(tmp_path, data)
    try:
        cap.remember(0, 8192, b"a" * 32)
        cap.remember(MiB - 4096, 4096, b"b" * 32)
        cap.remember(0, 4096, b"c" * 32)
        assert set(cap.held) == {(0, 4096), (MiB - 4096, 4096)}
    finally:
        cap.close()


def test_an_unmounted_disk_is_copied_offline_in_one_pass(tmp_path):
    data = os.urandom(MiB) + bytes(MiB)
    path, cap, sent = _capture(tmp_path, data)
    try:
        assert choose_mode(cap.disk) == ("offline", "not mounted: copied as it is")
        rep = capture_disk(cap, DigestPass(), max_freeze=2.0)
        assert rep.mode == "offline" and rep.rounds == (2 * MiB,) and rep.consistent
        assert b"".join(d for _, d, _ in sorted(sent)) == data
    finally:
        cap.close()


def test_filesystems_on_lvm_volumes_of_a_disk_are_frozen_with_it(tmp_path, monkeypatch):
    """A PV partition held by dm-0 (an LV) which holds dm-1 (crypt): mounts found up the stack (a sysfs
    tree laid out as the kernel's); the disk is then freeze-converge with those mountpoints."""
    from linux_capture import discover
    from linux_capture.consistency import rw_mounts
    from linux_capture.discover import Mount, _holder_mounts
    for name, dev, holders in (("dm-0", "254:0", ["dm-1"]), ("dm-1", "254:1", [])):
        (tmp_path / name / "holders").mkdir(parents=True)
        (tmp_path / name / "dev").write_text(dev + "\n")
        for h in holders:
            (tmp_path / name / "holders" / h).write_text("")
    monkeypatch.setattr(discover, "SYS_BLOCK", str(tmp_path))
    root = Mount("/", "ext4", False, "/dev/mapper/vg0-root")
    data = Mount("/srv", "xfs", False, "/dev/mapper/data")
    ro = Mount("/mnt/ro", "ext4", True, "/dev/mapper/vg0-old")
    found = _holder_mounts(("dm-0",), {"254:0": [root, ro], "254:1": [data]})
    assert found == [root, ro, data]
    region = Region("sda2", "/dev/sda2", 1 << 20, 1 << 30, (), ("dm-0",), True, tuple(found))
    disk = Disk("sda", "/dev/sda", 2 << 30, False, "", (region,))
    assert [mp for _, mp, _ in rw_mounts(disk)] == ["/", "/srv"]
    assert rw_mounts(disk, holders=False) == []
    mode, reason = choose_mode(disk)
    assert mode == "freeze-converge" and "dm-0 (device-mapper) sent whole" in reason


def test_auto_codec_compresses_for_a_slow_link_and_goes_raw_for_a_fast_one():
    from linux_capture.agent import AutoCodec
    slow = AutoCodec()
    assert slow.want_compress()                     # nothing measured yet: compress
    slow.compressed(1 << 20, 400 << 10, 0.01)       # zlib at 100 MB/s, to 40 %
    slow.wrote(400 << 10, 0.08)                      # the link: 5 MB/s
    assert all(slow.want_compress() for _ in range(40)) and slow.raw == 0
    fast = AutoCodec()
    fast.want_compress()
    fast.compressed(1 << 20, 600 << 10, 0.01)       # zlib at 100 MB/s, to 60 %
    fast.wrote(1 << 20, 0.001)                       # the link: 1 GB/s
    choices = [fast.want_compress() for _ in range(64)]
    assert choices.count(False) >= 56 and fast.raw == choices.count(False)
    assert choices.count(True) >= 3, "the estimates are never sampled again"


def test_wire_with_auto_codec_measures_and_still_sends_frames_the_receiver_decodes():
    import io
    import os as _os
    from linux_capture import protocol
    from linux_capture.agent import AutoCodec, Wire
    out = io.BytesIO()
    w = Wire(out)
    w.auto = AutoCodec()
    data = (b"text-like line %d\n" * 70000)[:1 << 20]
    rand = _os.urandom(1 << 20)
    for i in range(8):
        chunk = data if i % 2 else rand
        w.chunk(0, i << 20, chunk, protocol.digest(chunk))
    assert w.auto.compress_rate is not None and w.auto.link_rate is not None
    r = protocol.FrameReader(io.BytesIO(out.getvalue()).read)
    for i in range(8):
        c = protocol.decode_chunk(r.read_frame())
        assert c.offset == i << 20 and c.data == (data if i % 2 else rand)
