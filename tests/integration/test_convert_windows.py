"""`v2v convert disk` on the synthetic Windows guests, through the real CLI, read back afterwards.

Windows cannot boot here, so every claim of the conversion is checked on the converted disk itself: one
read-only libguestfs session over the outputs downloads the hives, the BCD store and winre.wim, and the
assertions read them with hivex and wimlib. Each refusal and bad input proves that nothing was written.
"""
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from guest_fixups.windows import bcd
from guest_fixups.windows.registry import Hive
from testvms.windows import guest as wg
from tests.conftest import convert_json, sha256, v2v_cmd

pytestmark = pytest.mark.integration

TREE = str(Path(__file__).resolve().parent.parent / "data" / "virtio-win" / "iso")
CS = "ControlSet001"
DISK_CLASS = "{4D36E967-E325-11CE-BFC1-08002BE10318}"
SCSI_CLASS = "{4D36E97B-E325-11CE-BFC1-08002BE10318}"
NEW_SIGNATURE = 0x0C10DE01       # what a cloning tool wrote over the source's MBR signature


def _raw_copy(image: str, dest: Path) -> str:
    subprocess.run(["cp", "--sparse=always", image, str(dest)], check=True)
    return str(dest)


@pytest.fixture(scope="module")
def images():
    return {v: str(wg.build(v, log=lambda s: None)) for v in wg.ALL_VARIANTS}


@pytest.fixture(scope="module")
def virtio_iso(tmp_path_factory):
    """The synthetic virtio-win tree as an ISO 9660 image, as users pass it."""
    out = tmp_path_factory.mktemp("iso") / "virtio-win.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-r", "-J", "-V", "virtio-win", "-o", str(out), TREE],
                   check=True, timeout=120)
    return str(out)


LIBVIRT_NAME = "v2v-test-win11"


@pytest.fixture(scope="module")
def converted(images, virtio_iso, tmp_path_factory, libvirtd):
    """win2019 (BIOS, its MBR signature changed by a 'cloning tool') and win2008r2 (BIOS) converted once
    each with --to local --json; win11 (UEFI, virtio-scsi, drivers from the ISO) into the real libvirtd."""
    import libvirt
    base = tmp_path_factory.mktemp("win-converted")
    clone = _raw_copy(images["win2019-bios"], base / "win2019-clone.img")
    with open(clone, "r+b") as f:
        f.seek(0x1B8)
        f.write(struct.pack("<I", NEW_SIGNATURE))
    runs = {
        "win2019": (clone, ["--virtio-win", TREE]),
        "win11": (images["win11-uefi"], ["--virtio-win", virtio_iso, "--disk-bus", "scsi", "--to", "libvirt",
                                         "--connect", libvirtd, "--storage", str(base / "pool"),
                                         "--name", LIBVIRT_NAME]),
        "win2008r2": (images["win2008r2-bios"], ["--virtio-win", TREE]),
    }
    conn = libvirt.open(libvirtd)

    def undefine() -> None:
        try:
            conn.lookupByName(LIBVIRT_NAME).undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        except libvirt.libvirtError:
            pass
    undefine()
    out = {}
    try:
        for name, (src, extra) in runs.items():
            before = sha256(src)
            where = [] if "libvirt" in extra else ["--to", "local", "--out", str(base / name), "--name", name]
            cp, events, result = convert_json("convert", "disk", src, *where, *extra)
            assert cp.returncode == 0, cp.stderr
            xml = result["domain_xml"]
            if not xml:     # libvirt: what the daemon holds now
                xml = str(base / "win11-libvirt.xml")
                Path(xml).write_text(conn.lookupByName(LIBVIRT_NAME).XMLDesc(0))
            out[name] = {"src": src, "before": before, "events": events, "result": result,
                         "disk": result["disks"][0]["path"], "xml": xml}
        yield out
    finally:
        undefine()
        conn.close()


