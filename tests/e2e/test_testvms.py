"""The test-guest recipes: build (cached), inspect read-only, and prove the unconverted foreign guest
boots on IDE/SATA but not on virtio-blk (its initramfs has no virtio drivers, as on a VMware host)."""
import hashlib
import json
import os
import subprocess

import pytest

from testvms import build, debian
from testvms.boot import boot

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT = float(os.environ.get("V2V_TESTVM_BOOT_TIMEOUT", "420"))


def _fingerprint(path) -> str:
    st = os.stat(str(path))
    h = hashlib.sha256()
    with open(str(path), "rb") as f:
        for b in iter(lambda: f.read(1 << 22), b""):
            h.update(b)
    return "{}:{}:{}".format(st.st_size, st.st_mtime_ns, h.hexdigest())


def _inspect(image, tmp):
    """Read-only look inside the image (libguestfs overlay): files the tests check, the initrd's modules."""
    import guestfs
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    g = guestfs.GuestFS(python_return_dict=True)
    if debian.accel() == "tcg":
        g.set_backend_settings(["force_tcg"])
    g.add_drive_opts(str(image), format="raw", readonly=True)
    g.launch()
    try:
        roots = g.inspect_os()
        assert len(roots) == 1, roots
        root = roots[0]
        info = {"root": root, "distro": g.inspect_get_distro(root),
                "major": g.inspect_get_major_version(root),
                "mountpoints": g.inspect_get_mountpoints(root), "filesystems": g.list_filesystems(),
                "lvs": g.lvs(), "partitions": g.list_partitions(),
                "parttype": g.part_get_parttype("/dev/sda")}
        for mp, dev in sorted(info["mountpoints"].items(), key=lambda kv: len(kv[0])):
            g.mount_ro(dev, mp)
        files = ["/etc/fstab", "/etc/hostname", "/etc/network/interfaces", "/boot/grub/grub.cfg",
                 "/etc/udev/rules.d/70-persistent-net.rules", "/etc/initramfs-tools/initramfs.conf",
                 "/etc/default/grub", "/etc/systemd/system/v2v-testguest-ready.service", "/etc/shadow",
                 "/etc/initramfs-tools/modules"]
        info["files"] = {f: g.cat(f) for f in files}
        info["exists"] = {p: g.exists(p) for p in [
            "/etc/systemd/system/multi-user.target.wants/v2v-testguest-ready.service",
            "/usr/bin/vmtoolsd", "/sbin/lvm", "/usr/share/doc/bash",
            "/etc/initramfs-tools/conf.d/zz-v2v-testvm-build-host",
            "/usr/share/initramfs-tools/modules.d/zz-v2v-testvm-build-host"]}
        kernels = g.ls("/lib/modules")
        info["kernels"] = kernels
        initrd = os.path.join(str(tmp), "initrd.img")
        g.download("/boot/initrd.img-" + kernels[0], initrd)
        info["mbr"] = g.pread_device("/dev/sda", 512, 0)
    finally:
        g.close()
    out = subprocess.run(["lsinitramfs", initrd], stdout=subprocess.PIPE, text=True, check=True).stdout
    info["initrd_modules"] = {os.path.basename(p).split(".ko")[0].replace("-", "_")
                              for p in out.split() if ".ko" in p}
    return info


def _show(r) -> str:
    return "ok={} {}s matched={!r}\n{}".format(r.ok, r.seconds, r.matched, "\n".join(r.tail))


# --- the plain variant ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def foreign_image():
    img = build("debian12-foreign")
    fp = _fingerprint(img)
    yield img
    assert _fingerprint(img) == fp, "the cached image was modified by a test"


@pytest.fixture(scope="module")
def foreign_info(foreign_image, tmp_path_factory):
    return _inspect(foreign_image, tmp_path_factory.mktemp("inspect-foreign"))


