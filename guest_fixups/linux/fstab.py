"""fstab, crypttab and the resume device: bus-dependent names (/dev/sda1 ...) become UUID=."""
from typing import List, Optional

from v2v.types import FixLine

from .devnames import appliance_device, rewrite_table, rewrite_words
from .distro import LinuxDistro

# (file, column holding the device)
TABLES = (("/etc/fstab", 0), ("/etc/crypttab", 1))
RESUME_FILES = ("/etc/initramfs-tools/conf.d/resume", "/etc/uswsusp.conf")


def resolver(d: LinuxDistro):
    """guest name -> UUID=... via the appliance's view of the same disk (None if it has no UUID)."""
    g = d.app.g
    cache = {}

    def resolve(dev: str) -> Optional[str]:
        if dev in cache:
            return cache[dev]
        adev = appliance_device(dev)
        val = None
        if adev is not None:
            try:
                uuid = g.vfs_uuid(adev)
            except RuntimeError:
                uuid = ""
            val = "UUID=" + uuid if uuid else None
        cache[dev] = val
        return val

    return resolve


def fix_device_names(d: LinuxDistro) -> List[FixLine]:
    resolve = resolver(d)
    lines = []
    for path, field in TABLES:
        if not d.app.is_file(path):
            continue
        text = d.app.read_text(path)
        new, changes, unresolved = rewrite_table(text, field, resolve)
        name = path.rsplit("/", 1)[-1]
        if changes:
            if not d.dry_run:
                d.app.write_text(path, new)
            lines.append(FixLine(name, d.changed, "{}: {}".format(path, ", ".join(changes))))
        if unresolved:
            lines.append(FixLine(name, "warning", "{}: no UUID for {}; those entries still name a "
                                 "device that will not exist on KVM".format(path, ", ".join(unresolved))))
        if not changes and not unresolved:
            lines.append(FixLine(name, "unchanged", "{}: no bus-dependent device names".format(path)))
    for path in RESUME_FILES:
        if d.app.is_file(path):
            text = d.app.read_text(path)
            new, changes = rewrite_words(text, resolve)
            if changes:
                if not d.dry_run:
                    d.app.write_text(path, new)
                lines.append(FixLine("resume", d.changed, "{}: {}".format(path, ", ".join(changes))))
    return lines
