"""WinRE: give the Windows Recovery Environment the same boot driver as the converted system.

Recovery boots from `winre.wim` (a WIM with one WinPE image) named by
`\\Windows\\System32\\Recovery\\ReAgent.xml`. Without the change, a guest converted to virtio boots but
its recovery environment does not see the disk. The fix runs on the host with wimlib:

    lines = fix_winre(app, edit_system, files)        # in the conversion (guest mounted at "/")
    lines = edit_wim(local_wim, edit_system, files)   # the host-side part, on a local file

edit_system(hive) changes the image's SYSTEM hive (the boot-driver keys) and returns report lines;
files are (host path, path inside the image) pairs, e.g. ("/tmp/viostor.sys",
"\\Windows\\System32\\drivers\\viostor.sys"). The guest's wim is replaced only after the edited copy
passed `wimlib-imagex verify` and a re-read of what was written.
"""
import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from lxml import etree

from v2v.command import run
from v2v.errors import CommandError, FixupError

from .registry import Hive

REAGENT_XML = "/Windows/System32/Recovery/ReAgent.xml"
STAGED_WIM = "/Windows/System32/Recovery/Winre.wim"    # where WinRE waits while it is disabled
WIM_SYSTEM_HIVE = "/Windows/System32/config/SYSTEM"
ZERO_GUID = "{00000000-0000-0000-0000-000000000000}"
SCRATCH_MOUNT = "/.v2v-winre-partition"                 # where a separate recovery partition is mounted

SystemEdit = Callable[[Hive], List[str]]
ImageFile = Tuple[str, str]


@dataclass(frozen=True)
class WinreLocation:
    """The <WinreLocation> of ReAgent.xml: a directory on the partition at byte `offset` of the disk
    whose MBR signature is `disk_id` (MBR) or whose GUID is `disk_guid` (GPT)."""
    directory: str          # "\\Recovery\\WindowsRE"
    disk_id: int            # MBR disk signature (decimal in the XML); 0 on GPT
    offset: int             # the partition's byte offset on its disk
    disk_guid: str          # GPT disk GUID, ZERO_GUID on MBR
    bcd_id: str             # <WinreBCD id>: the recovery loader's BCD object

    @property
    def wim_path(self) -> str:
        """The wim's path on its partition, with forward slashes as libguestfs wants."""
        return self.directory.replace("\\", "/").rstrip("/") + "/Winre.wim"


