"""The synthetic Windows test guests (testvms/windows/guest.py) are what they claim: libguestfs inspects
them as Windows with the right version, hostname and drive letters; their BCD stores, hives and WinRE
are where Windows keeps them; the refusal variants carry the exact marks the converter refuses.

One read-only appliance for the whole module, over the three base images.
"""
import json
import os
import struct
import subprocess
import sys
import uuid

import pytest

from guest_fixups.windows.registry import Hive
from guest_fixups.windows.winre import parse_reagent
from testvms.windows import guest as wg

pytestmark = pytest.mark.integration

BASES = ["win2019-bios", "win11-uefi", "win2008r2-bios"]


@pytest.fixture(scope="module")
def images():
    return {v: str(wg.build(v, log=lambda s: None)) for v in BASES + sorted(wg.DERIVED)}


@pytest.fixture(scope="module")
def appliance(images):
    """One read-only libguestfs session over the base images: /dev/sda, sdb, sdc in BASES order."""
    guestfs = pytest.importorskip("guestfs")
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    g = guestfs.GuestFS(python_return_dict=True)
    if os.environ.get("V2V_ACCEL", "tcg") != "kvm":
        g.set_backend_settings(["force_tcg"])
    for v in BASES:
        g.add_drive_opts(images[v], format="raw", readonly=True)
    g.launch()
    roots = g.inspect_os()
    yield g, {g.part_to_dev(r): r for r in roots}
    g.close()


def _root(appliance, disk):
    g, roots = appliance
    assert disk in roots, "no operating system found on {} (roots: {})".format(disk, roots)
    return g, roots[disk]


@pytest.mark.parametrize("disk,product,major,minor,hostname", [
    ("/dev/sda", "Windows Server 2019 Standard", 10, 0, "WIN2019-SRV"),
    ("/dev/sdb", "Windows 10 Pro", 10, 0, "WIN11-DESK"),
    ("/dev/sdc", "Windows Server 2008 R2 Standard", 6, 1, "WIN2008R2-SRV"),
])
def test_guest_inspects_as_windows(appliance, disk, product, major, minor, hostname):
    g, root = _root(appliance, disk)
    assert g.inspect_get_type(root) == "windows"
    assert g.inspect_get_distro(root) == "windows"
    assert g.inspect_get_product_name(root) == product
    assert (g.inspect_get_major_version(root), g.inspect_get_minor_version(root)) == (major, minor)
    assert g.inspect_get_arch(root) == "x86_64"
    assert g.inspect_get_hostname(root) == hostname
    assert g.inspect_get_windows_systemroot(root) == "/Windows"
    assert g.inspect_get_windows_current_control_set(root) == "ControlSet001"


@pytest.mark.parametrize("disk", ["/dev/sda", "/dev/sdb", "/dev/sdc"])
def test_drive_c_maps_to_the_windows_partition(appliance, disk):
    """MountedDevices names C: by MBR signature + offset (BIOS) or by partition GUID (GPT)."""
    g, root = _root(appliance, disk)
    windows_part = {"/dev/sda": 2, "/dev/sdb": 3, "/dev/sdc": 2}[disk]
    assert g.inspect_get_drive_mappings(root).get("C") == "{}{}".format(disk, windows_part)
    assert root == "{}{}".format(disk, windows_part)


def test_mbr_layout_signature_and_active_system_reserved(appliance):
    g, _ = appliance
    assert g.pread_device("/dev/sda", 4, 0x1B8) == struct.pack("<I", 0x5EED2019)
    assert g.pread_device("/dev/sdc", 4, 0x1B8) == struct.pack("<I", 0x5EED2008)
    parts = g.part_list("/dev/sda")
    assert [p["part_start"] for p in parts] == [1 << 20, 51 << 20]
    assert g.part_get_bootable("/dev/sda", 1) and not g.part_get_bootable("/dev/sda", 2)
    assert g.part_get_mbr_id("/dev/sda", 1) == 0x07 and g.part_get_mbr_id("/dev/sda", 2) == 0x07
    assert g.vfs_type("/dev/sda1") == "ntfs" and g.vfs_label("/dev/sda1") == "System Reserved"


