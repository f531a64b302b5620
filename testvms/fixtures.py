"""Plain functions for pytest fixtures (the lead wires them into tests/conftest.py).

    @pytest.fixture(scope="session")
    def foreign_guest():            return str(testvms.fixtures.foreign_guest())

    @pytest.fixture
    def foreign_guest_overlay(foreign_guest, tmp_path):
        return testvms.fixtures.guest_overlay(foreign_guest, tmp_path)

    @pytest.fixture(scope="session")
    def win2019_bios():             return str(testvms.fixtures.windows_image("win2019-bios"))
"""
import os
from pathlib import Path
from typing import Optional

from . import debian


def foreign_guest(cache: Optional[str] = None) -> Path:
    """The cached raw image of debian12-foreign (built once per recipe hash). Never write to it."""
    return debian.build("debian12-foreign", cache)


def foreign_guest_lvm(cache: Optional[str] = None) -> Path:
    """The cached raw image of debian12-foreign-lvm. Never write to it."""
    return debian.build("debian12-foreign-lvm", cache)


def windows_image(variant: str, cache: Optional[str] = None) -> Path:
    """The cached raw image of a synthetic Windows guest (testvms/windows/guest.py). Never write to it."""
    from .windows import guest
    return guest.build(variant, cache, log=lambda s: None)


def guest_overlay(image, directory, name: str = "overlay.qcow2") -> str:
    """A writable throwaway qcow2 in `directory` backed by the cached raw `image` (which stays untouched)."""
    return debian.overlay(str(image), os.path.join(str(directory), name))


def guest_copy(image, directory, name: str = "copy.img") -> str:
    """A sparse writable copy of the image (for code that insists on a raw file of its own)."""
    import subprocess
    dest = os.path.join(str(directory), name)
    subprocess.run(["cp", "--sparse=always", str(image), dest], check=True)
    os.chmod(dest, 0o644)
    return dest
