"""The Windows registry fixups on real hive files: build SYSTEM/SOFTWARE with testvms/windows/hives.py,
run a fixup, commit, re-open with hivex and read back every key and value the fixup says it wrote."""
import gc
import os
from pathlib import Path
from typing import Tuple

import pytest

from guest_fixups.windows import conflicts, firstboot, mergeide, virtio
from guest_fixups.windows.registry import REG_EXPAND_SZ, REG_MULTI_SZ, REG_SZ, Hive
from hv_drivers.catalog import Selection, scan
from testvms.windows import hives
from v2v.errors import FixupError, InspectionError

pytestmark = pytest.mark.integration

TREE = Path(__file__).resolve().parent.parent / "data" / "virtio-win" / "iso"
CS = "ControlSet001"
SCSI_CLASS = "{4D36E97B-E325-11CE-BFC1-08002BE10318}"
OS_OF = {"2019": (10, 0, "server", 17763), "2008r2": (6, 1, "server", 7601), "11": (10, 0, "client", 22631)}


def build(tmp_path: Path, version: str, **system_args) -> Tuple[str, str]:
    system = hives.build_system_hive(str(tmp_path / "SYSTEM"), version, **system_args)
    software = hives.build_software_hive(str(tmp_path / "SOFTWARE"), version)
    return system, software


def selection(version: str) -> Selection:
    major, minor, edition, build_no = OS_OF[version]
    return scan(TREE).select(major, minor, edition, "x86_64", build=build_no)


def install(tmp_path: Path, version: str, bus: str = "virtio") -> Tuple[Hive, Hive, list]:
    system_path, software_path = build(tmp_path, version)
    system, software = Hive(system_path, write=True), Hive(software_path, write=True)
    major, minor = OS_OF[version][:2]
    lines = virtio.install_virtio_drivers(system, software, selection(version), bus, major, minor)
    system.commit()
    software.commit()
    return Hive(system_path), Hive(software_path), lines


def value_type(hive: Hive, key: str, name: str) -> int:
    return {k.lower(): t for k, (t, _) in hive.raw_values(key).items()}[name.lower()]


# --- virtio drivers --------------------------------------------------------------------------------------

def test_viostor_is_boot_start_with_its_service_values(tmp_path):
    system, _, lines = install(tmp_path, "2019")
    svc = CS + "\\Services\\viostor"
    assert system.values(svc) == {"Type": 1, "Start": 0, "ErrorControl": 1, "Group": "SCSI miniport",
                                  "ImagePath": "system32\\drivers\\viostor.sys"}
    assert value_type(system, svc, "ImagePath") == REG_EXPAND_SZ
    assert value_type(system, svc, "Group") == REG_SZ
    assert lines[0].startswith("viostor: boot-start service")


def test_windows_2019_gets_driver_database_entries_for_every_viostor_pci_id(tmp_path):
    system, _, lines = install(tmp_path, "2019")
    ids = ["VEN_1AF4&DEV_1001&SUBSYS_00021AF4&REV_00", "VEN_1AF4&DEV_1042&SUBSYS_11001AF4&REV_01",
           "VEN_1AF4&DEV_1001", "VEN_1AF4&DEV_1042", "VEN_1AF4&DEV_1001&REV_00", "VEN_1AF4&DEV_1042&REV_01"]
    label = "viostor.inf_amd64_0000000000000000"
    config = virtio.driver_configuration(selection("2019").driver("viostor"))
    for pci in ids:
        raw = system.raw_values("DriverDatabase\\DeviceIds\\PCI\\" + pci)
        assert raw["viostor.inf"] == (3, b"\x01\xff\x00\x00")
        desc = "DriverDatabase\\DriverPackages\\{}\\Descriptors\\PCI\\{}".format(label, pci)
        assert system.values(desc) == {"Configuration": config}
    inf_files = system.values("DriverDatabase\\DriverInfFiles\\viostor.inf")
    assert inf_files == {"": [label], "Active": label, "Configurations": [config]}
    assert value_type(system, "DriverDatabase\\DriverInfFiles\\viostor.inf", "") == REG_MULTI_SZ
    package = "DriverDatabase\\DriverPackages\\" + label
    version = system.get(package, "Version")
    assert version[:8] == b"\x00\xff\x09\x00\x00\x00\x00\x00" and len(version) == 48
    assert version[8:24] == bytes.fromhex("7be9364d25e3ce11bfc108002be10318")  # {4D36E97B-...} little-endian
    assert system.get(package, "InfName") == "viostor.inf"
    assert system.values(package + "\\Configurations\\" + config) == {"ConfigFlags": 0, "Service": "viostor"}
    # the VMware-era entries of the package database are left alone
    assert system.get("DriverDatabase\\DeviceIds\\PCI\\VEN_15AD&DEV_07C0", "oem3.inf") == b"\x01\xff\x00\x00"
    assert not system.has_key(CS + "\\Control\\CriticalDeviceDatabase")
    assert any("6 PCI ids in DriverDatabase" in line for line in lines)


