import os
from pathlib import Path

import pytest
from lxml import etree

from v2v.domain import OVMF_CODE_SECURE, OVMF_VARS_SECURE, DiskSpec, DomainSpec, NicSpec, disk_targets, to_xml


def _spec(**kw):
    base = dict(name="web1", memory_mib=2048, vcpus=2,
                disks=(DiskSpec("/var/lib/libvirt/images/web1-sda.qcow2", "qcow2", "vda"),
                       DiskSpec("/var/lib/libvirt/images/web1-sdb.qcow2", "qcow2", "vdb")),
                nics=(NicSpec(mac="52:54:00:12:34:56"),), osinfo_id="http://debian.org/debian/11",
                uuid="6f1b7a2e-1c1d-4c0e-9a53-2b8f3c1d0e01", description="Converted by v2v from web1.vmdk")
    base.update(kw)
    return DomainSpec(**base)


def test_bios_domain_xml_matches_golden(golden):
    golden("domain-bios.xml", to_xml(_spec()))


def test_uefi_tcg_domain_xml_matches_golden(golden):
    golden("domain-uefi-tcg.xml", to_xml(_spec(firmware="uefi", domain_type="qemu",
                                               nvram="/var/lib/libvirt/images/web1_VARS.fd",
                                               nics=(NicSpec(mac="52:54:00:aa:bb:cc", bridge="br0"),))))


def test_domain_xml_has_virtio_disks_and_nic_and_os_id():
    tree = etree.fromstring(to_xml(_spec()).encode())
    assert [t.get("bus") for t in tree.findall("devices/disk/target")] == ["virtio", "virtio"]
    assert tree.find("devices/interface/model").get("type") == "virtio"
    assert tree.find("devices/interface/mac").get("address") == "52:54:00:12:34:56"
    os_id = tree.find("metadata/{http://libosinfo.org/xmlns/libvirt/domain/1.0}libosinfo/"
                      "{http://libosinfo.org/xmlns/libvirt/domain/1.0}os")
    assert os_id.get("id") == "http://debian.org/debian/11"
    assert tree.get("type") == "kvm"


def test_disk_targets_go_past_z():
    t = disk_targets(28)
    assert t[:3] == ("vda", "vdb", "vdc") and t[25] == "vdz" and t[26] == "vdaa" and t[27] == "vdab"


# --- Windows guests ---------------------------------------------------------------------------------------

WIN_DISKS = ("/var/lib/libvirt/images/win1-sda.qcow2", "/var/lib/libvirt/images/win1-sdb.qcow2")
HYPERV = ("relaxed", "vapic", "spinlocks", "vpindex", "runtime", "synic", "stimer", "reset", "frequencies")


def _windows_bios_spec(**kw):
    """Windows Server 2019 on BIOS whose virtio drivers are not installed: SATA disks, an e1000e NIC."""
    base = dict(name="win1", memory_mib=4096, vcpus=2,
                disks=tuple(DiskSpec(p, "qcow2", t, bus="sata")
                            for p, t in zip(WIN_DISKS, disk_targets(2, "sata"))),
                nics=(NicSpec(mac="52:54:00:12:34:57", model="e1000e"),),
                osinfo_id="http://microsoft.com/win/2k19",
                uuid="0d3c4a5e-6b7f-4e80-9a1b-2c3d4e5f6a71", description="Converted by v2v from win1.vmdk",
                os_type="windows")
    base.update(kw)
    return DomainSpec(**base)


def _windows11_spec(**kw):
    base = dict(name="win11", memory_mib=4096, vcpus=2,
                disks=(DiskSpec("/var/lib/libvirt/images/win11-sda.qcow2", "qcow2", "vda"),),
                nics=(NicSpec(mac="52:54:00:12:34:58"),), osinfo_id="http://microsoft.com/win/11",
                uuid="9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", description="Converted by v2v from win11.vhdx",
                firmware="uefi", nvram="/var/lib/libvirt/images/win11_VARS.fd", os_type="windows",
                secure_boot=True, tpm=True)
    base.update(kw)
    return DomainSpec(**base)


