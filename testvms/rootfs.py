"""The debootstrap step: one minimal Debian tree per recipe key, kept as a gzip tarball in the cache.

The tree is generic (no fstab, hostname, bootloader or initramfs of its own): every disk-image variant
unpacks the same tarball and configures it. lvm2 is included so one tree serves the plain and LVM variants.
"""
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Optional

from . import cache

DEFAULT_MIRROR = "http://deb.debian.org/debian"

ROOTFS_PARAMS = {
    "suite": "bookworm",
    "arch": "amd64",
    "variant": "minbase",
    "include": sorted([
        "linux-image-amd64", "grub-pc", "systemd-sysv", "initramfs-tools", "udev", "kmod",
        "ifupdown", "isc-dhcp-client", "open-vm-tools", "lvm2",
        # what a small real install also has, and what the converter's boot proof runs (ip, findmnt, awk)
        "iproute2", "zstd", "procps",
        # a server has sshd, and the capture agent needs python3: a booted test guest can be a live source
        "openssh-server", "python3",
    ]),
    # Kernel module subtrees no test guest needs (hardware a VM never has); the rest is kept so the
    # converter sees a real Debian kernel (virtio and VMware drivers, dm, filesystems...).
    "prune_modules": sorted([
        "drivers/gpu", "drivers/media", "sound", "drivers/infiniband", "drivers/iio", "drivers/staging",
        "drivers/net/wireless", "drivers/bluetooth", "drivers/comedi", "drivers/isdn", "net/wireless",
        "net/mac80211", "net/bluetooth",
    ]),
    # Files a minimal image does not need (deleted after debootstrap; dpkg excludes them afterwards).
    "nodoc": True,
}

NODOC_DPKG_CFG = """\
# test guest: keep the image small
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
"""


def mirror() -> str:
    """The Debian mirror: $V2V_TESTVM_MIRROR, else the one this host's apt uses, else deb.debian.org.

    The mirror is transport, not recipe: it is not part of the cache key.
    """
    env = os.environ.get("V2V_TESTVM_MIRROR")
    if env:
        return env
    for path in ["/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"]:
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split()
            if words[:1] == ["URIs:"] and len(words) > 1 and words[1].rstrip("/").endswith("/debian"):
                return words[1].rstrip("/")
            if words[:1] == ["deb"] and len(words) > 2:
                uri = next((w for w in words[1:] if "://" in w), "")
                if uri.rstrip("/").endswith("/debian"):
                    return uri.rstrip("/")
    return DEFAULT_MIRROR


def rootfs_key() -> str:
    return cache.recipe_key(ROOTFS_PARAMS, [Path(__file__)])


def rootfs_tarball(cache_path: Optional[str] = None, *, force: bool = False,
                   log: Callable[[str], None] = print) -> Path:
    """Return the cached tarball of the debootstrapped tree, building it (once per key) if needed."""
    d = cache.cache_dir(cache_path)
    key = rootfs_key()
    meta = {"kind": "rootfs", "key": key, "params": ROOTFS_PARAMS}
    return cache.get_or_build(d, "rootfs-{}.tar.gz".format(key[:16]), meta,
                              lambda tmp: _build(tmp, d, log), force=force, log=log)


def _run(argv, **kw) -> None:
    subprocess.run(argv, check=True, **kw)


def _build(out: Path, cdir: Path, log: Callable[[str], None]) -> Dict:
    p = ROOTFS_PARAMS
    work = Path(tempfile.mkdtemp(prefix="v2v-rootfs-", dir=str(cdir)))
    root = work / "root"
    debs = cdir / "debs"
    debs.mkdir(exist_ok=True)
    t0 = time.monotonic()
    try:
        argv = ["nice", "-n", "10", "debootstrap", "--variant=" + p["variant"], "--arch=" + p["arch"],
                "--include=" + ",".join(p["include"]), "--cache-dir=" + str(debs),
                p["suite"], str(root), mirror()]
        log("debootstrap: " + " ".join(argv[3:]))
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C.UTF-8")
        with open(str(work / "debootstrap.log"), "w") as lf:
            r = subprocess.run(argv, stdout=lf, stderr=subprocess.STDOUT, env=env)
        if r.returncode != 0:
            tail = (work / "debootstrap.log").read_text(errors="replace").splitlines()[-30:]
            raise RuntimeError("debootstrap failed ({}):\n{}".format(r.returncode, "\n".join(tail)))
        t_boot = time.monotonic() - t0
        _trim(root, p)
        kernels = sorted(x.name for x in (root / "lib/modules").iterdir())
        log("rootfs: packing {} (kernel {})".format(out.name, ",".join(kernels)))
        # numeric owners, xattrs and ACLs kept; /dev, /proc, /sys, /run, /tmp left empty (mountpoints)
        _run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "--one-file-system",
              "-C", str(root), "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*",
              "--exclude=./run/*", "--exclude=./tmp/*", "-I", "gzip -1", "-cf", str(out), "."])
        used = int(subprocess.run(["du", "-sxm", str(root)], stdout=subprocess.PIPE, check=True,
                                  text=True).stdout.split()[0])
        return {"kernels": kernels, "tree_mib": used, "debootstrap_seconds": round(t_boot, 1),
                "seconds": round(time.monotonic() - t0, 1), "mirror": mirror()}
    finally:
        for m in ["proc", "sys", "dev/pts", "dev"]:   # debootstrap unmounts these itself unless it failed
            subprocess.run(["umount", "-l", str(root / m)], stderr=subprocess.DEVNULL)
        shutil.rmtree(str(work), ignore_errors=True)


def _trim(root: Path, p: Dict) -> None:
    """Make the tree small: apt caches, docs, unneeded kernel modules, the initrd debootstrap built."""
    for sub in ["var/cache/apt/archives", "var/lib/apt/lists"]:
        for f in (root / sub).glob("*"):
            if f.is_file():
                f.unlink()
    for f in (root / "var/cache/apt").glob("*.bin"):
        f.unlink()
    if p["nodoc"]:
        for sub in ["usr/share/doc", "usr/share/man", "usr/share/info"]:
            shutil.rmtree(str(root / sub), ignore_errors=True)
            (root / sub).mkdir()
        loc = root / "usr/share/locale"
        for f in loc.glob("*"):
            if f.name != "locale.alias":
                shutil.rmtree(str(f)) if f.is_dir() else f.unlink()
        (root / "etc/dpkg/dpkg.cfg.d/01-v2v-testguest-nodoc").write_text(NODOC_DPKG_CFG)
    for kdir in (root / "lib/modules").iterdir():
        for sub in p["prune_modules"]:
            shutil.rmtree(str(kdir / "kernel" / sub), ignore_errors=True)
        _run(["chroot", str(root), "depmod", "-a", kdir.name])
    # The initramfs is rebuilt inside the disk image (with the "foreign host" module list).
    for f in (root / "boot").glob("initrd.img-*"):
        f.unlink()
    for f in (root / "var/log").rglob("*"):
        if f.is_file():
            f.unlink()
    mid = root / "etc/machine-id"
    if mid.exists():
        mid.write_text("")         # generated on first boot, as on a fresh install
    dbus_mid = root / "var/lib/dbus/machine-id"
    if dbus_mid.is_file() and not dbus_mid.is_symlink():
        dbus_mid.unlink()
