"""A virtio-win driver tree: which driver package to install for a guest's Windows version, edition and
architecture.

``scan`` reads a directory (an extracted virtio-win ISO or an older tree; ISOs are extracted by the
caller) in either layout: ``<driver>/<os>/<arch>/`` as virtio-win ISOs have (viostor/2k19/amd64/), or
``<arch>/<os>/`` and ``<os>/<arch>/`` with every driver in one directory. ``Catalog.select`` is pure.
"""
import datetime
import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .inf import VER_NT_SERVER, VER_NT_WORKSTATION, DriverVer, InfError, InfFile, Model, ServiceInstall, parse

DEFAULT_WANTED = ("viostor", "vioscsi", "netkvm", "balloon", "vioserial")

# The boot (storage) driver for each disk bus the converted guest can have.
BOOT_DRIVER_FOR_BUS = {"virtio": "viostor", "scsi": "vioscsi"}

# Vendor 1AF4 device ids of each driver (transitional, modern): an INF under one of these names that
# has none of them is not the driver it claims to be.
VIRTIO_PCI_DEVICES = {
    "netkvm": ("1000", "1041"),
    "viostor": ("1001", "1042"),
    "balloon": ("1002", "1045"),
    "vioserial": ("1003", "1043"),
    "vioscsi": ("1004", "1048"),
    "viorng": ("1005", "1044"),
}

# INF file stems whose driver goes by another name (the directory name of the virtio-win ISO).
_NAME_ALIASES = {"vioser": "vioserial"}

