"""Test guests built from scratch by recipes and cached by recipe hash (see testvms/cache.py).

    from testvms import build, overlay
    img = build("debian12-foreign")            # path of the cached raw image (never write to it)
    ov = overlay(str(img), "/tmp/x.qcow2")     # a throwaway qcow2 on top, for tests that write

Variants: debian12-foreign, debian12-foreign-lvm (testvms/debian.py). Root password: v2v.
CLI: python3 -m testvms build <variant> [--cache DIR] [--force]
"""
from .debian import VARIANTS, build, image_path, overlay  # noqa: F401
