"""Realistic SYSTEM and SOFTWARE hives of a Windows guest that ran on VMware, for tests and the synthetic
Windows guest recipe: what libguestfs inspection reads, and what every Windows fixup changes.

Built from ``empty_hive()`` with hivex, so the files are real hives; the builders take no clock or
random input, so the same arguments give the same bytes.
"""
import os
import struct
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from guest_fixups.windows.registry import Hive
from testvms.windows.emptyhive import empty_hive

# Device setup classes (Control\Class\{guid}).
CLASS_DISK = "{4d36e967-e325-11ce-bfc1-08002be10318}"
CLASS_HDC = "{4d36e96a-e325-11ce-bfc1-08002be10318}"
CLASS_NET = "{4d36e972-e325-11ce-bfc1-08002be10318}"
CLASS_SCSI = "{4d36e97b-e325-11ce-bfc1-08002be10318}"
CLASS_VOLUME = "{71a27cdd-812a-11d0-bec7-08002be2f20c}"

INTERFACE_GUID = "{5a1e0c36-2f4b-4d3c-9a47-0d3c1b8e6f21}"  # the NIC's NetCfgInstanceId / Tcpip interface
NET_CLASS_INSTANCE = "0007"
VOLUME_GUID = "{3f9a2b64-1c0d-11ef-9a3b-806e6f6e6963}"
VMWARE_TOOLS_PRODUCT_CODE = "{D3A0E8C1-6B4E-4A1F-9F8A-2C7E1B0D5A93}"


@dataclass(frozen=True)
class WindowsRelease:
    """What SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion says about one Windows release."""

    name: str
    major: int
    minor: int
    build: int
    product_name: str
    installation_type: str  # 'Server' | 'Client'
    edition_id: str
    current_version: str  # "6.3" for every 10.0 release: the value froze at 8.1

    @property
    def uses_driver_database(self) -> bool:
        """Windows 8 and later find boot drivers through SYSTEM\\DriverDatabase, not the CDD."""
        return (self.major, self.minor) >= (6, 2)


RELEASES: Dict[str, WindowsRelease] = {r.name: r for r in (
    WindowsRelease("2008r2", 6, 1, 7601, "Windows Server 2008 R2 Standard", "Server", "ServerStandard",
                   "6.1"),
    WindowsRelease("2012r2", 6, 3, 9600, "Windows Server 2012 R2 Standard", "Server", "ServerStandard",
                   "6.3"),
    WindowsRelease("2019", 10, 0, 17763, "Windows Server 2019 Standard", "Server", "ServerStandard", "6.3"),
    WindowsRelease("2022", 10, 0, 20348, "Windows Server 2022 Standard", "Server", "ServerStandard", "6.3"),
    # Windows 11 still says "Windows 10 Pro" in ProductName; only the build number tells them apart
    WindowsRelease("11", 10, 0, 22631, "Windows 10 Pro", "Client", "Professional", "6.3"),
)}


@dataclass(frozen=True)
class StaticIp:
    """The static IPv4 configuration of the guest's one NIC."""

    address: str = "192.168.50.20"
    netmask: str = "255.255.255.0"
    gateway: str = "192.168.50.1"
    nameservers: Tuple[str, ...] = ("192.168.50.2", "192.168.50.3")


OLD_MAC = "00:50:56:91:a2:b3"  # a VMware OUI: the NIC the guest had before conversion
DISK_SIGNATURE = 0x5EED1234
PARTITION_OFFSETS = {"2008r2": 105906176, "11": 290455552}  # after System Reserved (100 MB) / ESP+MSR
DEFAULT_PARTITION_OFFSET = 525336576  # after a 500 MB System Reserved partition


def release(version: str) -> WindowsRelease:
    try:
        return RELEASES[version]
    except KeyError:
        raise ValueError("unknown Windows version {!r} (known: {})".format(
            version, ", ".join(sorted(RELEASES)))) from None


def new_hive(path: str) -> Hive:
    """An empty hive file at path, open for writing."""
    with open(path, "wb") as f:
        f.write(empty_hive(file_name=os.path.basename(path)))
    return Hive(path, write=True)


def mbr_mounted_device(signature: int, offset: int) -> bytes:
    """A MountedDevices value for an MBR partition: disk signature then byte offset (12 bytes)."""
    return struct.pack("<IQ", signature, offset)