def test_windows_2008r2_gets_critical_device_database_entries(tmp_path):
    system, _, lines = install(tmp_path, "2008r2")
    cdd = CS + "\\Control\\CriticalDeviceDatabase\\"
    for key in ("pci#ven_1af4&dev_1001&subsys_00021af4&rev_00",
                "pci#ven_1af4&dev_1042&subsys_11001af4&rev_01",
                "pci#ven_1af4&dev_1001", "pci#ven_1af4&dev_1042", "pci#ven_1af4&dev_1001&rev_00"):
        assert system.values(cdd + key) == {"Service": "viostor", "ClassGUID": SCSI_CLASS}
    names = system.subkeys(CS + "\\Control\\CriticalDeviceDatabase")
    assert "pci#ven_1af4&dev_1001&subsys_00021af4&rev_00" in names  # lower case, as Windows writes them
    assert not system.has_key("DriverDatabase")
    assert system.get(CS + "\\Services\\viostor", "Start") == 0
    assert any("CriticalDeviceDatabase" in line for line in lines)


def test_scsi_bus_makes_vioscsi_the_boot_driver_and_viostor_only_staged(tmp_path):
    system, _, lines = install(tmp_path, "2019", bus="scsi")
    assert system.values(CS + "\\Services\\vioscsi")["Start"] == 0
    assert system.get(CS + "\\Services\\vioscsi", "ImagePath") == "system32\\drivers\\vioscsi.sys"
    assert not system.has_key(CS + "\\Services\\viostor")
    for pci in ("VEN_1AF4&DEV_1004&SUBSYS_00081AF4&REV_00", "VEN_1AF4&DEV_1048"):
        assert system.get("DriverDatabase\\DeviceIds\\PCI\\" + pci, "vioscsi.inf") == b"\x01\xff\x00\x00"
    assert "viostor: staged in %SystemRoot%\\Drivers\\VirtIO for pnputil at first boot" in lines


def test_non_boot_drivers_are_staged_not_made_boot_start(tmp_path):
    system, _, lines = install(tmp_path, "2019")
    for name in ("netkvm", "balloon", "vioserial", "vioscsi", "VirtioSerial", "BALLOON"):
        assert not system.has_key(CS + "\\Services\\" + name)
    staged = [line.split(":")[0] for line in lines if "staged in" in line]
    assert staged == ["vioscsi", "netkvm", "balloon", "vioserial"]


def test_device_path_is_extended_once_even_when_run_twice(tmp_path):
    _, software, lines = install(tmp_path, "2019")
    key = "Microsoft\\Windows\\CurrentVersion"
    assert software.get(key, "DevicePath") == "%SystemRoot%\\inf;%SystemRoot%\\Drivers\\VirtIO"
    assert value_type(software, key, "DevicePath") == REG_EXPAND_SZ
    assert "DevicePath: added %SystemRoot%\\Drivers\\VirtIO" in lines
    again = Hive(software.path, write=True)
    assert virtio.extend_device_path(again) == ["DevicePath already lists %SystemRoot%\\Drivers\\VirtIO"]
    again.commit()
    assert Hive(software.path).get(key, "DevicePath") == "%SystemRoot%\\inf;%SystemRoot%\\Drivers\\VirtIO"


