"""Issue 6's booted-source test: a standby of the running source, 1 % of its data changed, one refresh.

The source is the session's booted foreign Debian 12 guest (tests/e2e/live_source.py, 127.0.0.1 only),
the same one the live capture test used before (this module runs after it). The standby is created with
the fixups; then, inside the source, files are written, one is deleted and `update-initramfs -u` rewrites
the initramfs for the hardware it runs on (SATA: no virtio). The refresh must carry the changes into
generation 2 and re-run the fixups over them: generation 2's fixed layer, read back with libguestfs,
holds the changes and an initramfs with virtio again. A third refresh, after a file written and no change
to what the initramfs is made from, reuses the initramfs rebuilt for generation 2 instead of running the
guest's mkinitramfs again; generation 3 boots on virtio (a throwaway overlay of it).

Before that refresh, one is killed (SIGKILL to its process group: the CLI, its appliance, qemu-img) as soon
as its fixups begin (issue 6): generation 1 must still be the one the domain boots, with no generation 2
recorded or half-written, and the next refresh builds generation 2 and leaves no temporary file behind.
"""
import hashlib
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from tests.integration.capture_fixtures import ROOT, MiB, json_events, run, v2v

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

NAME = "v2v-test-live-standby-{}".format(os.getpid())
DATA = "/srv/v2v-standby"
VIRTIO = {"virtio_blk", "virtio_pci"}
FIX_STAGE = "fix"           # pipeline.fix_overlays: stage "inspect" (launch, inspection), then "fix" (the fixups)


def _undefine(uri: str) -> None:
    for cmd in (["destroy", NAME], ["undefine", NAME, "--nvram"]):
        subprocess.run(["virsh", "-c", uri] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)


def _initrd_modules(data: bytes):
    from guest_fixups.linux.initrd import list_files, module_names
    return set(module_names(list_files(data)))


def _group_alive(pgid: int):
    """Processes (not zombies) still in the process group pgid."""
    alive = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/{}/stat".format(pid)) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(pid))
    return alive


def _refresh_killed_in_the_fixups(directory: str, timeout: float = 1500.0):
    """Start `v2v standby refresh NAME --dir DIR --json`, SIGKILL its process group as soon as the fixups
    begin (stage FIX_STAGE); the JSON events it printed and the seconds it ran. Bounded: timeout for the
    stage, 60 s for the group to be gone."""
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "v2v", "standby", "refresh", NAME, "--dir", directory, "--json"],
                            cwd=str(ROOT), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                            start_new_session=True)
    lines: "queue.Queue" = queue.Queue()

    def read() -> None:
        for ln in proc.stdout:
            lines.put(ln)
        lines.put(None)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    t0 = time.monotonic()
    events = []
    killed = False
    try:
        while not killed:
            left = timeout - (time.monotonic() - t0)
            if left <= 0:
                raise AssertionError("no stage {!r} within {:.0f}s; events: {}".format(FIX_STAGE, timeout, events[-5:]))
            try:
                ln = lines.get(timeout=min(left, 30.0))
            except queue.Empty:
                continue
            if ln is None:
                proc.wait(timeout=60)
                err.seek(0)
                raise AssertionError("the refresh ended (exit {}) before its fixups: {}\n{}".format(
                    proc.returncode, events[-5:], err.read().decode(errors="replace")[-3000:]))
            if not ln.startswith(b"{"):
                continue
            ev = json.loads(ln)
            events.append(ev)
            if ev.get("event") == "stage" and ev.get("stage") == FIX_STAGE:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
        seconds = time.monotonic() - t0
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, proc.returncode
        for _ in range(60):
            if not _group_alive(proc.pid):
                break
            time.sleep(1)
        assert not _group_alive(proc.pid), "processes of the killed refresh are still running"
        reader.join(timeout=60)
        return events, seconds
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        err.close()


def _status(directory: str) -> dict:
    cp = v2v("standby", "status", NAME, "--dir", directory, "--json", timeout=120)
    assert cp.returncode == 0, cp.stderr[-3000:]
    return json_events(cp)[-1]


def _domain_disk(uri: str) -> str:
    return os.path.basename(run("virsh", "-c", uri, "domblklist", NAME).stdout.decode().split()[-1])


