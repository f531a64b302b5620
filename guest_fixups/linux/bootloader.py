"""GRUB: no device names on the kernel command line, no stale device.map, grub.cfg regenerated."""
import re
from typing import List

from v2v.types import FixLine

from .devnames import rewrite_words
from .distro import LinuxDistro
from .fstab import resolver

_DISABLE_UUID = re.compile(r"^(\s*GRUB_DISABLE_LINUX_UUID\s*=\s*[\"']?true[\"']?\s*)$", re.M)
DEVICE_MAPS = ("/boot/grub/device.map", "/boot/grub2/device.map")


def fix_bootloader_config(d: LinuxDistro) -> List[FixLine]:
    resolve = resolver(d)
    changes: List[str] = []
    for path in d.bootloader_config_files():
        if not d.app.is_file(path):
            continue
        text = d.app.read_text(path)
        new, words = rewrite_words(text, resolve)
        changes += ["{}: {}".format(path, w) for w in words]
        new, n = _DISABLE_UUID.subn(r"# \1    # disabled by v2v: device names change on KVM", new)
        if n:
            changes.append("{}: GRUB_DISABLE_LINUX_UUID=true commented out".format(path))
        if new != text and not d.dry_run:
            d.app.write_text(path, new)
    for path in DEVICE_MAPS:
        if d.app.is_file(path):
            if not d.dry_run:
                d.app.g.mv(path, path + ".v2v-old")
            changes.append("{} moved aside (it names the old disks)".format(path))
    if not changes:
        return [FixLine("bootloader-config", "unchanged", "kernel command line names no bus-dependent device")]
    return [FixLine("bootloader-config", d.changed, "; ".join(changes))]