def test_whole_installation_run_twice_gives_the_same_registry(tmp_path):
    system, software, _ = install(tmp_path, "2019")
    first = (system.values(CS + "\\Services\\viostor"), system.subkeys("DriverDatabase\\DeviceIds\\PCI"),
             software.get("Microsoft\\Windows\\CurrentVersion", "DevicePath"))
    s, w = Hive(system.path, write=True), Hive(software.path, write=True)
    virtio.install_virtio_drivers(s, w, selection("2019"), "virtio", 10, 0)
    s.commit()
    w.commit()
    s, w = Hive(system.path), Hive(software.path)
    assert (s.values(CS + "\\Services\\viostor"), s.subkeys("DriverDatabase\\DeviceIds\\PCI"),
            w.get("Microsoft\\Windows\\CurrentVersion", "DevicePath")) == first


def test_driver_files_go_flat_into_drivers_virtio_and_the_boot_sys_into_system32(tmp_path):
    sel = selection("2019")
    copies = virtio.driver_file_copies(sel, virtio.boot_driver(sel, "virtio"))
    guests = [c.guest for c in copies]
    assert guests[:3] == ["Drivers\\VirtIO\\viostor.inf", "Drivers\\VirtIO\\viostor.cat",
                          "Drivers\\VirtIO\\viostor.sys"]
    assert "Drivers\\VirtIO\\netkvm.inf" in guests and "Drivers\\VirtIO\\blnsvr.exe" in guests
    assert copies[-1].guest == "System32\\drivers\\viostor.sys"
    assert copies[-1].host.endswith(os.path.join("viostor", "2k19", "amd64", "viostor.sys"))
    assert all(os.path.isfile(c.host) for c in copies)
    assert len(set(g.lower() for g in guests[:-1])) == len(guests) - 1


def test_a_missing_boot_driver_is_a_fixup_error():
    sel = scan(TREE).select(6, 1, "server", "x86_64", build=7601)  # the tree has no 2008 R2 vioscsi
    with pytest.raises(FixupError, match="no vioscsi driver for this guest"):
        virtio.boot_driver(sel, "scsi")
    with pytest.raises(FixupError, match="no virtio boot driver for disk bus 'ide'"):
        virtio.boot_driver(sel, "ide")


# --- StartOverride and the IDE/AHCI fallback -------------------------------------------------------------

def test_start_override_keys_are_removed_from_storage_services(tmp_path):
    system_path, _ = build(tmp_path, "2019")
    h = Hive(system_path, write=True)
    h.set_dword(CS + "\\Services\\vioscsi\\StartOverride", "0", 3)
    lines = mergeide.remove_storage_start_overrides(h)
    h.commit()
    h = Hive(system_path)
    for name in ("storahci", "stornvme", "vioscsi"):
        assert not h.has_key(CS + "\\Services\\{}\\StartOverride".format(name))
        assert h.has_key(CS + "\\Services\\" + name)
    assert lines == ["storahci: StartOverride removed (0=3)", "stornvme: StartOverride removed (0=3)",
                     "vioscsi: StartOverride removed (0=3)"]


def test_fallback_storage_drivers_become_boot_start_on_2019(tmp_path):
    system_path, _ = build(tmp_path, "2019")
    h = Hive(system_path, write=True)
    lines = mergeide.enable_ide_fallback(h, 10, 0)
    h.commit()
    h = Hive(system_path)
    for name in ("storahci", "intelide", "atapi", "pciide"):
        assert h.get(CS + "\\Services\\" + name, "Start") == 0, name
    assert not h.has_key(CS + "\\Services\\msahci")  # not on 2019: never created
    assert not h.has_key(CS + "\\Services\\storahci\\StartOverride")
    assert not h.has_key(CS + "\\Control\\CriticalDeviceDatabase")  # Windows 8+ ignores it
    assert h.get("ControlSet002\\Services\\storahci", "Start") == 3  # only the current control set changes
    assert "storahci: boot-start (Start 3 -> 0)" in lines


