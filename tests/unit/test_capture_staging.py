"""The converter's staging directory: sparse images, the SQLite manifest of verified chunks, and removal
of only what a capture wrote."""
import hashlib
import os

import pytest

from linux_capture.protocol import Chunk
from v2v.errors import IntegrityError
from v2v.sources.host import MANIFEST, Staging, staging_dir, parse_target, CaptureOptions

MiB = 1 << 20


def _chunk(disk, offset, data):
    return Chunk(disk, offset, len(data), hashlib.sha256(data).digest(), data)


def _zero(disk, offset, n):
    return Chunk(disk, offset, n, hashlib.sha256(bytes(n)).digest(), None)


def test_chunks_are_written_sparse_and_recorded_across_reopen(tmp_path):
    st = Staging(str(tmp_path / "s"))
    st.reset([{"device": "/dev/sda", "size": 8 * MiB}])
    st.open_images([8 * MiB])
    data = os.urandom(MiB)
    assert st.write(_chunk(0, 2 * MiB, data)) is False
    assert st.write(_zero(0, 5 * MiB, MiB)) is False       # a zero chunk on a hole writes nothing
    st.finish()
    st.close()
    img = str(tmp_path / "s" / "disk0.raw")
    assert os.path.getsize(img) == 8 * MiB and os.stat(img).st_blocks * 512 <= 2 * MiB
    with open(img, "rb") as f:
        f.seek(2 * MiB)
        assert f.read(MiB) == data
    again = Staging(str(tmp_path / "s"))
    assert again.layout() == [{"device": "/dev/sda", "size": 8 * MiB}]
    assert [(o, n) for o, n, _ in again.held(0)] == [(2 * MiB, MiB), (5 * MiB, MiB)]
    again.open_images([8 * MiB])
    assert again.write(_chunk(0, 2 * MiB, os.urandom(MiB))) is True    # overwrote staged bytes: a re-send
    assert again.write(_zero(0, 2 * MiB, 4096)) is False                 # zeros written over data ...
    with open(img, "rb") as f:
        f.seek(2 * MiB)
        assert f.read(4096) == bytes(4096)
    # ... and the 1 MiB chunk it overlaps is no longer held: its digest would be wrong
    assert [(o, n) for o, n, _ in again.held(0)] == [(2 * MiB, 4096), (5 * MiB, MiB)]
    again.close()


def test_a_chunk_outside_the_announced_disks_is_refused(tmp_path):
    st = Staging(str(tmp_path / "s"))
    st.open_images([MiB])
    with pytest.raises(IntegrityError, match="disk 0 offset 1044480"):
        st.write(_chunk(0, MiB - 4096, os.urandom(8192)))
    with pytest.raises(IntegrityError, match="disk 1"):
        st.write(_chunk(1, 0, b"x" * 4096))
    st.close()


def test_remove_takes_only_what_the_capture_wrote(tmp_path):
    (tmp_path / "keep.txt").write_text("theirs")
    st = Staging(str(tmp_path))
    st.open_images([MiB])
    st.write(_chunk(0, 0, os.urandom(4096)))
    st.remove()
    assert sorted(os.listdir(str(tmp_path))) == ["keep.txt"]
    fresh = Staging(str(tmp_path / "new"))
    fresh.remove()
    assert not (tmp_path / "new").exists()
    assert MANIFEST == "manifest.sqlite"


def test_the_same_command_finds_the_same_staging_directory(tmp_path):
    t = parse_target("root@db1.example:2222")
    a = staging_dir(t, CaptureOptions(disks=("/dev/sdb", "/dev/sda")), str(tmp_path))
    b = staging_dir(t, CaptureOptions(disks=("/dev/sda", "/dev/sdb")), str(tmp_path))
    c = staging_dir(t, CaptureOptions(disks=("/dev/sda",)), str(tmp_path))
    assert a == b != c and os.path.dirname(a) == str(tmp_path) and "db1.example" in a