def _tree(spec: DomainSpec):
    return etree.fromstring(to_xml(spec).encode())


def test_windows_bios_domain_xml_matches_golden(golden):
    golden("domain-windows-bios.xml", to_xml(_windows_bios_spec()))


def test_windows11_uefi_secure_boot_domain_xml_matches_golden(golden):
    golden("domain-windows11-uefi-secure.xml", to_xml(_windows11_spec()))


def test_windows_domain_has_hyperv_enlightenments_and_localtime_clock():
    tree = _tree(_windows_bios_spec())
    hv = tree.find("features/hyperv")
    assert hv.get("mode") == "custom"
    assert [el.tag for el in hv] == list(HYPERV)
    assert {el.get("state") for el in hv} == {"on"}
    assert hv.find("spinlocks").get("retries") == "8191"
    assert tree.find("features/acpi") is not None and tree.find("features/apic") is not None
    clock = tree.find("clock")
    assert clock.get("offset") == "localtime"
    timers = {t.get("name"): dict(t.attrib) for t in clock.findall("timer")}
    assert timers == {"rtc": {"name": "rtc", "tickpolicy": "catchup"},
                      "pit": {"name": "pit", "tickpolicy": "delay"},
                      "hpet": {"name": "hpet", "present": "no"},
                      "hypervclock": {"name": "hypervclock", "present": "yes"}}


def test_windows_guest_with_a_utc_rtc_keeps_a_utc_clock():
    assert _tree(_windows_bios_spec(clock_offset="utc")).find("clock").get("offset") == "utc"


def test_windows_under_tcg_gets_no_kvm_only_enlightenments():
    tree = _tree(_windows_bios_spec(domain_type="qemu"))
    assert tree.find("features/hyperv") is None
    assert [t.get("name") for t in tree.findall("clock/timer")] == ["rtc", "pit", "hpet"]


def test_linux_domain_has_no_hyperv_and_a_plain_utc_clock():
    tree = _tree(_spec())
    assert tree.find("features/hyperv") is None and tree.find("features/smm") is None
    assert tree.find("clock").get("offset") == "utc" and tree.findall("clock/timer") == []
    assert tree.find("devices/tpm") is None


def test_sata_disks_are_named_sda_sdb_on_the_sata_bus():
    tree = _tree(_windows_bios_spec())
    assert [(t.get("dev"), t.get("bus")) for t in tree.findall("devices/disk/target")] == [
        ("sda", "sata"), ("sdb", "sata")]
    assert tree.find("devices/controller") is None


def test_disk_targets_per_bus():
    assert disk_targets(2) == ("vda", "vdb")
    assert disk_targets(2, "virtio") == ("vda", "vdb")
    assert disk_targets(3, "sata") == ("sda", "sdb", "sdc")
    assert disk_targets(27, "scsi")[26] == "sdaa"
    assert disk_targets(1, "ide") == ("hda",)
    with pytest.raises(ValueError, match="usb"):
        disk_targets(1, "usb")


def test_scsi_disks_get_a_virtio_scsi_controller():
    tree = _tree(_windows_bios_spec(disks=(DiskSpec(WIN_DISKS[0], "qcow2", "sda", bus="scsi"),)))
    ctl = tree.find("devices/controller")
    assert (ctl.get("type"), ctl.get("model")) == ("scsi", "virtio-scsi")


def test_secure_boot_uses_the_ms_keys_firmware_with_smm():
    tree = _tree(_windows11_spec())
    loader = tree.find("os/loader")
    assert loader.text == "/usr/share/OVMF/OVMF_CODE_4M.ms.fd"
    assert (loader.get("secure"), loader.get("readonly"), loader.get("type")) == ("yes", "yes", "pflash")
    nvram = tree.find("os/nvram")
    assert nvram.get("template") == "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"
    assert nvram.text == "/var/lib/libvirt/images/win11_VARS.fd"
    assert tree.find("features/smm").get("state") == "on"
    assert tree.find("os/type").get("machine") == "q35"


