"""OS ids from osinfo-db (osinfo-query os), not from a table of our own."""
import functools
import re
from typing import Dict, Optional, Tuple

from .command import output
from .errors import CommandError


@functools.lru_cache(maxsize=1)
def _table() -> Dict[str, Tuple[str, str]]:
    """short-id -> (id URL, version)."""
    try:
        text = output(["osinfo-query", "os", "--fields=short-id,id,version"])
    except CommandError:
        return {}
    lines = text.splitlines()
    if len(lines) < 2:
        return {}
    header = [c.strip().lower() for c in lines[0].split("|")]
    try:   # osinfo-query prints columns in its own order, whatever order --fields asks for
        i_short, i_id, i_ver = header.index("short id"), header.index("id"), header.index("version")
    except ValueError:
        return {}
    table = {}
    for line in lines[2:]:
        cols = [c.strip() for c in line.split("|")]
        if len(cols) == len(header) and cols[i_short]:
            table[cols[i_short]] = (cols[i_id], cols[i_ver])
    return table


def _vkey(v: str) -> Tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)) or (0,)


def lookup(short_id: str) -> Tuple[str, Optional[str]]:
    """(osinfo id URL, note) for a libguestfs short id such as debian12.

    When the installed osinfo-db is older than the guest, the newest id of the same distro that is not
    newer than the guest is used, and the note says so.
    """
    table = _table()
    if short_id in table:
        return table[short_id][0], None
    m = re.match(r"^([a-z]+?)(\d[\d.]*)$", short_id or "")
    if not table:
        return "", "osinfo-query is not available (apt-get install libosinfo-bin); no OS id in the domain"
    if m:
        distro, version = m.group(1), m.group(2)
        older = [(k, v) for k, v in table.items()
                 if re.match(r"^{}\d".format(re.escape(distro)), k) and _vkey(v[1]) <= _vkey(version)]
        if older:
            best = max(older, key=lambda kv: _vkey(kv[1][1]))
            return best[1][0], "osinfo-db does not know {}; using {} (update the osinfo-db package)".format(
                short_id, best[0])
    generic = "http://libosinfo.org/linux/2020" if "linux2020" in table else ""
    return generic, "osinfo-db does not know {}; {}".format(
        short_id, "using the generic linux2020 id" if generic else "no OS id in the domain")
