"""The agent's wire protocol and the small pure parts around it: frames, chunks, truncation and damage
(every error names the disk and offset), the token bucket, targets, mountinfo, chunking."""
import io
import os
import random
import zlib

import pytest

from diskfmt.extents import ExtentList
from linux_capture import protocol
from linux_capture.agent import TokenBucket, Wire
from linux_capture.discover import parse_mountinfo
from linux_capture.fsmap import chunks
from v2v.errors import SourceError
from v2v.sources.host import parse_target


def _frames(data: bytes):
    r = protocol.FrameReader(io.BytesIO(data).read)
    out = []
    while True:
        f = r.read_frame()
        if f is None:
            return out
        out.append(f)


def _text(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    words = [b"alpha", b"beta", b"gamma", b"delta", b"\n", b"  "]
    return b"".join(rng.choice(words) for _ in range(n))[:n]


@pytest.mark.parametrize("codec", ["none", "zlib", "lzma"])
def test_chunk_round_trips_with_every_codec(codec):
    data = _text(300000)
    frame = protocol.encode_chunk(3, 1 << 30, data, protocol.CODECS[codec])
    (f,) = _frames(frame)
    c = protocol.decode_chunk(f)
    assert (c.disk, c.offset, c.length, c.data) == (3, 1 << 30, len(data), data)
    if codec != "none":
        assert len(frame) < len(data) // 2


def test_incompressible_chunk_goes_raw():
    data = os.urandom(65536)
    f = _frames(protocol.encode_chunk(0, 0, data, protocol.CODEC_ZLIB))[0]
    assert f.codec == protocol.CODEC_NONE
    assert protocol.decode_chunk(f).data == data


def test_a_raw_chunk_frame_passes_its_data_through_uncopied_and_the_wire_writes_it_whole():
    data = os.urandom(1 << 20)
    view = memoryview(bytearray(data))
    parts = protocol.chunk_frame_parts(2, 8 << 20, view, protocol.CODEC_NONE)
    assert any(p is view for p in parts)
    assert b"".join(parts) == protocol.encode_chunk(2, 8 << 20, data, protocol.CODEC_NONE)
    out = io.BytesIO()
    w = Wire(out, protocol.CODEC_ZLIB)
    w.chunk(2, 8 << 20, view, protocol.digest(data))
    c = protocol.decode_chunk(_frames(out.getvalue())[0])
    assert (c.disk, c.offset, c.data) == (2, 8 << 20, data)
    assert w.bytes_on_wire == len(out.getvalue()) and w.raw_bytes == len(data)


def test_zero_chunk_carries_no_data():
    frame = protocol.encode_chunk(1, 4096, bytes(1 << 20))
    assert len(frame) < 100
    c = protocol.decode_chunk(_frames(frame)[0])
    assert c.data is None and c.length == 1 << 20 and c.digest == protocol.digest(bytes(1 << 20))


def test_json_and_have_frames_round_trip():
    entries = [(0, 4096, b"\x01" * 32), (1 << 20, 1 << 20, b"\x02" * 32)]
    stream = protocol.encode_json(protocol.PLAN, {"device": "/dev/sda", "size": 10}, disk=2) + \
        protocol.encode_have(2, entries) + protocol.encode_frame(protocol.GO)
    plan, have, go = _frames(stream)
    assert protocol.decode_json(plan) == {"device": "/dev/sda", "size": 10} and plan.disk == 2
    assert protocol.decode_have(have) == entries
    assert go.type == protocol.GO and go.payload == b""


def test_truncation_anywhere_in_a_chunk_names_disk_and_offset():
    frame = protocol.encode_chunk(5, 7 << 20, _text(20000, 1))
    header = 12
    for cut in range(header + 44, len(frame), 997):     # past the chunk header: the offset is known
        with pytest.raises(protocol.TruncatedFrame, match=r"disk 5 offset 7340032"):
            _frames(frame[:cut])
    for cut in range(1, header):
        with pytest.raises(protocol.TruncatedFrame, match="header"):
            _frames(frame[:cut])


def test_clean_end_between_frames_is_not_an_error():
    assert _frames(b"") == []
    assert len(_frames(protocol.encode_frame(protocol.GO) * 3)) == 3


def test_every_flipped_byte_is_caught():
    data = _text(5000, 2)
    frame = protocol.encode_chunk(1, 8192, data, protocol.CODEC_ZLIB)
    for i in range(len(frame)):
        bad = bytearray(frame)
        bad[i] ^= 0x40
        with pytest.raises(protocol.ProtocolError):
            for f in _frames(bytes(bad)):
                protocol.decode_chunk(f)


def test_checksum_mismatch_names_disk_and_offset():
    frame = bytearray(protocol.encode_chunk(2, 12288, _text(9000, 3)))
    frame[-10] ^= 1
    with pytest.raises(protocol.CorruptFrame, match="checksum mismatch in a CHUNK frame for disk 2 offset 12288"):
        _frames(bytes(frame))


def _reframe(ftype, payload, disk=0, codec=0):
    return protocol.encode_frame(ftype, payload, disk, codec)


def test_digest_mismatch_with_a_valid_crc_is_caught():
    # a frame whose CRC is right but whose data is not what the agent digested (a bad read, a bug)
    data = _text(4096, 4)
    payload = protocol._CHUNK.pack(4096, len(data), protocol.digest(b"other")) + data
    (f,) = _frames(_reframe(protocol.CHUNK, payload, 1))
    with pytest.raises(protocol.CorruptFrame, match="disk 1 offset 4096: sha256"):
        protocol.decode_chunk(f)


def test_bad_compressed_data_and_wrong_lengths_are_refused():
    data = _text(4096, 5)
    sha = protocol.digest(data)
    bad_zlib = _reframe(protocol.CHUNK, protocol._CHUNK.pack(0, len(data), sha) + b"\x78\x9cgarbage", 0,
                        protocol.CODEC_ZLIB)
    with pytest.raises(protocol.CorruptFrame, match="disk 0 offset 0 does not decompress"):
        protocol.decode_chunk(_frames(bad_zlib)[0])
    short = _reframe(protocol.CHUNK, protocol._CHUNK.pack(0, len(data) + 1, sha) + zlib.compress(data), 0,
                     protocol.CODEC_ZLIB)
    with pytest.raises(protocol.CorruptFrame, match="holds 4096 bytes, its header says 4097"):
        protocol.decode_chunk(_frames(short)[0])
    with pytest.raises(protocol.CorruptFrame, match="claims"):
        protocol.decode_chunk(_frames(_reframe(protocol.CHUNK, protocol._CHUNK.pack(0, 0, sha)))[0])


def test_bad_magic_type_and_length_are_refused_before_reading_the_payload():
    good = protocol.encode_frame(protocol.GO)
    with pytest.raises(protocol.CorruptFrame, match="bad frame magic"):
        _frames(b"XXXX" + good[4:])
    with pytest.raises(protocol.CorruptFrame, match="unknown frame type 99"):
        _frames(good[:4] + bytes([99]) + good[5:])
    huge = protocol._HEADER.pack(protocol.MAGIC, protocol.CHUNK, 0, 0, protocol.MAX_PAYLOAD + 1)
    with pytest.raises(protocol.CorruptFrame, match="claims"):
        _frames(huge)


def test_token_bucket_holds_the_average_rate():
    now = [0.0]

    def sleep(s):
        now[0] += s

    b = TokenBucket(1 << 20, burst=1 << 18, clock=lambda: now[0], sleep=sleep)
    for _ in range(64):
        b.consume(1 << 18)            # 16 MiB in quarter-MiB frames at 1 MiB/s
    assert 14.9 <= now[0] <= 16.1
    unlimited = TokenBucket(0, clock=lambda: 0.0, sleep=lambda s: pytest.fail("slept"))
    unlimited.consume(1 << 30)


def test_wire_sends_random_data_raw_and_text_compressed():
    out = io.BytesIO()
    w = Wire(out, protocol.CODEC_ZLIB)
    rnd = os.urandom(1 << 20)
    text = _text(1 << 20, 6)
    w.chunk(0, 0, rnd, protocol.digest(rnd))
    w.chunk(0, 1 << 20, text, protocol.digest(text))
    frames = _frames(out.getvalue())
    assert [f.codec for f in frames] == [protocol.CODEC_NONE, protocol.CODEC_ZLIB]
    assert [protocol.decode_chunk(f).data for f in frames] == [rnd, text]
    assert len(out.getvalue()) < len(rnd) + len(text) // 2


def test_zero_detection():
    assert protocol.is_zero(bytes(4096)) and protocol.is_zero(bytes(3 << 20))
    assert not protocol.is_zero(bytes(4095) + b"\x01") and not protocol.is_zero(b"\x01" + bytes(4095))
    assert not protocol.is_zero(bytes(3 << 20) + b"\x01")


def test_chunks_are_aligned_and_cut_at_chunk_boundaries():
    got = list(chunks(ExtentList([(100, 5000), ((1 << 20) - 10, (1 << 20) + 10), (3 << 20, 5 << 20)]), 6 << 20))
    assert got == [(0, 8192), ((1 << 20) - 4096, 4096), (1 << 20, 4096), (3 << 20, 1 << 20), (4 << 20, 1 << 20)]
    assert list(chunks(ExtentList([(0, 10000)]), 6000)) == [(0, 6000)]


def test_targets_parse_user_host_and_port():
    assert str(parse_target("root@db1.example")) == "root@db1.example:22"
    assert str(parse_target("admin@10.0.0.5:2222")) == "admin@10.0.0.5:2222"
    t = parse_target("root@[::1]:2200")
    assert (t.host, t.port) == ("::1", 2200)
    assert parse_target("root@h:2200", port=22).port == 22
    for bad in ("root@", "a b", "root@h:99999", "root@h:x"):
        with pytest.raises(SourceError):
            parse_target(bad)


def test_mountinfo_lines_give_device_mountpoint_type_and_mode():
    text = ("36 25 7:3 / /mnt/with\\040space rw,relatime shared:1 - ext4 /dev/loop3 rw\n"
            "37 25 0:52 / /mnt/ntfs ro,relatime - fuseblk /dev/loop4 ro,user_id=0\n")
    (d1, s1, m1), (d2, s2, m2) = parse_mountinfo(text)
    assert (d1, s1, m1.mountpoint, m1.fstype, m1.readonly) == ("7:3", "/dev/loop3", "/mnt/with space", "ext4", False)
    assert (d2, m2.fstype, m2.readonly) == ("0:52", "fuseblk", True)
