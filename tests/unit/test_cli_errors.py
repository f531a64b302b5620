"""The CLI's error paths that need no appliance: one line on stderr, exit 1 (2 for usage), no traceback."""
import os
import subprocess

import pytest

from tests.conftest import v2v_cmd


def _one_line_error(cp, *needles):
    assert cp.returncode == 1, (cp.returncode, cp.stderr)
    lines = [ln for ln in cp.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, cp.stderr
    assert lines[0].startswith("v2v: error: ")
    assert "Traceback" not in cp.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_missing_file_is_one_line_error(tmp_path):
    cp = v2v_cmd("convert", "disk", str(tmp_path / "nope.vmdk"), "--to", "local", "--out", str(tmp_path / "o"))
    _one_line_error(cp, "nope.vmdk", "no such file")
    assert not (tmp_path / "o").exists()


def test_text_file_is_not_a_disk_image(tmp_path):
    p = tmp_path / "notes.vmdk"
    p.write_text("this is not a disk\n")
    cp = v2v_cmd("convert", "disk", str(p), "--to", "local", "--out", str(tmp_path / "o"))
    _one_line_error(cp, "notes.vmdk")
    assert not (tmp_path / "o").exists()


def test_directory_is_not_a_disk_image(tmp_path):
    cp = v2v_cmd("inspect", str(tmp_path))
    _one_line_error(cp, "directory")


@pytest.mark.parametrize("fmt", ["qcow2", "vmdk"])
def test_truncated_image_is_refused_and_source_untouched(tmp_path, fmt):
    raw = tmp_path / "data.raw"
    with open(raw, "wb") as f:       # 64 MiB with 4 KiB of data at each MiB: many allocated clusters
        f.truncate(64 << 20)
        for i in range(64):
            f.seek(i << 20)
            f.write(os.urandom(4096))
    img = tmp_path / ("web1." + fmt)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, str(raw), str(img)], check=True)
    size = img.stat().st_size
    with open(img, "r+b") as f:
        f.truncate(size // 3)
    before = img.read_bytes()
    cp = v2v_cmd("convert", "disk", str(img), "--to", "local", "--out", str(tmp_path / "o"))
    _one_line_error(cp, "web1." + fmt)
    assert img.read_bytes() == before
    assert not (tmp_path / "o").exists()


def test_to_local_without_out_is_a_usage_error(tmp_path):
    cp = v2v_cmd("convert", "disk", "x.img", "--to", "local")
    assert cp.returncode == 2
    assert "--out" in cp.stderr


def test_bad_mac_is_a_usage_error():
    cp = v2v_cmd("convert", "disk", "x.img", "--to", "local", "--out", "/tmp/x", "--mac", "01:00:5e:00:00:01")
    assert cp.returncode == 2
    assert "--mac" in cp.stderr


def test_json_mode_error_is_a_json_line_too(tmp_path):
    import json
    cp = v2v_cmd("convert", "disk", str(tmp_path / "gone.img"), "--to", "local", "--out", str(tmp_path), "--json")
    assert cp.returncode == 1
    last = json.loads(cp.stdout.strip().splitlines()[-1])
    assert last["event"] == "error" and last["kind"] == "SourceError" and "gone.img" in last["message"]


@pytest.mark.parametrize("args", [[], ["doctor"], ["inspect"], ["convert"], ["convert", "disk"]])
def test_every_command_has_help_with_an_example(args):
    cp = v2v_cmd(*args, "--help")
    assert cp.returncode == 0
    assert "Example" in cp.stdout


def test_python_dash_m_v2v_works():
    cp = v2v_cmd("--version")
    assert cp.returncode == 0 and "v2v" in cp.stdout
