"""The libvirt domain as data; XML is produced from it (never assembled from strings)."""
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Optional, Tuple

from lxml import etree

LIBOSINFO_NS = "http://libosinfo.org/xmlns/libvirt/domain/1.0"
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
# Debian's SMM build with Secure Boot, and variables with Microsoft's keys enrolled (Windows' loader is
# signed by them): the pair /usr/share/qemu/firmware/40-edk2-x86_64-secure-enrolled.json names.
OVMF_CODE_SECURE = "/usr/share/OVMF/OVMF_CODE_4M.ms.fd"
OVMF_VARS_SECURE = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"

OS_TYPES = ("linux", "windows")
# Disk name prefix per bus, as libvirt and virt-v2v name them.
DISK_PREFIX = {"virtio": "vd", "sata": "sd", "scsi": "sd", "ide": "hd"}

# What virt-install enables for Windows (virtinst/domain/features.py), limited to the elements libvirt
# 9.0's schema has; stimer needs synic and the hypervclock timer, synic needs vpindex.
HYPERV_ENLIGHTENMENTS = ("relaxed", "vapic", "spinlocks", "vpindex", "runtime", "synic", "stimer", "reset",
                         "frequencies")
HYPERV_SPINLOCK_RETRIES = 8191


@dataclass(frozen=True)
class DiskSpec:
    path: str
    format: str              # qcow2 | raw
    target_dev: str          # vda (virtio), sda (sata, scsi), hda (ide): see disk_targets()
    bus: str = "virtio"      # sata for Windows guests whose virtio boot driver is not installed

    def __post_init__(self) -> None:
        if self.bus not in DISK_PREFIX:
            raise ValueError("disk bus {!r} is not one of {}".format(self.bus, ", ".join(DISK_PREFIX)))


@dataclass(frozen=True)
class NicSpec:
    mac: str
    model: str = "virtio"
    network: str = "default"  # libvirt network name, or "" with bridge
    bridge: str = ""


@dataclass(frozen=True)
class DomainSpec:
    name: str
    memory_mib: int
    vcpus: int
    disks: Tuple[DiskSpec, ...]
    nics: Tuple[NicSpec, ...]
    domain_type: str = "kvm"         # kvm, or qemu (TCG) where KVM does not work
    machine: str = "q35"
    firmware: str = "bios"           # bios | uefi
    osinfo_id: str = ""
    uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))
    description: str = ""
    nvram: Optional[str] = None      # UEFI variables file (defaults next to the disks)
    os_type: str = "linux"           # linux | windows: windows adds Hyper-V enlightenments and its timers
    clock_offset: Optional[str] = None  # utc | localtime; None: localtime for Windows, utc otherwise
    secure_boot: bool = False        # UEFI Secure Boot with Microsoft's keys (Windows 8/2012 and later)
    tpm: bool = False                # an emulated TPM 2.0 (swtpm), which Windows 11 requires

    def __post_init__(self) -> None:
        if self.os_type not in OS_TYPES:
            raise ValueError("os_type {!r} is not one of {}".format(self.os_type, ", ".join(OS_TYPES)))
        if self.clock_offset not in (None, "utc", "localtime"):
            raise ValueError("clock_offset {!r} is not utc or localtime".format(self.clock_offset))
        if self.secure_boot and (self.firmware != "uefi" or self.machine != "q35"):
            # OVMF's Secure Boot build needs SMM, which only q35 has
            raise ValueError("secure_boot needs firmware='uefi' and machine='q35' (have {!r}, {!r})".format(
                self.firmware, self.machine))

    @property
    def effective_clock_offset(self) -> str:
        if self.clock_offset is not None:
            return self.clock_offset
        return "localtime" if self.os_type == "windows" else "utc"


def _sub(parent: etree._Element, tag: str, text: Optional[str] = None, **attrs: str) -> etree._Element:
    el = etree.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def _hyperv(features: etree._Element) -> None:
    hv = _sub(features, "hyperv", mode="custom")
    for name in HYPERV_ENLIGHTENMENTS:
        if name == "spinlocks":
            _sub(hv, name, state="on", retries=str(HYPERV_SPINLOCK_RETRIES))
        else:
            _sub(hv, name, state="on")


def _clock(dom: etree._Element, spec: DomainSpec) -> None:
    clock = _sub(dom, "clock", offset=spec.effective_clock_offset)
    if spec.os_type != "windows":
        return
    # virt-install's timers for Windows: no lost-tick storms after a pause, no HPET (slow, unneeded)
    _sub(clock, "timer", name="rtc", tickpolicy="catchup")
    _sub(clock, "timer", name="pit", tickpolicy="delay")
    _sub(clock, "timer", name="hpet", present="no")
    if spec.domain_type == "kvm":
        _sub(clock, "timer", name="hypervclock", present="yes")