def test_build_is_cached_by_recipe_hash(foreign_image):
    assert build("debian12-foreign") == foreign_image               # reused, not rebuilt
    assert foreign_image.name == "debian12-foreign-{}.img".format(debian.image_key("debian12-foreign")[:16])
    meta = json.loads(foreign_image.with_suffix(".json").read_text())
    assert meta["key"] == debian.image_key("debian12-foreign")
    assert meta["rootfs"].startswith("rootfs-") and (foreign_image.parent / meta["rootfs"]).exists()
    assert foreign_image.stat().st_size == 1536 * 1024 * 1024
    assert foreign_image.stat().st_blocks * 512 < 900 * 1024 * 1024   # sparse: a few hundred MiB used
    assert not os.access(str(foreign_image), os.W_OK) or os.geteuid() == 0
    assert foreign_image.stat().st_mode & 0o222 == 0                  # mode 0444


def test_foreign_guest_looks_like_a_vmware_export(foreign_info):
    i = foreign_info
    assert (i["distro"], i["major"], i["parttype"]) == ("debian", 12, "msdos")
    assert i["mountpoints"] == {"/": "/dev/sda1"}
    assert i["filesystems"]["/dev/sda2"] == "swap"
    f = i["files"]
    fstab = [ln.split() for ln in f["/etc/fstab"].splitlines() if ln.strip() and not ln.startswith("#")]
    assert ["/dev/sda1", "/", "ext4"] == fstab[0][:3]
    assert ["/dev/sda2", "none", "swap"] == fstab[1][:3]
    linux = [ln for ln in f["/boot/grub/grub.cfg"].splitlines() if ln.strip().startswith("linux")]
    assert linux and all("root=/dev/sda1 " in ln and "console=tty0 console=ttyS0,115200" in ln for ln in linux)
    assert "GRUB_DISABLE_LINUX_UUID=true" in f["/etc/default/grub"]
    assert b"GRUB" in i["mbr"] and i["mbr"][510:] == b"\x55\xaa"
    assert f["/etc/hostname"].strip() == "web1"
    assert "allow-hotplug ens192" in f["/etc/network/interfaces"]
    assert "iface ens192 inet dhcp" in f["/etc/network/interfaces"]
    assert 'NAME="eth0"' in f["/etc/udev/rules.d/70-persistent-net.rules"]
    assert "00:50:56:" in f["/etc/udev/rules.d/70-persistent-net.rules"]
    assert "V2V-TESTGUEST-READY" in f["/etc/systemd/system/v2v-testguest-ready.service"]
    root_hash = [ln for ln in f["/etc/shadow"].splitlines() if ln.startswith("root:")][0].split(":")[1]
    assert root_hash.startswith("$")                                  # a password is set ("v2v")
    e = i["exists"]
    assert e["/etc/systemd/system/multi-user.target.wants/v2v-testguest-ready.service"]
    assert e["/usr/bin/vmtoolsd"] and e["/sbin/lvm"]
    assert not e["/usr/share/doc/bash"]


def test_foreign_initramfs_is_from_a_vmware_host(foreign_info):
    f = foreign_info["files"]
    assert "\nMODULES=dep\n" in "\n" + f["/etc/initramfs-tools/initramfs.conf"]
    assert not foreign_info["exists"]["/etc/initramfs-tools/conf.d/zz-v2v-testvm-build-host"]
    assert not foreign_info["exists"]["/usr/share/initramfs-tools/modules.d/zz-v2v-testvm-build-host"]
    assert not [ln for ln in f["/etc/initramfs-tools/modules"].splitlines() if ln and not ln.startswith("#")]
    mods = foreign_info["initrd_modules"]
    assert {"ata_piix", "ahci", "sd_mod", "ext4", "vmw_pvscsi", "mptspi"} <= mods
    assert not {m for m in mods if m.startswith("virtio")}, mods


def test_foreign_guest_boots_on_ide(foreign_image, tmp_path):
    r = boot(str(foreign_image), "ide", timeout=BOOT_TIMEOUT, accel=debian.accel(),
             log_path=str(tmp_path / "console.log"))
    print("boot ide: {}s".format(r.seconds))
    assert r.ok, _show(r)
    assert "V2V-TESTGUEST-READY" in r.matched
    assert "root=/dev/sda1" in r.log


