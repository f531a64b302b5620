from lxml import etree

from v2v.domain import DiskSpec, DomainSpec, NicSpec, disk_targets, to_xml


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
