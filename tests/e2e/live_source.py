"""A booted source host for the live capture and standby tests: the foreign Debian 12 test guest running
under qemu, its sshd reached from this machine only through qemu user networking
(``hostfwd=tcp:127.0.0.1:PORT-:22``).

The guest is the "VMware host" being migrated: unconverted, so it boots on SATA (its initramfs has the
SATA/IDE drivers and no virtio) with an e1000 NIC. It runs on a qcow2 overlay of the cached image (the
cache is never written); before the boot, libguestfs writes into the overlay only what a test harness
needs: a root authorized_keys and a systemd .link file giving the NIC the name the guest's ifupdown
configuration expects (ens192, as on VMware; the guest then takes its address by DHCP as it would there).
The host keys are the image's own: known_hosts is written from them, so host key checking stays on.

Every wait is bounded in attempts and in seconds; qemu is always killed at the end.
"""
import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Iterator, List, NamedTuple, Optional, Tuple

QEMU = "qemu-system-x86_64"
SOURCE_MAC = "52:54:00:5e:0a:01"
LINK_FILE = "/etc/systemd/network/05-v2v-test-live-source.link"
LINK_TEXT = """# v2v tests: the booted test source's NIC gets the name its ifupdown configuration uses (as on VMware)
[Match]
MACAddress={mac}

[Link]
Name=ens192
""".format(mac=SOURCE_MAC)
SSHD_ATTEMPTS = 120          # ssh logins tried while the guest boots ...
SSHD_SECONDS = 420.0         # ... within this many seconds


class LiveSource(NamedTuple):
    host: str                 # always 127.0.0.1
    port: int                 # forwarded by qemu to the guest's port 22
    key: str                  # client private key (its public half is root's authorized_keys)
    known_hosts: str          # the guest's host keys for [127.0.0.1]:port
    dir: str                  # work directory (overlay, keys, console log)
    console: str              # the guest's serial console log
    pid: int                  # qemu
    boot_seconds: float       # qemu start to the first ssh login

    def target(self) -> List[str]:
        """The product's USER@HOST and ssh options for this source."""
        return ["root@{}".format(self.host), "--ssh-port", str(self.port), "--ssh-key", self.key,
                "--ssh-known-hosts", self.known_hosts]

    def ssh_argv(self, command: str, connect_timeout: int = 10) -> List[str]:
        return ["ssh", "-T", "-p", str(self.port), "-i", self.key, "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", "UserKnownHostsFile={}".format(self.known_hosts),
                "-o", "ConnectTimeout={}".format(connect_timeout), "-o", "LogLevel=ERROR",
                "-l", "root", "--", self.host, command]

    def ssh(self, command: str, timeout: float = 120, check: bool = True,
            input: Optional[bytes] = None) -> subprocess.CompletedProcess:
        """Run a shell command on the source; bytes out. AssertionError with stderr when it fails."""
        cp = subprocess.run(self.ssh_argv(command), input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            timeout=timeout)
        if check and cp.returncode != 0:
            raise AssertionError("on the source: {!r} exited {}: {}".format(
                command, cp.returncode, cp.stderr.decode(errors="replace")[-2000:]))
        return cp

    def console_tail(self, lines: int = 30) -> str:
        with open(self.console, "rb") as f:
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_overlay(image: str, directory: str, accel: str) -> str:
    """A qcow2 overlay of the cached image with root's authorized key and the NIC name written into it,
    plus known_hosts holding the guest's host keys (for a port filled in later); returns the overlay."""
    from diskfmt import image as qemu_img
    from guest_fixups.appliance import Appliance
    ov = os.path.join(directory, "source.qcow2")
    qemu_img.create_overlay(image, "raw", ov)
    key = os.path.join(directory, "client")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "v2v-test-live-source", "-f", key],
                   check=True, timeout=60)
    with open(key + ".pub") as f:
        pub = f.read()
    host_keys = []
    with Appliance([(ov, "qcow2")], accel=accel, memsize=512, smp=1) as app:
        app.launch()
        root = app.g.inspect_os()[0]
        app.mount_guest(sorted(app.g.inspect_get_mountpoints(root).items(), key=lambda kv: len(kv[0])))
        app.g.mkdir_p("/root/.ssh")
        app.g.chmod(0o700, "/root/.ssh")
        app.g.write("/root/.ssh/authorized_keys", pub.encode())
        app.g.chmod(0o600, "/root/.ssh/authorized_keys")
        app.g.chown(0, 0, "/root/.ssh/authorized_keys")
        app.g.write(LINK_FILE, LINK_TEXT.encode())
        for name in app.g.ls("/etc/ssh"):
            if name.startswith("ssh_host_") and name.endswith("_key.pub"):
                host_keys.append(" ".join(app.read_text("/etc/ssh/" + name).split()[:2]))
    if not host_keys:
        raise AssertionError("the test guest has no ssh host keys in /etc/ssh (openssh-server missing?)")
    with open(os.path.join(directory, "host_keys"), "w") as f:
        f.write("\n".join(host_keys) + "\n")
    return ov


def _kill(proc: "subprocess.Popen[bytes]") -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass


