"""Push mode on 127.0.0.1: certificates made by `v2v agent certs`, `v2v convert host push:NAME --listen`
waiting, and the real agent (v2v-agent.pyz from `v2v agent build`, started as a subprocess) connecting out
with mutual TLS and capturing real loop devices.

Checked: the files are 0600 and verify with openssl for both backends; a mounted ext4 captured in push mode
matches the source in every used block (but the few the freeze rewrites), file by file and under e2fsck;
agents with another CA's client certificate, another source's name or a CA that does not sign the
converter are refused while the converter keeps waiting; nobody connecting is one line after
--accept-timeout; an agent killed mid-capture is one line, and running both sides again resumes and gives
exactly the source's used blocks. Every wait is bounded.
"""
import os
import queue
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from typing import List, Optional, Tuple

import pytest

from diskfmt.usedmap import map_filesystem
from tests.integration.capture_fixtures import (MiB, ROOT, compare_used, free_port, json_events, loop_fs, need,
                                                run, v2v, writable, write_random_file)
from tests.integration.test_capture import _captured_files, _differing_blocks, _fsck

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def work():
    d = tempfile.mkdtemp(prefix="v2v-push-test-", dir="/var/tmp")
    yield d
    mnt = os.path.join(d, "mnt-capture")
    if os.path.ismount(mnt):
        subprocess.run(["umount", "-l", mnt], timeout=60)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def certs(work):
    """tls/: the converter's CA with sources db1 and web2 (cryptography); other/: another CA's db1 (openssl)."""
    tls, other = os.path.join(work, "tls"), os.path.join(work, "other")
    cp = v2v("agent", "certs", tls, "--source", "db1", timeout=60)
    assert cp.returncode == 0, cp.stderr
    cp = v2v("agent", "certs", tls, "--source", "web2", timeout=60)        # a second run adds a source
    assert cp.returncode == 0, cp.stderr
    assert "kept" in cp.stdout and "created {}".format(os.path.join(tls, "web2.pem")) in cp.stdout
    cp = v2v("agent", "certs", other, "--source", "db1", "--backend", "openssl", timeout=60)
    assert cp.returncode == 0, cp.stderr
    return tls, other


@pytest.fixture(scope="module")
def pyz(work):
    path = os.path.join(work, "v2v-agent.pyz")
    cp = v2v("agent", "build", "-o", path, timeout=60)
    assert cp.returncode == 0, cp.stderr
    return path


class Lines:
    """A child's stdout lines, read on a thread, so that every wait for one is bounded."""

    def __init__(self, stream) -> None:
        self.q: "queue.Queue[Optional[str]]" = queue.Queue()
        self.lines: List[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self.q.put(line)
        self.q.put(None)

    def next(self, deadline: float) -> Optional[str]:
        """The next line, or None at the end of the stream; fails at the deadline."""
        left = deadline - time.monotonic()
        assert left > 0, "timed out waiting for output; so far: " + "".join(self.lines[-5:])
        try:
            line = self.q.get(timeout=left)
        except queue.Empty:
            raise AssertionError("timed out waiting for output; so far: " + "".join(self.lines[-5:])) from None
        if line is not None:
            self.lines.append(line)
        return line


def _converter(port: int, tls: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "v2v", "convert", "host", "push:db1", "--listen",
                             "127.0.0.1:{}".format(port), "--tls-dir", tls, "--json", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT))


def _agent(pyz: str, port: int, ca: str, cert_dir: str, name: str = "db1", *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, pyz, "--connect", "127.0.0.1:{}".format(port), "--ca", ca,
                             "--cert", os.path.join(cert_dir, name + ".pem"),
                             "--key", os.path.join(cert_dir, name + ".key"), "--retry-for", "30", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen, timeout: float = 120) -> Tuple[int, str, str]:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate(timeout=30)
        raise AssertionError("{} did not end within {:.0f}s: {}".format(p.args[:4], timeout, err[-2000:]))
    return p.returncode, out, err


def _push(pyz: str, tls: str, *args: str) -> Tuple[dict, str]:
    """A converter waiting in push mode and the agent connecting to it, both run to the end and both
    asserted to succeed; (the converter's capture result, the agent's stderr)."""
    port = free_port()
    conv = _converter(port, tls, *args)
    agent = _agent(pyz, port, os.path.join(tls, "ca.pem"), tls)
    try:
        rc, out, err = _finish(conv, 180)
        arc, _, aerr = _finish(agent, 60)
    finally:
        _kill(conv, agent)
    assert rc == 0, err[-3000:]
    assert arc == 0, aerr
    return _result(out)["capture"], aerr


def _one_error(rc: int, err: str, prefix: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith(prefix)]
    assert rc == 1, (rc, err[-2000:])
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _result(out: str) -> dict:
    events = json_events(subprocess.CompletedProcess([], 0, out, ""))
    assert events and events[-1]["event"] == "result", out[-2000:]
    return events[-1]