def _read_generation(directory: str, gen: int, accel: str, paths):
    """From generation gen (read-only, libguestfs): the fixed layer's files at paths (None when absent) and
    its initramfs, and the replica's initramfs (the source's own bytes)."""
    from guest_fixups.appliance import Appliance
    fixed = os.path.join(directory, "fixed.g{}.qcow2".format(gen))
    replica = os.path.join(directory, "replica.g{}.qcow2".format(gen))
    with Appliance([(fixed, "qcow2"), (replica, "qcow2")], accel=accel, readonly=True, memsize=512, smp=1) as app:
        app.launch()
        g = app.g
        # the two disks hold filesystems with the same UUID: mounted by device, one at a time
        g.mount_ro("/dev/sdb1", "/")
        kver = sorted(n for n in g.ls("/boot") if n.startswith("initrd.img-"))[-1]
        replica_initrd = app.download_bytes("/boot/" + kver)
        g.umount_all()
        g.mount_ro("/dev/sda1", "/")
        files = {p: (app.download_bytes(p) if g.is_file(p) else None) for p in paths}
        fixed_initrd = app.download_bytes("/boot/" + kver)
    return files, fixed_initrd, replica_initrd


def test_standby_of_the_live_source_refreshes_changes_and_keeps_the_fixups(live_source, libvirtd, accel, capsys):
    from v2v.verify import boot_and_watch, inject_marker
    src = live_source
    work = tempfile.mkdtemp(prefix="v2v-e2e-live-standby-", dir="/var/tmp")
    os.chmod(work, 0o755)          # libvirt's qemu user must reach the standby's images
    directory = os.path.join(work, "sb")
    rng = random.Random(66)
    try:
        doomed = rng.randbytes(256 * 1024)
        src.ssh("mkdir -p {d} && cat > {d}/doomed.bin && sync".format(d=DATA), input=doomed)
        t0 = time.monotonic()
        cp = v2v("standby", "create", *src.target(), "--name", NAME, "--dir", directory, "--network", "none",
                 "--memory", "1024", "--compress", "none", "--connect", libvirtd, "--json", timeout=1500)
        create_seconds = time.monotonic() - t0
        assert cp.returncode == 0, cp.stderr[-3000:]
        created = json_events(cp)[-1]["standby"]
        assert created["generation"] == 1 and created["changed"], created
        assert any(ln.startswith("initramfs:") for ln in created["fix_lines"]), created["fix_lines"]

        # about 1 % of the used bytes: new files, one deleted, the initramfs rebuilt for SATA (no virtio)
        new = {}
        written = 0
        for i in range(6):
            data = rng.randbytes(768 * 1024 + i * 4096)
            path = "{}/new{}.bin".format(DATA, i)
            src.ssh("cat > " + path, input=data)
            new[path] = hashlib.sha256(data).hexdigest()
            written += len(data)
        src.ssh("rm {}/doomed.bin".format(DATA))
        t1 = time.monotonic()
        # the source's own rebuild (a kernel or driver update would do it); level 1 only to save emulated time
        src.ssh("env COMPRESSLEVEL=1 update-initramfs -u -k $(uname -r)", timeout=900)
        initramfs_seconds = time.monotonic() - t1
        src.ssh("sync")
        source_initrd = src.ssh("cat /boot/initrd.img-$(uname -r)").stdout
        assert not VIRTIO & _initrd_modules(source_initrd), "the source's own initramfs has virtio"

        # a refresh killed in its fixups: generation 1 still serves, nothing of generation 2 counts
        killed_events, killed_seconds = _refresh_killed_in_the_fixups(directory)
        assert any(e.get("stage") == "generation" for e in killed_events), killed_events
        assert _domain_disk(libvirtd) == "fixed.g1.qcow2"
        assert not os.path.exists(os.path.join(directory, "fixed.g2.qcow2"))
        # replica.g2.qcow2 may be left (complete, renamed into place before the fixups, as fixed.g2's backing
        # file names it) but no generation records it: the status below; the next refresh removes it
        after_kill = sorted(os.listdir(directory))
        status = _status(directory)
        assert [g["number"] for g in status["generations"]] == [1], status["generations"]
        assert status["domain"]["generation"] == 1, status["domain"]

        t2 = time.monotonic()
        cp = v2v("standby", "refresh", NAME, "--dir", directory, "--json", timeout=1500)
        refresh_seconds = time.monotonic() - t2
        assert cp.returncode == 0, cp.stderr[-3000:]
        events = json_events(cp)
        assert any(e["event"] == "warning" and "did not finish (killed)" in e["message"] for e in events), events
        if "replica.g2.qcow2" in after_kill:
            assert any(e.get("message", "").startswith("removed replica.g2.qcow2, left by a run that did not "
                                                       "finish") for e in events), events
        r = events[-1]["standby"]
        assert r["changed"] and r["generation"] == 2, r
        assert written + len(source_initrd) // 2 <= r["changed_bytes"] <= 0.15 * r["used_bytes"], r
        assert r["wire_bytes"] <= r["changed_bytes"] + 8 * MiB, r
        assert any(ln.startswith("initramfs:") and "initramfs rebuilt" in ln for ln in r["fix_lines"]), \
            r["fix_lines"]           # the source rebuilt its own initramfs: a cached one must not serve
        assert _domain_disk(libvirtd) == "fixed.g2.qcow2"
        left = [n for n in os.listdir(directory) if n.endswith(".part")]
        assert not left, left
        status = _status(directory)
        assert [g["number"] for g in status["generations"]] == [1, 2], status["generations"]
        assert "killed" in [run_["status"] for run_ in status["runs"]], status["runs"]

        files, fixed_initrd, replica_initrd = _read_generation(
            directory, 2, accel, list(new) + [DATA + "/doomed.bin"])
        assert files.pop(DATA + "/doomed.bin") is None, "the deleted file is still in generation 2"
        assert {p: hashlib.sha256(b).hexdigest() if b is not None else None for p, b in files.items()} == new
        assert replica_initrd == source_initrd, "generation 2's replica does not hold the source's new initramfs"
        assert VIRTIO <= _initrd_modules(fixed_initrd), "the fixups did not put virtio into the new initramfs"
        cached = os.listdir(os.path.join(directory, "initramfs"))
        assert len(cached) == 1, cached
        with open(os.path.join(directory, "initramfs", cached[0]), "rb") as f:
            assert f.read() == fixed_initrd, "the cached initramfs is not generation 2's"

        # no change to what the initramfs is made from: generation 3 gets generation 2's rebuilt initramfs
        src.ssh("cat > {}/after-g2.bin && sync".format(DATA), input=rng.randbytes(512 * 1024))
        t3 = time.monotonic()
        cp = v2v("standby", "refresh", NAME, "--dir", directory, "--json", timeout=1500)
        reuse_seconds = time.monotonic() - t3
        assert cp.returncode == 0, cp.stderr[-3000:]
        r3 = json_events(cp)[-1]["standby"]
        assert r3["generation"] == 3, r3
        assert any(ln.startswith("initramfs:") and "initramfs reused" in ln for ln in r3["fix_lines"]), r3["fix_lines"]
        assert _domain_disk(libvirtd) == "fixed.g3.qcow2"

        boot_dir = os.path.join(work, "boot")
        os.makedirs(boot_dir)
        ov = os.path.join(boot_dir, "g3.qcow2")
        from diskfmt import image
        image.create_overlay(os.path.join(directory, "fixed.g3.qcow2"), "qcow2", ov)
        marker = "V2V-STANDBY-G3-{}".format(os.getpid())
        inject_marker([(ov, "qcow2")], marker, accel)
        out = boot_and_watch([(ov, "qcow2")], accel=accel, success=marker, bus="virtio", memory_mib=1024,
                             timeout=600)
        assert out.ok, (out.reason, out.console_tail)
        assert "root=/dev/vda1" in out.matched, out.matched
        with capsys.disabled():
            print("\n    [live standby] a refresh SIGKILLed at its stage {!r} after {:.0f}s left {}".format(
                FIX_STAGE, killed_seconds, after_kill))
            print("    [live standby] create {:.0f}s ({:.0f} MiB used); update-initramfs in the source {:.0f}s; "
                  "refresh {:.0f}s: {:.1f} MiB changed, {:.1f} MiB on the wire ({:.1f} % of used), capture {:.0f}s; "
                  "refresh reusing the initramfs {:.0f}s; generation 3 booted on virtio in {:.0f}s".format(
                      create_seconds, created["used_bytes"] / MiB, initramfs_seconds, refresh_seconds,
                      r["changed_bytes"] / MiB, r["wire_bytes"] / MiB, 100.0 * r["wire_bytes"] / r["used_bytes"],
                      r["capture_seconds"], reuse_seconds, out.seconds))
    finally:
        _undefine(libvirtd)
        shutil.rmtree(work, ignore_errors=True)
