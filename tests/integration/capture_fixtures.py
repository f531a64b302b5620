"""Real parts for the capture tests: an sshd on 127.0.0.1 with its own keys and config, and loop-mounted
filesystems with known files. Every resource is released in the fixtures' finalizers."""
import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20


def run(*argv: str, check: bool = True, timeout: float = 120, input: Optional[bytes] = None
        ) -> subprocess.CompletedProcess:
    cp = subprocess.run(list(argv), input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    if check and cp.returncode != 0:
        raise AssertionError("{} exited {}: {}".format(" ".join(argv), cp.returncode,
                                                       cp.stderr.decode(errors="replace")[-2000:]))
    return cp


def need(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, mount, sshd)")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip("needs {} (scripts/setup.sh installs them)".format(", ".join(missing)))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd(NamedTuple):
    port: int
    key: str               # client private key
    known_hosts: str       # holds the server's host key for [127.0.0.1]:port
    wrong_known_hosts: str  # holds another key for the same name
    dir: str
    pid: int

    def args(self) -> List[str]:
        return ["root@127.0.0.1:{}".format(self.port), "--ssh-key", self.key, "--ssh-known-hosts", self.known_hosts]


@contextlib.contextmanager
def sshd_server() -> Iterator[Sshd]:
    need("sshd", "ssh", "ssh-keygen")
    d = tempfile.mkdtemp(prefix="v2v-sshd-")
    proc = None
    try:
        for name in ("host", "client", "other"):
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "v2v-test-" + name, "-f",
                os.path.join(d, name))
        shutil.copy(os.path.join(d, "client.pub"), os.path.join(d, "authorized_keys"))
        os.chmod(os.path.join(d, "authorized_keys"), 0o600)
        port = free_port()
        config = os.path.join(d, "sshd_config")
        with open(config, "w") as f:
            f.write("\n".join([
                "Port {}".format(port), "ListenAddress 127.0.0.1", "HostKey {}/host".format(d),
                "PidFile {}/sshd.pid".format(d), "AuthorizedKeysFile {}/authorized_keys".format(d),
                "UsePAM no", "PermitRootLogin prohibit-password", "PasswordAuthentication no",
                "KbdInteractiveAuthentication no", "StrictModes no", "MaxStartups 50", "LogLevel ERROR", ""]))
        for name, keyfile in (("known_hosts", "host.pub"), ("wrong_known_hosts", "other.pub")):
            with open(os.path.join(d, keyfile)) as k, open(os.path.join(d, name), "w") as f:
                f.write("[127.0.0.1]:{} {}\n".format(port, " ".join(k.read().split()[:2])))
        os.makedirs("/run/sshd", exist_ok=True)
        proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", config], stdout=subprocess.DEVNULL,
                                stderr=open(os.path.join(d, "sshd.log"), "wb"))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError("sshd exited: " + open(os.path.join(d, "sshd.log")).read())
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        else:
            raise AssertionError("sshd did not listen on 127.0.0.1:{}".format(port))
        yield Sshd(port, os.path.join(d, "client"), os.path.join(d, "known_hosts"),
                   os.path.join(d, "wrong_known_hosts"), d, proc.pid)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(d, ignore_errors=True)


class LoopFs(NamedTuple):
    image: str
    device: str
    mountpoint: Optional[str]     # None when left unmounted (FAT: no vfat module on the test host)
    fstype: str
    files: Dict[str, str]         # relative path -> sha256


