"""`v2v convert host` end to end on a real guest disk: the foreign Debian 12 test guest's image on a
read-only loop device is the source host's disk (offline: nothing mounts it), captured by the agent
over a loopback sshd, checked block by block, converted by the normal pipeline, and booted on virtio.

The booted-source variant of issue 5 (a qemu guest running sshd as the source, written to during the
capture) is tests/e2e/test_capture_live.py. Only 127.0.0.1 is used.
"""
import os
import platform
import shutil
import subprocess
import tempfile

import pytest

from diskfmt.mbr import read_mbr
from diskfmt.usedmap import map_filesystem
from tests.conftest import sha256
from tests.integration.capture_fixtures import MiB, json_events, need, run, sshd_server, v2v

pytestmark = pytest.mark.e2e


def _read(path):
    f = open(path, "rb")

    def read(off, n):
        f.seek(off)
        return f.read(n)
    return f, read


def test_captured_guest_disk_is_block_identical_converts_and_boots(foreign_guest, capsys):
    need("sshd", "losetup")
    before = sha256(foreign_guest)
    work = tempfile.mkdtemp(prefix="v2v-e2e-capture-", dir="/var/tmp")
    dev = run("losetup", "-r", "-f", "--show", foreign_guest).stdout.decode().strip()
    try:
        with sshd_server() as sshd:
            cap_dir = os.path.join(work, "cap")
            cp = v2v("convert", "host", *sshd.args(), "--disk", dev, "--capture-only", "--out", cap_dir, "--json",
                     timeout=600)
            assert cp.returncode == 0, cp.stderr
            cap = json_events(cp)[-1]["capture"]
            (plan,) = cap["plans"]
            assert plan["mode"] == "offline"
            assert [r["fstype"] for r in plan["regions"]] == ["ext4", "swap"]
            assert plan["used_bytes"] < plan["size"] // 2
            image = cap["images"][0]
            # every used block (the ext4 map, the swap header, everything outside the partitions) is the source's
            fa, ra = _read(foreign_guest)
            fb, rb = _read(image)
            try:
                mbr = read_mbr(ra, os.path.getsize(foreign_guest))
                outside_end = 0
                compared = 0
                for p in sorted(mbr.partitions, key=lambda p: p.start_lba):
                    start, size = p.start_lba * 512, p.sectors * 512
                    assert ra(outside_end, start - outside_end) == rb(outside_end, start - outside_end)
                    m = map_filesystem(lambda o, n, s=start: ra(s + o, n), size)
                    assert m.exact, m.reason
                    for lo, hi in m.extents:
                        pos = lo
                        while pos < hi:
                            n = min(hi - pos, 4 * MiB)
                            assert ra(start + pos, n) == rb(start + pos, n), "differs at {}".format(start + pos)
                            compared += n
                            pos += n
                    outside_end = start + size
            finally:
                fa.close()
                fb.close()
            shutil.rmtree(cap_dir)

            out = os.path.join(work, "out")
            # no --name: the guest is named after the source's host name (here: this machine)
            cp = v2v("convert", "host", *sshd.args(), "--disk", dev, "--to", "local", "--out", out, "--workdir",
                     work, "--verify-boot", "--json", timeout=3600)
            assert cp.returncode == 0, cp.stderr[-3000:]
            result = json_events(cp)[-1]
            assert result["guest"]["distro"] == "debian"
            assert {ln["name"] for ln in result["fixes"]["lines"]} >= {"fstab", "initramfs", "bootloader"}
            assert result["boot"]["ok"], result["boot"]
            name = platform.node().split(".")[0]
            assert result["name"] == name and os.path.exists(os.path.join(out, name + ".xml"))
            assert not [d for d in os.listdir(work) if d.startswith("v2v-capture-")], "staging was left behind"
            with capsys.disabled():
                print("\n    [capture e2e] {:.0f} MiB used of {:.0f} MiB, {:.1f} MiB on the wire, {:.0f} MiB compared "
                      "block by block; converted and booted in {:.0f}s".format(
                          plan["used_bytes"] / MiB, plan["size"] / MiB, cap["wire_bytes"] / MiB, compared / MiB,
                          result["boot"]["seconds"]))
    finally:
        subprocess.run(["losetup", "-d", dev], timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    assert sha256(foreign_guest) == before, "the source image was written"
