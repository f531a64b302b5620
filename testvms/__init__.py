"""Test guests built from scratch by recipes and cached by recipe hash (see testvms/cache.py).

    from testvms import build, overlay
    img = build("debian12-foreign")            # path of the cached raw image (never write to it)
    ov = overlay(str(img), "/tmp/x.qcow2")     # a throwaway qcow2 on top, for tests that write

Variants: debian12-foreign, debian12-foreign-lvm (testvms/debian.py). Root password: v2v.
Windows (synthetic, never booted): win2019-bios, win2008r2-bios, win11-uefi and the refusal variants
win2019-hibernated, win2019-bitlocker, win2019-dynamic (testvms/windows/guest.py).
CLI: python3 -m testvms build <variant> [--cache DIR] [--force]
"""
from pathlib import Path
from typing import Callable, Optional

from . import debian
from .debian import VARIANTS, overlay  # noqa: F401
from .windows import guest as windows_guest

ALL_VARIANTS = sorted(list(VARIANTS) + windows_guest.ALL_VARIANTS)


def build(variant: str, cache_path: Optional[str] = None, *, force: bool = False,
          log: Callable[[str], None] = print) -> Path:
    """The cached raw image of any test guest (Linux or Windows), built first if needed."""
    recipe = windows_guest if variant.startswith("win") else debian
    return recipe.build(variant, cache_path, force=force, log=log)


def image_path(variant: str, cache_path: Optional[str] = None) -> Path:
    recipe = windows_guest if variant.startswith("win") else debian
    return recipe.image_path(variant, cache_path)