def _write_files(root: str, seed: int, count: int = 24) -> Dict[str, str]:
    import random
    rng = random.Random(seed)
    files = {}
    os.makedirs(os.path.join(root, "dir", "sub"), exist_ok=True)
    for i in range(count):
        size = rng.choice([0, 1, 700, 4096, 5000, 65536, 300000, 1 << 20, 3 * MiB + 17])
        rel = os.path.join("dir" if i % 3 else "dir/sub", "file{:02d}.bin".format(i))
        data = bytes(rng.getrandbits(8) for _ in range(min(size, 4096))) * (size // 4096 + 1)
        data = data[:size]
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
        files[rel] = hashlib.sha256(data).hexdigest()
    return files


def sha_tree(root: str) -> Dict[str, str]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def write_random_file(fs: "LoopFs", where: str, mib: int, name: str = "random.bin") -> None:
    """Mount the (unmounted) loop filesystem at ``where``, write ``mib`` MiB of incompressible data into
    one file, unmount: a capture of it lasts a while under a --bandwidth limit."""
    os.makedirs(where, exist_ok=True)
    run("mount", fs.device, where)
    try:
        with open(os.path.join(where, name), "wb") as f:
            f.write(os.urandom(mib * MiB))
    finally:
        run("umount", where)


@contextlib.contextmanager
def loop_fs(fstype: str, size: int = 96 * MiB, seed: int = 1, mount: bool = True,
            partitioned: bool = False) -> Iterator[LoopFs]:
    """A filesystem on a loop device over a sparse file, with known files written (and synced)."""
    if fstype == "xfs":
        size = max(size, 320 * MiB)     # mkfs.xfs refuses filesystems under 300 MB
    d = tempfile.mkdtemp(prefix="v2v-loopfs-", dir="/var/tmp")
    image = os.path.join(d, "fs.img")
    mnt = os.path.join(d, "mnt")
    os.makedirs(mnt)
    device = None
    mounted = False
    try:
        with open(image, "wb") as f:
            f.truncate(size)
        files: Dict[str, str] = {}
        if fstype == "vfat":
            # no vfat kernel module here: mtools writes the files, the device is captured unmounted
            run("mkfs.vfat", "-F", "32", image)
            src = os.path.join(d, "src")
            files = _write_files(src, seed, 12)
            run("mcopy", "-s", "-i", image, os.path.join(src, "dir"), "::")
            device = run("losetup", "-f", "--show", image).stdout.decode().strip()
            mount = False
        else:
            device = run("losetup", "-f", "--show", image).stdout.decode().strip()
            mkfs = {"ext4": ["mkfs.ext4", "-q", "-F"], "xfs": ["mkfs.xfs", "-q", "-f"],
                    "ntfs": ["mkfs.ntfs", "-Q", "-F", "-q"]}[fstype]
            run(*(mkfs + [device]))
            if fstype == "ntfs":
                run("ntfs-3g", device, mnt)
            else:
                run("mount", device, mnt)
            mounted = True
            files = _write_files(mnt, seed)
            run("sync")
            if not mount:
                run("umount", mnt)
                mounted = False
        yield LoopFs(image, device, mnt if mounted else None, fstype, files)
    finally:
        if mounted or os.path.ismount(mnt):
            thaw(mnt)
            subprocess.run(["umount", mnt], timeout=60)
            if os.path.ismount(mnt):
                subprocess.run(["umount", "-l", mnt], timeout=60)
        if device:
            subprocess.run(["losetup", "-d", device], timeout=60)
        shutil.rmtree(d, ignore_errors=True)


def thaw(mnt: str) -> None:
    subprocess.run(["fsfreeze", "-u", mnt], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)


def writable(mnt: str) -> bool:
    """A write to the mount finishes within 10 s (it would block on a frozen filesystem)."""
    probe = os.path.join(mnt, "thaw-probe")
    cp = subprocess.run(["timeout", "10", "sh", "-c", 'echo ok > "$1" && sync "$1" && rm "$1"', "sh", probe],
                        timeout=30)
    return cp.returncode == 0


def v2v(*args: str, timeout: float = 300, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "v2v"] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=str(ROOT), timeout=timeout, env=env)


def json_events(cp: subprocess.CompletedProcess) -> List[dict]:
    return [json.loads(ln) for ln in cp.stdout.splitlines() if ln.startswith("{")]


def compare_used(source: str, captured: str, extents) -> int:
    """Compare every byte of ``extents`` between the source and the captured image; bytes compared."""
    n = 0
    with open(source, "rb") as a, open(captured, "rb") as b:
        for start, end in extents:
            pos = start
            while pos < end:
                k = min(end - pos, 4 * MiB)
                a.seek(pos)
                b.seek(pos)
                x, y = a.read(k), b.read(k)
                assert x == y, "captured image differs from the source in [{}, {})".format(pos, pos + k)
                n += k
                pos += k
    return n