_ARCH_DIRS = {"x86": "x86", "i386": "x86", "amd64": "amd64", "x64": "amd64", "arm64": "arm64"}
_GUEST_ARCHES = {"i386": "x86", "i486": "x86", "i586": "x86", "i686": "x86", "x86": "x86",
                 "x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
_SKIPPED_SUFFIXES = (".pdb",)  # debug symbols: large, never needed in the guest


class CatalogError(ValueError):
    """A directory that is not a usable virtio-win tree; str() is one line."""


@dataclass(frozen=True)
class OsToken:
    """A virtio-win OS directory name and the Windows releases it stands for."""

    token: str
    major: int
    minor: int
    edition: str  # 'client' | 'server'
    build: int = 0  # first build of the release, where builds tell releases of one version apart
    last_build: Optional[int] = None  # last build before the next release; None: open-ended

    @property
    def key(self) -> Tuple[int, int, int]:
        return (self.major, self.minor, self.build)

    def contains(self, major: int, minor: int, build: Optional[int]) -> bool:
        if (major, minor) != (self.major, self.minor):
            return False
        if build is None:
            return True
        return build >= self.build and (self.last_build is None or build <= self.last_build)


OS_TOKENS: Dict[str, OsToken] = {t.token: t for t in (
    OsToken("xp", 5, 1, "client"),
    OsToken("2k3", 5, 2, "server"),
    OsToken("vista", 6, 0, "client"),
    OsToken("2k8", 6, 0, "server"),
    OsToken("w7", 6, 1, "client"),
    OsToken("2k8r2", 6, 1, "server"),
    OsToken("w8", 6, 2, "client"),
    OsToken("2k12", 6, 2, "server"),
    OsToken("w8.1", 6, 3, "client"),
    OsToken("2k12r2", 6, 3, "server"),
    OsToken("w10", 10, 0, "client", 10240, 21999),
    OsToken("w11", 10, 0, "client", 22000),
    OsToken("2k16", 10, 0, "server", 14393, 17762),
    OsToken("2k19", 10, 0, "server", 17763, 20347),
    OsToken("2k22", 10, 0, "server", 20348, 26099),
    OsToken("2k25", 10, 0, "server", 26100),
)}

# Directory names older trees used for the same releases.
_TOKEN_ALIASES = {
    "winxp": "xp", "wxp": "xp", "win2003": "2k3", "wnet": "2k3", "win2008": "2k8", "win7": "w7",
    "win2008r2": "2k8r2", "win8": "w8", "win2012": "2k12", "win8.1": "w8.1", "win2012r2": "2k12r2",
    "win10": "w10", "win11": "w11", "win2016": "2k16", "win2019": "2k19", "win2022": "2k22",
    "win2025": "2k25",
}

# The first build of Windows 10.0 of each edition: the guest's build when it is not known.
_FIRST_BUILD = {"client": 10240, "server": 14393}


@dataclass(frozen=True)
class Package:
    """One driver INF found in the tree, with the OS and arch its directory names."""

    name: str  # 'viostor', 'netkvm', 'balloon', 'vioserial' ...
    inf_path: str
    os_token: str
    arch: str  # 'x86' | 'amd64' | 'arm64'
    own_dir: bool  # the only INF in its directory: every file there belongs to it
    dir_files: Tuple[str, ...]  # regular files in the INF's directory
    inf: InfFile = field(repr=False, compare=False)


@dataclass(frozen=True)
class Skipped:
    """An INF that scan() did not catalogue, and why."""

    name: str
    path: str
    reason: str


@dataclass(frozen=True)
class Driver:
    """The driver package chosen for the guest."""

    name: str
    inf_path: str
    files: Tuple[str, ...]  # absolute paths to copy into the guest, the INF first
    os_token: str
    arch: str
    exact: bool  # built for the guest's own release (False: for an older one of its edition)
    driver_ver: Optional[DriverVer]
    class_name: Optional[str]
    class_guid: Optional[str]
    service: Optional[ServiceInstall]  # the function driver's service (name, type, start, group, binary)
    hardware_ids: Tuple[str, ...]  # PCI ids of the models that apply to the guest, full ids first
    inf: InfFile = field(repr=False, compare=False)


@dataclass(frozen=True)
class Missing:
    name: str
    reason: str


@dataclass(frozen=True)
class Selection:
    os_token: Optional[str]  # the guest's own release token, None when no token names it
    arch: str
    drivers: Tuple[Driver, ...]  # in the order wanted
    missing: Tuple[Missing, ...]

    def driver(self, name: str) -> Optional[Driver]:
        for d in self.drivers:
            if d.name == _canonical(name):
                return d
        return None


def guest_os_token(os_major: int, os_minor: int, product_type: str, build: Optional[int] = None) \
        -> Optional[str]:
    """The virtio-win token of this Windows release ('w10', '2k19' ...), None when none names it.

    Windows 5.2 is '2k3' for both editions (XP x64 shares Server 2003's drivers). An unknown 10.0 build
    is taken as the edition's first 10.0 release.
    """
    edition = _edition(product_type)
    if (os_major, os_minor) == (5, 2):
        return "2k3"
    if (os_major, os_minor) == (10, 0) and build is None:
        build = _FIRST_BUILD[edition]
    for t in OS_TOKENS.values():
        if t.edition == edition and t.contains(os_major, os_minor, build):
            return t.token
    return None


def scan(tree: Union[str, "os.PathLike[str]"]) -> "Catalog":
    """Catalogue every driver INF of a virtio-win tree. Raises CatalogError when the directory does not
    exist or holds no driver INF in a known layout."""
    root = os.path.abspath(os.fspath(tree))
    if not os.path.isdir(root):
        raise CatalogError("{}: not a directory (expected an extracted virtio-win tree)".format(root))
    packages: List[Package] = []
    skipped: List[Skipped] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        infs = sorted(f for f in filenames if f.lower().endswith(".inf"))
        if not infs:
            continue
        rel_dir = os.path.relpath(dirpath, root)
        place = _place([] if rel_dir == "." else rel_dir.split(os.sep))
        files = tuple(sorted(f for f in filenames if os.path.isfile(os.path.join(dirpath, f))))
        for f in infs:
            path = os.path.join(dirpath, f)
            name = _canonical(os.path.splitext(f)[0])
            if place is None:
                skipped.append(Skipped(name, path, "not under <os>/<arch> or <arch>/<os> directories"))
                continue
            token, arch = place
            try:
                with open(path, "rb") as fh:
                    inf = parse(fh.read(), name=os.path.relpath(path, root))
            except (OSError, InfError) as e:
                skipped.append(Skipped(name, path, str(e)))
                continue
            problem = _disagreement(inf, token, arch)
            if problem:
                skipped.append(Skipped(name, path, problem))
                continue
            packages.append(Package(name, path, token.token, arch, len(infs) == 1, files, inf))
    if not packages:
        why = "; first problem: {}: {}".format(os.path.relpath(skipped[0].path, root), skipped[0].reason) \
            if skipped else ""
        raise CatalogError("{}: not a virtio-win driver tree: no driver INF under <driver>/<os>/<arch> or "
                           "<arch>/<os> directories{}".format(root, why))
    return Catalog(root, tuple(packages), tuple(skipped))


@dataclass(frozen=True)
class Catalog:
    root: str
    packages: Tuple[Package, ...]
    skipped: Tuple[Skipped, ...]

    def names(self) -> Tuple[str, ...]:
        return tuple(sorted({p.name for p in self.packages}))

    def select(self, os_major: int, os_minor: int, product_type: str, arch: str,
               build: Optional[int] = None, wanted: Iterable[str] = DEFAULT_WANTED) -> Selection:
        """Per wanted driver, the best package for the guest: the guest's own release first, else the
        newest older release of its edition, never a newer one; among those the highest DriverVer.
        Packages whose INF excludes the guest or lacks files are passed over. ``product_type`` is
        'client' or 'server', ``arch`` 'x86_64' or 'i386' (or 'amd64', 'x86'). An unknown 10.0 build
        counts as the edition's first 10.0 release, so that no driver for a newer one is chosen."""
        edition = _edition(product_type)
        guest_arch = _guest_arch(arch)
        own = guest_os_token(os_major, os_minor, edition, build)
        if (os_major, os_minor) == (10, 0) and build is None:
            guest_key = (10, 0, _FIRST_BUILD[edition])
        else:
            guest_key = (os_major, os_minor, build or 0)
        guest = _Guest(os_major, os_minor, edition, build, guest_arch, own, guest_key)
        drivers: List[Driver] = []
        missing: List[Missing] = []
        seen = set()
        for name in (_canonical(w) for w in wanted):
            if name in seen:
                continue
            seen.add(name)
            driver, reason = self._select_one(name, guest)
            if driver is not None:
                drivers.append(driver)
            else:
                missing.append(Missing(name, reason))
        return Selection(own, guest_arch, tuple(drivers), tuple(missing))

    def _select_one(self, name: str, guest: "_Guest") -> Tuple[Optional[Driver], str]:
        mine = [p for p in self.packages if p.name == name]
        same_arch = [p for p in mine if p.arch == guest.arch]
        candidates = [p for p in same_arch if p.os_token == guest.token
                      or (OS_TOKENS[p.os_token].edition == guest.edition
                          and OS_TOKENS[p.os_token].key <= guest.key)]
        candidates.sort(key=lambda p: p.inf_path)
        candidates.sort(key=lambda p: (p.os_token == guest.token, OS_TOKENS[p.os_token].key,
                                       p.inf.driver_ver or _OLDEST, p.own_dir),
                        reverse=True)
        rejected: List[str] = []
        for p in candidates:
            driver, problem = self._driver(p, guest)
            if driver is not None:
                return driver, ""
            rejected.append("{} passed over: {}".format(self._rel(p.inf_path), problem))
        if not mine:
            reason = "not in the tree"
        elif not same_arch:
            others = ", ".join(sorted({p.arch for p in mine}))
            reason = "no {} build in the tree (only {})".format(guest.arch, others)
        elif not candidates:
            reason = "no {} build for {} or an older {} release (tree has {})".format(
                guest.arch, guest.describe(), guest.edition,
                ", ".join(sorted({p.os_token for p in same_arch}, key=lambda t: (OS_TOKENS[t].key, t))))
        else:
            reason = "; ".join(rejected)
        broken = ["{} skipped: {}".format(self._rel(s.path), s.reason)
                  for s in self.skipped if s.name == name]
        return None, "; ".join([reason, *broken])

    def _driver(self, p: Package, guest: "_Guest") -> Tuple[Optional[Driver], str]:
        models = p.inf.models_for(p.arch, guest.major, guest.minor, _PRODUCT_TYPES[guest.edition],
                                  guest.build)
        if not models:
            decorations = sorted({m.decoration.text or "(undecorated)" for m in p.inf.models})
            return None, "its decorations ({}) exclude {}".format(", ".join(decorations), guest.describe())
        ids = _pci_ids(models)
        devices = VIRTIO_PCI_DEVICES.get(p.name)
        if devices and not any("VEN_1AF4&DEV_" + d in i.upper() for d in devices for i in ids):
            return None, "no model for PCI\\VEN_1AF4&DEV_{}".format(" or DEV_".join(devices))
        present = {f.lower(): f for f in p.dir_files}
        needed = [os.path.basename(p.inf_path)]
        catalog = p.inf.catalog_for(p.arch)
        if catalog:
            needed.append(catalog)
        for m in models:
            for f in m.copy_files:
                if f.lower() not in (n.lower() for n in needed):
                    needed.append(f)
        absent = [f for f in needed if f.lower() not in present]
        if absent:
            return None, "{} named by the INF not in its directory".format(", ".join(absent))
        inf_name = present[needed[0].lower()]
        if p.own_dir:
            names = [inf_name] + [f for f in p.dir_files
                                  if f != inf_name and not f.lower().endswith(_SKIPPED_SUFFIXES)]
        else:
            names = [present[f.lower()] for f in needed]
            names.extend(present[f.lower()] for f in p.inf.source_disks_files(p.arch)
                         if f.lower() in present and present[f.lower()] not in names)
        directory = os.path.dirname(p.inf_path)
        services = [m.function_service for m in models if m.function_service is not None]
        return Driver(
            name=p.name, inf_path=p.inf_path, files=tuple(os.path.join(directory, f) for f in names),
            os_token=p.os_token, arch=p.arch, exact=p.os_token == guest.token, driver_ver=p.inf.driver_ver,
            class_name=p.inf.class_name, class_guid=p.inf.class_guid,
            service=services[0] if services else None, hardware_ids=ids, inf=p.inf), ""

    def _rel(self, path: str) -> str:
        return os.path.relpath(path, self.root)


@dataclass(frozen=True)
class _Guest:
    major: int
    minor: int
    edition: str
    build: Optional[int]
    arch: str
    token: Optional[str]
    key: Tuple[int, int, int]

    def describe(self) -> str:
        build = " build {}".format(self.build) if self.build is not None else ""
        token = " ({})".format(self.token) if self.token else ""
        return "Windows {}.{}{} {}{}".format(self.major, self.minor, build, self.edition, token)


_OLDEST = DriverVer(datetime.date(1, 1, 1), (0, 0, 0, 0))  # ranks an INF without DriverVer last
_PRODUCT_TYPES = {"client": VER_NT_WORKSTATION, "server": VER_NT_SERVER}


def _pci_ids(models: Sequence[Model]) -> Tuple[str, ...]:
    """PCI hardware and compatible ids of the models, the longest (most specific) ids first."""
    ids: List[str] = []
    for m in models:
        ids.extend(i for i in m.hardware_ids if i.upper().startswith("PCI\\") and i not in ids)
    return tuple(sorted(ids, key=lambda i: -len(i)))


def _canonical(name: str) -> str:
    n = name.lower()
    return _NAME_ALIASES.get(n, n)


def _edition(product_type: str) -> str:
    if product_type not in ("client", "server"):
        raise ValueError("product type must be 'client' or 'server', not {!r}".format(product_type))
    return product_type


def _guest_arch(arch: str) -> str:
    try:
        return _GUEST_ARCHES[arch.lower()]
    except KeyError:
        raise ValueError("unknown guest architecture {!r}".format(arch)) from None


def _place(parts: Sequence[str]) -> Optional[Tuple[OsToken, str]]:
    """The OS token and arch named by the last two directories, in either order."""
    if len(parts) < 2:
        return None
    a, b = parts[-2].lower(), parts[-1].lower()
    a, b = _TOKEN_ALIASES.get(a, a), _TOKEN_ALIASES.get(b, b)
    if a in OS_TOKENS and b in _ARCH_DIRS:
        return OS_TOKENS[a], _ARCH_DIRS[b]
    if a in _ARCH_DIRS and b in OS_TOKENS:
        return OS_TOKENS[b], _ARCH_DIRS[a]
    return None


def _disagreement(inf: InfFile, token: OsToken, arch: str) -> str:
    """Why the INF's own decorations contradict the directory it sits in ('' when they agree)."""
    models = [m for m in inf.models if (m.decoration.arch or "x86") == arch]
    if not models:
        return "the INF has no models for {} (its directory says {}/{})".format(arch, token.token, arch)
    for m in models:
        d = m.decoration
        client_only = d.product_type == VER_NT_WORKSTATION
        if d.product_type is not None and client_only != (token.edition == "client"):
            continue
        if d.os_major is None:
            return ""
        need = (d.os_major, d.os_minor or 0)
        if need < (token.major, token.minor):
            return ""
        if need == (token.major, token.minor) and (d.build is None or token.last_build is None
                                                    or d.build <= token.last_build):
            return ""
    decorations = ", ".join(sorted({m.decoration.text or "(undecorated)" for m in models}))
    return "the INF's decorations ({}) exclude {}/{}, the directory it is in".format(decorations, token.token,
                                                                                      arch)