def test_mergeide_critical_devices_on_2008r2(tmp_path):
    system_path, _ = build(tmp_path, "2008r2")
    h = Hive(system_path, write=True)
    lines = mergeide.enable_ide_fallback(h, 6, 1)
    h.commit()
    h = Hive(system_path)
    cdd = CS + "\\Control\\CriticalDeviceDatabase\\"
    hdc = "{4D36E96A-E325-11CE-BFC1-08002BE10318}"
    expected = {
        "primary_ide_channel": "atapi", "secondary_ide_channel": "atapi", "*pnp0600": "atapi",
        "pci#cc_0101": "pciide", "pci#ven_8086&dev_7010": "intelide", "pci#ven_8086&dev_7111": "intelide",
        "pci#ven_8086&dev_2922": "msahci", "pci#ven_8086&dev_2922&cc_010601": "msahci",
        "pci#cc_010601": "msahci",
    }
    for key, service in expected.items():
        assert h.values(cdd + key) == {"Service": service, "ClassGUID": hdc}, key
    disk_class = "{4D36E967-E325-11CE-BFC1-08002BE10318}"
    assert h.values(cdd + "gendisk") == {"Service": "disk", "ClassGUID": disk_class}
    assert h.values(cdd + "pci#ven_15ad&dev_07c0")["Service"] == "pvscsi"  # existing entries kept
    for name in ("msahci", "intelide", "atapi", "pciide"):
        assert h.get(CS + "\\Services\\" + name, "Start") == 0, name
    assert not h.has_key(CS + "\\Services\\storahci")
    assert any(line.startswith("CriticalDeviceDatabase: 16 MergeIDE entries") for line in lines)


# --- conflicting drivers ---------------------------------------------------------------------------------

VMWARE_AND_CDP = ("vmci", "vmxnet3", "pvscsi", "vm3dmp", "vm3dmp_loader", "vmmouse", "vmhgfs", "vmmemctl",
                  "CDPDisk", "CDPTuner")


def disable(tmp_path: Path, version: str = "2019", prepare=None) -> Tuple[Hive, list]:
    system_path, _ = build(tmp_path, version)
    h = Hive(system_path, write=True)
    if prepare:
        prepare(h)
    lines = conflicts.disable_conflicting_drivers(h)
    h.commit()
    return Hive(system_path), lines


def test_conflicting_services_are_disabled(tmp_path):
    h, lines = disable(tmp_path)
    for name in VMWARE_AND_CDP:
        assert h.get(CS + "\\Services\\" + name, "Start") == 4, name
        assert h.has_key(CS + "\\Services\\" + name)  # disabled, not deleted: the uninstaller needs them
    for name in ("disk", "partmgr", "volsnap", "storahci", "Tcpip", "atapi"):
        assert h.get(CS + "\\Services\\" + name, "Start") != 4, name
    assert h.get("ControlSet002\\Services\\vmci", "Start") == 0


def test_conflicting_filters_leave_class_lists_keeping_the_others_in_order(tmp_path):
    h, _ = disable(tmp_path)
    classes = CS + "\\Control\\Class\\"
    assert h.get(classes + hives.CLASS_DISK, "UpperFilters") == ["partmgr"]
    assert value_type(h, classes + hives.CLASS_DISK, "UpperFilters") == REG_MULTI_SZ
    assert "LowerFilters" not in h.values(classes + hives.CLASS_SCSI)  # emptied: deleted
    assert h.get(classes + hives.CLASS_SCSI, "Class") == "SCSIAdapter"
    assert h.get(classes + hives.CLASS_VOLUME, "UpperFilters") == ["volsnap"]


def test_one_report_line_per_conflicting_driver(tmp_path):
    _, lines = disable(tmp_path)
    by_name = {line.split(" ")[0]: line for line in lines}
    assert sorted(by_name, key=str.lower) == sorted(VMWARE_AND_CDP, key=str.lower)
    assert len(lines) == len(VMWARE_AND_CDP)
    assert by_name["CDPDisk"] == ("CDPDisk (replication): disabled (Start 0 -> 4); removed from UpperFilters "
                                  "of " + hives.CLASS_DISK)
    assert by_name["CDPTuner"].endswith("removed from LowerFilters of " + hives.CLASS_SCSI)
    assert by_name["vmci"] == "vmci (VMware): disabled (Start 0 -> 4)"


