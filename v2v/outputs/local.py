"""Output: disk files and a libvirt domain XML file in a directory (--to local --out DIR)."""
import os
from typing import Sequence

from ..domain import to_xml
from ..errors import OutputError
from ..types import Overlay, Plan, Result, TargetDisk
from .base import Output, write_atomically


class LocalOutput(Output):
    kind = "local"

    def disk_dir(self) -> str:
        if not self.opts.out_dir:
            raise OutputError("--to local needs --out DIR")
        return os.path.abspath(self.opts.out_dir)

    def xml_path(self) -> str:
        return os.path.join(self.disk_dir(), self.opts.name + ".xml")

    def check(self, overlays: Sequence[Overlay]) -> None:
        super().check(overlays)
        if not self.opts.overwrite and os.path.exists(self.xml_path()):
            raise OutputError("{} already exists; choose another --name or --out, or pass --overwrite".format(
                self.xml_path()))

    def finalize(self, plan: Plan, targets: Sequence[TargetDisk]) -> Result:
        placed = self.place(targets)
        xml = to_xml(self.domain_spec(plan, placed))
        write_atomically(self.xml_path(), xml)
        self._placed.append(self.xml_path())
        self._placed.clear()   # complete: nothing to roll back any more
        return Result(name=plan.name, output=self.kind, disks=tuple(placed), domain_xml=self.xml_path(),
                      plan=plan)
