"""Frozen dataclasses that cross stage and package boundaries (DESIGN section 1)."""
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional, Tuple


@dataclass(frozen=True)
class SourceDisk:
    """One disk of the source, as found: never written."""
    index: int
    path: str
    format: str            # qemu-img format name: raw, qcow2, vmdk, vpc, vhdx
    virtual_size: int
    actual_size: int
    subformat: str = ""    # e.g. monolithicSparse, streamOptimized, fixed, dynamic


@dataclass(frozen=True)
class Overlay:
    """A qcow2 overlay backed by a source disk: all fixups are written here."""
    path: str
    source: SourceDisk


@dataclass(frozen=True)
class Filesystem:
    device: str            # appliance device name, e.g. /dev/sda1, /dev/vg0/root
    fstype: str
    uuid: str = ""
    label: str = ""
    mountpoint: str = ""   # where the guest mounts it ("" when not in fstab)


@dataclass(frozen=True)
class Guest:
    """What inspection found in the overlays."""
    type: str              # linux | windows
    distro: str            # debian, ubuntu, rhel, windows ...
    product_name: str
    major: int
    minor: int
    arch: str
    hostname: str
    root: str              # appliance device of the root filesystem
    firmware: str          # bios | uefi
    package_format: str
    package_management: str
    osinfo: str            # libosinfo short id as inspection derived it, e.g. debian12
    mountpoints: Tuple[Tuple[str, str], ...]     # (mountpoint, device), shortest first
    filesystems: Tuple[Filesystem, ...]
    kernels: Tuple[str, ...] = ()                # kernel versions with /boot/vmlinuz-*
    applications: Tuple[str, ...] = ()           # installed package names
    disks: Tuple[SourceDisk, ...] = ()
    windows_systemroot: str = ""                 # /Windows (guest path), Windows only
    product_variant: str = ""                    # Server | Client ... (Windows)
    build: str = ""                              # Windows build number, e.g. 17763


@dataclass(frozen=True)
class FixLine:
    """One fixup's one-line report."""
    name: str
    status: str            # changed | unchanged | warning | skipped
    message: str
    seconds: float = 0.0   # time the fixup took inside the appliance


@dataclass(frozen=True)
class FixReport:
    lines: Tuple[FixLine, ...]

    def warnings(self) -> Tuple[FixLine, ...]:
        return tuple(ln for ln in self.lines if ln.status == "warning")


@dataclass(frozen=True)
class NetworkPlan:
    """The NIC the converted guest gets; the guest is told to give it its old name."""
    mac: str
    model: str = "virtio"
    guest_name: str = ""   # interface name the guest's network config expects, "" if none


@dataclass(frozen=True)
class Plan:
    """What the conversion will do, decided before anything is written."""
    name: str
    disk_bus: str          # virtio
    firmware: str          # bios | uefi
    machine: str           # q35
    memory_mib: int
    vcpus: int
    osinfo_id: str         # libosinfo URL, e.g. http://debian.org/debian/11
    network: NetworkPlan
    notes: Tuple[str, ...] = ()
    os_type: str = "linux"  # linux | windows: the domain gets Hyper-V enlightenments and a localtime clock
    secure_boot: bool = False
    tpm: bool = False


@dataclass(frozen=True)
class TargetDisk:
    path: str
    format: str            # qcow2 | raw
    source: SourceDisk
    target_dev: str        # vda, vdb ...
    sha256: str = ""       # of the file as written


@dataclass(frozen=True)
class BootProof:
    ok: bool
    seconds: float
    accel: str
    marker: str
    details: Tuple[str, ...] = ()        # what the guest reported: root device, NICs
    console_tail: Tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class Result:
    name: str
    output: str            # libvirt | local
    disks: Tuple[TargetDisk, ...]
    domain_xml: str        # path of the XML file (local) or "" (libvirt)
    libvirt_uri: str = ""
    guest: Optional[Guest] = None
    fixes: Optional[FixReport] = None
    plan: Optional[Plan] = None
    boot: Optional[BootProof] = None
    timings: Tuple[Tuple[str, float], ...] = field(default=())


def to_json(obj: Any) -> Any:
    """A dataclass tree as plain JSON-able data (tuples become lists)."""
    if hasattr(obj, "__dataclass_fields__"):
        return {k: to_json(v) for k, v in asdict(obj).items()}
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    return obj


JSONDict = Dict[str, Any]