def test_a_filter_under_another_name_is_found_by_its_driver_file(tmp_path):
    def prepare(h: Hive) -> None:
        h.set_dword(CS + "\\Services\\ReplFlt7", "Start", 0)
        image = "\\SystemRoot\\System32\\drivers\\CDPDisk.sys"
        h.set_expand_sz(CS + "\\Services\\ReplFlt7", "ImagePath", image)
        h.set_multi_sz(CS + "\\Control\\Class\\" + hives.CLASS_VOLUME, "LowerFilters", ["ReplFlt7", "iorate"])
    h, lines = disable(tmp_path, prepare=prepare)
    assert h.get(CS + "\\Services\\ReplFlt7", "Start") == 4
    assert h.get(CS + "\\Control\\Class\\" + hives.CLASS_VOLUME, "LowerFilters") == ["iorate"]
    assert any(line.startswith("ReplFlt7 (replication): disabled") for line in lines)


def test_device_instance_filters_and_parallels_prefix(tmp_path):
    device = CS + "\\Enum\\SCSI\\Disk&Ven_VMware&Prod_Virtual_disk\\5&1ec51bf7&0&000000"
    def prepare(h: Hive) -> None:
        h.set_multi_sz(device, "UpperFilters", ["prl_newflt", "EhStorClass"])
        h.set_dword(CS + "\\Services\\prl_newflt", "Start", 1)
    h, lines = disable(tmp_path, prepare=prepare)
    assert h.get(device, "UpperFilters") == ["EhStorClass"]
    assert h.get(CS + "\\Services\\prl_newflt", "Start") == 4
    expected = "prl_newflt (Parallels): disabled (Start 1 -> 4); removed from UpperFilters of SCSI\\Disk&"
    assert any(line.startswith(expected) for line in lines)


def test_disabling_twice_reports_already_disabled(tmp_path):
    h, _ = disable(tmp_path)
    again = Hive(h.path, write=True)
    lines = conflicts.disable_conflicting_drivers(again)
    assert "vmci (VMware): already disabled" in lines
    assert not any("removed from" in line for line in lines)


def test_vmware_tools_uninstaller_turns_msiexec_install_into_quiet_uninstall(tmp_path):
    _, software_path = build(tmp_path, "2019")
    found = conflicts.old_tools_uninstallers(Hive(software_path))
    assert found == [conflicts.Uninstaller(
        "VMware", "VMware Tools", "MsiExec.exe /X{} /qn /norestart".format(hives.VMWARE_TOOLS_PRODUCT_CODE),
        "Microsoft\\Windows\\CurrentVersion\\Uninstall\\" + hives.VMWARE_TOOLS_PRODUCT_CODE, True)]
    assert conflicts.uninstaller_report(found) == [
        "VMware Tools: queued for first boot: MsiExec.exe /X{} /qn /norestart".format(
            hives.VMWARE_TOOLS_PRODUCT_CODE)]


def test_quiet_uninstall_string_is_preferred_and_xen_tools_found(tmp_path):
    _, software_path = build(tmp_path, "2019")
    h = Hive(software_path, write=True)
    key = "Wow6432Node\\Microsoft\\Windows\\CurrentVersion\\Uninstall\\XenTools"
    h.set_sz(key, "DisplayName", "Citrix XenTools 7.2")
    h.set_sz(key, "UninstallString", "\"C:\\Program Files\\Citrix\\XenTools\\uninstaller.exe\"")
    h.set_sz(key, "QuietUninstallString", "\"C:\\Program Files\\Citrix\\XenTools\\uninstaller.exe\" /S")
    h.commit()
    found = conflicts.old_tools_uninstallers(Hive(software_path))
    assert [(u.family, u.command, u.quiet) for u in found] == [
        ("VMware", "MsiExec.exe /X{} /qn /norestart".format(hives.VMWARE_TOOLS_PRODUCT_CODE), True),
        ("Xen PV", "\"C:\\Program Files\\Citrix\\XenTools\\uninstaller.exe\" /S", True)]


# --- first boot ------------------------------------------------------------------------------------------

