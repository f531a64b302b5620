"""The agent's consistency parts on real kernels objects: the tracefs write tracer on a loop device, and
the freeze that is always thawed (on exit, from the watchdog, on SIGTERM)."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.capture_fixtures import ROOT, loop_fs, need, run, writable

pytestmark = pytest.mark.integration


def test_tracer_records_the_sectors_written_to_a_disk():
    need("mkfs.ext4")
    from linux_capture.tracer import Tracer
    with loop_fs("ext4", mount=False) as fs:
        try:
            tr = Tracer([fs.device])
        except OSError as e:
            pytest.skip("tracefs is not usable here: {}".format(e))
        try:
            assert tr.take(fs.device) is not None
            run("dd", "if=/dev/urandom", "of=" + fs.device, "bs=4096", "seek=1000", "count=3", "oflag=direct",
                "conv=notrunc")
            got = tr.take(fs.device)
            assert got is not None and got.covers(1000 * 4096, 1003 * 4096), got
            run("dd", "if=" + fs.device, "of=/dev/null", "bs=4096", "skip=2000", "count=8", "iflag=direct")
            again = tr.take(fs.device)
            assert again is not None and not again.clip(2000 * 4096, 2008 * 4096), "reads were recorded as writes"
        finally:
            tr.close()
        assert not os.path.exists(tr.inst), "the trace instance was left behind"


def _freezer(mnt: str, limit: float, hold: float) -> subprocess.Popen:
    code = ("import signal, sys, time\n"
            "from linux_capture.agent import _on_signal\n"
            "from linux_capture.consistency import Freeze\n"
            "signal.signal(signal.SIGTERM, _on_signal)\n"
            "with Freeze([sys.argv[1]], float(sys.argv[2])) as fz:\n"
            "    print('frozen', fz.frozen, flush=True)\n"
            "    time.sleep(float(sys.argv[3]))\n")
    p = subprocess.Popen([sys.executable, "-c", code, mnt, str(limit), str(hold)], cwd=str(ROOT),
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().startswith("frozen ['{}']".format(mnt))
    return p


def _start_write(mnt: str) -> subprocess.Popen:
    """A writer that blocks while the filesystem is frozen (it cannot be killed then: it waits in D state)."""
    w = subprocess.Popen(["sh", "-c", 'echo x > "$1"/blocked && sync "$1"/blocked', "sh", mnt])
    time.sleep(1.0)
    return w


def test_sigterm_while_frozen_thaws_the_filesystem():
    need("mkfs.ext4", "fsfreeze")
    with loop_fs("ext4") as fs:
        p = _freezer(fs.mountpoint, 60, 60)
        try:
            w = _start_write(fs.mountpoint)
            assert w.poll() is None, "the write finished: the filesystem was not frozen"
            t0 = time.monotonic()
            os.kill(p.pid, signal.SIGTERM)
            assert p.wait(timeout=30) == 128 + signal.SIGTERM
            assert w.wait(timeout=30) == 0, "the blocked write failed after the thaw"
            assert writable(fs.mountpoint) and time.monotonic() - t0 < 10
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)


def test_watchdog_thaws_after_the_freeze_limit_even_if_the_holder_hangs():
    need("mkfs.ext4", "fsfreeze")
    with loop_fs("ext4") as fs:
        p = _freezer(fs.mountpoint, 1.0, 20)
        try:
            t0 = time.monotonic()
            assert writable(fs.mountpoint)          # blocks until the watchdog thaws (limit + 0.5 s)
            assert time.monotonic() - t0 < 5
            assert p.poll() is None, "the holder was still sleeping"
        finally:
            p.kill()
            p.wait(timeout=30)