def test_gpt_layout_fixed_guids_fat32_esp_and_msr(appliance):
    g, _ = appliance
    spec = wg.VARIANTS["win11-uefi"]
    assert g.part_get_disk_guid("/dev/sdb").upper() == spec["disk_guid"]
    roles = [p[3] for p in spec["partitions"]]
    for num, role in enumerate(roles, 1):
        assert g.part_get_gpt_guid("/dev/sdb", num).upper() == spec["partition_guids"][role]
    assert g.part_get_gpt_type("/dev/sdb", 1).upper() == wg.ESP_TYPE
    assert g.part_get_gpt_type("/dev/sdb", 2).upper() == wg.MSR_TYPE
    assert g.part_get_gpt_type("/dev/sdb", 4).upper() == wg.RECOVERY_TYPE
    assert g.vfs_type("/dev/sdb1") == "vfat"
    assert g.pread_device("/dev/sdb1", 8, 82) == b"FAT32   "
    assert g.vfs_type("/dev/sdb2") == ""            # MSR: no filesystem
    assert g.vfs_type("/dev/sdb3") == "ntfs" and g.vfs_type("/dev/sdb4") == "ntfs"


@pytest.mark.parametrize("part,bcd", [("/dev/sda1", "/Boot/BCD"), ("/dev/sdb1", "/EFI/Microsoft/Boot/BCD"),
                                      ("/dev/sdc1", "/Boot/BCD")])
def test_bcd_store_on_the_system_partition_opens_with_hivex(appliance, tmp_path, part, bcd):
    g, _ = appliance
    g.mount_ro(part, "/")
    try:
        boot_file = "/bootmgr" if part != "/dev/sdb1" else "/EFI/Microsoft/Boot/bootmgfw.efi"
        assert g.is_file(boot_file)
        g.download(bcd, str(tmp_path / "BCD"))
    finally:
        g.umount("/")
    h = Hive(str(tmp_path / "BCD"))
    assert h.get("Description", "KeyName") == "BCD00000000"
    assert h.has_key("Objects\\{9dea862c-5cdd-4e70-acc1-f32b344d4795}\\Elements\\11000001")


def test_windows_partition_holds_what_the_fixups_read(appliance, tmp_path):
    g, _ = appliance
    g.mount_ro("/dev/sda2", "/")
    try:
        for f in ["/Windows/System32/config/" + h for h in ("SYSTEM", "SOFTWARE", "SAM", "SECURITY", "DEFAULT")] + [
                "/Windows/System32/cmd.exe", "/Windows/explorer.exe", "/Windows/System32/drivers/pvscsi.sys",
                "/Windows/System32/drivers/vmxnet3.sys", "/Windows/System32/drivers/vmci.sys",
                "/Windows/INF/oem3.inf", "/Program Files/VMware/VMware Tools/vmtoolsd.exe",
                "/pagefile.sys", "/Recovery/WindowsRE/boot.sdi"]:
            assert g.is_file(f), f
        assert g.pread("/hiberfil.sys", 4, 0) == b"\0\0\0\0"
        reagent = parse_reagent(g.read_file("/Windows/System32/Recovery/ReAgent.xml"))
        g.download("/Recovery/WindowsRE/Winre.wim", str(tmp_path / "winre.wim"))
    finally:
        g.umount("/")
    # ReAgent.xml names C: itself: the MBR signature and C:'s byte offset
    assert reagent is not None and reagent.directory == "\\Recovery\\WindowsRE"
    assert (reagent.disk_id, reagent.offset) == (0x5EED2019, 51 << 20)
    subprocess.run(["wimlib-imagex", "verify", str(tmp_path / "winre.wim")], check=True,
                   stdout=subprocess.DEVNULL)
    info = subprocess.run(["wimlib-imagex", "info", str(tmp_path / "winre.wim")], check=True,
                          stdout=subprocess.PIPE, text=True).stdout
    assert wg.WINRE_IMAGE_NAME in info and "Boot Index:     1" in info