@pytest.fixture(scope="module")
def readback(converted, tmp_path_factory):
    """Hives, BCD stores and winre.wim of every converted disk, downloaded in one read-only appliance."""
    guestfs = pytest.importorskip("guestfs")
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    g = guestfs.GuestFS(python_return_dict=True)
    if os.environ.get("V2V_ACCEL", "tcg") != "kvm":
        g.set_backend_settings(["force_tcg"])
    names = list(converted)
    for name in names:
        g.add_drive_opts(converted[name]["disk"], format="qcow2", readonly=True)
    g.launch()
    files = {}
    layout = {  # guest: (device of C:, device of the BCD store, BCD path, device of winre.wim)
        "win2019": ("/dev/sda2", "/dev/sda1", "/Boot/BCD", "/dev/sda2"),
        "win11": ("/dev/sdb3", "/dev/sdb1", "/EFI/Microsoft/Boot/BCD", "/dev/sdb4"),
        "win2008r2": ("/dev/sdc2", "/dev/sdc1", "/Boot/BCD", "/dev/sdc2"),
    }
    try:
        for name in names:
            d = tmp_path_factory.mktemp("rb-" + name)
            c_dev, bcd_dev, bcd_path, re_dev = layout[name]
            listing = {}
            g.mount_ro(c_dev, "/")
            for hive in ("SYSTEM", "SOFTWARE"):
                g.download("/Windows/System32/config/" + hive, str(d / hive))
            for f in g.find("/Windows/Drivers/VirtIO"):
                listing["/Windows/Drivers/VirtIO/" + f.lstrip("/")] = g.is_file("/Windows/Drivers/VirtIO" + f)
            for f in g.ls("/Windows/System32/drivers"):
                listing["/Windows/System32/drivers/" + f] = True
            firstboot = "/Windows/v2v/firstboot"
            scripts = {f.lstrip("/"): g.read_file(firstboot + "/" + f) for f in g.find(firstboot)
                       if g.is_file(firstboot + "/" + f)} if g.is_dir(firstboot) else {}
            g.umount("/")
            g.mount_ro(bcd_dev, "/")
            g.download(bcd_path, str(d / "BCD"))
            g.umount("/")
            g.mount_ro(re_dev, "/")
            g.download("/Recovery/WindowsRE/Winre.wim", str(d / "winre.wim"))
            g.umount("/")
            dev = c_dev[:-1]
            files[name] = {"dir": d, "listing": listing, "scripts": scripts,
                           "locations": bcd.partition_locations(
                               lambda o, n, dev=dev: g.pread_device(dev, n, o), g.blockdev_getsize64(dev))}
    finally:
        g.close()
    return files


def _assert_refused(src: str, tmp_path: Path, *needles: str) -> str:
    """Convert src and assert: exit 1, one `v2v: error:` line naming every needle, no output, source as it was.
    Returns that line."""
    before = sha256(src)
    out = tmp_path / "out"
    cp = v2v_cmd("convert", "disk", src, "--to", "local", "--out", str(out), "--virtio-win", TREE)
    assert cp.returncode == 1, cp.stderr
    assert "Traceback" not in cp.stderr, cp.stderr
    errors = [ln for ln in cp.stderr.splitlines() if ln.startswith("v2v: error: ")]
    assert len(errors) == 1, cp.stderr
    for needle in needles:
        assert needle.lower() in errors[0].lower(), errors[0]
    assert not out.exists() or not list(out.iterdir())
    assert sha256(src) == before
    return errors[0]


def _hive(readback, name, which):
    return Hive(str(readback[name]["dir"] / which))


def _line(converted, name, fix):
    return [ln for ln in converted[name]["result"]["fixes"]["lines"] if ln["name"] == fix]


# --- the conversion itself -------------------------------------------------------------------------------

def test_sources_are_never_written(converted):
    for name, c in converted.items():
        assert sha256(c["src"]) == c["before"], name


def test_result_reports_every_windows_fixup(converted):
    for name in converted:
        fixes = {ln["name"] for ln in converted[name]["result"]["fixes"]["lines"]}
        assert {"virtio-drivers", "virtio-boot-driver", "ide-fallback", "conflicting-drivers", "firstboot",
                "winre", "bcd"} <= fixes, (name, fixes)
    assert converted["win2019"]["result"]["guest"]["type"] == "windows"
    assert (converted["win2008r2"]["result"]["guest"]["major"],
            converted["win2008r2"]["result"]["guest"]["minor"]) == (6, 1)


