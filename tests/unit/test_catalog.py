"""Driver selection from a virtio-win tree: layouts, the guest's own release first, older releases of its
edition next, never newer ones; highest DriverVer; files to copy; what is missing and why."""
import shutil
from pathlib import Path

import pytest

from hv_drivers.catalog import CatalogError, guest_os_token, scan
from hv_drivers.inf import SERVICE_BOOT_START, SERVICE_DEMAND_START, SERVICE_KERNEL_DRIVER

DATA = Path(__file__).resolve().parent.parent / "data" / "virtio-win"
ISO = DATA / "iso"
OLD = DATA / "old"
SCSI_CLASS = "{4D36E97B-E325-11CE-BFC1-08002BE10318}"


@pytest.fixture(scope="module")
def iso():
    return scan(ISO)


def rel(path: str) -> str:
    return Path(path).relative_to(ISO).as_posix()


def tokens(selection):
    return {d.name: d.os_token for d in selection.drivers}


def copy(tmp_path: Path, *dirs: str, to: str = "") -> Path:
    """A tree under tmp_path made of fixture directories (relative to iso/), optionally renamed."""
    for d in dirs:
        shutil.copytree(ISO / d, tmp_path / (to or d))
    return tmp_path


def test_scan_catalogues_the_driver_os_arch_layout(iso):
    assert iso.names() == ("balloon", "netkvm", "vioscsi", "vioserial", "viostor")
    assert iso.skipped == ()
    places = {(p.name, p.os_token, p.arch, p.own_dir) for p in iso.packages}
    assert ("viostor", "2k19", "amd64", True) in places
    assert ("viostor", "w7", "x86", True) in places
    assert ("vioserial", "w10", "amd64", True) in places  # vioser.inf under vioserial/
    assert ("viostor", "2k22", "amd64", False) in places  # the ISO's flat amd64/2k22 copy


def test_scan_reads_os_arch_and_arch_os_layouts_in_any_case():
    old = scan(OLD)
    assert {(p.name, p.os_token, p.arch, p.own_dir) for p in old.packages} == {
        ("viostor", "2k8r2", "amd64", False), ("netkvm", "2k8r2", "amd64", False),
        ("viostor", "w7", "x86", True)}


def test_older_directory_names_are_understood(tmp_path):
    copy(tmp_path, "viostor/w10/amd64", to="amd64/Win10")
    (pkg,) = scan(tmp_path).packages
    assert (pkg.os_token, pkg.arch) == ("w10", "amd64")


def test_windows_2008_r2_gets_the_2k8r2_viostor_with_dev_1001(iso):
    sel = iso.select(6, 1, "server", "x86_64", build=7601)
    viostor = sel.driver("viostor")
    assert (viostor.os_token, viostor.arch, viostor.exact) == ("2k8r2", "amd64", True)
    assert r"PCI\VEN_1AF4&DEV_1001&SUBSYS_00021AF4&REV_00" in viostor.hardware_ids
    assert r"PCI\VEN_1AF4&DEV_1001" in viostor.hardware_ids
    assert [rel(f) for f in viostor.files] == [
        "viostor/2k8r2/amd64/viostor.inf",
        "viostor/2k8r2/amd64/viostor.cat",
        "viostor/2k8r2/amd64/viostor.sys",
    ]
    assert sel.os_token == "2k8r2"


def test_windows_7_gets_w7_not_2k8r2(iso):
    assert iso.select(6, 1, "client", "x86_64").driver("viostor").os_token == "w7"


def test_windows_11_gets_w11(iso):
    sel = iso.select(10, 0, "client", "x86_64", build=22631)
    assert tokens(sel) == {"viostor": "w11", "vioscsi": "w11", "netkvm": "w11", "balloon": "w11",
                           "vioserial": "w10"}  # no w11 vioserial: the newest older client release
    assert sel.driver("viostor").exact and not sel.driver("vioserial").exact


def test_windows_10_never_gets_w11_drivers(iso):
    sel = iso.select(10, 0, "client", "x86_64", build=19045)
    assert set(tokens(sel).values()) == {"w10"}


def test_server_2019_gets_2k19_not_w10(iso):
    sel = iso.select(10, 0, "server", "x86_64", build=17763)
    assert set(tokens(sel).values()) == {"2k19"}
    assert sel.missing == ()


