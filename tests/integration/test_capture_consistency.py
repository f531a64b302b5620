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


def _rotate(ident: str, device: str, since):
    """resident.rotate in a process of its own (it forks the tracker off its caller)."""
    import json
    code = ("import json, sys\n"
            "from linux_capture import resident\n"
            "rep, w = resident.rotate(sys.argv[1], [sys.argv[2]], json.loads(sys.argv[3]))\n"
            "print(json.dumps(dict(rep, written=None if w is None else {d: e.to_compact() for d, e in w.items()})))\n")
    cp = subprocess.run([sys.executable, "-c", code, ident, device, json.dumps(since)], cwd=str(ROOT),
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout)


def _tracker_pid(ident: str):
    from linux_capture import resident
    hello = resident.request(ident, {"op": "hello"})
    return None if hello is None else hello["pid"]


def test_resident_tracker_outlives_its_starter_and_answers_what_was_written_since_an_epoch():
    need("mkfs.ext4")
    from diskfmt.extents import ExtentList
    from linux_capture import resident
    ident = "test-{}".format(os.getpid())
    with loop_fs("ext4", mount=False) as fs:
        try:
            first = _rotate(ident, fs.device, None)
            if "tracefs" in first.get("reason", "") and first["written"] is None and not _tracker_pid(ident):
                pytest.skip("tracefs is not usable here")
            pid = _tracker_pid(ident)
            assert first["started"] and pid, first
            with open("/proc/{}/comm".format(pid)) as f:
                assert f.read().strip() == "v2v-tracker"
            run("dd", "if=/dev/urandom", "of=" + fs.device, "bs=4096", "seek=1000", "count=3", "oflag=direct",
                "conv=notrunc")
            second = _rotate(ident, fs.device, first["epoch"])
            assert not second["started"] and _tracker_pid(ident) == pid, second
            got = ExtentList.from_compact(second["written"][fs.device])
            assert got.covers(1000 * 4096, 1003 * 4096) and second["tracked_bytes"] == got.total(), second
            # nothing written since the second epoch: nothing to read (reads are not recorded)
            run("dd", "if=" + fs.device, "of=/dev/null", "bs=4096", "count=64", "iflag=direct")
            third = _rotate(ident, fs.device, second["epoch"])
            assert third["tracked_bytes"] == 0, third
            # only root may ask
            nobody = subprocess.run(
                ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", sys.executable, "-c",
                 "import sys, json\nfrom linux_capture import resident\n"
                 "print(json.dumps(resident.request(sys.argv[1], {'op': 'rotate', 'since': None})))", ident],
                cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
            assert "only root" in nobody.stdout, (nobody.stdout, nobody.stderr)
            # a killed tracker: the next capture is told so and reads everything
            os.kill(pid, signal.SIGKILL)
            for _ in range(50):
                if _tracker_pid(ident) is None:
                    break
                time.sleep(0.1)
            fourth = _rotate(ident, fs.device, third["epoch"])
            assert fourth["started"] and fourth["written"] is None and "no tracker was running" in fourth["reason"]
            assert _tracker_pid(ident) not in (None, pid)
        finally:
            resident.request(ident, {"op": "stop"})
        inst = "/sys/kernel/tracing/instances/v2v-tracker-" + ident
        for _ in range(100):
            if _tracker_pid(ident) is None and not os.path.exists(inst):
                break
            time.sleep(0.1)
        assert _tracker_pid(ident) is None, "the tracker did not stop when asked"
        assert not os.path.exists(inst), "the stopped tracker left its trace instance"


def test_trace_instances_of_agents_that_are_gone_are_removed_by_the_next_tracer():
    need("mkfs.ext4")
    from linux_capture.tracer import TRACEFS_ROOTS, Tracer
    root = next((r for r in TRACEFS_ROOTS if os.path.isdir(os.path.join(r, "instances"))), None)
    if root is None:
        pytest.skip("tracefs is not mounted")
    dead = subprocess.Popen(["true"])
    dead.wait(timeout=30)
    stale = os.path.join(root, "instances", "v2v-agent-{}".format(dead.pid))
    os.mkdir(stale)                                  # what an agent killed with SIGKILL leaves
    with loop_fs("ext4", mount=False) as fs:
        tr = Tracer([fs.device])
        try:
            assert not os.path.exists(stale) and os.path.basename(stale) in tr.stale_removed
            assert os.path.exists(tr.inst), "the live tracer's own instance went too"
        finally:
            tr.close()
