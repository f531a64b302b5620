"""The libvirt domain as data; XML is produced from it (never assembled from strings)."""
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Optional, Tuple

from lxml import etree

LIBOSINFO_NS = "http://libosinfo.org/xmlns/libvirt/domain/1.0"
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"


@dataclass(frozen=True)
class DiskSpec:
    path: str
    format: str              # qcow2 | raw
    target_dev: str          # vda
    bus: str = "virtio"


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


def _sub(parent: etree._Element, tag: str, text: Optional[str] = None, **attrs: str) -> etree._Element:
    el = etree.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def to_xml(spec: DomainSpec) -> str:
    """The domain XML for spec; the same spec always gives the same text."""
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
        _sub(os_, "loader", OVMF_CODE, readonly="yes", type="pflash")
        _sub(os_, "nvram", spec.nvram or "", template=OVMF_VARS)
    _sub(os_, "boot", dev="hd")
    feats = _sub(dom, "features")
    _sub(feats, "acpi")
    _sub(feats, "apic")
    if spec.domain_type == "kvm":
        _sub(dom, "cpu", mode="host-passthrough", check="none", migratable="on")
    _sub(dom, "clock", offset="utc")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    dev = _sub(dom, "devices")
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
    return etree.tostring(dom, pretty_print=True, encoding="unicode")


def disk_targets(count: int) -> Tuple[str, ...]:
    """vda, vdb, ... for count disks."""
    out = []
    for i in range(count):
        s, n = "", i + 1
        while n:
            n, r = divmod(n - 1, 26)
            s = chr(ord("a") + r) + s
        out.append("vd" + s)
    return tuple(out)