def test_boot_driver_is_boot_start_with_driver_database_on_2019(readback):
    system = _hive(readback, "win2019", "SYSTEM")
    assert system.values(CS + "\\Services\\viostor") == {
        "Type": 1, "Start": 0, "ErrorControl": 1, "Group": "SCSI miniport",
        "ImagePath": "system32\\drivers\\viostor.sys"}
    assert system.get("DriverDatabase\\DeviceIds\\PCI\\VEN_1AF4&DEV_1042", "viostor.inf") == b"\x01\xff\x00\x00"
    assert readback["win2019"]["listing"].get("/Windows/System32/drivers/viostor.sys")


def test_viostor_in_critical_device_database_on_2008r2(readback):
    system = _hive(readback, "win2008r2", "SYSTEM")
    assert system.get(CS + "\\Services\\viostor", "Start") == 0
    assert system.values(CS + "\\Control\\CriticalDeviceDatabase\\pci#ven_1af4&dev_1001") == {
        "Service": "viostor", "ClassGUID": SCSI_CLASS}
    assert not system.has_key("DriverDatabase")
    assert readback["win2008r2"]["listing"].get("/Windows/System32/drivers/viostor.sys")


def test_disk_bus_scsi_makes_vioscsi_the_boot_driver_on_win11(readback, converted):
    system = _hive(readback, "win11", "SYSTEM")
    assert system.get(CS + "\\Services\\vioscsi", "Start") == 0
    assert system.get("DriverDatabase\\DeviceIds\\PCI\\VEN_1AF4&DEV_1048", "vioscsi.inf") == b"\x01\xff\x00\x00"
    assert not system.has_key(CS + "\\Services\\viostor")
    assert readback["win11"]["listing"].get("/Windows/System32/drivers/vioscsi.sys")
    tree = ET_parse(converted["win11"]["xml"])
    assert [t.get("bus") for t in tree.findall("devices/disk/target")] == ["scsi"]
    assert tree.find("devices/controller[@type='scsi']").get("model") == "virtio-scsi"


def test_drivers_are_staged_for_pnputil(readback):
    # the synthetic tree, like old virtio-win releases, has only viostor and netkvm for 2008 R2
    expected = {"win2019": ("netkvm", "balloon", "vioser"), "win11": ("netkvm", "balloon", "vioser"),
                "win2008r2": ("netkvm",)}
    for name in readback:
        staged = {p.lower() for p, is_file in readback[name]["listing"].items() if is_file}
        for drv in expected[name]:
            assert any(p.startswith("/windows/drivers/virtio/") and p.endswith(drv + ".inf") for p in staged), \
                (name, drv, sorted(staged))


def test_device_path_names_the_virtio_directory(readback):
    software = _hive(readback, "win2019", "SOFTWARE")
    path = software.get("Microsoft\\Windows\\CurrentVersion", "DevicePath")
    assert path.split(";").count("%SystemRoot%\\Drivers\\VirtIO") == 1


def test_start_override_removed_and_ide_fallback_boot_start(readback):
    system = _hive(readback, "win2019", "SYSTEM")
    for svc in system.subkeys(CS + "\\Services"):
        assert not system.has_key(CS + "\\Services\\" + svc + "\\StartOverride"), svc
    for svc in ("storahci", "intelide", "atapi", "pciide"):
        if system.has_key(CS + "\\Services\\" + svc):
            assert system.get(CS + "\\Services\\" + svc, "Start") == 0, svc


def test_vmware_and_cdp_drivers_disabled_and_filters_exact(readback):
    for name in readback:
        system = _hive(readback, name, "SYSTEM")
        for svc in ("vmci", "vmxnet3", "pvscsi", "vmmouse", "vmhgfs", "CDPDisk", "CDPTuner"):
            if system.has_key(CS + "\\Services\\" + svc):
                assert system.get(CS + "\\Services\\" + svc, "Start") == 4, (name, svc)
        uppers = system.get(CS + "\\Control\\Class\\" + DISK_CLASS, "UpperFilters")
        assert uppers == ["partmgr"], (name, uppers)


def test_firstboot_runs_pnputil_via_runonce_without_a_service_runner(readback, converted):
    software = _hive(readback, "win2019", "SOFTWARE")
    runonce = software.get("Microsoft\\Windows\\CurrentVersion\\RunOnce", "v2v-firstboot")
    assert runonce and "firstboot.bat" in runonce
    scripts = readback["win2019"]["scripts"]
    assert "firstboot.bat" in scripts
    assert any(b"pnputil" in body.lower() for body in scripts.values())
    line = _line(converted, "win2019", "firstboot")[0]
    assert "pnputil" in line["message"] and "RunOnce" in line["message"]


