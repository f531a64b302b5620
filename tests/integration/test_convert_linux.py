"""Convert the foreign Debian guest and read the result back: every fixup asserted on the disk itself."""
import pytest

from tests.conftest import sha256

pytestmark = pytest.mark.integration


def _fix(result, name):
    return [f for f in result["fixes"]["lines"] if f["name"] == name]


def test_conversion_succeeds_with_a_result_event_last(converted_foreign):
    events, result = converted_foreign["events"], converted_foreign["result"]
    assert result is not None and result["event"] == "result"
    kinds = {e["event"] for e in events}
    assert {"stage", "progress", "result"} <= kinds
    stages = [e["stage"] for e in events if e["event"] == "stage"]
    assert stages.index("inspect") < stages.index("fix") < stages.index("copy")
    copy_progress = [e for e in events if e["event"] == "progress" and e["stage"] == "copy"]
    assert copy_progress[-1]["done"] == copy_progress[-1]["total"]
    assert result["guest"]["distro"] == "debian" and result["guest"]["major"] == 12


def test_source_is_never_written(converted_foreign):
    assert sha256(converted_foreign["source"]) == converted_foreign["source_sha_before"]


def test_output_disk_checksum_in_result_matches_file(converted_foreign):
    disk = converted_foreign["result"]["disks"][0]
    assert disk["format"] == "qcow2" and disk["target_dev"] == "vda"
    assert sha256(disk["path"]) == disk["sha256"]


def test_output_is_sparse(converted_foreign):
    import os
    disk = converted_foreign["result"]["disks"][0]
    st = os.stat(disk["path"])
    assert st.st_blocks * 512 < disk["source"]["virtual_size"] * 0.6


def test_fix_report_has_one_line_per_fixup(converted_foreign):
    r = converted_foreign["result"]
    assert "open-vm-tools" in _fix(r, "hypervisor-tools")[0]["message"]
    assert _fix(r, "fstab")[0]["status"] == "changed"
    assert all(f["status"] == "changed" for f in _fix(r, "initramfs"))
    assert _fix(r, "network")[0]["status"] == "changed"


def test_fstab_sda_names_become_uuids(converted_foreign, open_guest):
    app = open_guest(converted_foreign["result"]["disks"][0]["path"], "qcow2")
    fstab = app.read_text("/etc/fstab")
    entries = [ln.split() for ln in fstab.splitlines() if ln.strip() and not ln.startswith("#")]
    assert entries, fstab
    assert not [e for e in entries if e[0].startswith("/dev/sd")], fstab
    root_uuid = app.g.vfs_uuid("/dev/sda1")
    assert ["UUID=" + root_uuid, "/"] == [e for e in entries if e[1] == "/"][0][:2]
    # initramfs has virtio and no VMware paravirtual SCSI
    kernel = converted_foreign["result"]["guest"]["kernels"][0]
    listing = app.g.sh("lsinitramfs /boot/initrd.img-{} 2>&1".format(kernel))
    assert "virtio_blk.ko" in listing and "virtio_net.ko" in listing and "virtio_scsi.ko" in listing
    assert "vmw_pvscsi.ko" not in listing
    # the tools package is gone, from dpkg's own database
    status = app.read_text("/var/lib/dpkg/status")
    assert "Package: open-vm-tools\n" not in status
    # grub: the kernel command line names the root by UUID now
    cfg = app.read_text("/boot/grub/grub.cfg")
    assert "root=UUID=" + root_uuid in cfg
    assert "root=/dev/sda" not in cfg
    # network: the MAC pin is gone, the new NIC gets the name /etc/network/interfaces uses
    assert not app.exists("/etc/udev/rules.d/70-persistent-net.rules")
    link = app.read_text("/etc/systemd/network/10-v2v-ens192.link")
    assert "MACAddress=52:54:00:00:00:42" in link and "Name=ens192" in link


def test_local_output_has_domain_xml_with_virtio(converted_foreign):
    from lxml import etree
    xml = etree.parse(converted_foreign["result"]["domain_xml"])
    assert xml.find("devices/disk/target").get("bus") == "virtio"
    assert xml.find("devices/interface/mac").get("address") == "52:54:00:00:00:42"
    assert xml.find("devices/disk/source").get("file") == converted_foreign["result"]["disks"][0]["path"]