def _kill(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)


def _used_map(path: str):
    with open(path, "rb") as f:
        def read(off: int, n: int) -> bytes:
            f.seek(off)
            return f.read(n)
        return map_filesystem(read, os.path.getsize(path), allow_dirty=True)


def test_certs_are_private_files_that_verify_with_either_backend(certs):
    need("openssl")
    tls, other = certs
    assert stat.S_IMODE(os.stat(tls).st_mode) == 0o700
    names = sorted(os.listdir(tls))
    assert names == ["ca.key", "ca.pem", "db1.key", "db1.pem", "server.key", "server.pem", "web2.key", "web2.pem"]
    for d in (tls, other):
        for n in os.listdir(d):
            assert stat.S_IMODE(os.stat(os.path.join(d, n)).st_mode) == 0o600, n
        ca = os.path.join(d, "ca.pem")
        run("openssl", "verify", "-CAfile", ca, "-purpose", "sslserver", os.path.join(d, "server.pem"))
        run("openssl", "verify", "-CAfile", ca, "-purpose", "sslclient", os.path.join(d, "db1.pem"))
        # the converter's certificate cannot serve as a source's
        assert run("openssl", "verify", "-CAfile", ca, "-purpose", "sslclient", os.path.join(d, "server.pem"),
                   check=False).returncode != 0
        subj = run("openssl", "x509", "-in", os.path.join(d, "db1.pem"), "-noout", "-subject").stdout.decode()
        assert "CN = db1" in subj or "CN=db1" in subj
    assert run("openssl", "verify", "-CAfile", os.path.join(tls, "ca.pem"), os.path.join(other, "db1.pem"),
               check=False).returncode != 0


def test_push_capture_of_a_mounted_ext4_matches_the_source(certs, pyz, work):
    need("mkfs.ext4", "e2fsck")
    tls, _ = certs
    with loop_fs("ext4") as fs:
        dest = os.path.join(work, "cap-mounted")
        cap, aerr = _push(pyz, tls, "--disk", fs.device, "--capture-only", "--out", dest, "--accept-timeout", "60")
        assert "accepted this agent" in aerr, aerr
        assert cap["target"] == "push:db1" and not cap["resumed"]
        assert writable(fs.mountpoint), "the source is still frozen"
        (disk,) = cap["disks"]
        assert disk["mode"] == "freeze-converge" and disk["consistent"] and disk["frozen"] == [fs.mountpoint]
        image = cap["images"][0]
        src, got = _used_map(fs.image), _used_map(image)
        assert src.exact and got.exact
        used = src.extents.union(got.extents)
        # a mounted source: only the superblock/journal blocks that the freeze itself rewrites may differ
        assert _differing_blocks(fs.image, image, used) <= 16
        files = _captured_files("ext4", image, os.path.join(work, "mnt-capture"))
        for rel, sha in fs.files.items():
            assert files.get(rel) == sha, "{} differs in the capture".format(rel)
        _fsck("ext4", image)


def test_refused_agents_leave_the_converter_waiting_for_the_right_one(certs, pyz, work):
    need("mkfs.ext4")
    tls, other = certs
    with loop_fs("ext4", size=32 * MiB, mount=False) as fs:
        port = free_port()
        conv = _converter(port, tls, "--disk", fs.device, "--dry-run", "--accept-timeout", "90")
        procs = [conv]
        try:
            ca = os.path.join(tls, "ca.pem")
            tries = [("another CA signed the client certificate", ca, other, "db1"),
                     ("the certificate names another source", ca, tls, "web2"),
                     ("the agent does not trust the converter's CA", os.path.join(other, "ca.pem"), tls, "db1")]
            for why, agent_ca, cert_dir, name in tries:
                p = _agent(pyz, port, agent_ca, cert_dir, name)
                procs.append(p)
                arc, _, aerr = _finish(p, 60)
                line = _one_error(arc, aerr, "v2v-agent: error:")
                if agent_ca == ca:
                    assert "refused this agent" in line, (why, line)
                else:
                    assert "is not trusted" in line, (why, line)
                assert conv.poll() is None, "the converter stopped waiting after: " + why
            good = _agent(pyz, port, ca, tls)
            procs.append(good)
            arc, _, aerr = _finish(good, 60)
            rc, out, err = _finish(conv, 60)
        finally:
            _kill(*procs)
        assert arc == 0, aerr
        assert rc == 0, err[-3000:]
        events = json_events(subprocess.CompletedProcess([], 0, out, ""))
        warnings = [e["message"] for e in events if e["event"] == "warning"]
        assert len(warnings) == 3, warnings
        assert "its client certificate is not signed by the CA in {}".format(tls) in warnings[0]
        assert "its certificate names 'web2', this converter waits for 'db1'" in warnings[1]
        assert "does not accept this converter's certificate" in warnings[2]
        plan = _result(out)["capture"]["plans"][0]
        assert plan["device"] == fs.device and plan["mode"] == "offline"