def to_xml(spec: DomainSpec) -> str:
    """The domain XML for spec; the same spec always gives the same text."""
    windows = spec.os_type == "windows"
    dom = etree.Element("domain", type=spec.domain_type)
    _sub(dom, "name", spec.name)
    _sub(dom, "uuid", spec.uuid)
    if spec.description:
        _sub(dom, "description", spec.description)
    if spec.osinfo_id:
        meta = _sub(dom, "metadata")
        info = etree.SubElement(meta, "{%s}libosinfo" % LIBOSINFO_NS, nsmap={"libosinfo": LIBOSINFO_NS})
        etree.SubElement(info, "{%s}os" % LIBOSINFO_NS, id=spec.osinfo_id)
    _sub(dom, "memory", str(spec.memory_mib), unit="MiB")
    _sub(dom, "currentMemory", str(spec.memory_mib), unit="MiB")
    _sub(dom, "vcpu", str(spec.vcpus), placement="static")
    os_ = _sub(dom, "os")
    _sub(os_, "type", "hvm", arch="x86_64", machine=spec.machine)
    if spec.firmware == "uefi":
        if spec.secure_boot:
            _sub(os_, "loader", OVMF_CODE_SECURE, readonly="yes", secure="yes", type="pflash")
            _sub(os_, "nvram", spec.nvram or "", template=OVMF_VARS_SECURE)
        else:
            _sub(os_, "loader", OVMF_CODE, readonly="yes", type="pflash")
            _sub(os_, "nvram", spec.nvram or "", template=OVMF_VARS)
    _sub(os_, "boot", dev="hd")
    feats = _sub(dom, "features")
    _sub(feats, "acpi")
    _sub(feats, "apic")
    if windows and spec.domain_type == "kvm":
        # the enlightenments are KVM's (QEMU's hv-* CPU flags); TCG has none to offer
        _hyperv(feats)
    if spec.secure_boot:
        _sub(feats, "smm", state="on")
    if spec.domain_type == "kvm":
        _sub(dom, "cpu", mode="host-passthrough", check="none", migratable="on")
    _clock(dom, spec)
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    dev = _sub(dom, "devices")
    if any(d.bus == "scsi" for d in spec.disks):
        # without it libvirt picks an emulated LSI controller, which vioscsi does not drive
        _sub(dev, "controller", type="scsi", index="0", model="virtio-scsi")
    for d in spec.disks:
        disk = _sub(dev, "disk", type="file", device="disk")
        _sub(disk, "driver", name="qemu", type=d.format, discard="unmap")
        _sub(disk, "source", file=d.path)
        _sub(disk, "target", dev=d.target_dev, bus=d.bus)
    for n in spec.nics:
        if n.bridge:
            iface = _sub(dev, "interface", type="bridge")
            _sub(iface, "source", bridge=n.bridge)
        else:
            iface = _sub(dev, "interface", type="network")
            _sub(iface, "source", network=n.network)
        _sub(iface, "mac", address=n.mac)
        _sub(iface, "model", type=n.model)
    serial = _sub(dev, "serial", type="pty")
    _sub(serial, "target", port="0")
    console = _sub(dev, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    chan = _sub(dev, "channel", type="unix")
    _sub(chan, "target", type="virtio", name="org.qemu.guest_agent.0")
    _sub(dev, "input", type="tablet", bus="usb")
    gfx = _sub(dev, "graphics", type="vnc", autoport="yes")
    _sub(gfx, "listen", type="address", address="127.0.0.1")
    video = _sub(dev, "video")
    _sub(video, "model", type="virtio")
    _sub(_sub(dev, "memballoon", model="virtio"), "stats", period="10")
    rng = _sub(dev, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")
    if spec.tpm:
        # CRB is the TPM 2.0 interface Windows 11 expects; libvirt starts swtpm and keeps its state
        tpm = _sub(dev, "tpm", model="tpm-crb")
        _sub(tpm, "backend", type="emulator", version="2.0")
    return etree.tostring(dom, pretty_print=True, encoding="unicode")


def disk_targets(count: int, bus: str = "virtio") -> Tuple[str, ...]:
    """Target device names for count disks on bus: vda, vdb ... (virtio), sda ... (sata, scsi), hda ...
    (ide); after z come aa, ab ... as libvirt counts."""
    try:
        prefix = DISK_PREFIX[bus]
    except KeyError:
        raise ValueError("disk bus {!r} is not one of {}".format(bus, ", ".join(DISK_PREFIX))) from None
    out = []
    for i in range(count):
        s, n = "", i + 1
        while n:
            n, r = divmod(n - 1, 26)
            s = chr(ord("a") + r) + s
        out.append(prefix + s)
    return tuple(out)