def test_server_between_releases_gets_the_older_release(iso):
    assert iso.select(10, 0, "server", "x86_64", build=18363).driver("viostor").os_token == "2k19"


def test_server_newer_than_every_token_gets_the_newest_older_server_token(iso):
    sel = iso.select(10, 0, "server", "x86_64", build=26100)
    assert sel.os_token == "2k25"
    assert tokens(sel) == {"viostor": "2k22", "vioscsi": "2k22", "netkvm": "2k22", "balloon": "2k22",
                           "vioserial": "2k19"}
    assert not any(d.exact for d in sel.drivers)


def test_client_newer_than_every_token_gets_w11(iso):
    assert iso.select(10, 0, "client", "x86_64", build=30000).driver("viostor").os_token == "w11"
    assert iso.select(11, 0, "client", "x86_64").driver("viostor").os_token == "w11"


def test_never_a_driver_for_a_newer_windows(iso):
    sel = iso.select(10, 0, "server", "x86_64", build=14393)
    assert sel.driver("viostor").os_token == "2k16"
    assert sel.driver("vioscsi") is None  # the tree has vioscsi for 2k19 and newer, and for clients
    (reason,) = [m.reason for m in sel.missing if m.name == "vioscsi"]
    assert "no amd64 build for Windows 10.0 build 14393 server (2k16) or an older server release" in reason
    assert "w10, 2k19, 2k22, w11" in reason


def test_highest_driverver_wins_among_packages_for_one_release(iso):
    viostor = iso.select(10, 0, "server", "x86_64", build=20348).driver("viostor")
    # 01/15/2024 beats the 08/10/2023 of viostor/2k22/amd64
    assert rel(viostor.inf_path) == "amd64/2k22/viostor.inf"
    assert str(viostor.driver_ver) == "01/15/2024,100.95.104.25100"


def test_shared_directory_copies_only_the_files_its_inf_names(iso):
    viostor = iso.select(10, 0, "server", "x86_64", build=20348).driver("viostor")
    assert [rel(f) for f in viostor.files] == ["amd64/2k22/viostor.inf", "amd64/2k22/viostor.cat",
                                               "amd64/2k22/viostor.sys"]


def test_equal_driverver_prefers_the_driver_own_directory(iso):
    netkvm = iso.select(10, 0, "server", "x86_64", build=20348).driver("netkvm")
    assert rel(netkvm.inf_path) == "NetKVM/2k22/amd64/netkvm.inf"


def test_own_directory_copies_every_file_but_debug_symbols(iso):
    balloon = iso.select(10, 0, "client", "x86_64", build=19045).driver("balloon")
    names = [Path(f).name for f in balloon.files]
    assert names == ["balloon.inf", "balloon.cat", "balloon.sys", "blnsvr.exe"]


def test_x86_guest_gets_x86_files(iso):
    sel = iso.select(10, 0, "client", "i386", build=19045)
    assert {d.name: rel(d.inf_path) for d in sel.drivers} == {
        "viostor": "viostor/w10/x86/viostor.inf", "netkvm": "NetKVM/w10/x86/netkvm.inf"}
    assert all(d.arch == "x86" for d in sel.drivers)
    assert {m.name: m.reason for m in sel.missing}["vioscsi"] == "no x86 build in the tree (only amd64)"


def test_x86_windows_7_from_an_old_tree_uses_undecorated_models():
    viostor = scan(OLD).select(6, 1, "client", "i386").driver("viostor")
    assert Path(viostor.inf_path).relative_to(OLD).as_posix() == "x86/w7/viostor.inf"
    assert viostor.inf.models[0].decoration.text == ""


def test_old_tree_shared_directory_keeps_drivers_apart():
    sel = scan(OLD).select(6, 1, "server", "x86_64", wanted=("viostor", "netkvm"))
    for name in ("viostor", "netkvm"):
        assert [Path(f).name for f in sel.driver(name).files] == [name + ".inf", name + ".cat", name + ".sys"]


