"""Source: one or more disk image files (raw, qcow2, VMDK, VHD, VHDX). Never written."""
import os
from typing import List, Optional, Sequence

from diskfmt import image
from diskfmt.errors import FormatError
from diskfmt.probe import probe_file

from ..errors import SourceError
from ..types import SourceDisk

FORMATS = ("raw", "qcow2", "vmdk", "vpc", "vhdx")
_CHECKABLE = ("qcow2", "vmdk", "vhdx", "vpc")


def open_disks(paths: Sequence[str], fmt: Optional[str] = None) -> List[SourceDisk]:
    """Each path as a SourceDisk with its format detected from its content (fmt overrides)."""
    if not paths:
        raise SourceError("no disk image given")
    disks = []
    for i, path in enumerate(paths):
        disks.append(_open_one(i, path, fmt))
    return disks


def _open_one(index: int, path: str, fmt: Optional[str]) -> SourceDisk:
    if not os.path.exists(path):
        raise SourceError("{}: no such file".format(path))
    if os.path.isdir(path):
        raise SourceError("{}: is a directory, not a disk image".format(path))
    if not os.access(path, os.R_OK):
        raise SourceError("{}: not readable (permission denied)".format(path))
    subformat = ""
    if fmt is None:
        try:
            probed = probe_file(path)
        except FormatError as e:
            raise SourceError(str(e)) from None
        fmt = probed.format
        subformat = probed.subformat or ""
    elif fmt not in FORMATS:
        raise SourceError("--format {}: not one of {}".format(fmt, ", ".join(FORMATS)))
    data = image.info(path, fmt)
    if fmt in _CHECKABLE:
        image.check(path, fmt)
    vsize = int(data.get("virtual-size", 0))
    if vsize <= 0:
        raise SourceError("{}: the {} image has no content (virtual size 0)".format(path, fmt))
    return SourceDisk(index=index, path=os.path.abspath(path), format=fmt, virtual_size=vsize,
                      actual_size=int(data.get("actual-size", 0)), subformat=subformat)
