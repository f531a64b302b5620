"""Old-hypervisor block device names (/dev/sda1, /dev/hdb2, /dev/xvda1 ...) and how to replace them.

Pure: the caller supplies resolve(device) -> "UUID=..." (or None) from the appliance.
"""
import re
from typing import Callable, List, Optional, Tuple

# Names that change when the disk bus changes; /dev/mapper, /dev/disk/by-*, LABEL= and UUID= do not.
_NAME = re.compile(r"^/dev/(?:(?P<sd>[shv]d|xvd)(?P<disk>[a-z]+)(?P<part>\d*)"
                   r"|cciss/c0d(?P<cdisk>\d+)(?:p(?P<cpart>\d+))?)$")


def is_bus_name(dev: str) -> bool:
    return _NAME.match(dev) is not None


def appliance_device(dev: str) -> Optional[str]:
    """The appliance's name for a guest bus-dependent name: disks keep their order, all become sdX."""
    m = _NAME.match(dev)
    if not m:
        return None
    if m.group("cdisk") is not None:
        idx = int(m.group("cdisk"))
        part = m.group("cpart") or ""
    else:
        letters = m.group("disk")
        idx = 0
        for c in letters:
            idx = idx * 26 + (ord(c) - ord("a") + 1)
        idx -= 1
        part = m.group("part")
    return "/dev/sd{}{}".format(_letters(idx), part)


def _letters(idx: int) -> str:
    s = ""
    idx += 1
    while idx:
        idx, r = divmod(idx - 1, 26)
        s = chr(ord("a") + r) + s
    return s


Resolver = Callable[[str], Optional[str]]


def rewrite_table(text: str, field: int, resolve: Resolver) -> Tuple[str, List[str], List[str]]:
    """Rewrite column `field` (0-based) of an fstab-like table. Returns (text, changes, unresolved).

    Comments, blank lines and spacing of untouched lines are kept as they were.
    """
    out: List[str] = []
    changes: List[str] = []
    unresolved: List[str] = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\n")
        stripped = body.strip()
        if not stripped or stripped.startswith("#"):
            out.append(line)
            continue
        parts = re.split(r"(\s+)", body)   # keep the separators to keep the spacing
        words = parts[0::2]
        lead = ""
        if words and words[0] == "":       # leading whitespace
            lead = parts[1]
            parts = parts[2:]
            words = parts[0::2]
        if len(words) <= field:
            out.append(line)
            continue
        dev = words[field]
        if is_bus_name(dev):
            new = resolve(dev)
            if new:
                parts[field * 2] = new
                changes.append("{} -> {}".format(dev, new))
            else:
                unresolved.append(dev)
        out.append(lead + "".join(parts) + ("\n" if line.endswith("\n") else ""))
    return "".join(out), changes, unresolved


_CMDLINE_DEV = re.compile(r"(?P<key>\b(?:root|resume|RESUME)=)(?P<dev>/dev/[A-Za-z0-9/]+)")


def rewrite_words(text: str, resolve: Resolver) -> Tuple[str, List[str]]:
    """Replace root=/dev/sdX and resume=/dev/sdX (kernel command lines, RESUME= files)."""
    changes: List[str] = []

    def sub(m: "re.Match[str]") -> str:
        dev = m.group("dev")
        new = resolve(dev) if is_bus_name(dev) else None
        if not new:
            return m.group(0)
        changes.append("{}{} -> {}{}".format(m.group("key"), dev, m.group("key"), new))
        return m.group("key") + new

    return _CMDLINE_DEV.sub(sub, text), changes