def parse_reagent(data: bytes) -> Optional[WinreLocation]:
    """The WinreLocation of a ReAgent.xml, or None when it names none (WinRE disabled or staged).

    Raises FixupError when the file is not XML."""
    try:
        root = etree.fromstring(data, parser=etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError as e:
        raise FixupError("ReAgent.xml is not valid XML: {}".format(e)) from None
    loc = _child(root, "WinreLocation")
    bcd = _child(root, "WinreBCD")
    if loc is None or not (loc.get("path") or "").strip():
        return None
    return WinreLocation(directory=loc.get("path", "").strip(), disk_id=_int(loc.get("id")),
                         offset=_int(loc.get("offset")), disk_guid=(loc.get("guid") or ZERO_GUID).lower(),
                         bcd_id=(bcd.get("id", "") if bcd is not None else ""))


def _child(root: "etree._Element", name: str) -> Optional["etree._Element"]:
    # Windows writes the element names in one case, but hand-edited files vary
    for el in root:
        if isinstance(el.tag, str) and el.tag.lower() == name.lower():
            return el
    return None


def _int(text: Optional[str]) -> int:
    try:
        return int((text or "0").strip(), 0)
    except ValueError:
        return 0


# --- the host-side edit of a wim ----------------------------------------------------------------------

def _wimlib(argv: Sequence[str], what: str, stdin: Optional[bytes] = None) -> str:
    # wim paths are case-insensitive on Windows; make wimlib look them up the same way
    env = dict(os.environ, WIMLIB_IMAGEX_IGNORE_CASE="1")
    return run(["wimlib-imagex"] + list(argv), input=stdin, env=env, what=what).stdout.decode(
        "utf-8", "replace")


def wim_boot_index(wim: str) -> int:
    """The image WinRE boots (the header's boot index), or 1 when none is marked."""
    info = _wimlib(["info", wim, "--header"], "wimlib-imagex info")
    m = re.search(r"(?im)^\s*Boot Index\s*=\s*(\d+)", info)
    index = int(m.group(1)) if m else 0
    return index or 1


def _quote(path: str) -> str:
    # wimlib's update commands split on spaces and honour double quotes
    if '"' in path:
        raise FixupError("a path with a double quote cannot be added to a wim: {}".format(path))
    return '"{}"'.format(path)


def _image_path(path: str) -> str:
    return "/" + path.replace("\\", "/").lstrip("/")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def edit_wim(wim: str, edit_system: SystemEdit, files: Sequence[ImageFile] = (),
             work_dir: Optional[str] = None) -> List[str]:
    """Apply edit_system to the boot image's SYSTEM hive and add `files` to the wim at path `wim`.

    The edit happens on a copy; `wim` is replaced (by rename) only when the copy passes
    `wimlib-imagex verify` and reads back with the same hive and files. A corrupt or unreadable wim
    raises FixupError with one line and leaves `wim` untouched. Returns report lines."""
    name = os.path.basename(wim)
    for host, _ in files:
        if not os.path.isfile(host):
            raise FixupError("WinRE: the driver file {} does not exist".format(host))
    with tempfile.TemporaryDirectory(prefix="v2v-winre-", dir=work_dir) as tmp:
        new = os.path.join(tmp, "edited.wim")
        try:
            _wimlib(["verify", wim], "wimlib-imagex verify")
            index = wim_boot_index(wim)
            shutil.copyfile(wim, new)
        except CommandError as e:
            raise FixupError("WinRE image {} is unreadable: {}".format(name, _one_line(str(e)))) from None
        hive_dir = os.path.join(tmp, "hive")
        try:
            _wimlib(["extract", new, str(index), WIM_SYSTEM_HIVE, "--dest-dir=" + hive_dir, "--no-acls"],
                    "extracting the SYSTEM hive from " + name)
        except CommandError as e:
            raise FixupError("WinRE image {} has no readable {} in image {}: {}".format(
                name, WIM_SYSTEM_HIVE.replace("/", "\\"), index, _one_line(str(e), 160))) from None
        hive_path = os.path.join(hive_dir, "SYSTEM")
        hive = Hive(hive_path, write=True)
        lines = list(edit_system(hive))
        hive.commit()
        Hive(hive_path)  # what goes into the image must parse
        added: Dict[str, str] = {WIM_SYSTEM_HIVE: _sha256(hive_path)}
        commands = ["add {} {}".format(_quote(hive_path), _quote(WIM_SYSTEM_HIVE))]
        for host, inside in files:
            dest = _image_path(inside)
            commands.append("add {} {}".format(_quote(os.path.abspath(host)), _quote(dest)))
            added[dest] = _sha256(host)
        try:
            _wimlib(["update", new, str(index), "--rebuild"], "wimlib-imagex update",
                    stdin=("\n".join(commands) + "\n").encode("utf-8"))
            _wimlib(["verify", new], "wimlib-imagex verify (after the update)")
            check_dir = os.path.join(tmp, "check")
            _wimlib(["extract", new, str(index)] + sorted(added)
                    + ["--dest-dir=" + check_dir, "--no-acls", "--preserve-dir-structure"],
                    "re-reading the updated " + name)
        except CommandError as e:
            raise FixupError("WinRE image {}: the update failed: {}".format(
                name, _one_line(str(e)))) from None
        for dest, digest in sorted(added.items()):
            got = check_dir + dest
            if not os.path.isfile(got) or _sha256(got) != digest:
                raise FixupError("WinRE image {}: {} did not read back as written".format(name, dest))
        Hive(check_dir + WIM_SYSTEM_HIVE)
        # a copy beside the original, then a rename: `wim` is either the old file or the whole new one
        staged = wim + ".v2v-new"
        shutil.copyfile(new, staged)
        os.replace(staged, wim)
    lines.append("WinRE {} image {}: SYSTEM hive updated, {} file(s) added ({})".format(
        name, index, len(files), ", ".join(os.path.basename(i.replace("\\", "/")) for _, i in files) or "-"))
    return lines


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


# --- in the guest -------------------------------------------------------------------------------------

def fix_winre(app, edit_system: SystemEdit, files: Sequence[ImageFile] = (),
              dry_run: bool = False) -> List[str]:
    """Find WinRE of the Windows guest mounted at "/" in `app` and edit its wim (see edit_wim).

    No ReAgent.xml or no wim: one "no WinRE" line, not an error. WinRE on a partition that is not
    among the appliance's disks: a line saying so, nothing changed. The guest's wim is replaced (upload
    to a temporary name, then rename) only after the edited copy was verified."""
    g = app.g
    reagent = _guest_file(g, REAGENT_XML)
    if reagent is None:
        return ["no WinRE (no \\Windows\\System32\\Recovery\\ReAgent.xml)"]
    loc = parse_reagent(g.read_file(reagent))
    if loc is None:
        # disabled: reagentc keeps the wim staged under System32 and copies it out on enable
        staged = _guest_file(g, STAGED_WIM)
        if staged is not None:
            return _edit_guest_wim(app, staged, edit_system, files, dry_run)
        return ["no WinRE (ReAgent.xml names no WinreLocation and no staged Winre.wim)"]
    where = _locate_partition(g, loc)
    if where is None:
        return ["WinRE not updated: it lives on the partition at offset {} of disk {}, which is not part "
                "of this conversion (recovery will not see a virtio disk)".format(loc.offset, _disk_name(loc))]
    device, mounted_at = where
    if mounted_at is not None:
        return _edit_at(app, mounted_at, loc, edit_system, files, dry_run, "")
    g.mkdir(SCRATCH_MOUNT)
    try:
        try:
            g.mount(device, SCRATCH_MOUNT)
        except RuntimeError as e:
            return ["WinRE not updated: its partition {} does not mount ({})".format(
                device, _one_line(str(e), 120))]
        try:
            return _edit_at(app, SCRATCH_MOUNT, loc, edit_system, files, dry_run,
                            " on the recovery partition " + device)
        finally:
            g.umount(SCRATCH_MOUNT)
    finally:
        g.rmdir(SCRATCH_MOUNT)


def _edit_at(app, mountpoint: str, loc: WinreLocation, edit_system: SystemEdit, files: Sequence[ImageFile],
             dry_run: bool, where: str) -> List[str]:
    real = _guest_file(app.g, mountpoint.rstrip("/") + loc.wim_path)
    if real is None:
        return ["no WinRE ({} names {}, which does not exist{})".format(
            "ReAgent.xml", loc.directory + "\\Winre.wim", where)]
    lines = _edit_guest_wim(app, real, edit_system, files, dry_run)
    return lines[:-1] + [lines[-1] + where] if where and lines else lines


def _edit_guest_wim(app, real: str, edit_system: SystemEdit, files: Sequence[ImageFile],
                    dry_run: bool) -> List[str]:
    g = app.g
    if dry_run:
        return ["would add {} file(s) and the boot-driver keys to WinRE {}".format(len(files), real)]
    with tempfile.TemporaryDirectory(prefix="v2v-winre-dl-") as tmp:
        local = os.path.join(tmp, "winre.wim")
        g.download(real, local)
        lines = edit_wim(local, edit_system, files, work_dir=tmp)
        staging = real + ".v2v-new"
        g.upload(local, staging)
        if g.filesize(staging) != os.path.getsize(local):
            g.rm_f(staging)
            raise FixupError("WinRE: the upload of {} came back short".format(real))
        g.rename(staging, real)
    return lines


def _guest_file(g, path: str) -> Optional[str]:
    """The real (case-resolved) path of a regular file in the guest, or None."""
    try:
        real = g.case_sensitive_path(path)
    except RuntimeError:      # a missing directory on the way
        return None
    return real if g.is_file(real) else None


def _disk_name(loc: WinreLocation) -> str:
    return "GUID " + loc.disk_guid if loc.disk_guid != ZERO_GUID else "signature 0x{:08X}".format(loc.disk_id)


def _locate_partition(g, loc: WinreLocation) -> Optional[Tuple[str, Optional[str]]]:
    """(partition device, where it is mounted or None) of the partition ReAgent.xml names, or None."""
    mounted = dict(g.mountpoints())         # device -> where it is mounted
    candidates = []
    for part in g.list_partitions():
        disk = g.part_to_dev(part)
        num = g.part_to_partnum(part)
        start = next((p["part_start"] for p in g.part_list(disk) if p["part_num"] == num), None)
        if start != loc.offset:
            continue
        candidates.append((part, disk))
    for part, disk in candidates:
        if _disk_matches(g, disk, loc):
            return part, mounted.get(part)
    # an MBR signature that matches no disk (unset, or changed by a cloning tool or by Windows itself on a
    # collision) with a single MBR partition at that offset: trust it. A GPT disk GUID is kept as it is.
    if len(candidates) == 1 and loc.disk_guid == ZERO_GUID and g.part_get_parttype(candidates[0][1]) == "msdos":
        part = candidates[0][0]
        return part, mounted.get(part)
    return None


def _disk_matches(g, disk: str, loc: WinreLocation) -> bool:
    kind = g.part_get_parttype(disk)
    if kind == "gpt":
        return g.part_get_disk_guid(disk).strip("{}").lower() == loc.disk_guid.strip("{}").lower()
    if kind == "msdos":
        signature = int.from_bytes(g.pread_device(disk, 4, 0x1B8), "little")
        return signature == loc.disk_id
    return False