def test_secure_boot_firmware_files_exist_on_this_host():
    for path in (OVMF_CODE_SECURE, OVMF_VARS_SECURE):
        assert os.path.exists(path), "{} missing: install Debian's ovmf".format(path)


@pytest.mark.parametrize("kw", [dict(firmware="bios"), dict(machine="pc")])
def test_secure_boot_without_uefi_on_q35_is_refused(kw):
    with pytest.raises(ValueError, match="secure_boot"):
        _windows11_spec(**kw)


def test_tpm_is_an_emulated_tpm2_crb():
    tpm = _tree(_windows11_spec()).find("devices/tpm")
    assert tpm.get("model") == "tpm-crb"
    backend = tpm.find("backend")
    assert (backend.get("type"), backend.get("version")) == ("emulator", "2.0")


def test_unknown_disk_bus_and_os_type_are_refused():
    with pytest.raises(ValueError, match="floppy"):
        DiskSpec("/x.qcow2", "qcow2", "fda", bus="floppy")
    with pytest.raises(ValueError, match="bsd"):
        _spec(os_type="bsd")


# --- every golden file is domain XML libvirt accepts ----------------------------------------------------

LIBVIRT_DOMAIN_RNG = Path("/usr/share/libvirt/schemas/domain.rng")
GOLDEN_DOMAINS = sorted((Path(__file__).resolve().parent.parent / "golden").glob("domain-*.xml"))


@pytest.fixture(scope="module")
def domain_schema():
    if not LIBVIRT_DOMAIN_RNG.exists():
        pytest.fail("{} missing: Debian's libvirt0 ships libvirt's schemas".format(LIBVIRT_DOMAIN_RNG))
    return etree.RelaxNG(etree.parse(str(LIBVIRT_DOMAIN_RNG)))


def test_golden_domains_include_the_windows_ones():
    assert {p.name for p in GOLDEN_DOMAINS} >= {"domain-bios.xml", "domain-uefi-tcg.xml",
                                               "domain-windows-bios.xml", "domain-windows11-uefi-secure.xml"}


@pytest.mark.parametrize("path", GOLDEN_DOMAINS, ids=[p.name for p in GOLDEN_DOMAINS])
def test_golden_domain_is_valid_against_libvirts_schema(domain_schema, path):
    ok = domain_schema.validate(etree.parse(str(path)))
    assert ok, "{} is not valid libvirt domain XML: {}".format(path.name, domain_schema.error_log.last_error)


def test_schema_check_rejects_an_element_libvirt_does_not_know(domain_schema):
    tree = _tree(_windows_bios_spec())
    etree.SubElement(tree.find("features/hyperv"), "no_such_enlightenment", state="on")
    assert not domain_schema.validate(tree)


@pytest.mark.parametrize("path", GOLDEN_DOMAINS, ids=[p.name for p in GOLDEN_DOMAINS])
def test_golden_domain_defines_on_libvirts_test_driver(path):
    from v2v import virt
    conn = virt.connect("test:///default")  # libvirt's own parser, in memory: no daemon, nothing kept
    try:
        parsed = etree.fromstring(conn.defineXML(path.read_text()).XMLDesc(0).encode())
    finally:
        conn.close()
    ours = etree.parse(str(path)).getroot()
    for xpath in ("features/hyperv/*", "features/smm", "clock/timer", "os/loader", "devices/tpm/backend",
                  "devices/disk/target"):
        theirs = [dict(e.attrib) for e in parsed.findall(xpath)]
        assert theirs == [dict(e.attrib) for e in ours.findall(xpath)], xpath
