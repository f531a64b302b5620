"""WinRE fixup: winre.wim gets the boot driver and the SYSTEM hive change, is verified before it replaces
the original, and a corrupt wim is refused in one line with the file untouched.

The host-side edit (edit_wim) runs on a winre.wim built in the test; one appliance over overlays of the
two cached guests covers fix_winre itself (WinRE on C: and on a separate recovery partition).
"""
import hashlib
import os
import subprocess

import pytest

from guest_fixups.windows.registry import Hive
from guest_fixups.windows.winre import SCRATCH_MOUNT, edit_wim, fix_winre, parse_reagent
from testvms.windows import guest as wg
from v2v.errors import FixupError

pytestmark = pytest.mark.integration

DRIVER_IN_IMAGE = "\\Windows\\System32\\drivers\\viostor.sys"


def _sha(path) -> str:
    return hashlib.sha256(open(str(path), "rb").read()).hexdigest()


def make_viostor_boot_start(hive: Hive):
    """What guest_fixups/windows/virtio.py does to a SYSTEM hive, reduced to the keys the test asserts."""
    key = hive.current_control_set() + "\\Services\\viostor"
    hive.set_dword(key, "Type", 1)
    hive.set_dword(key, "Start", 0)
    hive.set_expand_sz(key, "ImagePath", "system32\\drivers\\viostor.sys")
    return ["viostor: boot-start"]


@pytest.fixture
def winre(tmp_path):
    wim = tmp_path / "winre.wim"
    wg.build_winre_wim(str(wim), "2019", str(tmp_path))
    driver = tmp_path / "viostor.sys"
    driver.write_bytes(wg.pe_image(1) + b"viostor test driver")
    return wim, driver


def _extract(wim, paths, dest):
    subprocess.run(["wimlib-imagex", "extract", str(wim), "1"] + paths
                   + ["--dest-dir=" + str(dest), "--no-acls", "--preserve-dir-structure"],
                   check=True, stdout=subprocess.DEVNULL)
    return dest


def test_edit_adds_driver_and_registry_change(winre, tmp_path):
    wim, driver = winre
    lines = edit_wim(str(wim), make_viostor_boot_start, [(str(driver), DRIVER_IN_IMAGE)])
    assert lines[0] == "viostor: boot-start"
    assert "viostor.sys" in lines[-1] and "SYSTEM hive updated" in lines[-1]
    subprocess.run(["wimlib-imagex", "verify", str(wim)], check=True, stdout=subprocess.DEVNULL)
    out = _extract(wim, ["/Windows/System32/config/SYSTEM", "/Windows/System32/drivers/viostor.sys"],
                   tmp_path / "out")
    assert _sha(out / "Windows/System32/drivers/viostor.sys") == _sha(driver)
    hive = Hive(str(out / "Windows/System32/config/SYSTEM"))
    assert hive.values("ControlSet001\\Services\\viostor") == {
        "Type": 1, "Start": 0, "ImagePath": "system32\\drivers\\viostor.sys"}
    # what was there stays: the in-box drivers and the image's name and boot flag
    info = subprocess.run(["wimlib-imagex", "info", str(wim)], check=True, stdout=subprocess.PIPE,
                          text=True).stdout
    assert wg.WINRE_IMAGE_NAME in info and "Boot Index:     1" in info
    assert hive.get("ControlSet001\\Services\\disk", "Start") == 0