def test_bcd_follows_the_changed_disk_signature(readback, converted):
    """The clone's MBR signature changed: every BCD device element now names the disk as it is."""
    store = _hive(readback, "win2019", "BCD")
    targets = list(readback["win2019"]["locations"].values())
    assert all(t.disk_signature == NEW_SIGNATURE for t in targets)
    named = [loc for obj in bcd.describe_bcd(store) for dev in obj.devices.values() for loc in dev.locations]
    assert named, "the store names no partition at all"
    assert all(loc.disk_signature == NEW_SIGNATURE for loc in named), named
    assert {loc.offset for loc in named} <= {t.offset for t in targets}
    assert _line(converted, "win2019", "bcd")[0]["status"] == "changed"
    system = _hive(readback, "win2019", "SYSTEM")
    c_drive = system.get("MountedDevices", "\\DosDevices\\C:")
    assert c_drive[:4] == struct.pack("<I", NEW_SIGNATURE) and struct.unpack("<Q", c_drive[4:12])[0] == 51 << 20


def test_bcd_unchanged_when_the_disk_is_as_it_was(converted):
    for name in ("win11", "win2008r2"):
        assert [ln["status"] for ln in _line(converted, name, "bcd")] == ["unchanged"], name


def test_winre_gets_the_boot_driver_and_stays_a_valid_wim(readback, converted, tmp_path):
    for name, drv in (("win2019", "viostor"), ("win11", "vioscsi"), ("win2008r2", "viostor")):
        wim = str(readback[name]["dir"] / "winre.wim")
        subprocess.run(["wimlib-imagex", "verify", wim], check=True, stdout=subprocess.DEVNULL)
        out = tmp_path / name
        out.mkdir()
        subprocess.run(["wimlib-imagex", "extract", wim, "1", "/Windows/System32/config/SYSTEM",
                        "/Windows/System32/drivers/{}.sys".format(drv), "--dest-dir", str(out),
                        "--no-acls"], check=True, stdout=subprocess.DEVNULL)
        assert (out / "{}.sys".format(drv)).exists(), name
        system = Hive(str(out / "SYSTEM"))
        assert system.get(CS + "\\Services\\" + drv, "Start") == 0, name
        assert _line(converted, name, "winre")[0]["status"] == "changed"


def ET_parse(path):
    from lxml import etree
    return etree.parse(path)


def test_domain_xml_for_windows(converted):
    xml = ET_parse(converted["win2019"]["xml"])
    assert xml.find("clock").get("offset") == "localtime"
    # Hyper-V enlightenments need KVM: a TCG domain (type qemu) goes without them
    assert (xml.find("features/hyperv") is not None) == (xml.getroot().get("type") == "kvm")
    assert [t.get("bus") for t in xml.findall("devices/disk/target")] == ["virtio"]
    assert xml.find("devices/interface/model").get("type") == "virtio"
    win11 = ET_parse(converted["win11"]["xml"])      # as the real libvirtd defined it
    assert win11.find("os/loader").get("secure") == "yes"
    assert win11.find("features/smm").get("state") == "on"
    assert win11.find("devices/tpm/backend").get("version") == "2.0"
    assert win11.find("os/type").get("machine").startswith("pc-q35")
    assert [s.get("file") for s in win11.findall("devices/disk/source")] == [converted["win11"]["disk"]]
    assert converted["win11"]["result"]["libvirt_uri"] == "qemu:///system"


# --- inspect, refusals and bad input ----------------------------------------------------------------------

def test_inspect_json_says_which_drivers_would_be_installed_and_writes_nothing(images):
    src = images["win2019-bios"]
    before = sha256(src)
    cp = v2v_cmd("inspect", src, "--virtio-win", TREE, "--json")
    assert cp.returncode == 0, cp.stderr
    report = [json.loads(ln) for ln in cp.stdout.splitlines() if ln.startswith("{")][-1]
    would = {w["name"]: w for w in report["changes"]}
    assert would["virtio-drivers"]["status"] == "would" and "viostor" in would["virtio-drivers"]["message"]
    assert "CDPDisk" in would["conflicting-drivers"]["message"]
    assert report["refusal"] == ""
    assert sha256(src) == before