def test_firstboot_service_keys(tmp_path):
    system_path, _ = build(tmp_path, "2019")
    h = Hive(system_path, write=True)
    lines = firstboot.register_firstboot_service(h)
    h.commit()
    h = Hive(system_path)
    key = CS + "\\Services\\v2vfirstboot"
    assert h.values(key) == {
        "Type": 0x10, "Start": 2, "ErrorControl": 1,
        "ImagePath": "%SystemRoot%\\v2v\\firstboot\\rhsrvany.exe -s v2vfirstboot",
        "DisplayName": "v2v first boot scripts", "ObjectName": "LocalSystem"}
    assert value_type(h, key, "ImagePath") == REG_EXPAND_SZ
    assert h.values(key + "\\Parameters") == {
        "CommandLine": 'cmd /c "C:\\Windows\\v2v\\firstboot\\firstboot.bat"',
        "PWD": "C:\\Windows\\v2v\\firstboot"}
    assert lines == ["first boot service v2vfirstboot registered (rhsrvany.exe runs "
                     "C:\\Windows\\v2v\\firstboot\\firstboot.bat)"]


def test_static_ip_is_read_with_the_mac_windows_kept(tmp_path):
    system_path, _ = build(tmp_path, "2019")
    (nic,) = firstboot.static_nic_configs(Hive(system_path))
    assert nic == firstboot.NicConfig(hives.INTERFACE_GUID, "00:50:56:91:A2:B3",
                                      (("192.168.50.20", "255.255.255.0"),), ("192.168.50.1",),
                                      ("192.168.50.2", "192.168.50.3"))


def test_static_ip_without_a_registry_mac_takes_the_one_given_or_none(tmp_path):
    system_path, _ = build(tmp_path, "2008r2", mac=None)
    (nic,) = firstboot.static_nic_configs(Hive(system_path))
    assert nic.mac is None
    given = {hives.INTERFACE_GUID.upper(): "00-50-56-aa-bb-cc"}
    (nic,) = firstboot.static_nic_configs(Hive(system_path), macs=given)
    assert nic.mac == "00:50:56:AA:BB:CC"


def test_dhcp_guest_has_no_static_ip_and_no_network_script(tmp_path):
    system_path, _ = build(tmp_path, "11", static_ip=None)
    nics = firstboot.static_nic_configs(Hive(system_path))
    assert nics == []
    assert not any("network" in path for path in firstboot.firstboot_scripts(nics=nics))


def test_ip_restore_script_names_the_mac_and_the_ip(tmp_path):
    system_path, _ = build(tmp_path, "2019")
    nics = firstboot.static_nic_configs(Hive(system_path))
    files = firstboot.firstboot_scripts(nics=nics)
    ps1 = files["v2v\\firstboot\\scripts\\0200-restore-network.ps1"].decode()
    assert "Mac = '00:50:56:91:A2:B3'" in ps1
    assert "IPs = @(\"192.168.50.20\"); Masks = @(\"255.255.255.0\"); Gateways = @(\"192.168.50.1\")" in ps1
    assert "Dns = @(\"192.168.50.2\", \"192.168.50.3\")" in ps1
    assert "EnableStatic(" in ps1 and "SetGateways(" in ps1 and "SetDNSServerSearchOrder(" in ps1
    assert "\r\n" in ps1 and "\n" not in ps1.replace("\r\n", "")
    bat = files["v2v\\firstboot\\scripts\\0200-restore-network.bat"].decode()
    assert '-File "%~dp00200-restore-network.ps1"' in bat


def test_firstboot_scripts_run_in_order_log_and_remove_themselves():
    uninstaller = conflicts.Uninstaller("VMware", "VMware Tools", "MsiExec.exe /X{ABC} /qn /norestart", "k",
                                        True)
    nic = firstboot.NicConfig("{g}", None, (("10.0.0.5", "255.0.0.0"),), (), ())
    files = firstboot.firstboot_scripts(nics=[nic], uninstallers=[uninstaller],
                                        guest_agent_msi="qemu-ga-x86_64.msi")
    assert sorted(files) == [
        "v2v\\firstboot\\firstboot.bat",
        "v2v\\firstboot\\scripts\\0100-install-virtio-drivers.bat",
        "v2v\\firstboot\\scripts\\0200-restore-network.bat",
        "v2v\\firstboot\\scripts\\0200-restore-network.ps1",
        "v2v\\firstboot\\scripts\\0300-uninstall-vmware-tools.bat",
        "v2v\\firstboot\\scripts\\0400-install-guest-agent.bat",
    ]
    runner = files["v2v\\firstboot\\firstboot.bat"].decode()
    assert 'set "log=%firstboot%\\log.txt"' in runner and 'call :main >> "%log%" 2>&1' in runner
    assert "sc.exe delete v2vfirstboot" in runner and "EQU 249" in runner
    drivers = files["v2v\\firstboot\\scripts\\0100-install-virtio-drivers.bat"].decode()
    assert '"%pnputil%" -i -a "%%~fi"' in drivers and "%SystemRoot%\\Drivers\\VirtIO\\*.inf" in drivers
    uninstall = files["v2v\\firstboot\\scripts\\0300-uninstall-vmware-tools.bat"].decode()
    assert "MsiExec.exe /X{ABC} /qn /norestart\r\n" in uninstall
    agent = files["v2v\\firstboot\\scripts\\0400-install-guest-agent.bat"].decode()
    assert 'msiexec.exe /i "%SystemRoot%\\v2v\\firstboot\\qemu-ga-x86_64.msi" /qn' in agent
    ps1 = files["v2v\\firstboot\\scripts\\0200-restore-network.ps1"].decode()
    assert "Mac = ''" in ps1  # no MAC: the script takes adapters in order