def test_nobody_connecting_within_the_accept_timeout_is_one_line_error(certs, work):
    tls, _ = certs
    port = free_port()
    dest = os.path.join(work, "cap-nobody")
    t0 = time.monotonic()
    cp = v2v("convert", "host", "push:db1", "--listen", "127.0.0.1:{}".format(port), "--tls-dir", tls,
             "--capture-only", "--out", dest, "--accept-timeout", "2", "--json", timeout=60)
    assert time.monotonic() - t0 < 30
    line = _one_error(cp.returncode, cp.stderr, "v2v: error:")
    assert "no agent connected as db1 to 127.0.0.1:{} within 2s (nobody connected)".format(port) in line
    stage = [e for e in json_events(cp) if e["event"] == "stage"][0]["message"]
    # says what to run on the source
    assert "python3 v2v-agent.pyz --connect 127.0.0.1:{} --ca ca.pem --cert db1.pem --key db1.key".format(
        port) in stage
    assert not os.path.exists(dest)


def test_push_target_without_listen_is_a_usage_error(certs):
    cp = v2v("convert", "host", "push:db1", "--dry-run", timeout=60)
    assert cp.returncode == 2 and "push:NAME needs --listen HOST:PORT and --tls-dir DIR" in cp.stderr
    cp = v2v("convert", "host", "root@127.0.0.1", "--listen", ":8443", "--dry-run", timeout=60)
    assert cp.returncode == 2 and "are for push mode" in cp.stderr


def test_an_agent_killed_mid_capture_resumes_when_both_sides_run_again(certs, pyz, work):
    need("mkfs.ext4")
    tls, _ = certs
    ca = os.path.join(tls, "ca.pem")
    with loop_fs("ext4", size=128 * MiB, mount=False) as fs:
        # incompressible content so that the throttle makes the transfer last a few seconds
        write_random_file(fs, os.path.join(work, "src"), 40)
        dest = os.path.join(work, "cap-resume")
        args = ("--disk", fs.device, "--capture-only", "--out", dest, "--accept-timeout", "60", "--bandwidth", "12M")
        port = free_port()
        conv = _converter(port, tls, *args)
        agent = _agent(pyz, port, ca, tls)
        killed_at = 0
        try:
            lines = Lines(conv.stdout)
            deadline = time.monotonic() + 90
            first = 0.0
            while True:
                line = lines.next(deadline)
                assert line is not None, "the converter ended before the agent was killed: " + conv.stderr.read()
                m = re.search(r'"done": (\d+)', line) if '"progress"' in line else None
                if m:
                    first = first or time.monotonic()
                    # past the metadata (mostly zero chunks, which arrive at once) and a few manifest commits
                    if int(m.group(1)) > 20 * MiB and time.monotonic() - first > 1.5:
                        killed_at = int(m.group(1))
                        os.kill(agent.pid, signal.SIGKILL)           # the drop
                        break
            while lines.next(deadline) is not None:
                pass
            rc, _, err = _finish(conv, 60)
            agent.wait(timeout=30)
        finally:
            _kill(conv, agent)
        line = _one_error(rc, err, "v2v: error:")
        assert "the connection from the agent push:db1" in line and "run this command and the agent again to " \
            "resume" in line and "verified are kept in {}".format(dest) in line, line
        assert os.path.exists(os.path.join(dest, "manifest.sqlite"))
        print("\n    [push] the drop: " + line)

        # both sides again, the converter on another port: the same staging
        cap, _ = _push(pyz, tls, *args)
        # what arrived before the drop was written and recorded before the converter stopped
        assert cap["resumed"] and cap["skipped_bytes"] >= killed_at, (cap, killed_at)
        assert cap["resent_bytes"] <= 2 * MiB, cap
        src = _used_map(fs.image)
        assert src.exact
        # the source was not mounted: the resumed image holds exactly its bytes in every used block
        assert compare_used(fs.image, cap["images"][0], src.extents) == src.extents.total()
        print("\n    [push] killed at {:.1f} MiB; resumed: {:.1f} MiB kept, {:.1f} MiB sent, {:.2f} MiB re-sent, "
              "{:.1f} MiB used".format(killed_at / MiB, cap["skipped_bytes"] / MiB, cap["received_bytes"] / MiB,
                                       cap["resent_bytes"] / MiB, src.extents.total() / MiB))
        assert 0 <= cap["skipped_bytes"] + cap["received_bytes"] - src.extents.total() <= 4 * MiB, cap
