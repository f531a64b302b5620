"""Drivers of the old hypervisor and replication filters that must not load on KVM, and the old guest
tools' uninstallers.

Services are disabled (Start=4) rather than deleted, so that the uninstallers queued for first boot
still find what they remove (virt-v2v does the same for Parallels). A disabled driver must also leave
every filter list: PnP refuses to start a device whose Upper/LowerFilters name a service that cannot
load, and for the disk or SCSI adapter class that is a 0x7B at boot.
"""
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

from .registry import REG_MULTI_SZ, Hive, encode_multi_sz

SERVICE_DISABLED = 4
FILTER_VALUES = ("UpperFilters", "LowerFilters")

CONFLICTING_SERVICES: Dict[str, Tuple[str, ...]] = {
    "VMware": ("vmci", "vmxnet", "vmxnet3", "vmxnet3ndis6", "vmxnet3ndis5", "pvscsi", "vm3dmp",
               "vm3dmp_loader", "vm3dmp-debug", "vm3dmp-stats", "vm3dservice", "vmx_svga", "vmmouse",
               "vmusbmouse", "vmhgfs", "vmmemctl", "vmrawdsk", "vsock", "vmvss", "vnetWFP", "vsepflt",
               "VMTools", "VGAuthService"),
    "Xen PV": ("xenvbd", "xenfilt", "xenbus", "xennet", "xeniface", "xenvif", "xencons", "xenvkbd",
               "xenhid", "xendisk", "xenpci", "xenhide", "xenscsi", "xenevtchn", "xennet6", "xenutil",
               "xenagent", "XenSvc", "rhelscsi"),
    "Hyper-V": ("vmbus", "storvsc", "netvsc", "hyperkbd", "hypervideo", "VMBusHID", "vpci",
                "vmicheartbeat", "vmickvpexchange", "vmicshutdown", "vmictimesync", "vmicvss",
                "vmicguestinterface", "vmicrdv", "vmicvmsession"),
    "Parallels": ("prl_boot", "prl_dd", "prl_eth5", "prl_fs", "prl_memdev", "prl_mouf", "prl_pv32",
                  "prl_pv64", "prl_scsi", "prl_sound", "prl_strg", "prl_tg", "prl_time", "prl_uprof",
                  "prl_va"),
    # disk/volume filters of replication and continuous-data-protection products
    "replication": ("CDPDisk", "CDPTuner", "InDskFlt", "involflt"),
}

# Service-name prefixes of a family whose driver list keeps growing.
CONFLICTING_PREFIXES: Dict[str, Tuple[str, ...]] = {"Parallels": ("prl_",)}

# DisplayName patterns of the old tools' Uninstall entries.
OLD_TOOLS = {
    "VMware": re.compile(r"^VMware Tools\b", re.I),
    "Xen PV": re.compile(r"Citrix XenTools|Citrix VM Tools|XenServer (VM|PV) Tools|Citrix Xen Windows|"
                         r"XCP-ng (Windows )?(PV )?Tools|Red Hat Paravirtualized Xen Drivers|"
                         r"Xen Windows GplPv", re.I),
    "Parallels": re.compile(r"^Parallels Tools\b", re.I),
}

_GUID = re.compile(r"^\{[0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}\}$")
_MSIEXEC = re.compile(r"^\s*\"?(?:[^\"]*\\)?msiexec(?:\.exe)?\"?\s", re.I)


def _known(families: Iterable[str]) -> Tuple[Dict[str, str], Dict[str, str]]:
    """lower-case service name -> family, and prefix -> family."""
    names = {}
    prefixes = {}
    for family in families:
        for name in CONFLICTING_SERVICES[family]:
            names[name.lower()] = family
        for prefix in CONFLICTING_PREFIXES.get(family, ()):
            prefixes[prefix.lower()] = family
    return names, prefixes


class _Matcher:
    """Is a service (by name, or by the driver file its ImagePath names) one we disable?"""

    def __init__(self, system: Hive, services_key: str, families: Iterable[str]) -> None:
        self.names, self.prefixes = _known(families)
        self.by_image: Dict[str, str] = {}
        self.present: Dict[str, str] = {}  # lower-case name -> the spelling in the hive
        for svc in system.subkeys(services_key):
            self.present[svc.lower()] = svc
            image = system.get(services_key + "\\" + svc, "ImagePath")
            if isinstance(image, str) and image:
                stem = image.replace("/", "\\").rsplit("\\", 1)[-1].lower()
                stem = stem[:-4] if stem.endswith(".sys") else stem
                family = self.names.get(stem)
                if family is not None and svc.lower() not in self.names:
                    # a known driver file under another service name: the general rule
                    self.by_image[svc.lower()] = family

    def family(self, name: str) -> Optional[str]:
        low = name.lower()
        if low in self.names:
            return self.names[low]
        if low in self.by_image:
            return self.by_image[low]
        for prefix, family in self.prefixes.items():
            if low.startswith(prefix):
                return family
        return None


