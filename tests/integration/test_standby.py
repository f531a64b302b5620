"""`v2v standby` over a real sshd on 127.0.0.1 and the real agent, with a real libvirtd (domains defined,
one started), on an ext4 filesystem on a loop device that is changed between refreshes (unmounted while
captured, so that a capture reads exactly what was written: offline mode).

The source has no OS, so the standby is created with --no-fixups (its fixed layers stay empty); the
fixups path is the pipeline's own (tests/integration/test_convert_linux.py). Contents of a generation are
checked by converting its chain to raw and hashing every file of the mounted filesystem.
"""
import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from tests.integration.capture_fixtures import MiB, ROOT, json_events, loop_fs, need, run, sha_tree, sshd_server, v2v

pytestmark = pytest.mark.integration

URI = "qemu:///system"
NAME = "v2v-test-standby-{}".format(os.getpid())


def _libvirt_or_skip():
    cp = subprocess.run(["virsh", "-c", URI, "uri"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    if cp.returncode != 0:
        pytest.skip("libvirtd is not reachable at {} (scripts/services.sh starts it)".format(URI))


class Standby:
    def __init__(self, sshd, fs, directory):
        self.sshd, self.fs, self.dir = sshd, fs, directory

    def cli(self, *args, timeout=300):
        return v2v("standby", *args, timeout=timeout)

    def refresh(self):
        cp = self.cli("refresh", NAME, "--dir", self.dir, "--json")
        assert cp.returncode == 0, cp.stderr[-2000:]
        return json_events(cp)[-1]["standby"]

    def refresh_with(self, *args):
        cp = self.cli("refresh", NAME, "--dir", self.dir, "--json", *args)
        assert cp.returncode == 0, cp.stderr[-2000:]
        return json_events(cp)[-1]["standby"]

    def status(self):
        cp = self.cli("status", NAME, "--dir", self.dir, "--json")
        assert cp.returncode == 0, cp.stderr
        return json.loads(cp.stdout)

    def domain_disks(self):
        xml = run("virsh", "-c", URI, "dumpxml", NAME).stdout.decode()
        from lxml import etree
        return [s.get("file") for s in etree.fromstring(xml.encode()).findall("devices/disk/source")]

    def change(self, fn):
        """Mount the source, let fn change files, unmount (the next capture reads it offline)."""
        mnt = self.fs.image + ".mnt"
        os.makedirs(mnt, exist_ok=True)
        run("mount", self.fs.device, mnt)
        try:
            fn(mnt)
        finally:
            run("umount", mnt)
        return mnt

    def files_of(self, gen, work):
        """sha256 of every file in generation gen's fixed layer (its whole chain), mounted read-only."""
        raw = os.path.join(work, "g{}.raw".format(gen))
        run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", os.path.join(self.dir, "fixed.g{}.qcow2".format(gen)),
            raw)
        mnt = raw + ".mnt"
        os.makedirs(mnt, exist_ok=True)
        run("mount", "-o", "ro,loop,noload", raw, mnt)
        try:
            return {k: v for k, v in sha_tree(mnt).items() if not k.startswith("lost+found")}
        finally:
            run("umount", mnt)
            os.unlink(raw)

    def source_files(self):
        got = {}
        self.change(lambda mnt: got.update({k: v for k, v in sha_tree(mnt).items()
                                            if not k.startswith("lost+found")}))
        return got


def _undefine():
    subprocess.run(["virsh", "-c", URI, "destroy", NAME], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=60)
    subprocess.run(["virsh", "-c", URI, "undefine", NAME, "--nvram"], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60)


def _tracker_id(directory):
    from v2v.standby.state import State
    if not os.path.exists(os.path.join(directory, "standby.sqlite")):
        return None
    st = State(directory)
    try:
        return st.get("tracker_id")
    finally:
        st.close()


def _stop_tracker(directory):
    """The resident tracker the standby left on the source (this host): asked to stop, as a user would."""
    from linux_capture import resident
    ident = _tracker_id(directory)
    if ident:
        resident.request(ident, {"op": "stop"})


@pytest.fixture(scope="module")
def sb():
    need("sshd", "losetup", "virsh", "qemu-img")
    _libvirt_or_skip()
    d = tempfile.mkdtemp(prefix="v2v-standby-test-", dir="/var/tmp")
    os.chmod(d, 0o755)          # qemu runs as libvirt-qemu: it must reach the images when the domain starts
    try:
        with sshd_server() as sshd, loop_fs("ext4", size=96 * MiB, seed=6, mount=False) as fs:
            directory = os.path.join(d, "sb")
            cp = v2v("standby", "create", *sshd.args(), "--name", NAME, "--dir", directory, "--disk", fs.device,
                     "--no-fixups", "--network", "none", "--memory", "256", "--connect", URI, "--json", timeout=300)
            assert cp.returncode == 0, cp.stderr[-3000:]
            created = json_events(cp)[-1]["standby"]
            s = Standby(sshd, fs, directory)
            s.created = created
            s.work = d
            yield s
    finally:
        _stop_tracker(os.path.join(d, "sb"))
        _undefine()
        shutil.rmtree(d, ignore_errors=True)


def test_create_defines_the_domain_on_generation_1_holding_the_source(sb):
    assert sb.created["generation"] == 1 and sb.created["changed"]
    assert sb.domain_disks() == [os.path.join(sb.dir, "fixed.g1.qcow2")]
    assert run("virsh", "-c", URI, "domstate", NAME).stdout.decode().strip() == "shut off"
    info = json.loads(run("qemu-img", "info", "--output=json", os.path.join(sb.dir, "fixed.g1.qcow2")).stdout)
    assert info["backing-filename"] == os.path.join(sb.dir, "replica.g1.qcow2")
    assert sb.files_of(1, sb.work) == sb.fs.files
    # the staging images are emptied once the replica holds the data; the manifest stays for the next refresh
    staging = os.path.join(sb.dir, "staging")
    assert os.path.exists(os.path.join(staging, "manifest.sqlite"))
    assert not [n for n in os.listdir(staging) if n.endswith(".raw")]


def test_refresh_without_change_sends_almost_nothing(sb, capsys):
    before = sorted(os.listdir(sb.dir))
    r = sb.refresh()
    assert not r["changed"] and r["generation"] == 1 and r["changed_bytes"] == 0
    assert r["wire_bytes"] < 64 * 1024, r
    assert sorted(os.listdir(sb.dir)) == before
    assert sb.status()["runs"][-1]["status"] == "no-change"
    with capsys.disabled():
        print("\n    [standby] no change: {} B on the wire of {:.1f} MiB used, {:.1f}s".format(
            r["wire_bytes"], r["used_bytes"] / MiB, r["seconds"]), end="")


def _one_percent(mnt):
    rng = random.Random(61)
    with open(os.path.join(mnt, "dir", "file01.bin"), "r+b") as f:     # rewrite 256 KiB inside a file
        f.seek(4096)
        f.write(bytes(rng.getrandbits(8) for _ in range(256 * 1024)))
    victim = sorted(p for p in os.listdir(os.path.join(mnt, "dir")) if p.endswith(".bin"))[-1]
    os.unlink(os.path.join(mnt, "dir", victim))
    with open(os.path.join(mnt, "dir", "new.bin"), "wb") as f:
        f.write(bytes(rng.getrandbits(8) for _ in range(300 * 1024)))


def test_refresh_after_a_small_change_sends_about_that_much_into_a_new_generation(sb, capsys):
    old_files = sb.files_of(1, sb.work)
    sb.change(_one_percent)
    expected = sb.source_files()
    assert expected != old_files
    r = sb.refresh()
    assert r["changed"] and r["generation"] == 2
    # 556 KiB of file data, plus metadata (inode table, bitmaps, journal): 1 MiB chunks
    assert 556 * 1024 <= r["changed_bytes"] <= 10 * MiB, r
    assert r["wire_bytes"] <= r["changed_bytes"] + 256 * 1024, r
    assert r["changed_bytes"] <= 0.5 * r["used_bytes"], r
    assert sb.domain_disks() == [os.path.join(sb.dir, "fixed.g2.qcow2")]
    if r["read_bytes"] is not None:
        # the resident tracker ran since the create: only what was written since is read, not every used block
        assert "only those chunks are read" in r["tracker"], r
        assert r["read_bytes"] <= 0.2 * r["used_bytes"], r
    else:
        assert "every used chunk is read" in r["tracker"], r
    info = json.loads(run("qemu-img", "info", "--output=json", os.path.join(sb.dir, "replica.g2.qcow2")).stdout)
    assert info["backing-filename"] == os.path.join(sb.dir, "replica.g1.qcow2")
    assert sb.files_of(2, sb.work) == expected
    assert sb.files_of(1, sb.work) == old_files, "generation 1 was modified in place"
    st = sb.status()
    assert [g["number"] for g in st["generations"]] == [1, 2] and st["domain"]["generation"] == 2
    assert st["generations"][1]["changed_bytes"] == r["changed_bytes"]
    with capsys.disabled():
        print("\n    [standby] small change: {:.2f} MiB changed, {:.2f} MiB on the wire of {:.1f} MiB used, {:.1f}s "
              "(full capture {:.1f}s); {}".format(r["changed_bytes"] / MiB, r["wire_bytes"] / MiB,
                                                 r["used_bytes"] / MiB, r["seconds"], sb.created["seconds"],
                                                 r["tracker"]), end="")


def test_rollback_points_the_domain_at_the_earlier_generation(sb):
    cp = sb.cli("rollback", NAME, "--dir", sb.dir)
    assert cp.returncode == 0, cp.stderr
    assert sb.domain_disks() == [os.path.join(sb.dir, "fixed.g1.qcow2")]
    assert sb.status()["current"] == 1 and sb.status()["domain"]["generation"] == 1
    cp = sb.cli("rollback", NAME, "--dir", sb.dir, "--to", "9")
    assert cp.returncode == 1 and cp.stderr.startswith("v2v: error: generation 9 is not kept")
    assert sb.domain_disks() == [os.path.join(sb.dir, "fixed.g1.qcow2")]
    cp = sb.cli("rollback", NAME, "--dir", sb.dir, "--to", "2")
    assert cp.returncode == 0, cp.stderr
    assert sb.domain_disks() == [os.path.join(sb.dir, "fixed.g2.qcow2")]


def test_refresh_refused_while_another_refresh_holds_the_lock(sb):
    fd = os.open(os.path.join(sb.dir, "lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        cp = sb.cli("refresh", NAME, "--dir", sb.dir)
    finally:
        os.close(fd)
    assert cp.returncode == 1
    assert cp.stderr.startswith("v2v: error: another refresh of the standby") and len(cp.stderr.splitlines()) == 1


def test_refresh_refused_while_the_standby_runs(sb):
    gens = sb.status()["generations"]
    cp = sb.cli("activate", NAME, "--dir", sb.dir)
    assert cp.returncode == 0, cp.stderr
    try:
        assert run("virsh", "-c", URI, "domstate", NAME).stdout.decode().strip() == "running"
        cp = sb.cli("refresh", NAME, "--dir", sb.dir)
        assert cp.returncode == 1 and "is running" in cp.stderr, cp.stderr
        cp = sb.cli("rollback", NAME, "--dir", sb.dir)
        assert cp.returncode == 1 and "is running" in cp.stderr, cp.stderr
        assert sb.status()["generations"] == gens
        assert sb.domain_disks() == [os.path.join(sb.dir, "fixed.g2.qcow2")]
    finally:
        run("virsh", "-c", URI, "destroy", NAME)


def test_refresh_killed_before_the_switch_leaves_the_domain_and_the_next_refresh_completes(sb, capsys):
    def big(mnt):
        with open(os.path.join(mnt, "big.bin"), "wb") as f:
            f.write(os.urandom(24 * MiB))
    sb.change(big)
    expected = sb.source_files()
    proc = subprocess.Popen([sys.executable, "-m", "v2v", "standby", "refresh", NAME, "--dir", sb.dir, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
    killed_at = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            ev = json.loads(line) if line.startswith("{") else {}
            if ev.get("event") == "stage" and ev.get("stage") == "generation":
                proc.send_signal(signal.SIGKILL)    # the capture is complete, the new generation not yet built
                killed_at = time.monotonic()
                break
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert killed_at is not None, proc.stderr.read() if proc.stderr else ""
    assert sb.domain_disks() == [os.path.join(sb.dir, "fixed.g2.qcow2")]
    st = sb.status()
    assert st["current"] == 2 and [g["number"] for g in st["generations"]] == [1, 2]
    r = sb.refresh()
    assert r["changed"] and r["generation"] == 3
    assert r["changed_bytes"] >= 24 * MiB
    # the killed run's verified chunks are in the staging manifest: they are not sent again
    assert r["wire_bytes"] < 2 * MiB, r
    assert sb.domain_disks() == [os.path.join(sb.dir, "fixed.g3.qcow2")]
    assert sb.files_of(3, sb.work) == expected
    runs = sb.status()["runs"]
    assert [r["status"] for r in runs[-2:]] == ["killed", "ok"], runs
    assert not [n for n in os.listdir(sb.dir) if n.endswith(".part")]
    recorded = {f for g in sb.status()["generations"] for f in g["replica"] + g["fixed"]}
    assert {n for n in os.listdir(sb.dir) if n.endswith(".qcow2")} == recorded, "images no generation records"
    with capsys.disabled():
        print("\n    [standby] after a SIGKILL before the switch: {:.1f} MiB written into g3, {:.2f} MiB on the "
              "wire".format(r["changed_bytes"] / MiB, r["wire_bytes"] / MiB), end="")


def test_refresh_killed_during_the_transfer_leaves_the_domain_and_the_next_refresh_resumes(sb, capsys):
    def big(mnt):
        with open(os.path.join(mnt, "big2.bin"), "wb") as f:
            f.write(os.urandom(16 * MiB))
    sb.change(big)
    expected = sb.source_files()
    proc = subprocess.Popen([sys.executable, "-m", "v2v", "standby", "refresh", NAME, "--dir", sb.dir, "--json",
                             "--bandwidth", "4M"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(ROOT))
    got = 0
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            ev = json.loads(line) if line.startswith("{") else {}
            if ev.get("event") == "progress" and ev.get("stage") == "capture" and ev["done"] >= 6 * MiB:
                got = ev["done"]
                time.sleep(1.0)                    # the manifest is committed twice a second
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert got, proc.stderr.read() if proc.stderr else ""
    assert sb.domain_disks() == [os.path.join(sb.dir, "fixed.g3.qcow2")]
    assert sb.status()["current"] == 3 and not os.path.exists(os.path.join(sb.dir, "replica.g4.qcow2"))
    r = sb.refresh()
    assert r["changed"] and r["generation"] == 4 and r["changed_bytes"] >= 16 * MiB
    assert r["wire_bytes"] <= r["changed_bytes"] - 4 * MiB, r
    assert sb.files_of(4, sb.work) == expected
    sb.expected_g4 = expected
    with capsys.disabled():
        print("\n    [standby] SIGKILL after {:.1f} MiB of the transfer: the next refresh sent {:.1f} MiB of {:.1f} "
              "MiB changed".format(got / MiB, r["wire_bytes"] / MiB, r["changed_bytes"] / MiB), end="")


def test_keep_merges_the_oldest_generations_into_their_successors(sb):
    def small(mnt):
        with open(os.path.join(mnt, "dir", "keep.bin"), "wb") as f:
            f.write(os.urandom(200 * 1024))
    sb.change(small)
    expected = sb.source_files()
    r = sb.refresh_with("--keep", "2")
    assert r["generation"] == 5
    st = sb.status()
    assert [g["number"] for g in st["generations"]] == [4, 5] and st["current"] == 5
    names = sorted(n for n in os.listdir(sb.dir) if n.endswith(".qcow2"))
    assert names == ["fixed.g4.qcow2", "fixed.g5.qcow2", "replica.g4.qcow2", "replica.g5.qcow2"]
    base = json.loads(run("qemu-img", "info", "--output=json", os.path.join(sb.dir, "replica.g4.qcow2")).stdout)
    assert "backing-filename" not in base
    run("qemu-img", "check", os.path.join(sb.dir, "replica.g4.qcow2"))
    assert sb.files_of(4, sb.work) == sb.expected_g4
    assert sb.files_of(5, sb.work) == expected
    cp = sb.cli("rollback", NAME, "--dir", sb.dir, "--to", "2")
    assert cp.returncode == 1 and "not kept (kept: 4, 5)" in cp.stderr


def test_timer_units_pass_systemd_analyze_verify(sb, tmp_path):
    need("systemd-analyze")
    units = str(tmp_path / "units")
    cp = sb.cli("timer", NAME, "--dir", sb.dir, "--on-calendar", "*-*-* 02:00", "--unit-dir", units)
    assert cp.returncode == 0, cp.stderr
    service = os.path.join(units, "v2v-standby-{}.service".format(NAME))
    timer = os.path.join(units, "v2v-standby-{}.timer".format(NAME))
    assert "OnCalendar=*-*-* 02:00" in open(timer).read()
    text = open(service).read()
    assert "standby refresh {} --dir {}".format(NAME, sb.dir) in text
    check = subprocess.run(["systemd-analyze", "verify", service, timer], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=60)
    assert check.returncode == 0 and NAME not in check.stdout, check.stdout
    cp = sb.cli("timer", NAME, "--dir", sb.dir, "--on-calendar", "*-*-* 25:00", "--unit-dir", str(tmp_path / "bad"))
    assert cp.returncode == 1 and "not a systemd calendar expression" in cp.stderr, cp.stderr


def test_refresh_after_the_tracker_was_killed_reads_everything_and_misses_nothing(sb, capsys):
    from linux_capture import resident
    ident = _tracker_id(sb.dir)
    hello = resident.request(ident, {"op": "hello"}) if ident else None
    if hello is None:
        pytest.skip("no resident tracker runs here (tracefs unusable?)")
    os.kill(hello["pid"], signal.SIGKILL)           # as a reboot of the source would end it
    for _ in range(50):
        if resident.request(ident, {"op": "hello"}) is None:
            break
        time.sleep(0.1)

    def edit(mnt):
        with open(os.path.join(mnt, "dir", "after-kill.bin"), "wb") as f:
            f.write(random.Random(62).randbytes(200 * 1024))
    sb.change(edit)
    expected = sb.source_files()
    r = sb.refresh()
    assert r["read_bytes"] is None and "no tracker was running" in r["tracker"], r
    assert r["changed"] and sb.files_of(r["generation"], sb.work) == expected
    # the tracker runs again: the refresh after this one reads only what is written in between
    again = sb.refresh()
    assert not again["changed"] and again["read_bytes"] is not None and again["read_bytes"] < 2 * MiB, again
    with capsys.disabled():
        print("\n    [standby] tracker killed: that refresh read all {:.1f} MiB used ({}); the next one read {:.2f} "
              "MiB".format(r["used_bytes"] / MiB, r["tracker"], again["read_bytes"] / MiB), end="")