def _service(h: Hive, cs: str, name: str, type_: int, start: int, group: Optional[str], image: Optional[str],
             error_control: int = 1, **extra: object) -> str:
    key = "{}\\Services\\{}".format(cs, name)
    h.set_dword(key, "Type", type_)
    h.set_dword(key, "Start", start)
    h.set_dword(key, "ErrorControl", error_control)
    if group is not None:
        h.set_sz(key, "Group", group)
    if image is not None:
        h.set_expand_sz(key, "ImagePath", image)
    for value, data in extra.items():
        if isinstance(data, int):
            h.set_dword(key, value, data)
        else:
            h.set_sz(key, value, str(data))
    return key


def _drv(name: str) -> str:
    return "System32\\drivers\\{}.sys".format(name)


# (name, Type, Start, Group) of the drivers VMware Tools installs; 2 = file system driver
VMWARE_SERVICES: Tuple[Tuple[str, int, int, Optional[str]], ...] = (
    ("vmci", 1, 0, "System Bus Extender"),
    ("vmxnet3", 1, 3, "NDIS"),
    ("pvscsi", 1, 0, "SCSI miniport"),
    ("vm3dmp", 1, 3, "Video"),
    ("vm3dmp_loader", 1, 3, "Video"),
    ("vmmouse", 1, 3, "Pointer Port"),
    ("vmhgfs", 2, 1, "Network Provider"),
    ("vmmemctl", 1, 2, None),
)

# Replication (continuous data protection) filter drivers found on the seed guest.
CDP_SERVICES = ("CDPDisk", "CDPTuner")


def build_system_hive(path: str, version: str = "2019", computer_name: str = "WIN-SRC01",
                      mac: Optional[str] = OLD_MAC, static_ip: Optional[StaticIp] = StaticIp(),
                      disk_signature: int = DISK_SIGNATURE, partition_offset: Optional[int] = None,
                      hiberboot: Optional[bool] = None, stale_control_set: bool = True) -> str:
    """Write a SYSTEM hive of a VMware-era guest to path and return path.

    ``mac``: the MAC kept in the NIC's class key as NetworkAddress (None: Windows keeps none, the usual
    case unless the address was overridden). ``static_ip`` None: the NIC uses DHCP. ``hiberboot`` None:
    Fast Startup on for client releases only, as Windows installs.
    """
    rel = release(version)
    offset = partition_offset if partition_offset is not None else \
        PARTITION_OFFSETS.get(version, DEFAULT_PARTITION_OFFSET)
    h = new_hive(path)
    h.set_dword("Select", "Current", 1)
    h.set_dword("Select", "Default", 1)
    h.set_dword("Select", "Failed", 0)
    h.set_dword("Select", "LastKnownGood", 2)
    h.set_dword("Setup", "SetupType", 0)
    h.set_sz("Setup", "CmdLine", "")
    _control_set(h, "ControlSet001", rel, computer_name, mac, static_ip, hiberboot)
    if stale_control_set:
        # an older copy whose drivers must stay untouched (Windows falls back to it as LastKnownGood)
        h.set_dword("ControlSet002\\Services\\storahci" if rel.uses_driver_database
                    else "ControlSet002\\Services\\msahci", "Start", 3)
        h.set_dword("ControlSet002\\Services\\vmci", "Start", 0)
        h.set_sz("ControlSet002\\Control\\ComputerName\\ComputerName", "ComputerName", computer_name)
    h.set_binary("MountedDevices", "\\DosDevices\\C:", mbr_mounted_device(disk_signature, offset))
    h.set_binary("MountedDevices", "\\??\\Volume" + VOLUME_GUID, mbr_mounted_device(disk_signature, offset))
    if rel.uses_driver_database:
        _driver_database(h, rel)
    h.commit()
    return path


