"""Issue 5's booted-source test: `v2v convert host` of a running guest while a writer inside it writes.

The source is the session's booted foreign Debian 12 guest (tests/e2e/live_source.py), reached only at
127.0.0.1 through qemu's port forward. While a writer inside it writes files and a checksum line for each,
the converter captures it (freeze-converge), converts it and boots the result on virtio. The result must
have every filesystem clean under `fsck -n` and every file whose checksum line was complete before the
freeze intact. The capture runs with --compress none: the link is loopback, and under TCG the source's
emulated CPU (zlib) is what limits the rate.
"""
import hashlib
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from tests.e2e.live_source import WRITER_DIR, complete_lines, start_writer, stop_writer
from tests.integration.capture_fixtures import MiB, json_events, run, v2v

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]


def _partitions(raw: str, devices: list):
    """A read-only loop device per MBR partition of the raw image (no udev here for loopNpK nodes);
    [(device, fstype)], the devices also appended to ``devices`` for the caller to detach."""
    from diskfmt.mbr import read_mbr
    with open(raw, "rb") as f:
        def read(off, n):
            f.seek(off)
            return f.read(n)
        mbr = read_mbr(read, os.path.getsize(raw))
    out = []
    for p in sorted(mbr.partitions, key=lambda p: p.start_lba):
        dev = run("losetup", "-r", "-f", "--show", "--offset", str(p.start_lba * 512), "--sizelimit",
                  str(p.sectors * 512), raw).stdout.decode().strip()
        devices.append(dev)
        cp = run("blkid", "-p", "-o", "value", "-s", "TYPE", dev, check=False)
        out.append((dev, cp.stdout.decode().strip()))
    return out


def test_live_capture_while_writing_is_consistent_converts_and_boots(live_source, capsys):
    src = live_source
    work = tempfile.mkdtemp(prefix="v2v-e2e-live-", dir="/var/tmp")
    devices: list = []
    mnt = None
    try:
        start_writer(src)
        time.sleep(5)
        before = len(complete_lines(src.ssh("cat {}/SUMS".format(WRITER_DIR)).stdout))
        assert before > 0, "the writer in the source did not start: " + src.ssh(
            "cat /run/v2v-writer.log", check=False).stdout.decode()
        out = os.path.join(work, "out")
        t0 = time.monotonic()
        cp = v2v("convert", "host", *src.target(), "--to", "local", "--out", out, "--name", "live-web1",
                 "--workdir", work, "--compress", "none", "--verify-boot", "--json",
                 timeout=1500)
        seconds = time.monotonic() - t0
        assert cp.returncode == 0, cp.stderr[-3000:]
        stop_writer(src)
        source_lines = complete_lines(src.ssh("cat {}/SUMS".format(WRITER_DIR)).stdout)
        result = json_events(cp)[-1]
        cap = result["capture"]
        (disk,) = cap["disks"]
        assert disk["mode"] == "freeze-converge" and disk["consistent"], disk
        assert disk["frozen"] == ["/"], disk
        assert 0 < disk["freeze_seconds"] <= 2.0, disk
        boot = result["boot"]
        assert boot["ok"], boot
        assert boot["marker"].startswith("V2V-BOOTPROOF-")
        assert dict(kv.split("=", 1) for kv in boot["details"])["root"] == "/dev/vda1", boot

        (target,) = result["disks"]
        raw = os.path.join(work, "result.raw")
        run("qemu-img", "convert", "-f", target["format"], "-O", "raw", target["path"], raw, timeout=600)
        parts = _partitions(raw, devices)
        assert [t for _, t in parts] == ["ext4", "swap"], parts
        for part, fstype in parts:
            if fstype == "ext4":
                fsck = subprocess.run(["e2fsck", "-f", "-n", part], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, timeout=600)
                assert fsck.returncode == 0, fsck.stdout.decode(errors="replace")[-3000:]
        root = parts[0][0]
        mnt = os.path.join(work, "mnt")
        os.makedirs(mnt)
        run("mount", "-o", "ro,noload", root, mnt)
        wdir = mnt + WRITER_DIR
        with open(os.path.join(wdir, "SUMS"), "rb") as f:
            captured = complete_lines(f.read())
        # the lines in the result are the source's first ones: the state at one instant
        assert captured == source_lines[:len(captured)]
        # ... an instant during the capture: after the writer started, before it stopped
        assert before <= len(captured) < len(source_lines), (before, len(captured), len(source_lines))
        for sha, name in captured:
            with open(os.path.join(wdir, name), "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == sha, "{} differs in the result".format(name)
        with capsys.disabled():
            print("\n    [live capture] {:.0f} MiB used, {:.1f} MiB on the wire in {:.0f}s ({:.1f} MiB/s); rounds {}; "
                  "frozen {:.3f}s ({}); {} files verified ({} written before, {} by the end); convert+boot total "
                  "{:.0f}s (boot {:.0f}s); source booted in {:.0f}s".format(
                      disk["used_bytes"] / MiB, cap["wire_bytes"] / MiB, cap["seconds"],
                      cap["received_bytes"] / MiB / cap["seconds"], disk["rounds"], disk["freeze_seconds"], disk["tracking"],
                      len(captured), before, len(source_lines), seconds, boot["seconds"], src.boot_seconds))
    finally:
        if mnt and os.path.ismount(mnt):
            subprocess.run(["umount", mnt], timeout=60)
        for dev in devices:
            subprocess.run(["losetup", "-d", dev], timeout=60)
        src.ssh("touch /run/v2v-writer.stop", check=False, timeout=60)
        shutil.rmtree(work, ignore_errors=True)