def test_missing_drivers_are_reported_with_the_reason(iso):
    sel = iso.select(6, 1, "server", "x86_64", build=7601, wanted=("viostor", "vioserial", "viofs"))
    assert [d.name for d in sel.drivers] == ["viostor"]
    reasons = {m.name: m.reason for m in sel.missing}
    assert reasons["viofs"] == "not in the tree"
    assert reasons["vioserial"].startswith(
        "no amd64 build for Windows 6.1 build 7601 server (2k8r2) or an older server release "
        "(tree has w10, 2k19)")


def test_boot_drivers_carry_their_boot_start_service(iso):
    sel = iso.select(10, 0, "server", "x86_64", build=17763)
    for name in ("viostor", "vioscsi"):
        drv = sel.driver(name)
        assert drv.class_name == "SCSIAdapter" and drv.class_guid == SCSI_CLASS
        svc = drv.service
        assert svc.name == name
        assert (svc.service_type, svc.start_type, svc.error_control) == \
            (SERVICE_KERNEL_DRIVER, SERVICE_BOOT_START, 1)
        assert svc.load_order_group == "SCSI miniport"
        assert svc.binary_file == name + ".sys"
    assert sel.driver("netkvm").service.start_type == SERVICE_DEMAND_START
    assert sel.driver("vioserial").service.name == "VirtioSerial"


def test_vioscsi_has_dev_1004_and_1048(iso):
    ids = iso.select(10, 0, "client", "x86_64", build=19045).driver("vioscsi").hardware_ids
    assert r"PCI\VEN_1AF4&DEV_1004" in ids and r"PCI\VEN_1AF4&DEV_1048" in ids


def test_driver_lookup_accepts_the_inf_name(iso):
    sel = iso.select(10, 0, "client", "x86_64", build=19045, wanted=("vioser", "viostor", "VIOSTOR"))
    assert [d.name for d in sel.drivers] == ["vioserial", "viostor"]
    assert sel.driver("vioser") is sel.driver("vioserial")


@pytest.mark.parametrize("major,minor,edition,build,token", [
    (5, 1, "client", None, "xp"), (5, 2, "server", None, "2k3"), (5, 2, "client", None, "2k3"),
    (6, 0, "client", None, "vista"), (6, 0, "server", None, "2k8"),
    (6, 1, "client", 7601, "w7"), (6, 1, "server", 7601, "2k8r2"),
    (6, 2, "client", None, "w8"), (6, 2, "server", None, "2k12"),
    (6, 3, "client", None, "w8.1"), (6, 3, "server", 9600, "2k12r2"),
    (10, 0, "client", 19045, "w10"), (10, 0, "client", 21999, "w10"), (10, 0, "client", 22000, "w11"),
    (10, 0, "client", None, "w10"),
    (10, 0, "server", 14393, "2k16"), (10, 0, "server", 17763, "2k19"), (10, 0, "server", 20348, "2k22"),
    (10, 0, "server", 26100, "2k25"), (10, 0, "server", None, "2k16"), (10, 0, "server", 10586, None),
    (6, 4, "client", None, None),
])
def test_guest_os_token(major, minor, edition, build, token):
    assert guest_os_token(major, minor, edition, build) == token


def test_bad_arguments_are_value_errors(iso):
    with pytest.raises(ValueError, match="product type"):
        iso.select(10, 0, "workstation", "x86_64")
    with pytest.raises(ValueError, match="architecture"):
        iso.select(10, 0, "client", "sparc64")


# --- trees that are broken or not virtio-win ----------------------------------------------------------

def test_a_directory_that_is_not_a_virtio_win_tree_is_a_one_line_error(tmp_path):
    (tmp_path / "README.txt").write_text("not drivers\n")
    (tmp_path / "setup.inf").write_text("[Version]\nSignature=\"$Windows NT$\"\n")
    with pytest.raises(CatalogError, match="not a virtio-win driver tree") as err:
        scan(tmp_path)
    assert "\n" not in str(err.value)


def test_a_tree_of_broken_infs_names_the_first_problem(tmp_path):
    d = tmp_path / "viostor" / "w10" / "amd64"
    d.mkdir(parents=True)
    (d / "viostor.inf").write_text("[Version\n")
    message = r"first problem: viostor/w10/amd64/viostor\.inf: .*:1: unterminated section header"
    with pytest.raises(CatalogError, match=message):
        scan(tmp_path)