def _control_set(h: Hive, cs: str, rel: WindowsRelease, computer_name: str, mac: Optional[str],
                 static_ip: Optional[StaticIp], hiberboot: Optional[bool]) -> None:
    control = cs + "\\Control"
    h.set_sz(control + "\\ComputerName\\ComputerName", "ComputerName", computer_name)
    h.set_sz(control, "SystemBootDevice", "multi(0)disk(0)rdisk(0)partition(1)")
    h.set_dword(control + "\\CrashControl", "AutoReboot", 1)
    if hiberboot is None:
        hiberboot = rel.installation_type == "Client"
    h.set_dword(control + "\\Session Manager\\Power", "HiberbootEnabled", int(hiberboot))
    h.set_dword(control + "\\Power", "HibernateEnabled", 1)

    for name, type_, start, group in VMWARE_SERVICES:
        _service(h, cs, name, type_, start, group, _drv(name), DisplayName=name)
    for name in CDP_SERVICES:
        _service(h, cs, name, 1, 0, "PnP Filter", _drv(name), DisplayName=name + " replication filter")

    # the in-box storage drivers: demand-start, as Windows leaves them on hardware that does not use them
    if rel.uses_driver_database:
        key = _service(h, cs, "storahci", 1, 3, "SCSI Miniport", _drv("storahci"), error_control=3)
        h.set_dword(key + "\\StartOverride", "0", 3)  # Windows 8+ writes this when AHCI is unused
        key = _service(h, cs, "stornvme", 1, 3, "SCSI Miniport", _drv("stornvme"))
        h.set_dword(key + "\\StartOverride", "0", 3)
    else:
        _service(h, cs, "msahci", 1, 3, "SCSI miniport", _drv("msahci"))
    _service(h, cs, "intelide", 1, 3, "System Bus Extender", _drv("intelide"))
    _service(h, cs, "pciide", 1, 3, "System Bus Extender", _drv("pciide"))
    _service(h, cs, "atapi", 1, 3, "SCSI miniport", _drv("atapi"))
    _service(h, cs, "disk", 1, 0, "SCSI Class", _drv("disk"))
    _service(h, cs, "partmgr", 1, 0, "System Bus Extender", _drv("partmgr"))
    _service(h, cs, "volsnap", 1, 0, "Volume", _drv("volsnap"))
    _service(h, cs, "Tcpip", 1, 0, "PNP_TDI", _drv("tcpip"))

    tcpip = cs + "\\Services\\Tcpip\\Parameters"
    h.set_sz(tcpip, "Hostname", computer_name)
    h.set_sz(tcpip, "NV Hostname", computer_name)
    h.set_sz(tcpip, "Domain", "")
    iface = tcpip + "\\Interfaces\\" + INTERFACE_GUID
    if static_ip is not None:
        h.set_dword(iface, "EnableDHCP", 0)
        h.set_multi_sz(iface, "IPAddress", [static_ip.address])
        h.set_multi_sz(iface, "SubnetMask", [static_ip.netmask])
        h.set_multi_sz(iface, "DefaultGateway", [static_ip.gateway])
        h.set_multi_sz(iface, "DefaultGatewayMetric", ["0"])
        h.set_sz(iface, "NameServer", ",".join(static_ip.nameservers))
    else:
        h.set_dword(iface, "EnableDHCP", 1)
        h.set_sz(iface, "NameServer", "")
    # a second, unconfigured interface (a disconnected NIC or the loopback's): must not be restored
    h.set_dword(tcpip + "\\Interfaces\\{00000000-0000-0000-0000-000000000000}", "EnableDHCP", 1)

    net = "{}\\Class\\{}\\{}".format(control, CLASS_NET, NET_CLASS_INSTANCE)
    h.set_sz(net, "DriverDesc", "vmxnet3 Ethernet Adapter")
    h.set_sz(net, "ComponentId", "pci\\ven_15ad&dev_07b0")
    h.set_sz(net, "NetCfgInstanceId", INTERFACE_GUID)
    h.set_sz(net, "MatchingDeviceId", "pci\\ven_15ad&dev_07b0")
    if mac is not None:
        # Windows keeps a NIC's MAC in its class key only when it was overridden ("Network Address")
        h.set_sz(net, "NetworkAddress", mac.replace(":", "").upper())
    conn = "{}\\Network\\{}\\{}\\Connection".format(control, CLASS_NET, INTERFACE_GUID)
    h.set_sz(conn, "Name", "Ethernet0")
    h.set_sz(conn, "PnPInstanceId", "PCI\\VEN_15AD&DEV_07B0&SUBSYS_07B015AD&REV_01\\FF565000A2B3FE0000")

    h.set_multi_sz("{}\\Class\\{}".format(control, CLASS_DISK), "UpperFilters", ["partmgr", "CDPDisk"])
    h.set_sz("{}\\Class\\{}".format(control, CLASS_DISK), "Class", "DiskDrive")
    h.set_multi_sz("{}\\Class\\{}".format(control, CLASS_SCSI), "LowerFilters", ["CDPTuner"])
    h.set_sz("{}\\Class\\{}".format(control, CLASS_SCSI), "Class", "SCSIAdapter")
    h.set_multi_sz("{}\\Class\\{}".format(control, CLASS_VOLUME), "UpperFilters", ["volsnap"])
    h.set_sz("{}\\Class\\{}".format(control, CLASS_VOLUME), "Class", "Volume")
    h.set_sz("{}\\Class\\{}".format(control, CLASS_HDC), "Class", "hdc")

    if not rel.uses_driver_database:
        # what a 2008 R2 installed on VMware has in its CriticalDeviceDatabase
        cdd = control + "\\CriticalDeviceDatabase\\"
        h.set_sz(cdd + "pci#ven_15ad&dev_07c0", "Service", "pvscsi")
        h.set_sz(cdd + "pci#ven_15ad&dev_07c0", "ClassGUID", CLASS_SCSI.upper())
        h.set_sz(cdd + "gendisk", "Service", "disk")
        h.set_sz(cdd + "gendisk", "ClassGUID", CLASS_DISK.upper())


