"""Issue 5's LVM snapshot mode on a running source: the LVM variant of the foreign Debian 12 guest (root and
swap on vg0, /boot on a partition, vg0 with free extents) booted under qemu, reached only at 127.0.0.1.

While a writer inside it writes files and a checksum line for each on the root volume, the agent captures
the disk: vg0's active volumes from LVM snapshots (removed afterwards), /boot by freeze-converge. The staging
image is read back with libguestfs: the volume group as it was (no snapshot in its metadata), a clean
`e2fsck -n` of both filesystems, every file whose checksum line is in the image intact, and the free
extents not sent. Conversion and boot of the LVM guest are the disk-image path's tests; this one checks
the capture (library call, like the CLI's first stage).
"""
import hashlib
import os
import shutil
import tempfile

import pytest

from tests.e2e.live_source import WRITER_DIR, booted_source, complete_lines, start_writer, stop_writer
from tests.integration.capture_fixtures import MiB

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def lvm_source(foreign_guest_lvm, accel):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with booted_source(foreign_guest_lvm, accel) as src:
        yield src


def test_lvm_volumes_are_captured_from_snapshots_while_written_and_the_snapshots_are_removed(lvm_source, accel,
                                                                                             capsys):
    from guest_fixups.appliance import Appliance
    from v2v.events import Emitter
    from v2v.sources import host
    src = lvm_source
    vgs = src.ssh("vgs --noheadings --units b --nosuffix -o vg_free vg0").stdout.decode().split()
    assert int(vgs[0]) >= 64 * MiB, "the LVM test guest has no free extents: {}".format(vgs)
    work = tempfile.mkdtemp(prefix="v2v-e2e-lvm-", dir="/var/tmp")
    try:
        start_writer(src)
        target = host.parse_target("root@127.0.0.1", src.port)
        opts = host.CaptureOptions(compress="none", ssh_key=src.key, ssh_known_hosts=src.known_hosts,
                                   staging=os.path.join(work, "staging"))
        with open(os.path.join(work, "events.jsonl"), "w") as log:
            report = host.capture(target, opts, Emitter(json_mode=True, stream=log))
        stop_writer(src)
        (disk,) = report.disks
        assert disk["mode"] == "lvm-snapshot+freeze-converge", disk
        assert sorted(disk["snapshots"]) == ["vg0/root", "vg0/swap"], disk
        assert disk["frozen"] == ["/boot"] and disk["consistent"], disk
        left = src.ssh("lvs --noheadings -o lv_name vg0").stdout.decode().split()
        assert sorted(left) == ["root", "swap"], "snapshots left on the source: {}".format(left)
        pv = next(m for m in disk["maps"] if m["fstype"] == "LVM2_member")
        free = int(vgs[0])
        pv_size = int(src.ssh("blockdev --getsize64 /dev/sda2").stdout)
        assert pv["bytes"] <= pv_size - free, "free extents were sent: {} of {}".format(pv["bytes"], pv_size)

        (img,) = report.images
        with Appliance([(img, "raw")], accel=accel, readonly=True, memsize=512, smp=1) as app:
            app.launch()
            g = app.g
            assert sorted(g.lvs()) == ["/dev/vg0/root", "/dev/vg0/swap"], g.lvs()
            for dev in ("/dev/vg0/root", "/dev/sda1"):
                assert g.fsck("ext4", dev) == 0, "{} is not clean in the captured image".format(dev)
            g.mount_ro("/dev/vg0/root", "/")
            captured = complete_lines(g.read_file(WRITER_DIR + "/SUMS"))
            assert captured, "no complete checksum line in the captured root"
            for sha, name in captured:
                assert hashlib.sha256(g.read_file("{}/{}".format(WRITER_DIR, name))).hexdigest() == sha, name
        with capsys.disabled():
            print("\n    [lvm snapshot capture] {}; {:.0f} MiB of the {:.0f} MiB PV sent ({:.0f} MiB free not "
                  "sent); {:.1f} MiB on the wire in {:.0f}s; /boot frozen {:.3f}s; {} files verified".format(
                      disk["reason"], pv["bytes"] / MiB, pv_size / MiB, free / MiB, report.wire_bytes / MiB,
                      report.seconds, disk["freeze_seconds"], len(captured)))
    finally:
        src.ssh("touch /run/v2v-writer.stop", check=False, timeout=60)
        shutil.rmtree(work, ignore_errors=True)
