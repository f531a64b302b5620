"""e2e fixtures: the booted source host (one per test run, shared by the live capture and standby tests)."""
import os
import shutil

import pytest


@pytest.fixture(scope="session")
def live_source(foreign_guest, accel):
    """The foreign Debian 12 guest booted under qemu on SATA as the running "VMware host" to migrate, its
    sshd reached only through 127.0.0.1:PORT (qemu user networking); see tests/e2e/live_source.py.
    Tests that change it say what they change; qemu is killed when the session ends."""
    if os.geteuid() != 0:
        pytest.skip("needs root (libguestfs writes the overlay, loop devices for the checks)")
    missing = [t for t in ("qemu-system-x86_64", "ssh", "ssh-keygen", "qemu-img") if shutil.which(t) is None]
    if missing:
        pytest.skip("needs {} (scripts/setup.sh installs them)".format(", ".join(missing)))
    from tests.e2e.live_source import booted_source
    with booted_source(foreign_guest, accel) as src:
        yield src


def pytest_collection_modifyitems(config, items):
    """The tests on the booted source run last, in their own order (the capture before the standby): the
    source is booted for them only and shut down as the session ends, not left running under other tests."""
    live = [i for i in items if "live_source" in getattr(i, "fixturenames", ())]
    if live:
        ids = {id(i) for i in live}
        items[:] = [i for i in items if id(i) not in ids] + live
