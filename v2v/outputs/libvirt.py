"""Output: disks in a storage directory and the domain defined in libvirtd (--to libvirt)."""
import os
from typing import Optional, Sequence

from .. import virt
from ..domain import to_xml
from ..errors import OutputError
from ..types import Overlay, Plan, Result, TargetDisk
from .base import Output


class LibvirtOutput(Output):
    kind = "libvirt"
    _dir: Optional[str] = None

    def disk_dir(self) -> str:
        if self._dir is None:
            if self.opts.storage:
                self._dir = os.path.abspath(self.opts.storage)
            else:
                with virt.connection(self.opts.uri) as conn:
                    path = virt.pool_path(conn, "default")
                if path is None:
                    raise OutputError("libvirt at {} has no storage pool named 'default'; pass --storage DIR "
                                      "(a directory for the disks)".format(self.opts.uri))
                self._dir = path
        return self._dir

    def check(self, overlays: Sequence[Overlay]) -> None:
        with virt.connection(self.opts.uri) as conn:
            dom = virt.lookup_domain(conn, self.opts.name)
            if dom is not None:
                if not self.opts.overwrite:
                    raise OutputError("a domain named {} already exists in {}; choose another --name or pass "
                                      "--overwrite".format(self.opts.name, self.opts.uri))
                if dom.isActive():
                    raise OutputError("domain {} is running; shut it down before overwriting it".format(
                        self.opts.name))
        super().check(overlays)

    def finalize(self, plan: Plan, targets: Sequence[TargetDisk]) -> Result:
        placed = self.place(targets)
        xml = to_xml(self.domain_spec(plan, placed))
        with virt.connection(self.opts.uri) as conn:
            old = virt.lookup_domain(conn, plan.name)
            if old is not None:   # --overwrite was checked; keep the old UUID so references stay valid
                from lxml import etree
                tree = etree.fromstring(xml.encode())
                tree.find("uuid").text = old.UUIDString()
                xml = etree.tostring(tree, pretty_print=True, encoding="unicode")
            virt.define(conn, xml)
            virt.refresh_pools_containing(conn, self.disk_dir())
        self._placed.clear()
        return Result(name=plan.name, output=self.kind, disks=tuple(placed), domain_xml="",
                      libvirt_uri=self.opts.uri, plan=plan)