def disable_conflicting_drivers(system: Hive, families: Iterable[str] = tuple(CONFLICTING_SERVICES)) \
        -> List[str]:
    """Start=4 for every conflicting service of the current control set, and each removed from every
    Control\\Class\\{guid} and Enum device Upper/LowerFilters list. One report line per driver."""
    cs = system.current_control_set()
    services_key = cs + "\\Services"
    match = _Matcher(system, services_key, list(families))
    actions: Dict[str, List[str]] = {}
    families_of: Dict[str, str] = {}

    for low, name in sorted(match.present.items()):
        family = match.family(name)
        if family is None:
            continue
        families_of[name] = family
        key = services_key + "\\" + name
        before = system.get(key, "Start")
        if before != SERVICE_DISABLED:
            system.set_dword(key, "Start", SERVICE_DISABLED)
            actions.setdefault(name, []).append("disabled (Start {} -> 4)".format(before))
        else:
            actions.setdefault(name, []).append("already disabled")

    for where, key in _filter_keys(system, cs):
        for value in FILTER_VALUES:
            for removed in _remove_filters(system, key, value, match):
                name = match.present.get(removed.lower(), removed)
                families_of.setdefault(name, match.family(removed) or "")
                actions.setdefault(name, []).append("removed from {} of {}".format(value, where))

    return ["{} ({}): {}".format(name, families_of[name], "; ".join(done))
            for name, done in sorted(actions.items(), key=lambda kv: kv[0].lower())]


def _filter_keys(system: Hive, cs: str) -> Iterable[Tuple[str, str]]:
    """(what to call it, key path) of every class key and every device instance key."""
    classes = cs + "\\Control\\Class"
    for guid in system.subkeys(classes):
        yield guid, classes + "\\" + guid
    enum = cs + "\\Enum"
    for bus in system.subkeys(enum):
        for device in system.subkeys(enum + "\\" + bus):
            for instance in system.subkeys("{}\\{}\\{}".format(enum, bus, device)):
                where = "{}\\{}\\{}".format(bus, device, instance)
                yield where, enum + "\\" + where


def _remove_filters(system: Hive, key: str, value: str, match: _Matcher) -> List[str]:
    """Drop conflicting names from one filter list, keeping the others in order; the names dropped."""
    raw = {k.lower(): (k, t) for k, (t, _) in system.raw_values(key).items()}
    if value.lower() not in raw:
        return []
    real_name, _ = raw[value.lower()]
    items = system.get(key, value)
    if isinstance(items, str):  # a REG_SZ filter list: Windows reads it as a one-entry list
        items = [items]
    if not isinstance(items, list):
        return []
    kept = [i for i in items if match.family(i) is None]
    removed = [i for i in items if match.family(i) is not None]
    if not removed:
        return []
    if kept:
        system.set_raw(key, real_name, REG_MULTI_SZ, encode_multi_sz(kept))
    else:
        # no value rather than an empty list: classes without filters have none, and an empty MULTI_SZ
        # reads as one empty name in some readers, which PnP would try to load as a service
        system.delete_value(key, real_name)
    return removed


@dataclass(frozen=True)
class Uninstaller:
    """An old tools package to remove at first boot."""

    family: str
    display_name: str
    command: str  # unattended when the entry allows it
    key: str  # the Uninstall subkey it came from
    quiet: bool  # False: the command may wait for a user


UNINSTALL_KEYS = ("Microsoft\\Windows\\CurrentVersion\\Uninstall",
                  "Wow6432Node\\Microsoft\\Windows\\CurrentVersion\\Uninstall")


def old_tools_uninstallers(software: Hive, families: Iterable[str] = tuple(OLD_TOOLS)) -> List[Uninstaller]:
    """Uninstall commands of the old hypervisor tools found in SOFTWARE ...\\Uninstall (both views)."""
    patterns = [(f, OLD_TOOLS[f]) for f in families if f in OLD_TOOLS]
    found: List[Uninstaller] = []
    seen = set()
    for base in UNINSTALL_KEYS:
        for sub in software.subkeys(base):
            key = base + "\\" + sub
            name = software.get(key, "DisplayName")
            if not isinstance(name, str):
                continue
            family = next((f for f, p in patterns if p.search(name)), None)
            if family is None:
                continue
            command, quiet = _uninstall_command(software, key, sub)
            if command is None or command.lower() in seen:
                continue
            seen.add(command.lower())
            found.append(Uninstaller(family, name, command, key, quiet))
    return found


def _uninstall_command(software: Hive, key: str, sub: str) -> Tuple[Optional[str], bool]:
    quiet = software.get(key, "QuietUninstallString")
    if isinstance(quiet, str) and quiet.strip():
        return quiet.strip(), True
    plain = software.get(key, "UninstallString")
    product = sub if _GUID.match(sub) else None
    if isinstance(plain, str) and _MSIEXEC.match(plain):
        code = re.search(r"\{[0-9A-Fa-f-]{36}\}", plain)
        product = code.group(0) if code else product
    if product is not None and (software.get(key, "WindowsInstaller") == 1
                                or (isinstance(plain, str) and _MSIEXEC.match(plain))):
        # VMware Tools registers "MsiExec /I{code}" (its repair/modify command): always uninstall by code
        return "MsiExec.exe /X{} /qn /norestart".format(product.upper()), True
    if isinstance(plain, str) and plain.strip():
        return plain.strip(), False
    return None, False


def uninstaller_report(uninstallers: Iterable[Uninstaller]) -> List[str]:
    return ["{}: queued for first boot: {}{}".format(u.display_name, u.command,
                                                     "" if u.quiet else " (may need a user)")
            for u in uninstallers]
