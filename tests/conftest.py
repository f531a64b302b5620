"""Shared fixtures: golden files, the accelerator, libvirtd, test guests (built once per run, cached)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"


def pytest_addoption(parser):
    parser.addoption("--regenerate-golden", action="store_true",
                     help="rewrite tests/golden/* from the current output instead of comparing")


@pytest.fixture
def golden(request):
    """golden(name, text): compare text with tests/golden/name (or rewrite it with --regenerate-golden)."""
    regen = request.config.getoption("--regenerate-golden") or os.environ.get("V2V_REGENERATE_GOLDEN") == "1"

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if regen or not path.exists():
            if not regen:
                pytest.fail("golden file {} is missing; run pytest --regenerate-golden".format(path))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        assert text == path.read_text(), "differs from golden file {} (regenerate with --regenerate-golden " \
                                         "if the change is intended)".format(path)
    return check


def v2v_cmd(*args: str, json_mode: bool = False, env=None, timeout: float = 3600):
    """Run the real CLI in a child process; returns CompletedProcess with text output."""
    argv = [sys.executable, "-m", "v2v"] + list(args)
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT),
                          env=env, timeout=timeout)


@pytest.fixture(scope="session")
def accel():
    """The accelerator the product chooses on this host (the probe, cached by the product itself)."""
    from v2v.doctor import choose_accel
    return choose_accel().accel


@pytest.fixture(scope="session")
def libvirtd():
    """A running libvirtd on qemu:///system (started by scripts/services.sh where there is no systemd)."""
    if os.geteuid() != 0:
        pytest.skip("needs root for qemu:///system")
    subprocess.run(["bash", str(ROOT / "scripts" / "services.sh")], check=True, timeout=90)
    return "qemu:///system"


def _build(variant: str) -> str:
    from testvms import build
    return str(build(variant))


@pytest.fixture(scope="session")
def foreign_guest():
    """The cached raw image of the foreign Debian 12 guest (read-only: tests use overlays or copies)."""
    return _build("debian12-foreign")


@pytest.fixture(scope="session")
def foreign_guest_lvm():
    return _build("debian12-foreign-lvm")


def sha256(path: str) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 22), b""):
            h.update(b)
    return h.hexdigest()


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def convert_json(*args: str, timeout: float = 3600):
    """Run `v2v convert ... --json`; returns (CompletedProcess, events list, result dict or None)."""
    import json
    cp = v2v_cmd(*args, "--json", timeout=timeout)
    events = [json.loads(ln) for ln in cp.stdout.splitlines() if ln.startswith("{")]
    result = events[-1] if events and events[-1]["event"] == "result" else None
    return cp, events, result


@pytest.fixture(scope="session")
def converted_foreign(tmp_path_factory, foreign_guest):
    """The plain foreign guest converted once per run with --to local (no boot here)."""
    out = tmp_path_factory.mktemp("converted-foreign")
    before = sha256(foreign_guest)
    cp, events, result = convert_json("convert", "disk", foreign_guest, "--to", "local", "--out", str(out),
                                      "--name", "web1", "--mac", "52:54:00:00:00:42")
    assert cp.returncode == 0, cp.stderr
    return {"out": out, "events": events, "result": result, "source": foreign_guest,
            "source_sha_before": before}


@pytest.fixture
def open_guest(accel):
    """open_guest(disk_path, fmt) -> Appliance mounted on a throwaway overlay of the disk."""
    import tempfile

    from diskfmt import image
    from guest_fixups.appliance import Appliance
    apps = []
    tmp = tempfile.mkdtemp(prefix="v2v-test-")

    def opener(path: str, fmt: str):
        ov = os.path.join(tmp, "ov{}.qcow2".format(len(apps)))
        image.create_overlay(path, fmt, ov)
        app = Appliance([(ov, "qcow2")], accel=accel)
        app.launch()
        apps.append(app)
        root = app.g.inspect_os()[0]
        app.mount_guest(sorted(app.g.inspect_get_mountpoints(root).items(), key=lambda kv: len(kv[0])))
        return app
    yield opener
    for app in apps:
        app.close()
    shutil.rmtree(tmp, ignore_errors=True)
