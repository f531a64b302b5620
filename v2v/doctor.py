"""Host capabilities, shared by `v2v doctor` and the pipeline (DESIGN section 3).

The KVM probe really runs a kernel under qemu with accel=kvm and a timeout: on some hosts /dev/kvm
exists, SeaBIOS even runs, and qemu then hangs or aborts on an MSR once the kernel starts.
"""
import glob
import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import List, Optional, Tuple

from . import cache_dir
from .events import Emitter

QEMU = "qemu-system-x86_64"
KVM_PROBE_TIMEOUT = 20.0
_CACHE_TTL = 24 * 3600
_PANIC = b"Kernel panic - not syncing"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class AccelChoice:
    accel: str             # kvm | tcg
    reason: str
    from_probe: bool


def _probe_kernel() -> Optional[str]:
    """A bootable kernel on the host: the one libguestfs' appliance would use."""
    cands = sorted(glob.glob("/boot/vmlinuz-*")) + sorted(glob.glob("/lib/modules/*/vmlinuz"))
    return cands[-1] if cands else None


def _cache_path() -> str:
    return os.path.join(cache_dir(), "accel.json")


def _probe_key(kernel: Optional[str]) -> str:
    parts = [os.uname().release]
    for p in (shutil.which(QEMU) or "", kernel or "", "/dev/kvm"):
        try:
            st = os.stat(p)
            parts.append("{}:{}:{}".format(p, st.st_mtime_ns, st.st_ctime_ns))
        except OSError:
            parts.append(p + ":-")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def probe_kvm(timeout: float = KVM_PROBE_TIMEOUT) -> Tuple[bool, str]:
    """Boot the host kernel with accel=kvm until its no-root panic. (usable, why)."""
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist (no hardware virtualisation, or the kvm module is not loaded)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not readable and writable by this user (add it to the kvm group)"
    if shutil.which(QEMU) is None:
        return False, QEMU + " is not installed"
    kernel = _probe_kernel()
    if kernel is None:
        return True, "/dev/kvm is usable (no kernel found to test it further)"
    argv = [QEMU, "-machine", "accel=kvm", "-cpu", "host", "-nodefaults", "-display", "none", "-no-reboot",
            "-m", "256", "-kernel", kernel, "-append", "panic=-1 console=ttyS0 quiet", "-serial", "stdio"]
    t0 = time.monotonic()
    try:
        cp = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, "qemu with accel=kvm did not boot a kernel within {:.0f}s (KVM hangs on this host)".format(
            timeout)
    if _PANIC in cp.stdout:
        return True, "a kernel booted with KVM in {:.1f}s".format(time.monotonic() - t0)
    err = cp.stderr.decode("utf-8", "replace").strip().splitlines()
    return False, "qemu with accel=kvm failed (exit {}): {}".format(cp.returncode, err[-1] if err else "no output")


def choose_accel(events: Optional[Emitter] = None, use_cache: bool = True) -> AccelChoice:
    """kvm when it really works, else tcg with one warning; V2V_ACCEL=kvm|tcg overrides the probe."""
    forced = os.environ.get("V2V_ACCEL", "").strip().lower()
    if forced in ("kvm", "tcg"):
        return AccelChoice(forced, "V2V_ACCEL={}".format(forced), False)
    key = _probe_key(_probe_kernel())
    path = _cache_path()
    cached = None
    if use_cache:
        try:
            with open(path) as f:
                data = json.load(f)
            if data.get("key") == key and time.time() - data.get("time", 0) < _CACHE_TTL:
                cached = (bool(data["usable"]), str(data["why"]))
        except (OSError, ValueError, KeyError):
            cached = None
    usable, why = cached if cached is not None else probe_kvm()
    if cached is None:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"key": key, "time": time.time(), "usable": usable, "why": why}, f)
            os.replace(tmp, path)
        except OSError:
            pass
    if usable:
        return AccelChoice("kvm", why, True)
    if events is not None:
        events.warning("KVM is not usable ({}); falling back to TCG software emulation, which is "
                       "much slower. Set V2V_ACCEL=tcg to skip this probe.".format(why))
    return AccelChoice("tcg", why, True)


def guestfs_env(accel: str) -> dict:
    """Environment for libguestfs under the chosen accelerator."""
    env = dict(os.environ)
    env.setdefault("LIBGUESTFS_BACKEND", "direct")
    if accel == "tcg":
        env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
    return env


def _check_libguestfs() -> Check:
    try:
        import guestfs  # noqa: F401 - only probing that the binding is importable
    except ImportError:
        return Check("libguestfs", False, "python3-guestfs is not importable",
                     "apt-get install python3-guestfs libguestfs-tools linux-image-amd64 "
                     "and use a venv made with --system-site-packages")
    kernel = _probe_kernel()
    if kernel is None:
        return Check("libguestfs", False, "no kernel in /boot for the libguestfs appliance",
                     "apt-get install linux-image-amd64")
    return Check("libguestfs", True, "python binding present, appliance kernel " + kernel)


def _check_libvirt(uri: str) -> Check:
    try:
        import libvirt
    except ImportError:
        return Check("libvirt", False, "python3-libvirt is not importable", "apt-get install python3-libvirt")
    from .virt import connect_quietly
    try:
        conn = connect_quietly(uri)
        ver = conn.getLibVersion()
        conn.close()
    except libvirt.libvirtError as e:
        return Check("libvirt", False, "cannot connect to {}: {}".format(uri, e),
                     "apt-get install libvirt-daemon-system and start libvirtd (systemctl start libvirtd)")
    return Check("libvirt", True, "{} reachable (libvirt {}.{}.{})".format(
        uri, ver // 1000000, ver // 1000 % 1000, ver % 1000))


def _check_tools() -> List[Check]:
    out = []
    for tool, pkg in (("qemu-img", "qemu-utils"), (QEMU, "qemu-system-x86"), ("osinfo-query", "libosinfo-bin")):
        path = shutil.which(tool)
        out.append(Check(tool, path is not None, path or "not found", "" if path else "apt-get install " + pkg))
    return out


def _check_space(path: str, need: int = 4 << 30) -> Check:
    try:
        st = os.statvfs(path)
    except OSError as e:
        return Check("free space", False, "{}: {}".format(path, e.strerror))
    free = st.f_bavail * st.f_frsize
    return Check("free space", free >= need, "{:.1f} GiB free in {}".format(free / 2**30, path),
                 "" if free >= need else "free space in {} or choose another --out/--storage".format(path))


def run_doctor(uri: str = "qemu:///system", tmpdir: str = "/var/tmp") -> List[Check]:
    """Every check, in the order a user fixes them."""
    checks = _check_tools()
    usable, why = probe_kvm()
    checks.append(Check("kvm", usable, why, "" if usable else
                        "conversions and boot checks will use TCG (slow); check BIOS virtualisation "
                        "settings and the kvm module"))
    checks.append(_check_libguestfs())
    checks.append(_check_libvirt(uri))
    checks.append(_check_space(tmpdir))
    return checks