def test_win11_winre_is_on_the_recovery_partition(appliance):
    g, _ = appliance
    g.mount_ro("/dev/sdb3", "/")
    try:
        reagent = parse_reagent(g.read_file("/Windows/System32/Recovery/ReAgent.xml"))
        assert not g.exists("/Recovery")
    finally:
        g.umount("/")
    spec = wg.VARIANTS["win11-uefi"]
    assert reagent.disk_guid == "{" + spec["disk_guid"].lower() + "}"
    assert reagent.offset == 283 << 20 == g.part_list("/dev/sdb")[3]["part_start"]
    g.mount_ro("/dev/sdb4", "/")
    try:
        assert g.is_file("/Recovery/WindowsRE/Winre.wim")
    finally:
        g.umount("/")


def test_system_hives_match_the_layout(appliance, tmp_path):
    """MountedDevices \\DosDevices\\C: = signature + offset (MBR) or DMIO:ID: + partition GUID (GPT);
    2008 R2 has a CriticalDeviceDatabase, 2019 a DriverDatabase."""
    g, _ = appliance
    hives = {}
    for part in ("/dev/sda2", "/dev/sdb3", "/dev/sdc2"):
        g.mount_ro(part, "/")
        try:
            local = str(tmp_path / part.replace("/", "_"))
            g.download("/Windows/System32/config/SYSTEM", local)
            hives[part] = Hive(local)
        finally:
            g.umount("/")
    c = "\\DosDevices\\C:"
    assert hives["/dev/sda2"].get("MountedDevices", c) == struct.pack("<IQ", 0x5EED2019, 51 << 20)
    guid = wg.VARIANTS["win11-uefi"]["partition_guids"]["windows"]
    assert hives["/dev/sdb3"].get("MountedDevices", c) == b"DMIO:ID:" + uuid.UUID(guid).bytes_le
    assert hives["/dev/sdc2"].has_key("ControlSet001\\Control\\CriticalDeviceDatabase")
    assert hives["/dev/sda2"].has_key("DriverDatabase")


def _read(path, offset, size):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def test_hibernated_variant_has_a_hibr_header(images):
    where = json.loads(wg.build("win2019-hibernated").with_suffix(".json").read_text())["hiberfil_offset"]
    assert _read(images["win2019-hibernated"], where, 4) == b"HIBR"
    assert _read(images["win2019-bios"], where, 4) == b"\0\0\0\0"
    assert _read(images["win2019-bios"], where + wg.HIBERFIL_MARKER_AT, len(wg.HIBERFIL_MARKER)) == \
        wg.HIBERFIL_MARKER


def test_bitlocker_variant_has_the_fve_oem_id():
    img = str(wg.build("win2019-bitlocker"))
    assert _read(img, (51 << 20) + 3, 8) == b"-FVE-FS-"
    assert _read(str(wg.build("win2019-bios")), (51 << 20) + 3, 8) == b"NTFS    "


def test_dynamic_variant_has_ldm_partition_types():
    img = str(wg.build("win2019-dynamic"))
    assert [_read(img, 0x1BE + 16 * i + 4, 1) for i in range(2)] == [b"\x42", b"\x42"]
    assert _read(img, 0x1B8, 4) == struct.pack("<I", 0x5EED2019)


def test_recipe_key_changes_with_the_helpers_it_uses():
    names = {p.name for p in wg.recipe_sources()}
    assert {"guest.py", "hives.py", "bcdstore.py", "emptyhive.py", "registry.py", "bcd_device.py"} <= names
    assert wg.image_key("win2019-hibernated") != wg.image_key("win2019-bios")


def test_cli_lists_windows_variants():
    out = subprocess.run([sys.executable, "-m", "testvms", "list"],
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
                         stdout=subprocess.PIPE, text=True, check=True).stdout
    for v in wg.ALL_VARIANTS:
        assert v in out