def test_guest_agent_msi_and_runner_are_found_on_the_host(tmp_path):
    (tmp_path / "guest-agent").mkdir()
    (tmp_path / "guest-agent" / "qemu-ga-x86_64.msi").write_bytes(b"msi")
    (tmp_path / "guest-agent" / "qemu-ga-i386.msi").write_bytes(b"msi")
    assert firstboot.find_guest_agent_msi(str(tmp_path), "x86_64").endswith("qemu-ga-x86_64.msi")
    assert firstboot.find_guest_agent_msi(str(tmp_path), "i386").endswith("qemu-ga-i386.msi")
    assert firstboot.find_guest_agent_msi(str(TREE), "x86_64") is None
    (tmp_path / "rhsrvany.exe").write_bytes(b"MZ")
    runner = firstboot.find_service_runner([str(tmp_path / "none"), str(tmp_path)])
    assert runner == str(tmp_path / "rhsrvany.exe")
    copies = firstboot.firstboot_file_copies(runner, str(tmp_path / "guest-agent" / "qemu-ga-x86_64.msi"))
    assert [c.guest for c in copies] == ["v2v\\firstboot\\rhsrvany.exe", "v2v\\firstboot\\qemu-ga-x86_64.msi"]


# --- the hives themselves --------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["2019", "2008r2", "11"])
def test_built_hives_are_deterministic_and_inspectable(tmp_path, version):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for d in (a, b):
        build(d, version)
    assert (a / "SYSTEM").read_bytes() == (b / "SYSTEM").read_bytes()
    assert (a / "SOFTWARE").read_bytes() == (b / "SOFTWARE").read_bytes()
    system, software = Hive(str(a / "SYSTEM")), Hive(str(a / "SOFTWARE"))
    assert system.current_control_set() == CS
    assert system.values("Select") == {"Current": 1, "Default": 1, "Failed": 0, "LastKnownGood": 2}
    assert len(system.get("MountedDevices", "\\DosDevices\\C:")) == 12
    nt = software.values("Microsoft\\Windows NT\\CurrentVersion")
    rel = hives.release(version)
    assert nt["ProductName"] == rel.product_name and nt["CurrentBuildNumber"] == str(rel.build)
    assert ("CurrentMajorVersionNumber" in nt) == (rel.major >= 10)


# the hivex binding's __del__ trips over the handle its failed constructor never set; Hive silences it,
# so an unraisable exception from that __del__ fails this test
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_hive_is_a_one_line_error(tmp_path):
    bad = tmp_path / "SYSTEM"
    bad.write_bytes(b"regf" + os.urandom(16) + b"\0" * 8000)
    with pytest.raises(InspectionError) as err:
        Hive(str(bad), write=True)
    assert str(err.value).startswith("SYSTEM is not a valid registry hive") and "\n" not in str(err.value)
    del err
    system_path, _ = build(tmp_path, "2019")
    data = Path(system_path).read_bytes()
    Path(system_path).write_bytes(data[:4096 + 100])  # the base block and a torn first hbin
    with pytest.raises(InspectionError, match="not a valid registry hive") as err:
        Hive(system_path)
    del err
    gc.collect()  # the failed handles are collected here, under the filter, not at interpreter exit
