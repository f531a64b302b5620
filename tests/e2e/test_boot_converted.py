"""Boot the converted guests on virtio under qemu (KVM or TCG, as the probe says) and see them come up."""
import json
import os

import pytest

from tests.conftest import convert_json, sha256

pytestmark = pytest.mark.e2e


def test_converted_foreign_guest_boots_on_virtio(converted_foreign, accel):
    from v2v.events import null
    from v2v.types import NetworkPlan, Plan, Result, TargetDisk, SourceDisk
    from v2v.verify import verify
    r = converted_foreign["result"]
    d = r["disks"][0]
    src = SourceDisk(**d["source"])
    plan = Plan(**dict(r["plan"], network=NetworkPlan(**r["plan"]["network"]), notes=tuple(r["plan"]["notes"])))
    result = Result(name="web1", output="local", disks=(TargetDisk(path=d["path"], format=d["format"], source=src,
                                                                    target_dev="vda"),),
                    domain_xml=r["domain_xml"], plan=plan)
    before = sha256(d["path"])
    proof = verify(result, accel, null())
    assert proof.ok, (proof.reason, proof.console_tail)
    details = dict(kv.split("=", 1) for kv in proof.details)
    assert details["root"] == "/dev/vda1"
    assert "ens192" in details["nics"].split(",")          # the old name, given to the virtio NIC
    assert details["ipv4"].startswith("ens192:10.0.2.")     # and its configuration applied (DHCP)
    assert sha256(d["path"]) == before                      # the proof booted an overlay, not the result


def test_lvm_guest_from_vmdk_with_data_disk_converts_into_libvirt_and_boots(foreign_guest_lvm, libvirtd, tmp_path):
    """The LVM variant as a VMware export: a streamOptimized VMDK, plus a second (data) disk."""
    import subprocess

    import libvirt
    from lxml import etree
    name = "v2v-test-lvm"
    vmdk = tmp_path / "web2.vmdk"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized",
                    foreign_guest_lvm, str(vmdk)], check=True)
    data = tmp_path / "web2-data.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(data), "64M"], check=True)
    storage = tmp_path / "pool"
    conn = libvirt.open(libvirtd)
    try:
        try:
            conn.lookupByName(name).undefine()
        except libvirt.libvirtError:
            pass
        before = sha256(str(vmdk))
        cp, events, result = convert_json("convert", "disk", str(vmdk), str(data), "--to", "libvirt", "--name", name,
                                          "--storage", str(storage), "--verify-boot", "--memory", "1024")
        assert cp.returncode == 0, cp.stderr + json.dumps(events[-3:])
        boot = result["boot"]
        assert boot["ok"], boot
        details = dict(kv.split("=", 1) for kv in boot["details"])
        assert details["root"] == "/dev/mapper/vg0-root"
        assert [d["source"]["format"] for d in result["disks"]] == ["vmdk", "qcow2"]
        xml = etree.fromstring(conn.lookupByName(name).XMLDesc(0).encode())
        targets = [(t.get("dev"), t.get("bus")) for t in xml.findall("devices/disk/target")]
        assert targets == [("vda", "virtio"), ("vdb", "virtio")]
        assert [s.get("file") for s in xml.findall("devices/disk/source")] == [d["path"] for d in result["disks"]]
        assert sorted(os.listdir(storage)) == sorted(os.path.basename(d["path"]) for d in result["disks"])
        assert xml.find("devices/interface/model").get("type") == "virtio"
        assert xml.find("os/type").get("machine").startswith("pc-q35")
        ns = {"l": "http://libosinfo.org/xmlns/libvirt/domain/1.0"}
        assert xml.find("metadata/l:libosinfo/l:os", ns).get("id").startswith("http://debian.org/debian/")
        assert sha256(str(vmdk)) == before
    finally:
        try:
            conn.lookupByName(name).undefine()
        except libvirt.libvirtError:
            pass
        conn.close()