@contextlib.contextmanager
def booted_source(image: str, accel: str, memory_mib: int = 1024, vcpus: int = 2) -> Iterator[LiveSource]:
    """Boot the source (see the module docstring) and yield it once root can log in by ssh."""
    d = tempfile.mkdtemp(prefix="v2v-live-source-", dir="/var/tmp")
    proc = None
    try:
        ov = prepare_overlay(image, d, accel)
        port = free_port()
        known_hosts = os.path.join(d, "known_hosts")
        with open(os.path.join(d, "host_keys")) as src, open(known_hosts, "w") as f:
            for line in src.read().splitlines():
                f.write("[127.0.0.1]:{} {}\n".format(port, line))
        console = os.path.join(d, "console.log")
        argv = [QEMU, "-machine", "pc,accel={}".format(accel), "-cpu", "host" if accel == "kvm" else "max",
                "-m", str(memory_mib), "-smp", str(vcpus), "-nodefaults", "-display", "none", "-no-reboot",
                "-serial", "file:" + console,
                "-device", "ahci,id=ahci0",
                "-drive", "file={},format=qcow2,if=none,id=d0,cache=unsafe".format(ov),
                "-device", "ide-hd,drive=d0,bus=ahci0.0,bootindex=1",
                # user networking: the only way in is this forward on the loopback address
                "-netdev", "user,id=n0,hostfwd=tcp:127.0.0.1:{}-:22".format(port),
                "-device", "e1000,netdev=n0,mac={}".format(SOURCE_MAC)]
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=open(os.path.join(d, "qemu.err"), "wb"), start_new_session=True)
        src = LiveSource("127.0.0.1", port, os.path.join(d, "client"), known_hosts, d, console, proc.pid, 0.0)
        last, ok = "", False
        for _attempt in range(SSHD_ATTEMPTS):
            if proc.poll() is not None:
                with open(os.path.join(d, "qemu.err"), "rb") as f:
                    err = f.read().decode(errors="replace").strip()
                raise AssertionError("qemu exited {} while the source booted: {}\n{}".format(
                    proc.returncode, err[-1000:], src.console_tail()))
            left = SSHD_SECONDS - (time.monotonic() - t0)
            if left <= 0:
                break
            try:
                cp = subprocess.run(src.ssh_argv("true", connect_timeout=5), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, timeout=min(30.0, max(1.0, left)))
                if cp.returncode == 0:
                    ok = True
                    break
                last = cp.stderr.decode(errors="replace").strip()
            except subprocess.TimeoutExpired:
                last = "ssh timed out"
            time.sleep(3)
        if not ok:
            raise AssertionError("no ssh login to the source within {} attempts or {:.0f}s ({}); console:\n{}".format(
                SSHD_ATTEMPTS, SSHD_SECONDS, last, src.console_tail()))
        yield src._replace(boot_seconds=round(time.monotonic() - t0, 1))
    finally:
        if proc is not None:
            _kill(proc)
        shutil.rmtree(d, ignore_errors=True)


def quote(*words: str) -> str:
    return " ".join(shlex.quote(w) for w in words)


# Inside the source: files of 4-64 KiB, each followed by its checksum line in SUMS, written in two parts
# so that a freeze can fall inside a line. Bounded in files and (by `timeout`) in seconds; /run is tmpfs,
# so the stop and done flags are not part of the captured filesystem.
WRITER_DIR = "/var/lib/v2v-writer"
WRITER_SCRIPT = """d={dir}
mkdir -p $d
i=0
while [ $i -lt {count} ] && [ ! -e /run/v2v-writer.stop ]; do
    f=$(printf 'f%05d' $i)
    head -c $(( 4096 * (1 + i % 16) )) /dev/urandom > $d/$f
    sum=$(sha256sum < $d/$f | cut -d' ' -f1)
    printf '%s' "$sum" >> $d/SUMS
    printf '  %s\\n' "$f" >> $d/SUMS
    i=$((i+1))
    sleep 0.2
done
touch /run/v2v-writer.done
"""


def start_writer(src: LiveSource, count: int = 5000, seconds: int = 1800) -> None:
    src.ssh("cat > /run/v2v-writer.sh", input=WRITER_SCRIPT.format(dir=WRITER_DIR, count=count).encode())
    src.ssh("rm -f /run/v2v-writer.stop /run/v2v-writer.done; setsid nohup timeout {} sh /run/v2v-writer.sh "
            ">/run/v2v-writer.log 2>&1 </dev/null &".format(seconds))


def stop_writer(src: LiveSource, seconds: float = 60) -> None:
    """Ask the writer to stop and wait (bounded) until it did."""
    src.ssh("touch /run/v2v-writer.stop")
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds) + 1):
        if time.monotonic() > deadline:
            break
        if src.ssh("test -e /run/v2v-writer.done || ! pgrep -f '[v]2v-writer.sh' >/dev/null", check=False
                   ).returncode == 0:
            return
        time.sleep(1)
    raise AssertionError("the writer in the source did not stop within {:.0f}s".format(seconds))


def complete_lines(sums: bytes) -> List[Tuple[str, str]]:
    """(sha256, file name) of every complete checksum line, in order; a trailing partial line is left out."""
    out = []
    text = sums.decode()
    lines = text.split("\n")[:-1]          # the part after the last newline is not a complete line
    for ln in lines:
        sha, _, name = ln.partition("  ")
        assert len(sha) == 64 and name.startswith("f"), "malformed checksum line {!r}".format(ln)
        out.append((sha, name))
    return out