def _driver_database(h: Hive, rel: WindowsRelease) -> None:
    h.set_sz("DriverDatabase", "Architecture", "amd64")
    h.set_sz("DriverDatabase", "OemInfMap", "")
    label = "pvscsi.inf_amd64_3c2a1b0d9e8f7a65"
    h.set_multi_sz("DriverDatabase\\DriverInfFiles\\oem3.inf", "", [label])
    h.set_sz("DriverDatabase\\DriverInfFiles\\oem3.inf", "Active", label)
    h.set_binary("DriverDatabase\\DeviceIds\\PCI\\VEN_15AD&DEV_07C0", "oem3.inf", b"\x01\xff\x00\x00")
    h.set_sz("DriverDatabase\\DriverPackages\\" + label, "Provider", "VMware, Inc.")


def build_software_hive(path: str, version: str = "2019", product_name: Optional[str] = None,
                        vmware_tools: bool = True, registered_owner: str = "v2v test") -> str:
    """Write a SOFTWARE hive (enough for libguestfs inspection, plus VMware Tools' uninstall entry)."""
    rel = release(version)
    h = new_hive(path)
    nt = "Microsoft\\Windows NT\\CurrentVersion"
    h.set_sz(nt, "ProductName", product_name or rel.product_name)
    h.set_sz(nt, "CurrentVersion", rel.current_version)
    if rel.major >= 10:
        h.set_dword(nt, "CurrentMajorVersionNumber", rel.major)
        h.set_dword(nt, "CurrentMinorVersionNumber", rel.minor)
        h.set_sz(nt, "DisplayVersion", {17763: "1809", 20348: "21H2", 22631: "23H2"}.get(rel.build, ""))
    h.set_sz(nt, "CurrentBuildNumber", str(rel.build))
    h.set_sz(nt, "CurrentBuild", str(rel.build))
    h.set_sz(nt, "InstallationType", rel.installation_type)
    h.set_sz(nt, "EditionID", rel.edition_id)
    h.set_sz(nt, "CurrentType", "Multiprocessor Free")
    h.set_sz(nt, "SystemRoot", "C:\\Windows")
    h.set_sz(nt, "PathName", "C:\\Windows")
    h.set_sz(nt, "RegisteredOwner", registered_owner)
    h.set_sz(nt, "ProductId", "00429-70000-00000-AA000")

    cv = "Microsoft\\Windows\\CurrentVersion"
    h.set_expand_sz(cv, "DevicePath", "%SystemRoot%\\inf")
    h.set_sz(cv, "ProgramFilesDir", "C:\\Program Files")
    h.set_sz(cv, "CommonFilesDir", "C:\\Program Files\\Common Files")
    h.set_sz(cv, "ProgramFilesDir (x86)", "C:\\Program Files (x86)")
    h.set_sz(cv + "\\Setup", "SourcePath", "D:\\")

    uninstall = cv + "\\Uninstall\\"
    if vmware_tools:
        key = uninstall + VMWARE_TOOLS_PRODUCT_CODE
        h.set_sz(key, "DisplayName", "VMware Tools")
        h.set_sz(key, "Publisher", "VMware, Inc.")
        h.set_sz(key, "DisplayVersion", "12.3.5.22544099")
        # VMware Tools registers its *install* command here (MsiExec /I); the converter must turn it into /X
        h.set_expand_sz(key, "UninstallString", "MsiExec.exe /I" + VMWARE_TOOLS_PRODUCT_CODE)
        h.set_dword(key, "WindowsInstaller", 1)
    other = uninstall + "{90160000-008C-0000-1000-0000000FF1CE}"
    h.set_sz(other, "DisplayName", "Office 16 Click-to-Run Extensibility Component")
    h.set_expand_sz(other, "UninstallString", "MsiExec.exe /X{90160000-008C-0000-1000-0000000FF1CE}")
    h.commit()
    return path
