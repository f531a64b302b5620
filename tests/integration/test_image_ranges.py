"""diskfmt.image.write_ranges through a real qemu-nbd: the ranges of a raw image land in a qcow2 overlay,
zeros hide the backing file's data, everything else still comes from the backing file."""
import os
import random
import subprocess

import pytest

from tests.integration.capture_fixtures import MiB, need

pytestmark = pytest.mark.integration


def _raw_of(path: str, out: str) -> bytes:
    subprocess.run(["qemu-img", "convert", "-O", "raw", path, out], check=True, timeout=120)
    with open(out, "rb") as f:
        return f.read()


def test_write_ranges_puts_each_range_into_the_overlay_and_leaves_the_rest_to_the_backing_file(tmp_path):
    need("qemu-img", "qemu-nbd")
    from diskfmt import image
    rng = random.Random(7)
    size = 16 * MiB
    old = bytearray(rng.randbytes(size))
    new = bytearray(size)                  # the staging raw: only the changed ranges hold data
    base_raw = tmp_path / "base.raw"
    base_raw.write_bytes(bytes(old))
    base = str(tmp_path / "base.qcow2")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(base_raw), base], check=True, timeout=120)
    top = str(tmp_path / "top.qcow2")
    image.create_overlay(base, "qcow2", top)
    ranges = [(0, 4096), (3 * MiB + 512, 5 * MiB + 4096), (12 * MiB, MiB)]   # the last one became zeros
    expected = bytearray(old)
    for off, n in ranges[:2]:
        new[off:off + n] = rng.randbytes(n)
    for off, n in ranges:
        expected[off:off + n] = new[off:off + n]
    staging = tmp_path / "staging.raw"
    staging.write_bytes(bytes(new))
    image.write_ranges(str(staging), top, ranges)
    assert _raw_of(top, str(tmp_path / "out.raw")) == bytes(expected)
    assert _raw_of(base, str(tmp_path / "base-after.raw")) == bytes(old), "the backing file was written"
    # the zero range is held by the overlay (zero clusters), not read through to the backing file
    m = subprocess.run(["qemu-img", "map", "--output=json", top], check=True, stdout=subprocess.PIPE, timeout=60)
    import json
    top_zero = [e for e in json.loads(m.stdout) if e["depth"] == 0 and e["zero"]]
    assert any(e["start"] <= 12 * MiB and e["start"] + e["length"] >= 13 * MiB for e in top_zero), top_zero


def test_write_ranges_of_a_truncated_raw_is_a_one_line_error(tmp_path):
    need("qemu-img", "qemu-nbd")
    from diskfmt import image
    from v2v.errors import OutputError
    base = str(tmp_path / "base.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, str(8 * MiB)], check=True, timeout=60)
    staging = tmp_path / "short.raw"
    staging.write_bytes(bytes(MiB))
    with pytest.raises(OutputError) as e:
        image.write_ranges(str(staging), base, [(4 * MiB, MiB)])
    assert "short read" in str(e.value) and "\n" not in str(e.value)
    assert os.path.exists(base)