@pytest.mark.parametrize("variant,words", [
    ("win2019-hibernated", "hibernat"),
    ("win2019-bitlocker", "BitLocker"),
    ("win2019-dynamic", "dynamic disk"),
])
def test_refused_guests_leave_nothing_behind(images, tmp_path, variant, words):
    _assert_refused(images[variant], tmp_path, words)


def test_no_virtio_win_is_refused_and_allow_no_virtio_gives_sata(images, tmp_path):
    src = images["win2019-bios"]
    cp = v2v_cmd("convert", "disk", src, "--to", "local", "--out", str(tmp_path / "a"))
    assert cp.returncode == 1 and "--virtio-win" in cp.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "a").exists() or not list((tmp_path / "a").iterdir())
    cp, _events, result = convert_json("inspect", src, "--allow-no-virtio")
    report = json.loads(cp.stdout.strip().splitlines()[-1])
    assert cp.returncode == 0 and report["plan"]["disk_bus"] == "sata"
    assert report["plan"]["network"]["model"] == "e1000e"


def _edit_ntfs(image: str, part: int, edit) -> None:
    """Mount partition `part` of a raw image copy with ntfs-3g on a loop device and let edit(root) change it."""
    table = json.loads(subprocess.run(["sfdisk", "--json", image], check=True, stdout=subprocess.PIPE,
                                      text=True).stdout)["partitiontable"]
    p = table["partitions"][part - 1]
    loop = subprocess.run(["losetup", "--show", "-f", "-o", str(p["start"] * 512), "--sizelimit",
                           str(p["size"] * 512), image], check=True, stdout=subprocess.PIPE,
                          text=True).stdout.strip()
    mnt = Path(image + ".mnt")
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "ntfs-3g", loop, str(mnt)], check=True)
        try:
            edit(mnt)
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)
        mnt.rmdir()


needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("losetup"), reason="needs root and loop")


@needs_root
def test_corrupt_system_hive_is_one_line_error_and_nothing_written(images, tmp_path):
    src = _raw_copy(images["win2019-bios"], tmp_path / "corrupt.img")

    def corrupt(root: Path) -> None:
        hive = root / "Windows" / "System32" / "config" / "SYSTEM"
        data = bytearray(hive.read_bytes())
        data[4096:8192] = b"\xde\xad" * 2048      # the first hbin: hivex can no longer walk the tree
        hive.write_bytes(bytes(data))
    _edit_ntfs(src, 2, corrupt)
    _assert_refused(src, tmp_path, "SYSTEM")


@needs_root
def test_bcd_without_an_os_entry_is_one_line_error(images, tmp_path):
    src = _raw_copy(images["win2019-bios"], tmp_path / "nobcd.img")

    def drop_loaders(root: Path) -> None:
        store = Hive(str(root / "Boot" / "BCD"), write=True)
        for guid in store.subkeys("Objects"):
            if store.get("Objects\\{}\\Description".format(guid), "Type") == 0x10200003:
                store.delete_key("Objects\\" + guid)
        store.commit()
    _edit_ntfs(src, 1, drop_loaders)
    _assert_refused(src, tmp_path, "BCD", "no Windows Boot Loader")


def test_broken_inf_and_non_iso_virtio_win_are_one_line_errors(images, tmp_path):
    src = images["win2019-bios"]
    tree = tmp_path / "virtio-win"
    shutil.copytree(TREE, str(tree))
    infs = sorted(tree.glob("viostor/2k19/amd64/*.inf"))
    assert infs
    infs[0].write_text('[Version\nSignature="$Windows NT$\n')
    cp = v2v_cmd("inspect", src, "--virtio-win", str(tree))
    # a broken INF is reported by name; the guest may still get drivers from other INF files
    assert "viostor" in (cp.stdout + cp.stderr) and "Traceback" not in cp.stderr, cp.stderr
    notiso = tmp_path / "virtio-win.iso"
    notiso.write_bytes(b"this is not an ISO image\n" * 1000)
    cp = v2v_cmd("convert", "disk", src, "--to", "local", "--out", str(tmp_path / "o"), "--virtio-win",
                 str(notiso))
    assert cp.returncode == 1 and cp.stderr.strip().splitlines()[-1].startswith("v2v: error: "), cp.stderr
    assert "Traceback" not in cp.stderr
