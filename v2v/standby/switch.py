"""The standby's libvirt domain: defined from data kept in the state, pointed at one generation's fixed
layer at a time (a redefine is atomic in libvirtd: the domain boots the old disks or the new ones)."""
import dataclasses
from typing import Any, Dict, Optional, Sequence

from .. import virt
from ..domain import DiskSpec, DomainSpec, NicSpec, disk_targets, to_xml
from ..errors import OutputError


def spec_to_data(spec: DomainSpec) -> Dict[str, Any]:
    data = dataclasses.asdict(spec)
    data.pop("disks")
    return data


def spec_from_data(data: Dict[str, Any], disks: Sequence[str], bus: str) -> DomainSpec:
    d = dict(data)
    d["nics"] = tuple(NicSpec(**n) for n in d.get("nics", ()))
    return DomainSpec(disks=tuple(DiskSpec(path=p, format="qcow2", target_dev=t, bus=bus)
                                  for p, t in zip(disks, disk_targets(len(disks), bus))), **d)


def disk_paths(uri: str, name: str) -> Optional[Sequence[str]]:
    """The disk files the defined domain boots, or None when no such domain is defined."""
    from lxml import etree
    with virt.connection(uri) as conn:
        dom = virt.lookup_domain(conn, name)
        if dom is None:
            return None
        tree = etree.fromstring(dom.XMLDesc(0).encode())
        return [s.get("file") for s in tree.findall("devices/disk[@device='disk']/source")]


def is_running(uri: str, name: str) -> bool:
    with virt.connection(uri) as conn:
        dom = virt.lookup_domain(conn, name)
        return bool(dom is not None and dom.isActive())


def point_at(uri: str, spec: DomainSpec, refuse_running: bool = True) -> None:
    """Define (or redefine, keeping the UUID) the domain with spec's disks."""
    with virt.connection(uri) as conn:
        dom = virt.lookup_domain(conn, spec.name)
        if dom is not None:
            if refuse_running and dom.isActive():
                raise OutputError("the standby domain {} is running; shut it down first (a running standby "
                                  "is the one in use)".format(spec.name))
            if dom.UUIDString() != spec.uuid:
                raise OutputError("a domain named {} exists in {} and is not this standby's (UUID {}); "
                                  "choose another --name".format(spec.name, uri, dom.UUIDString()))
        virt.define(conn, to_xml(spec))


def start(uri: str, name: str) -> None:
    with virt.connection(uri) as conn:
        dom = virt.lookup_domain(conn, name)
        if dom is None:
            raise OutputError("the standby domain {} is not defined in {}".format(name, uri))
        if dom.isActive():
            return
        try:
            dom.create()
        except virt.libvirt_error() as e:
            raise OutputError("libvirt could not start {}: {}".format(name, e.get_error_message())) from None