def test_foreign_guest_boots_on_sata(foreign_image, tmp_path):
    r = boot(str(foreign_image), "sata", timeout=BOOT_TIMEOUT, accel=debian.accel(),
             log_path=str(tmp_path / "console.log"))
    print("boot sata: {}s".format(r.seconds))
    assert r.ok, _show(r)


def test_foreign_guest_does_not_boot_on_virtio_blk(foreign_image, tmp_path):
    r = boot(str(foreign_image), "virtio", timeout=BOOT_TIMEOUT, accel=debian.accel(),
             log_path=str(tmp_path / "console.log"))
    print("boot virtio: failed as expected after {}s".format(r.seconds))
    assert not r.ok, _show(r)
    assert r.matched in ("Gave up waiting for root", r"ALERT! .* does not exist", r"\(initramfs\) ?$"), _show(r)
    assert "Gave up waiting for root" in r.log and "/dev/sda1 does not exist" in r.log, _show(r)


# --- the LVM variant -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lvm_image():
    img = build("debian12-foreign-lvm")
    fp = _fingerprint(img)
    yield img
    assert _fingerprint(img) == fp, "the cached image was modified by a test"


def test_lvm_guest_layout(lvm_image, tmp_path):
    i = _inspect(lvm_image, tmp_path)
    assert (i["distro"], i["major"], i["parttype"]) == ("debian", 12, "msdos")
    assert i["mountpoints"] == {"/": "/dev/vg0/root", "/boot": "/dev/sda1"}
    assert sorted(i["lvs"]) == ["/dev/vg0/root", "/dev/vg0/swap"]
    assert i["filesystems"]["/dev/vg0/swap"] == "swap"
    fstab = [ln.split()[:3] for ln in i["files"]["/etc/fstab"].splitlines() if ln.strip() and ln[0] != "#"]
    assert ["/dev/mapper/vg0-root", "/", "ext4"] in fstab
    assert ["/dev/sda1", "/boot", "ext4"] in fstab
    assert ["/dev/mapper/vg0-swap", "none", "swap"] in fstab
    linux = [ln for ln in i["files"]["/boot/grub/grub.cfg"].splitlines() if ln.strip().startswith("linux")]
    assert linux and all("root=/dev/mapper/vg0-root " in ln for ln in linux)
    mods = i["initrd_modules"]
    assert {"ata_piix", "ahci", "dm_mod", "ext4"} <= mods and not {m for m in mods if m.startswith("virtio")}


def test_lvm_guest_boots_on_ide(lvm_image, tmp_path):
    r = boot(str(lvm_image), "ide", timeout=BOOT_TIMEOUT, accel=debian.accel(),
             log_path=str(tmp_path / "console.log"))
    print("boot lvm ide: {}s".format(r.seconds))
    assert r.ok, _show(r)
    assert "root=/dev/mapper/vg0-root" in r.log


# --- the cache -----------------------------------------------------------------------------------------

def _slow_builder(counter):
    def b(tmp):
        import time
        with open(counter, "a") as f:
            f.write("built\n")
        time.sleep(1.0)
        tmp.write_bytes(b"artifact")
        return {"n": 1}
    return b


def _race(directory, counter):
    from pathlib import Path

    from testvms import cache
    return str(cache.get_or_build(Path(directory), "thing-0123.img", {"kind": "test"}, _slow_builder(counter)))


def test_cache_builds_once_under_concurrency(tmp_path):
    import multiprocessing

    from testvms import cache
    counter = str(tmp_path / "count")
    with multiprocessing.get_context("fork").Pool(3) as pool:
        paths = pool.starmap(_race, [(str(tmp_path), counter)] * 3)
    assert len(set(paths)) == 1 and open(counter).read() == "built\n"
    assert (tmp_path / "thing-0123.json").exists() and not list(tmp_path.glob(".tmp-*"))

    def failing(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        cache.get_or_build(tmp_path, "other-0123.img", {}, failing)
    assert not (tmp_path / "other-0123.img").exists() and not list(tmp_path.glob(".tmp-*"))
    assert cache.recipe_key({"a": 1}) != cache.recipe_key({"a": 2})