def test_a_missing_directory_is_an_error(tmp_path):
    with pytest.raises(CatalogError, match="not a directory"):
        scan(tmp_path / "nowhere")


def test_a_broken_inf_is_skipped_and_named_in_the_missing_reason(tmp_path):
    copy(tmp_path, "NetKVM/w10/amd64", "viostor/w10/amd64")
    inf = tmp_path / "viostor/w10/amd64/viostor.inf"
    inf.write_bytes(inf.read_bytes().replace(b'Provider=%VENDOR%', b'Provider="%VENDOR%'))
    cat = scan(tmp_path)
    (skipped,) = cat.skipped
    assert skipped.name == "viostor" and "unbalanced quotes" in skipped.reason
    sel = cat.select(10, 0, "client", "x86_64", build=19045, wanted=("viostor", "netkvm"))
    assert [d.name for d in sel.drivers] == ["netkvm"]
    (missing,) = sel.missing
    assert missing.reason == "not in the tree; viostor/w10/amd64/viostor.inf skipped: " \
                             "viostor/w10/amd64/viostor.inf:20: unbalanced quotes"


def test_an_inf_contradicting_its_directory_is_skipped(tmp_path):
    copy(tmp_path, "viostor/w11/amd64", to="viostor/w10/amd64")  # requires build 22000: not a w10 driver
    copy(tmp_path, "viostor/w10/x86", to="viostor/2k19/amd64")  # x86 models only
    copy(tmp_path, "viostor/2k8r2/amd64", to="viostor/w7/amd64")  # server-only product type
    copy(tmp_path, "NetKVM/w10/amd64")
    reasons = {Path(s.path).relative_to(tmp_path).as_posix(): s.reason for s in scan(tmp_path).skipped}
    assert reasons == {
        "viostor/w10/amd64/viostor.inf": "the INF's decorations (NTamd64.10.0...22000) exclude w10/amd64, "
                                         "the directory it is in",
        "viostor/2k19/amd64/viostor.inf": "the INF has no models for amd64 (its directory says 2k19/amd64)",
        "viostor/w7/amd64/viostor.inf": "the INF's decorations (NTamd64.6.1.3) exclude w7/amd64, "
                                        "the directory it is in",
    }


def test_a_package_missing_its_sys_file_is_passed_over_for_an_older_one(tmp_path):
    copy(tmp_path, "viostor/2k19/amd64", "viostor/2k16/amd64")
    (tmp_path / "viostor/2k19/amd64/viostor.sys").unlink()
    sel = scan(tmp_path).select(10, 0, "server", "x86_64", build=17763, wanted=("viostor",))
    assert sel.driver("viostor").os_token == "2k16"
    sel = scan(tmp_path).select(10, 0, "server", "x86_64", build=14393, wanted=("viostor",))
    assert sel.driver("viostor").os_token == "2k16"
    (tmp_path / "viostor/2k16/amd64/viostor.cat").unlink()
    (missing,) = scan(tmp_path).select(10, 0, "server", "x86_64", build=17763, wanted=("viostor",)).missing
    assert missing.reason == (
        "viostor/2k19/amd64/viostor.inf passed over: viostor.sys named by the INF not in its directory; "
        "viostor/2k16/amd64/viostor.inf passed over: viostor.cat named by the INF not in its directory")


def test_an_inf_whose_decorations_exclude_the_build_is_passed_over(iso):
    # The w10 INFs need build 16299; Windows 10 1511 (10586) gets the newest older client driver that fits.
    viostor = iso.select(10, 0, "client", "x86_64", build=10586).driver("viostor")
    assert (viostor.os_token, viostor.exact) == ("w7", False)


def test_an_inf_without_the_drivers_pci_ids_is_passed_over(tmp_path):
    copy(tmp_path, "NetKVM/w10/amd64", to="viostor/w10/amd64")
    (tmp_path / "viostor/w10/amd64/netkvm.inf").rename(tmp_path / "viostor/w10/amd64/viostor.inf")
    (missing,) = scan(tmp_path).select(10, 0, "client", "x86_64", build=19045, wanted=("viostor",)).missing
    assert missing.reason.endswith(r"passed over: no model for PCI\VEN_1AF4&DEV_1001 or DEV_1042")
