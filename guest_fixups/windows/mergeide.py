"""Let Windows also boot from the emulated IDE and AHCI controllers a KVM guest can have (i440fx PIIX3/4
IDE, q35 ICH9 AHCI), so that a guest whose virtio driver failed to load still comes up.

Two parts: the in-box storage drivers are made boot-start and their ``StartOverride`` keys removed (Windows
8+ writes StartOverride\\0=3 for controllers it did not see at install time: a classic 0x7B cause), and,
on Windows up to 7 / 2008 R2, the CriticalDeviceDatabase entries of Microsoft's MergeIDE.reg
(KB314082) plus the ICH9 AHCI ids. From Windows 8 on the kernel ignores the CriticalDeviceDatabase and
binds in-box drivers through the DriverDatabase, which already lists them.
"""
from typing import Dict, Iterable, List, Tuple

from .registry import Hive

HDC_CLASS = "{4D36E96A-E325-11CE-BFC1-08002BE10318}"  # IDE ATA/ATAPI controllers
DISK_CLASS = "{4D36E967-E325-11CE-BFC1-08002BE10318}"
SERVICE_BOOT_START = 0

# Storage services whose StartOverride would keep them from starting at boot on the new hardware.
STORAGE_SERVICES = ("storahci", "stornvme", "iaStorV", "iaStorAVC", "iaStorA", "iaStorAC", "msahci",
                    "intelide", "atapi", "pciide", "viostor", "vioscsi", "storvsc", "LSI_SAS", "LSI_SCSI")

# The fallback drivers made boot-start: the IDE stack (pciide/intelide -> atapi) and AHCI.
FALLBACK_SERVICES = ("storahci", "msahci", "intelide", "atapi", "pciide")

# CriticalDeviceDatabase key -> (Service, ClassGUID). From MergeIDE.reg (KB314082): the generic IDE
# channel and the Intel PIIX/ICH IDE ids (7010 is PIIX3, QEMU's i440fx IDE; 7111 PIIX4), then the AHCI
# ids msahci binds (QEMU q35's ICH9 AHCI is 8086:2922, class 0106 prog-if 01).
MERGEIDE_CDD: Dict[str, Tuple[str, str]] = {
    "primary_ide_channel": ("atapi", HDC_CLASS),
    "secondary_ide_channel": ("atapi", HDC_CLASS),
    "*pnp0600": ("atapi", HDC_CLASS),
    "*azt0502": ("atapi", HDC_CLASS),
    "gendisk": ("disk", DISK_CLASS),
    "pci#cc_0101": ("pciide", HDC_CLASS),
    "pci#ven_8086&dev_1222": ("intelide", HDC_CLASS),
    "pci#ven_8086&dev_1230": ("intelide", HDC_CLASS),
    "pci#ven_8086&dev_2411": ("intelide", HDC_CLASS),
    "pci#ven_8086&dev_2421": ("intelide", HDC_CLASS),
    "pci#ven_8086&dev_7010": ("intelide", HDC_CLASS),
    "pci#ven_8086&dev_7111": ("intelide", HDC_CLASS),
    "pci#ven_8086&dev_7199": ("intelide", HDC_CLASS),
    "pci#cc_010601": ("msahci", HDC_CLASS),
    "pci#ven_8086&dev_2922&cc_010601": ("msahci", HDC_CLASS),
    "pci#ven_8086&dev_2922": ("msahci", HDC_CLASS),
}


def remove_storage_start_overrides(system: Hive, services: Iterable[str] = STORAGE_SERVICES) -> List[str]:
    """Delete ``Services\\<svc>\\StartOverride`` of each storage service in the current control set."""
    cs = system.current_control_set()
    lines = []
    for name in services:
        key = "{}\\Services\\{}\\StartOverride".format(cs, name)
        overrides = system.values(key)
        if system.delete_key(key):
            shown = ", ".join("{}={}".format(k, v) for k, v in sorted(overrides.items()))
            lines.append("{}: StartOverride removed ({})".format(name, shown or "empty"))
    return lines


def make_fallback_drivers_boot_start(system: Hive, services: Iterable[str] = FALLBACK_SERVICES) -> List[str]:
    """Start=0 for each installed fallback storage service; absent ones are left absent (their .sys may
    be missing too, and a boot-start service without its file only logs an error)."""
    cs = system.current_control_set()
    lines = []
    for name in services:
        key = "{}\\Services\\{}".format(cs, name)
        if not system.has_key(key):
            continue
        before = system.get(key, "Start")
        if before != SERVICE_BOOT_START:
            system.set_dword(key, "Start", SERVICE_BOOT_START)
            lines.append("{}: boot-start (Start {} -> 0)".format(name, before))
    return lines


def add_mergeide_critical_devices(system: Hive, os_major: int, os_minor: int) -> List[str]:
    """The MergeIDE CriticalDeviceDatabase entries (Windows 7 / 2008 R2 and older only)."""
    if (os_major, os_minor) >= (6, 2):
        return []
    cs = system.current_control_set()
    installed = {s.lower() for s in system.subkeys(cs + "\\Services")}
    added = []
    for device, (service, class_guid) in MERGEIDE_CDD.items():
        if service.lower() not in installed:
            continue  # msahci exists from Vista on; never point the CDD at a service that is not there
        key = "{}\\Control\\CriticalDeviceDatabase\\{}".format(cs, device)
        system.set_sz(key, "Service", service)
        system.set_sz(key, "ClassGUID", class_guid)
        added.append(device)
    return ["CriticalDeviceDatabase: {} MergeIDE entries ({})".format(len(added), ", ".join(added))] \
        if added else []


def enable_ide_fallback(system: Hive, os_major: int, os_minor: int) -> List[str]:
    """All of the above: StartOverride removed, fallback drivers boot-start, MergeIDE entries."""
    return (remove_storage_start_overrides(system) + make_fallback_drivers_boot_start(system)
            + add_mergeide_critical_devices(system, os_major, os_minor))
