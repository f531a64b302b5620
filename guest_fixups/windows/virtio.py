"""Install the chosen virtio-win drivers into a Windows guest's registry.

The boot (storage) driver is made boot-start and tied to its PCI ids, so that the kernel loads it before
Plug and Play runs: through the CriticalDeviceDatabase up to Windows 7 / 2008 R2 (6.1), through
SYSTEM\\DriverDatabase from Windows 8 (6.2) on, as virt-v2v does (libguestfs-common
mlcustomize/inject_virtio_win.ml). Every other driver is only staged in %SystemRoot%\\Drivers\\VirtIO
for firstboot's pnputil. Functions here change open hives and return report lines; copying files is
left to the caller, which gets the list from ``driver_file_copies``.
"""
import ntpath
import os
import uuid
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from hv_drivers.catalog import BOOT_DRIVER_FOR_BUS, Driver, Selection
from v2v.errors import FixupError

from .registry import Hive

SCSI_ADAPTER_CLASS = "{4D36E97B-E325-11CE-BFC1-08002BE10318}"
VIRTIO_DIR = "Drivers\\VirtIO"  # relative to %SystemRoot%: where virt-v2v puts drivers too
DEVICE_PATH_ENTRY = "%SystemRoot%\\Drivers\\VirtIO"
BOOT_GROUP = "SCSI miniport"
SERVICE_KERNEL_DRIVER, SERVICE_BOOT_START, ERROR_NORMAL = 1, 0, 1
DRIVER_DATABASE_SINCE = (6, 2)  # Windows 8 / Server 2012 ignore the CriticalDeviceDatabase


@dataclass(frozen=True)
class FileCopy:
    """One file to copy into the guest; ``guest`` is relative to %SystemRoot%, backslash-separated."""

    host: str
    guest: str


def uses_driver_database(os_major: int, os_minor: int) -> bool:
    return (os_major, os_minor) >= DRIVER_DATABASE_SINCE


def boot_driver(selection: Selection, disk_bus: str) -> Driver:
    """The storage driver the guest boots with on ``disk_bus`` ('virtio' or 'scsi')."""
    name = BOOT_DRIVER_FOR_BUS.get(disk_bus)
    if name is None:
        raise FixupError("no virtio boot driver for disk bus {!r} (known: {})".format(
            disk_bus, ", ".join(sorted(BOOT_DRIVER_FOR_BUS))))
    driver = selection.driver(name)
    if driver is None:
        why = next((m.reason for m in selection.missing if m.name == name), "not selected")
        raise FixupError("the virtio-win tree has no {} driver for this guest: {}".format(name, why))
    return driver


def driver_file_copies(selection: Selection, boot: Optional[Driver]) -> List[FileCopy]:
    """Every selected driver's files into Drivers\\VirtIO (one flat directory, as pnputil wants), and the
    boot driver's .sys into System32\\drivers, where its ImagePath points."""
    copies: List[FileCopy] = []
    taken = {}
    for driver in selection.drivers:
        for host in driver.files:
            name = os.path.basename(host)
            if name.lower() in taken:
                # one flat directory: the first driver keeps a shared name (e.g. a common co-installer)
                continue
            taken[name.lower()] = host
            copies.append(FileCopy(host, ntpath.join(VIRTIO_DIR, name)))
    if boot is not None:
        sys_file = _boot_sys_file(boot)
        copies.append(FileCopy(sys_file, "System32\\drivers\\{}.sys".format(boot.name)))
    return copies


def _boot_sys_file(driver: Driver) -> str:
    wanted = driver.service.binary_file.lower() if driver.service else driver.name + ".sys"
    for f in driver.files:
        if os.path.basename(f).lower() == wanted:
            return f
    raise FixupError("{}: the driver package has no {}".format(driver.inf_path, wanted))


def pci_device_ids(driver: Driver) -> List[str]:
    """The PCI ids to register for a boot driver: the INF's ids (full first) and, for each full id, the
    VEN&DEV&REV compatible id Windows also matches, which is what virt-v2v registers."""
    ids: List[str] = []
    for hwid in driver.hardware_ids:
        if hwid.upper().startswith("PCI\\") and hwid.upper() not in (i.upper() for i in ids):
            ids.append(hwid)
    for hwid in list(ids):
        parts = hwid.split("&")
        rev = [p for p in parts if p.upper().startswith("REV_")]
        if rev and any(p.upper().startswith("SUBSYS_") for p in parts):
            short = "&".join(p for p in parts if not p.upper().startswith("SUBSYS_"))
            if short.upper() not in (i.upper() for i in ids):
                ids.append(short)
    if not ids:
        raise FixupError("{}: the driver's INF names no PCI hardware id".format(driver.inf_path))
    return ids


def install_boot_driver(system: Hive, driver: Driver, os_major: int, os_minor: int) -> List[str]:
    """Make ``driver`` boot-start in the current control set and register its PCI ids."""
    cs = system.current_control_set()
    service = "{}\\Services\\{}".format(cs, driver.name)
    image = "system32\\drivers\\{}.sys".format(driver.name)
    system.set_dword(service, "Type", SERVICE_KERNEL_DRIVER)
    system.set_dword(service, "Start", SERVICE_BOOT_START)
    system.set_dword(service, "ErrorControl", ERROR_NORMAL)
    system.set_sz(service, "Group", BOOT_GROUP)
    system.set_expand_sz(service, "ImagePath", image)
    # a StartOverride left by an earlier install would demote the driver again at boot
    system.delete_key(service + "\\StartOverride")
    lines = ["{}: boot-start service (Type=1 Start=0 Group={!r} ImagePath={})".format(
        driver.name, BOOT_GROUP, image)]
    ids = pci_device_ids(driver)
    class_guid = (driver.class_guid or SCSI_ADAPTER_CLASS).upper()
    if uses_driver_database(os_major, os_minor):
        add_to_driver_database(system, driver, ids, class_guid)
        lines.append("{}: {} PCI ids in DriverDatabase ({})".format(driver.name, len(ids), ", ".join(ids)))
    else:
        for hwid in ids:
            key = critical_device_key(cs, hwid)
            system.set_sz(key, "Service", driver.name)
            system.set_sz(key, "ClassGUID", class_guid)
        lines.append("{}: {} PCI ids in CriticalDeviceDatabase ({})".format(
            driver.name, len(ids), ", ".join(ids)))
    return lines