def test_truncated_wim_is_a_one_line_error_and_unchanged(winre):
    wim, driver = winre
    data = wim.read_bytes()
    wim.write_bytes(data[:len(data) // 2])
    before = _sha(wim)
    with pytest.raises(FixupError) as e:
        edit_wim(str(wim), make_viostor_boot_start, [(str(driver), DRIVER_IN_IMAGE)])
    assert "\n" not in str(e.value) and "winre.wim" in str(e.value)
    assert _sha(wim) == before
    assert sorted(os.listdir(str(wim.parent))) == sorted(["winre.wim", "viostor.sys"])


def test_failing_registry_edit_leaves_the_wim_unchanged(winre):
    wim, driver = winre
    before = _sha(wim)

    def broken(hive):
        raise FixupError("no control set")
    with pytest.raises(FixupError):
        edit_wim(str(wim), broken, [(str(driver), DRIVER_IN_IMAGE)])
    assert _sha(wim) == before


def test_missing_driver_file_is_refused_before_any_change(winre, tmp_path):
    wim, _ = winre
    before = _sha(wim)
    with pytest.raises(FixupError, match="does not exist"):
        edit_wim(str(wim), make_viostor_boot_start, [(str(tmp_path / "nope.sys"), DRIVER_IN_IMAGE)])
    assert _sha(wim) == before


def test_reagent_xml_as_windows_writes_it():
    xml = wg.reagent_xml("\\Recovery\\WindowsRE", 0x5EED2019, 51 << 20, None, "2.0", "17763.1.amd64fre")
    loc = parse_reagent(xml)
    assert (loc.directory, loc.disk_id, loc.offset) == ("\\Recovery\\WindowsRE", 0x5EED2019, 51 << 20)
    assert loc.wim_path == "/Recovery/WindowsRE/Winre.wim"
    assert loc.bcd_id == wg.WINRE_BCD_ID


def test_reagent_xml_disabled_names_no_location():
    disabled = (b'<?xml version="1.0" encoding="utf-8"?><WindowsRE version="2.0">'
                b'<WinreLocation path="" id="0" offset="0" guid="{00000000-0000-0000-0000-000000000000}"/>'
                b'</WindowsRE>')
    assert parse_reagent(disabled) is None
    with pytest.raises(FixupError, match="not valid XML"):
        parse_reagent(b"<WindowsRE")


# --- fix_winre in a guest: one appliance, writable overlays of the cached images ------------------------

@pytest.fixture(scope="module")
def guests(tmp_path_factory):
    from guest_fixups.appliance import Appliance
    from testvms import overlay
    d = tmp_path_factory.mktemp("winre-guests")
    drives = []
    for v in ("win2019-bios", "win11-uefi"):
        drives.append((overlay(str(wg.build(v, log=lambda s: None)), str(d / (v + ".qcow2"))), "qcow2"))
    app = Appliance(drives, accel=os.environ.get("V2V_ACCEL", "tcg"))
    app.launch()
    yield app, d
    app.close()


def _in_guest(app, windows_part):
    app.g.umount_all()
    app.g.mount(windows_part, "/")
    app.mounted = ["/"]


def test_fix_winre_on_the_windows_partition(guests):
    app, d = guests
    driver = d / "viostor.sys"
    driver.write_bytes(wg.pe_image(1) + b"viostor")
    _in_guest(app, "/dev/sda2")
    lines = fix_winre(app, make_viostor_boot_start, [(str(driver), DRIVER_IN_IMAGE)])
    assert lines[0] == "viostor: boot-start" and "SYSTEM hive updated" in lines[-1]
    assert not app.g.exists("/Recovery/WindowsRE/Winre.wim.v2v-new")
    app.g.download("/Recovery/WindowsRE/Winre.wim", str(d / "c.wim"))
    out = _extract(d / "c.wim", ["/Windows/System32/config/SYSTEM", "/Windows/System32/drivers/viostor.sys"],
                   d / "c")
    assert Hive(str(out / "Windows/System32/config/SYSTEM")).get("ControlSet001\\Services\\viostor",
                                                                 "Start") == 0


def test_fix_winre_on_a_separate_recovery_partition(guests):
    app, d = guests
    driver = d / "viostor.sys"
    driver.write_bytes(wg.pe_image(1) + b"viostor")
    _in_guest(app, "/dev/sdb3")
    lines = fix_winre(app, make_viostor_boot_start, [(str(driver), DRIVER_IN_IMAGE)])
    assert lines[-1].endswith("on the recovery partition /dev/sdb4")
    assert not app.g.exists(SCRATCH_MOUNT) and app.g.mountpoints() == {"/dev/sdb3": "/"}
    app.g.mount_ro("/dev/sdb4", "/Windows")        # any directory will do to read it back
    try:
        app.g.download("/Windows/Recovery/WindowsRE/Winre.wim", str(d / "r.wim"))
    finally:
        app.g.umount("/Windows")
    out = _extract(d / "r.wim", ["/Windows/System32/drivers/viostor.sys"], d / "r")
    assert (out / "Windows/System32/drivers/viostor.sys").read_bytes() == driver.read_bytes()


def test_corrupt_wim_in_guest_is_refused_and_left_alone(guests):
    app, d = guests
    _in_guest(app, "/dev/sda2")
    wim = "/Recovery/WindowsRE/Winre.wim"
    app.g.truncate_size(wim, 4096)
    before = app.g.checksum("sha256", wim)
    with pytest.raises(FixupError) as e:
        fix_winre(app, make_viostor_boot_start, [])
    assert "\n" not in str(e.value)
    assert app.g.checksum("sha256", wim) == before


def test_no_reagent_xml_means_no_winre(guests):
    app, _ = guests
    _in_guest(app, "/dev/sda2")
    app.g.rm("/Windows/System32/Recovery/ReAgent.xml")
    assert fix_winre(app, make_viostor_boot_start, []) == [
        "no WinRE (no \\Windows\\System32\\Recovery\\ReAgent.xml)"]


def test_winre_on_a_disk_not_converted_is_reported(guests):
    """ReAgent.xml pointing at another disk: one line saying so, nothing changed."""
    app, _ = guests
    _in_guest(app, "/dev/sdb3")
    xml = wg.reagent_xml("\\Recovery\\WindowsRE", 0, 283 << 20, "11111111-2222-4333-8444-555555555555",
                         "2.0", "22631.1.amd64fre")
    app.g.write("/Windows/System32/Recovery/ReAgent.xml", xml)
    lines = fix_winre(app, make_viostor_boot_start, [])
    assert len(lines) == 1 and lines[0].startswith("WinRE not updated") and "{11111111-2222" in lines[0]
