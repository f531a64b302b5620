"""`v2v convert host --capture-only` over a real sshd on 127.0.0.1, capturing real loop-mounted
filesystems through the real agent (v2v-agent.pyz sent by the stdin bootstrap).

Each capture is checked block by block against the source over every used block (exactly for
unmounted sources; for mounted ones only the superblock/log blocks that the freeze itself rewrites may
differ, and their count is bounded), by mounting the capture read-only and hashing every file, and by
fsck. Map size vs df used is printed. The source must be thawed afterwards (a write succeeds).
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from diskfmt.usedmap import map_filesystem

from tests.integration.capture_fixtures import (MiB, compare_used, json_events, loop_fs, need, run, sha_tree, sshd_server, v2v,
                               writable, write_random_file)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sshd():
    with sshd_server() as s:
        yield s


@pytest.fixture
def out():
    d = tempfile.mkdtemp(prefix="v2v-capture-test-", dir="/var/tmp")
    yield d
    for sub in ("mnt-capture",):
        p = os.path.join(d, sub)
        if os.path.ismount(p):
            subprocess.run(["umount", "-l", p], timeout=60)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def report(capsys):
    def emit(line: str) -> None:
        with capsys.disabled():
            print("\n    [capture] " + line, end="")
    return emit


def _capture(sshd, fs, dest, *extra, timeout=180):
    cp = v2v("convert", "host", *sshd.args(), "--disk", fs.device, "--capture-only", "--out", dest, "--json",
             *extra, timeout=timeout)
    events = json_events(cp)
    result = events[-1] if events and events[-1].get("event") == "result" else None
    return cp, events, result


def _file_map(path, size):
    with open(path, "rb") as f:
        def read(off, n):
            f.seek(off)
            return f.read(n)
        return map_filesystem(read, size, allow_dirty=True)


def _differing_blocks(a, b, extents):
    diff = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for start, end in extents:
            pos = start
            while pos < end:
                n = min(end - pos, 4 * MiB)
                fa.seek(pos)
                fb.seek(pos)
                x, y = fa.read(n), fb.read(n)
                if x != y:
                    diff += sum(1 for i in range(0, len(x), 4096) if x[i:i + 4096] != y[i:i + 4096])
                pos += n
    return diff


def _captured_files(fstype, image, mnt):
    """sha256 of every file in the captured image, mounted read-only (FAT read with mtools)."""
    if fstype == "vfat":
        dest = mnt + "-files"
        run("mcopy", "-s", "-n", "-i", image, "::dir", dest)
        return {os.path.join("dir", k): v for k, v in sha_tree(dest).items()}
    os.makedirs(mnt, exist_ok=True)
    if fstype == "ntfs":
        run("ntfs-3g", "-o", "ro", image, mnt)
    else:
        run("mount", "-o", "ro,loop" + (",norecovery,nouuid" if fstype == "xfs" else ",noload"), image, mnt)
    try:
        return sha_tree(mnt)
    finally:
        run("umount", mnt)


def _fsck(fstype, image):
    if fstype == "xfs":
        # a frozen XFS is crash-consistent: its log holds changes (the kernel's own frozen state does too);
        # replay the log on a copy, then check
        copy = image + ".replayed"
        run("cp", "--sparse=always", image, copy)
        mnt = image + ".mnt"
        os.makedirs(mnt)
        try:
            run("mount", "-o", "loop,nouuid", copy, mnt)
            run("umount", mnt)
            image = copy
        finally:
            os.rmdir(mnt)
    argv = {"ext4": ["e2fsck", "-fn", image], "xfs": ["xfs_repair", "-n", "-f", image],
            "vfat": ["fsck.vfat", "-n", image], "ntfs": ["ntfsfix", "-n", image]}[fstype]
    cp = run(*argv, check=False, timeout=300)
    assert cp.returncode == 0, "{} on the capture: {}".format(" ".join(argv), cp.stdout.decode()[-1500:])


@pytest.mark.parametrize("fstype,mounted", [("ext4", True), ("xfs", True), ("ntfs", True), ("vfat", False),
                                            ("ext4", False)])
def test_capture_matches_the_source_in_every_used_block(sshd, out, report, fstype, mounted):
    need("mkfs.ext4", "mkfs.xfs", "mkfs.ntfs", "ntfs-3g", "mkfs.vfat", "mcopy", "e2fsck", "xfs_repair")
    with loop_fs(fstype, mount=mounted) as fs:
        cp, events, result = _capture(sshd, fs, os.path.join(out, "cap"))
        assert cp.returncode == 0, cp.stderr
        cap = result["capture"]
        image = cap["images"][0]
        if fs.mountpoint:
            assert writable(fs.mountpoint), "the source is still frozen"
        (disk,) = cap["disks"]
        if fstype in ("ext4", "xfs") and mounted:
            assert disk["mode"] == "freeze-converge" and disk["consistent"]
            assert disk["frozen"] == [fs.mountpoint] and 0 < disk["freeze_seconds"] <= 2.0
        elif fstype == "ntfs":
            assert disk["not_frozen"] == [fs.mountpoint] and not disk["consistent"]   # FUSE refuses FIFREEZE
        else:
            assert disk["mode"] == "offline" and disk["frozen"] == []
        src_map = _file_map(fs.image, os.path.getsize(fs.image))
        assert src_map.exact, src_map.reason
        cap_map = _file_map(image, os.path.getsize(image))
        assert cap_map.exact, cap_map.reason
        used = src_map.extents.union(cap_map.extents)
        if mounted:
            differing = _differing_blocks(fs.image, image, used)
            assert differing <= 16, "{} used 4 KiB blocks differ from the source".format(differing)
        else:
            differing = 0
            assert compare_used(fs.image, image, used) == used.total()
        files = _captured_files(fstype, image, os.path.join(out, "mnt-capture"))
        for rel, sha in fs.files.items():
            assert files.get(rel) == sha, "{} differs in the capture".format(rel)
        _fsck(fstype, image)
        plan = cap["plans"][0]
        df = _df_used(fs)
        report("{}{}: map {:.1f} MiB, df used {} (+ metadata outside df {}), sent {:.1f} MiB, wire {:.2f} MiB, {} blocks differ (rewritten by the "
               "freeze or the live filesystem), freeze {:.3f}s".format(
                   fstype, "" if mounted else " (unmounted)", plan["used_bytes"] / MiB,
                   "{:.1f} MiB".format(df / MiB) if df is not None else "n/a", _hidden(fs),
                   cap["received_bytes"] / MiB,
                   cap["wire_bytes"] / MiB, differing, disk["freeze_seconds"]))
        if df is not None and fstype in ("ext4", "xfs"):
            # tight: the map is df's used bytes plus the metadata df does not count (journal/log, inode
            # tables: what lies outside f_blocks), within 3 %
            st = os.statvfs(fs.mountpoint)
            hidden = os.path.getsize(fs.image) - st.f_blocks * st.f_frsize
            assert plan["used_bytes"] <= (df + hidden) * 1.03 + MiB, (plan["used_bytes"], df, hidden)


def _hidden(fs):
    if not fs.mountpoint:
        return "n/a"
    st = os.statvfs(fs.mountpoint)
    return "{:.1f} MiB".format((os.path.getsize(fs.image) - st.f_blocks * st.f_frsize) / MiB)


def _df_used(fs):
    if not fs.mountpoint:
        return None
    st = os.statvfs(fs.mountpoint)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@pytest.mark.parametrize("tracing", ["auto", "off"])
def test_files_finished_before_the_freeze_verify_while_a_writer_runs(sshd, out, report, tracing):
    """With the tracefs tracer (auto, where tracefs works) and with digest passes only (off)."""
    need("mkfs.ext4")
    with loop_fs("ext4", size=160 * MiB) as fs:
        stop = threading.Event()
        written = []
        log_path = os.path.join(fs.mountpoint, "checksums.txt")

        def writer():
            import hashlib
            t0 = time.monotonic()
            with open(log_path, "a") as log:
                for i in range(400):                       # bounded in count and time
                    if stop.is_set() or time.monotonic() - t0 > 60:
                        return
                    data = os.urandom(4096) * (1 + i % 64)
                    name = "w{:04d}.bin".format(i)
                    with open(os.path.join(fs.mountpoint, name), "wb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                    log.write("{} {}\n".format(hashlib.sha256(data).hexdigest(), name))
                    log.flush()
                    os.fsync(log.fileno())
                    written.append(name)
                    time.sleep(0.005)

        th = threading.Thread(target=writer)
        th.start()
        try:
            time.sleep(0.3)
            cp, events, result = _capture(sshd, fs, os.path.join(out, "cap"), "--tracing", tracing)
        finally:
            stop.set()
            th.join(timeout=90)
        assert cp.returncode == 0, cp.stderr
        assert writable(fs.mountpoint)
        disk = result["capture"]["disks"][0]
        assert disk["consistent"] and disk["freeze_seconds"] <= 2.0
        files = _captured_files("ext4", result["capture"]["images"][0], os.path.join(out, "mnt-capture"))
        _fsck("ext4", result["capture"]["images"][0])
        mnt = os.path.join(out, "mnt-log")
        os.makedirs(mnt)
        run("mount", "-o", "ro,loop,noload", result["capture"]["images"][0], mnt)
        try:
            lines = Path(mnt, "checksums.txt").read_text().split("\n")
        finally:
            run("umount", mnt)
        complete = [ln.split() for ln in lines[:-1]]        # the last element is "" or a cut line
        assert len(complete) >= 5, "the writer did not get going before the freeze"
        for sha, name in complete:
            assert files.get(name) == sha, "{} was finished before the freeze but does not verify".format(name)
        if tracing == "off":
            assert disk["tracking"] == "digest pass" and disk["full_passes"] == len(disk["rounds"])
        if disk["tracking"].startswith("tracefs"):
            assert disk["full_passes"] == 1, "trace events were lost: {} full passes".format(disk["full_passes"])
        report("writer: {} files written, {} complete before the freeze, all verify; rounds {}, freeze {:.3f}s "
               "({}, {} full passes)".format(len(written), len(complete), disk["rounds"], disk["freeze_seconds"],
                                             disk["tracking"], disk["full_passes"]))


def _children(pid):
    kids = []
    for task in os.listdir("/proc/{}/task".format(pid)):
        try:
            kids += [int(x) for x in Path("/proc/{}/task/{}/children".format(pid, task)).read_text().split()]
        except OSError:
            pass
    return kids


@pytest.mark.parametrize("victim", ["ssh", "converter"])
def test_resume_after_a_kill_gives_the_same_image(sshd, out, report, victim):
    """Kill the ssh session (the converter sees the connection drop) or the converter itself (SIGKILL:
    nothing runs after it), then rerun the same command."""
    need("mkfs.ext4")
    with loop_fs("ext4", size=128 * MiB, mount=False) as fs:
        # incompressible content so that the throttle makes the transfer last a few seconds
        write_random_file(fs, os.path.join(out, "src"), 40)
        ref_cp, _, ref = _capture(sshd, fs, os.path.join(out, "ref"))
        assert ref_cp.returncode == 0, ref_cp.stderr
        full = ref["capture"]["received_bytes"]
        dest = os.path.join(out, "cap")
        argv = [sys.executable, "-m", "v2v", "convert", "host", *sshd.args(), "--disk", fs.device,
                "--capture-only", "--out", dest, "--json", "--bandwidth", "12M"]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=str(Path(__file__).resolve().parents[2]))
        killed = None
        first = 0.0
        try:
            deadline = time.monotonic() + 60
            for line in p.stdout:
                if '"progress"' in line and '"done": ' in line:
                    done = int(re.search(r'"done": (\d+)', line).group(1))
                    first = first or time.monotonic()
                    # past the metadata (mostly zero chunks, which arrive at once) and a few manifest commits
                    if done > full // 2 and time.monotonic() - first > 1.5:
                        if victim == "ssh":
                            kids = [k for k in _children(p.pid)
                                    if Path("/proc/{}/comm".format(k)).read_text().strip() == "ssh"]
                            assert kids, "no ssh child to kill"
                            killed = kids[0]
                        else:
                            killed = p.pid
                        os.kill(killed, signal.SIGKILL)
                        break
                if time.monotonic() > deadline:
                    break
            stderr = p.communicate(timeout=60)[1]
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
        assert killed is not None, "the capture finished before it could be interrupted"
        if victim == "ssh":
            assert p.returncode == 1
            lines = [ln for ln in stderr.splitlines() if ln.startswith("v2v: error:")]
            assert len(lines) == 1 and "rerun the same command to resume" in lines[0], stderr
        else:
            assert p.returncode == -signal.SIGKILL
        assert os.path.exists(os.path.join(dest, "manifest.sqlite"))
        cp, events, result = _capture(sshd, fs, dest)
        assert cp.returncode == 0, cp.stderr
        cap = result["capture"]
        assert cap["resumed"] and cap["skipped_bytes"] > full // 4
        # at most what was in flight: nothing for a dropped session (what arrived was recorded), and for a
        # killed converter what arrived after the last manifest commit (0.5 s at 12 MiB/s) plus a chunk
        bound = 2 * MiB if victim == "ssh" else 8 * MiB
        assert cap["resent_bytes"] <= bound, cap
        # every chunk arrives once in all, apart from the re-sent ones, which the first run wrote but had not
        # recorded yet: kept + sent again = the whole capture
        assert cap["skipped_bytes"] + cap["received_bytes"] == full
        a, b = ref["capture"]["images"][0], cap["images"][0]
        assert _sha(a) == _sha(b), "the resumed capture differs from an uninterrupted one"
        report("resume after killing the {}: full {:.1f} MiB; {:.1f} MiB kept, {:.1f} MiB sent, {:.2f} MiB re-sent; "
               "images identical".format(victim, full / MiB, cap["skipped_bytes"] / MiB, cap["received_bytes"] / MiB,
                                         cap["resent_bytes"] / MiB))


def _sha(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(4 * MiB), b""):
            h.update(b)
    return h.hexdigest()


def _one_error_line(cp):
    lines = [ln for ln in cp.stderr.splitlines() if ln.startswith("v2v: error:")]
    assert cp.returncode == 1, (cp.returncode, cp.stderr[-2000:])
    assert len(lines) == 1, cp.stderr
    assert "Traceback" not in cp.stderr
    return lines[0]


def test_unreachable_host_is_one_line_error(sshd, out):
    from tests.integration.capture_fixtures import free_port
    port = free_port()                # nothing listens there
    cp = v2v("convert", "host", "root@127.0.0.1:{}".format(port), "--ssh-key", sshd.key, "--ssh-known-hosts",
             sshd.known_hosts, "--capture-only", "--out", os.path.join(out, "cap"), timeout=60)
    line = _one_error_line(cp)
    assert "cannot reach root@127.0.0.1:{}".format(port) in line and "refused" in line
    assert not os.path.exists(os.path.join(out, "cap"))


def test_wrong_host_key_is_refused(sshd, out):
    cp = v2v("convert", "host", "root@127.0.0.1:{}".format(sshd.port), "--ssh-key", sshd.key,
             "--ssh-known-hosts", sshd.wrong_known_hosts, "--capture-only", "--out", os.path.join(out, "cap"),
             timeout=60)
    line = _one_error_line(cp)
    assert "host key" in line and "--ssh-accept-new" in line
    assert not os.path.exists(os.path.join(out, "cap"))
    # an unknown host is refused too unless --ssh-accept-new, which then records it
    empty = os.path.join(out, "known_hosts")
    Path(empty).write_text("")
    base = ["convert", "host", "root@127.0.0.1:{}".format(sshd.port), "--ssh-key", sshd.key,
            "--ssh-known-hosts", empty, "--dry-run"]
    assert "host key" in _one_error_line(v2v(*base, "--disk", "/dev/null-none", timeout=60))
    cp = v2v(*base, "--ssh-accept-new", "--disk", "/dev/loop-none", timeout=60)
    host_key = Path(sshd.known_hosts).read_text().split()[2]
    assert host_key in Path(empty).read_text()
    assert run("ssh-keygen", "-F", "[127.0.0.1]:{}".format(sshd.port), "-f", empty).returncode == 0
    assert "no such device" in _one_error_line(cp)     # the agent ran and refused the bad device name


def test_corrupted_frame_is_an_integrity_error_and_the_source_is_thawed(sshd, out):
    need("mkfs.ext4")
    tools = os.path.join(out, "tools")
    os.makedirs(tools)
    flipper = os.path.join(tools, "flip.py")
    Path(flipper).write_text(
        "import sys\nn = int(sys.argv[1])\ni = 0\nwhile True:\n"
        "    b = sys.stdin.buffer.read1(65536)\n    if not b:\n        break\n"
        "    if i <= n < i + len(b):\n        b = bytearray(b); b[n - i] ^= 0x55; b = bytes(b)\n"
        "    i += len(b)\n    sys.stdout.buffer.write(b)\n    sys.stdout.buffer.flush()\n")
    wrapper = os.path.join(tools, "python-through-a-bad-link")
    Path(wrapper).write_text("#!/bin/sh\npython3 \"$@\" | python3 {} 300000\n".format(flipper))
    os.chmod(wrapper, 0o755)
    with loop_fs("ext4") as fs:
        dest = os.path.join(out, "cap")
        cp = v2v("convert", "host", *sshd.args(), "--disk", fs.device, "--capture-only", "--out", dest,
                 "--compress", "none", "--remote-python", wrapper, timeout=120)
        line = _one_error_line(cp)
        assert re.search(r"checksum mismatch in a CHUNK frame for disk 0 offset \d+", line), line
        assert not os.path.exists(dest), "a half-written capture was left behind"
        time.sleep(3)                      # the agent's watchdog thaws within max-freeze + 0.5 s at worst
        assert writable(fs.mountpoint)


def test_full_staging_directory_is_refused_before_copying(sshd, out):
    need("mkfs.ext4")
    small = os.path.join(out, "small")
    os.makedirs(small)
    run("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", small)
    try:
        Path(small, "keep.txt").write_text("not ours")
        with loop_fs("ext4") as fs:
            cp = v2v("convert", "host", *sshd.args(), "--disk", fs.device, "--capture-only", "--out", small,
                     timeout=120)
            line = _one_error_line(cp)
            assert "staging directory {} has".format(small) in line and "the capture needs" in line
            assert sorted(os.listdir(small)) == ["keep.txt"], "files were left in the staging directory"
            assert writable(fs.mountpoint)
    finally:
        run("umount", small)


def test_dry_run_reports_the_plan_and_writes_nothing(sshd, out):
    need("mkfs.xfs")
    with loop_fs("xfs") as fs:
        cp, events, result = _capture(sshd, fs, os.path.join(out, "cap"), "--dry-run")
        assert cp.returncode == 0, cp.stderr
        (plan,) = result["capture"]["plans"]
        assert plan["mode"] == "freeze-converge" and plan["regions"][0]["fstype"] == "xfs"
        assert 0 < plan["used_bytes"] < plan["size"]
        assert not os.path.exists(os.path.join(out, "cap"))
        assert writable(fs.mountpoint)


def test_agent_build_writes_a_runnable_pyz(out):
    need("mkfs.ext4")
    path = os.path.join(out, "v2v-agent.pyz")
    cp = v2v("agent", "build", "-o", path, timeout=60)
    assert cp.returncode == 0 and cp.stdout.strip() == path
    with loop_fs("ext4", mount=False) as fs:
        plan = subprocess.run(["python3", path, "--plan", "--disk", fs.device], stdout=subprocess.PIPE,
                              timeout=60, check=True).stdout
        import json
        doc = json.loads(plan)
        assert doc["plans"][0]["mode"] == "offline" and doc["plans"][0]["regions"][0]["fstype"] == "ext4"


def test_source_python_older_than_3_6_is_refused_in_one_line(sshd, out):
    """No Python older than 3.6 exists on this host: a wrapper runs the real bootstrap with
    sys.version_info set to 3.5.2 before it, as an old interpreter would report it."""
    wrapper = os.path.join(out, "python3.5")
    Path(wrapper).write_text(
        "#!/bin/sh\n"
        "exec python3 -c 'import sys; sys.version_info = (3, 5, 2, \"final\", 0); sys.version = \"3.5.2\"; "
        "code = sys.argv[1]; sys.argv = sys.argv[1:]; exec(code)' \"$2\" \"$3\"\n")
    os.chmod(wrapper, 0o755)
    dest = os.path.join(out, "cap")
    cp = v2v("convert", "host", *sshd.args(), "--remote-python", wrapper, "--capture-only", "--out", dest,
             timeout=60)
    line = _one_error_line(cp)
    assert "Python 3.5.2" in line and "needs Python 3.6 or newer" in line, line
    assert not os.path.exists(dest)


def test_sigterm_to_the_converter_keeps_what_was_verified_for_a_rerun(sshd, out):
    need("mkfs.ext4")
    with loop_fs("ext4", size=128 * MiB) as fs:
        with open(os.path.join(fs.mountpoint, "random.bin"), "wb") as f:
            f.write(os.urandom(40 * MiB))
        run("sync")
        dest = os.path.join(out, "cap")
        argv = [sys.executable, "-m", "v2v", "convert", "host", *sshd.args(), "--disk", fs.device,
                "--capture-only", "--out", dest, "--json", "--bandwidth", "12M"]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=str(Path(__file__).resolve().parents[2]))
        try:
            for line in p.stdout:
                if '"progress"' in line and int(re.search(r'"done": (\d+)', line).group(1)) > 24 * MiB:
                    p.send_signal(signal.SIGTERM)
                    break
            stderr = p.communicate(timeout=60)[1]
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
        assert p.returncode == 1
        lines = [ln for ln in stderr.splitlines() if ln.startswith("v2v: error:")]
        assert len(lines) == 1 and "interrupted by SIGTERM" in lines[0] and "kept in " + dest in lines[0], stderr
        assert os.path.exists(os.path.join(dest, "manifest.sqlite")), "the verified chunks were thrown away"
        time.sleep(3)                      # the agent sees the pipe close; its watchdog bounds any freeze
        assert writable(fs.mountpoint)
        cp, events, result = _capture(sshd, fs, dest)
        assert cp.returncode == 0, cp.stderr
        assert result["capture"]["resumed"] and result["capture"]["skipped_bytes"] > 16 * MiB


def test_staging_that_fills_up_during_the_capture_is_one_line_error_and_removed(sshd, out):
    need("mkfs.ext4")
    small = os.path.join(out, "small")
    os.makedirs(small)
    run("mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", small)
    try:
        with loop_fs("ext4", size=128 * MiB) as fs:
            with open(os.path.join(fs.mountpoint, "random.bin"), "wb") as f:
                f.write(os.urandom(40 * MiB))
            run("sync")
            dest = os.path.join(small, "cap")
            argv = [sys.executable, "-m", "v2v", "convert", "host", *sshd.args(), "--disk", fs.device,
                    "--capture-only", "--out", dest, "--json", "--bandwidth", "8M"]
            p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 cwd=str(Path(__file__).resolve().parents[2]))
            try:
                for line in p.stdout:
                    if '"progress"' in line:
                        # something else takes the rest of the space while the capture runs
                        subprocess.run(["dd", "if=/dev/zero", "of=" + os.path.join(small, "other"), "bs=1M"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
                        break
                stderr = p.communicate(timeout=120)[1]
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=30)
            lines = [ln for ln in stderr.splitlines() if ln.startswith("v2v: error:")]
            assert p.returncode == 1 and len(lines) == 1, stderr
            assert "staging directory {} is full".format(dest) in lines[0], lines[0]
            assert not os.path.exists(dest), "a half-written capture was left behind"
            time.sleep(3)
            assert writable(fs.mountpoint)
    finally:
        run("umount", small)


@pytest.mark.parametrize("label", ["dos", "gpt"])
def test_partitions_from_the_disks_own_table_when_the_kernel_lists_none(sshd, out, report, label):
    """A loop device without partition scanning: the agent reads the MBR/GPT itself (diskfmt), maps the
    ext4 and swap partitions, and sends the table, the gaps and the mapped blocks."""
    need("sfdisk", "mkfs.ext4", "mkswap")
    image = os.path.join(out, "disk.img")
    with open(image, "wb") as f:
        f.truncate(160 * MiB)
    run("sfdisk", "-q", image, input="label: {}\n1MiB,120MiB,L\n,,S\n".format(label).encode())
    run("mkfs.ext4", "-q", "-F", "-E", "offset={}".format(MiB), image, str(120 * 1024))
    swap = os.path.join(out, "swap.img")
    with open(swap, "wb") as f:
        f.truncate(30 * MiB)
    run("mkswap", swap)
    run("dd", "if=" + swap, "of=" + image, "bs=1M", "seek=121", "conv=notrunc,sparse")
    dev = run("losetup", "-f", "--show", image).stdout.decode().strip()
    try:
        name = os.path.basename(dev)
        assert not [n for n in os.listdir("/sys/block/" + name) if n.startswith(name + "p")]   # no kernel partitions
        cp, events, result = _capture(sshd, type("Fs", (), {"device": dev})(), os.path.join(out, "cap"))
        assert cp.returncode == 0, cp.stderr
        plan = result["capture"]["plans"][0]
        assert [(r["fstype"], r["exact"]) for r in plan["regions"]] == [("ext4", True), ("swap", True)]
        assert plan["used_bytes"] < 40 * MiB
        captured = result["capture"]["images"][0]
        with open(image, "rb") as f:
            def read(o, n):
                f.seek(o)
                return f.read(n)
            ext = map_filesystem(lambda o, n: read(MiB + o, n), 120 * MiB)
            swp = map_filesystem(lambda o, n: read(121 * MiB + o, n), 30 * MiB)
        assert (ext.fstype, swp.fstype) == ("ext4", "swap")
        used = ext.extents.shift(MiB).union(swp.extents.shift(121 * MiB))
        outside = used.__class__([(0, MiB)])          # the table and the gap before the first partition
        assert compare_used(image, captured, used.union(outside)) == used.union(outside).total()
        report("{} table read by the agent: {:.1f} MiB to send of 160 MiB".format(label, plan["used_bytes"] / MiB))
    finally:
        subprocess.run(["losetup", "-d", dev], timeout=60)


def test_filesystems_of_several_disks_are_frozen_in_one_window(sshd, out, report):
    """Two disks captured in one run: both filesystems frozen together (a volume spanning disks, LVM or
    md, is captured at one instant), each disk's capture verifies."""
    need("mkfs.ext4", "mkfs.xfs")
    with loop_fs("ext4", seed=3) as a, loop_fs("xfs", seed=4) as b:
        dest = os.path.join(out, "cap")
        cp = v2v("convert", "host", *sshd.args(), "--disk", a.device, "--disk", b.device, "--capture-only",
                 "--out", dest, "--json", timeout=180)
        assert cp.returncode == 0, cp.stderr
        cap = json_events(cp)[-1]["capture"]
        da, db = cap["disks"]
        assert da["frozen"] == [a.mountpoint] and db["frozen"] == [b.mountpoint]
        assert da["freeze_seconds"] == db["freeze_seconds"] <= 2.0, "two freeze windows, not one"
        freezes = [e for e in json_events(cp) if e.get("event") == "info" and "copied from the frozen state" in e.get("message", "")]
        assert len(freezes) == 2 and all(a.mountpoint in e["message"] and b.mountpoint in e["message"]
                                         for e in freezes), freezes
        for fs, image in ((a, cap["images"][0]), (b, cap["images"][1])):
            files = _captured_files(fs.fstype, image, os.path.join(out, "mnt-" + fs.fstype))
            assert all(files.get(rel) == sha for rel, sha in fs.files.items())
            assert writable(fs.mountpoint)
        report("two disks, one freeze window of {:.3f}s over {} and {}".format(
            da["freeze_seconds"], a.mountpoint, b.mountpoint))