def critical_device_key(control_set: str, hwid: str) -> str:
    """CriticalDeviceDatabase names a device by its id with '\\' as '#', lower case as Windows writes it."""
    return "{}\\Control\\CriticalDeviceDatabase\\{}".format(control_set, hwid.replace("\\", "#").lower())


def driver_package_label(driver: Driver) -> str:
    """The DriverPackages key name: '<inf>_<arch>_<16 hex>'; zeros stand for the hash, as in virt-v2v."""
    return "{}_{}_0000000000000000".format(_inf_name(driver), driver.arch)


def driver_configuration(driver: Driver) -> str:
    """The configuration name: the INF's install section of the model, as Windows names it."""
    for m in driver.inf.models:
        if any(h.upper() in (i.upper() for i in driver.hardware_ids) for h in m.hardware_ids[:1]):
            return m.install_section.lower()
    return "{}_inst".format(driver.name)


def _inf_name(driver: Driver) -> str:
    return os.path.basename(driver.inf_path).lower()


def driver_package_version(class_guid: str) -> bytes:
    """DriverPackages\\<label>\\Version: a header, the class GUID, zeros; Windows 10's kernel PnP needs it."""
    return b"\x00\xff\x09\x00\x00\x00\x00\x00" + uuid.UUID(class_guid).bytes_le + b"\x00" * 24


def add_to_driver_database(system: Hive, driver: Driver, ids: Sequence[str], class_guid: str) -> None:
    """The DriverDatabase keys that let Windows 8+ bind ``ids`` to the driver's service at boot."""
    inf = _inf_name(driver)
    label = driver_package_label(driver)
    config = driver_configuration(driver)
    system.set_multi_sz("DriverDatabase\\DriverInfFiles\\" + inf, "", [label])
    system.set_sz("DriverDatabase\\DriverInfFiles\\" + inf, "Active", label)
    system.set_multi_sz("DriverDatabase\\DriverInfFiles\\" + inf, "Configurations", [config])
    package = "DriverDatabase\\DriverPackages\\" + label
    system.set_binary(package, "Version", driver_package_version(class_guid))
    if driver.inf.provider:
        system.set_sz(package, "Provider", driver.inf.provider)
    system.set_sz(package, "InfName", inf)
    system.set_dword(package + "\\Configurations\\" + config, "ConfigFlags", 0)
    system.set_sz(package + "\\Configurations\\" + config, "Service", driver.name)
    for hwid in ids:
        enumerator, rest = _split_id(hwid)
        # 01 ff 00 00: the rank word Windows writes for a signed, matching package
        device_ids = "DriverDatabase\\DeviceIds\\{}\\{}".format(enumerator, rest)
        system.set_binary(device_ids, inf, b"\x01\xff\x00\x00")
        system.set_sz("{}\\Descriptors\\{}\\{}".format(package, enumerator, rest), "Configuration", config)


def _split_id(hwid: str) -> Tuple[str, str]:
    enumerator, _, rest = hwid.partition("\\")
    return enumerator.upper(), rest.upper()


def extend_device_path(software: Hive, entry: str = DEVICE_PATH_ENTRY) -> List[str]:
    """Add ``entry`` to SOFTWARE ...\\CurrentVersion\\DevicePath (where PnP looks for INFs), once."""
    key = "Microsoft\\Windows\\CurrentVersion"
    current = software.get(key, "DevicePath")
    if current is None:
        current = "%SystemRoot%\\inf"  # Windows' own default when the value is absent
    if not isinstance(current, str):
        raise FixupError("SOFTWARE\\{}\\DevicePath is not a string value".format(key))
    entries = [e for e in current.split(";") if e]
    if any(e.strip().rstrip("\\").lower() == entry.rstrip("\\").lower() for e in entries):
        return ["DevicePath already lists {}".format(entry)]
    entries.append(entry)
    software.set_expand_sz(key, "DevicePath", ";".join(entries))
    return ["DevicePath: added {}".format(entry)]


def install_virtio_drivers(system: Hive, software: Hive, selection: Selection, disk_bus: str,
                           os_major: int, os_minor: int) -> List[str]:
    """The registry side of installing ``selection``: boot driver for ``disk_bus``, the others staged for
    pnputil, DevicePath extended. Copy ``driver_file_copies(selection, boot_driver(...))`` as well."""
    boot = boot_driver(selection, disk_bus)
    lines = install_boot_driver(system, boot, os_major, os_minor)
    for driver in selection.drivers:
        if driver.name != boot.name:
            lines.append("{}: staged in %SystemRoot%\\{} for pnputil at first boot".format(
                driver.name, VIRTIO_DIR))
    for missing in selection.missing:
        lines.append("{}: not installed: {}".format(missing.name, missing.reason))
    lines.extend(extend_device_path(software))
    return lines
