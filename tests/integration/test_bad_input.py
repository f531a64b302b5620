"""Bad input that gets past the file checks: one-line error, exit 1, nothing left behind, source untouched."""
import os
import subprocess

import pytest

from tests.conftest import sha256, v2v_cmd

pytestmark = pytest.mark.integration


def _assert_one_error(cp, *needles):
    assert cp.returncode == 1, (cp.returncode, cp.stderr)
    assert "Traceback" not in cp.stderr
    errors = [ln for ln in cp.stderr.splitlines() if ln.startswith("v2v: error: ")]
    assert len(errors) == 1, cp.stderr
    for n in needles:
        assert n in errors[0], errors[0]


def _mkfs_image(path, size_mib, populate=None):
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
    argv = ["mkfs.ext4", "-q", "-F"] + (["-d", str(populate)] if populate else []) + [str(path)]
    subprocess.run(argv, check=True)


def test_disk_with_no_operating_system_is_refused(tmp_path):
    img = tmp_path / "data.img"
    _mkfs_image(img, 64)
    before = sha256(img)
    out = tmp_path / "out"
    cp = v2v_cmd("convert", "disk", str(img), "--to", "local", "--out", str(out))
    _assert_one_error(cp, "no operating system")
    assert sha256(img) == before
    assert not out.exists() or not os.listdir(out)


def test_unsupported_linux_distribution_is_refused_before_anything_is_written(tmp_path):
    root = tmp_path / "root"
    for d in ("etc", "usr/bin", "usr/lib", "boot", "var/lib/rpm"):
        (root / d).mkdir(parents=True)
    os.symlink("usr/bin", root / "bin")
    (root / "etc/os-release").write_text('NAME="Fedora Linux"\nID=fedora\nVERSION_ID=39\n'
                                         'PRETTY_NAME="Fedora Linux 39"\n')
    (root / "etc/fedora-release").write_text("Fedora release 39 (Thirty Nine)\n")
    (root / "etc/fstab").write_text("/dev/sda / ext4 defaults 0 1\n")
    (root / "usr/bin/ls").write_bytes(open("/bin/ls", "rb").read())
    img = tmp_path / "fedora.img"
    _mkfs_image(img, 64, populate=root)
    out = tmp_path / "out"
    cp = v2v_cmd("convert", "disk", str(img), "--to", "local", "--out", str(out))
    _assert_one_error(cp, "not supported", "debian")
    assert not out.exists() or not os.listdir(out)


def test_existing_target_is_refused_and_kept_unless_overwrite(tmp_path, foreign_guest):
    out = tmp_path / "out"
    out.mkdir()
    existing = out / "web1-sda.qcow2"
    existing.write_bytes(b"precious")
    cp = v2v_cmd("convert", "disk", foreign_guest, "--to", "local", "--out", str(out), "--name", "web1")
    _assert_one_error(cp, "already exists", "--overwrite")
    assert existing.read_bytes() == b"precious"
    assert sorted(os.listdir(out)) == ["web1-sda.qcow2"]


def test_full_target_directory_is_refused_before_conversion(tmp_path, foreign_guest):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    out = tmp_path / "small"
    out.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(out)], check=True)
    try:
        before = sha256(foreign_guest)
        cp = v2v_cmd("convert", "disk", foreign_guest, "--to", "local", "--out", str(out), "--name", "web1")
        _assert_one_error(cp, "not enough free space", str(out))
        assert os.listdir(out) == []
        assert sha256(foreign_guest) == before
    finally:
        subprocess.run(["umount", str(out)], check=True)


def test_inspect_reports_guest_plan_and_what_would_change_as_json(foreign_guest):
    import json
    before = sha256(foreign_guest)
    cp = v2v_cmd("inspect", foreign_guest, "--json")
    assert sha256(foreign_guest) == before
    assert cp.returncode == 0, cp.stderr
    report = json.loads(cp.stdout.strip().splitlines()[-1])
    assert report["event"] == "result" and report["convertible"] is True
    g = report["guest"]
    assert (g["type"], g["distro"], g["major"], g["arch"], g["firmware"]) == ("linux", "debian", 12, "x86_64", "bios")
    assert ["/", "/dev/sda1"] in g["mountpoints"]
    assert "open-vm-tools" in g["applications"]
    assert report["plan"]["network"]["guest_name"] == "ens192"
    changes = {c["name"]: c for c in report["changes"]}
    assert changes["hypervisor-tools"] == dict(changes["hypervisor-tools"], status="would",
                                               message="would remove open-vm-tools")
    assert changes["fstab"]["status"] == "would" and "/dev/sda1 -> UUID=" in changes["fstab"]["message"]
    assert changes["initramfs"]["status"] == "would" and "lacks" in changes["initramfs"]["message"]
    assert "virtio_blk" in changes["initramfs"]["message"]
    assert changes["network"]["status"] == "would" and "ens192" in changes["network"]["message"]


def test_doctor_reports_each_check_and_the_kvm_verdict():
    import json
    cp = v2v_cmd("doctor", "--json")
    report = json.loads(cp.stdout)
    names = [c["name"] for c in report["checks"]]
    assert {"qemu-img", "kvm", "libguestfs", "libvirt", "free space"} <= set(names)
    kvm = [c for c in report["checks"] if c["name"] == "kvm"][0]
    assert kvm["detail"]   # a reason either way; on this CI host KVM hangs or aborts, elsewhere it works
    assert cp.returncode == (0 if report["ok"] else 1)


def test_sigterm_during_conversion_leaves_nothing_behind(tmp_path, foreign_guest):
    import signal
    import sys
    import time
    out, work = tmp_path / "out", tmp_path / "work"
    work.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "v2v", "convert", "disk", foreign_guest, "--to", "local",
                             "--out", str(out), "--workdir", str(work), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(work.iterdir()):
        time.sleep(0.2)       # wait until the overlays exist: the conversion is under way
    assert any(work.iterdir()), "the conversion never started"
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert "v2v: error: interrupted by SIGTERM" in stderr
    assert list(work.iterdir()) == []                       # overlays removed
    assert not out.exists() or list(out.iterdir()) == []    # nothing half-written


def test_appliance_that_does_not_come_up_is_killed_retried_once_then_one_line_error(tmp_path):
    """A hung appliance (here: one given 2 s, far less than a TCG boot) does not hang the conversion."""
    img = tmp_path / "data.img"
    _mkfs_image(img, 16)
    out = tmp_path / "out"
    env = dict(os.environ, V2V_LAUNCH_TIMEOUT="2")
    work = tmp_path / "work"          # the appliance's overlays live here, so its qemu names this path
    work.mkdir()
    cp = v2v_cmd("convert", "disk", str(img), "--to", "local", "--out", str(out), "--workdir", str(work),
                 env=env, timeout=300)
    _assert_one_error(cp, "did not come up within 2s, twice")
    assert "starting it again" in cp.stderr
    assert not out.exists() or not os.listdir(out)
    leftover = subprocess.run(["pgrep", "-f", str(work)], stdout=subprocess.PIPE, text=True).stdout
    assert leftover == "", "a qemu of this test is still running: " + leftover
