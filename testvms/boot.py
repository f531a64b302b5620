"""Boot a test image under qemu on a chosen bus (through a throwaway overlay) and watch the serial console.

A thin layer over the product's boot watcher (v2v.verify.boot_and_watch): the unconverted test guests
boot on an i440fx machine with their disk on IDE, SATA or virtio-blk.
"""
import os
import shutil
import tempfile
from typing import NamedTuple, Optional, Tuple

from diskfmt import image as qemu_img
from v2v.verify import boot_and_watch

READY_MARKER = "V2V-TESTGUEST-READY"


class BootResult(NamedTuple):
    ok: bool
    seconds: float
    tail: Tuple[str, ...]           # last console lines (escape sequences removed)
    matched: str                    # the marker line, or the failure pattern seen, "" on timeout
    log: str                        # the whole console log


def boot(image: str, bus: str = "ide", fmt: str = "raw", *, marker: str = READY_MARKER,
         timeout: float = 300.0, accel: str = "tcg", memory_mib: int = 1024, smp: int = 2,
         log_path: Optional[str] = None) -> BootResult:
    """Boot `image` (never written: qemu runs on a qcow2 overlay in a temp dir) with its disk on `bus`
    (ide | sata | virtio); ok when `marker` appears on ttyS0, not ok on a failure pattern or timeout."""
    if bus not in ("ide", "sata", "virtio"):
        raise ValueError("bus must be ide, sata or virtio, not {!r}".format(bus))
    work = tempfile.mkdtemp(prefix="v2v-testvm-boot-")
    try:
        ov = os.path.join(work, "boot.qcow2")
        qemu_img.create_overlay(image, fmt, ov)
        out = boot_and_watch([(ov, "qcow2")], accel=accel, success=marker, bus=bus, machine="pc",
                             memory_mib=memory_mib, vcpus=smp, timeout=timeout, log_path=log_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    matched = out.matched or out.reason
    return BootResult(out.ok, round(out.seconds, 1), tuple(out.console.splitlines()[-30:]), matched, out.console)
