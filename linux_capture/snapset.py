"""A PV partition of a disk read from LVM snapshots of its volumes (see linux_capture/lvm.py): which disk
bytes to send and where to read each of them. Standard library only, Python 3.6+.
"""
from typing import Callable, Dict, List, Optional, Tuple

from diskfmt.extents import ExtentList
from diskfmt.usedmap import map_filesystem

from . import lvm
from .discover import Disk, Region
from .fsmap import DeviceReader, RegionMap, region_reader

ReadFn = Callable[[int, int], bytes]
Override = Tuple[int, int, ReadFn]          # disk start, disk end, read(offset from start, length)


def _through_segments(segments: Tuple[lvm.Segment, ...], read_pv: ReadFn) -> ReadFn:
    """Reads of a volume's offsets, from the PV through its segments (zeros where it has none)."""
    def read(offset: int, length: int) -> bytes:
        out = []
        pos, end = offset, offset + length
        while pos < end:
            seg = next((s for s in segments if s.lv_offset <= pos < s.lv_offset + s.length), None)
            if seg is None:
                return b"".join(out)
            n = min(end, seg.lv_offset + seg.length) - pos
            out.append(read_pv(seg.pv_offset + pos - seg.lv_offset, n))
            pos += n
        return b"".join(out)
    return read


def volume_map(region: Region, pv: lvm.PhysicalVolume, reads: Dict[str, ReadFn]
               ) -> Tuple[ExtentList, List[str], bool]:
    """(disk extents to send of the PV region, one line per volume, every map exact): the metadata
    area, the used blocks of each volume (read through ``reads[name]``), never the free extents."""
    ext = ExtentList([(region.offset, region.offset + pv.pe_start)])
    lines = []
    exact = True
    for v in pv.volumes:
        m = map_filesystem(reads[v.name], v.size, None, allow_dirty=True)
        exact = exact and m.exact
        for seg in v.segments:
            ext = ext.union(m.extents.clip(seg.lv_offset, seg.lv_offset + seg.length).shift(
                region.offset + seg.pv_offset - seg.lv_offset))
        lines.append("{}/{} {}: {}".format(v.vg, v.name, m.fstype or "unknown", m.reason))
    return ext, lines, exact


class PvSnapshots:
    """Snapshots of the active volumes of the PV in ``region``; removed by ``close()``."""

    def __init__(self, disk: Disk, region: Region, pv: lvm.PhysicalVolume, cows: Dict[str, int]) -> None:
        self.region = region
        self.pv = pv
        reader, base = region_reader(disk, region)
        self.pv_reader = reader
        self.base = base
        self.snaps: List[lvm.Snapshot] = []
        self.readers: Dict[str, DeviceReader] = {}
        # the metadata as it is before the snapshots: the converted guest must not know them
        self.meta = reader.read(base, pv.pe_start)
        try:
            for v in pv.volumes:
                if v.active:
                    s = lvm.snapshot(v, cows[v.name])
                    self.snaps.append(s)
                    self.readers[v.name] = DeviceReader(s.path)
            reads = {v.name: (self.readers[v.name].read if v.name in self.readers else
                              _through_segments(v.segments, self._read_pv)) for v in pv.volumes}
            self.extents, lines, exact = volume_map(region, pv, reads)
        except BaseException:
            self.close()
            raise
        self.map = RegionMap(region.name, "LVM2_member", self.extents, exact,
                             "LVM snapshot{} of {}; {}".format(
                                 "s" if len(self.snaps) != 1 else "",
                                 ", ".join("{}/{} ({} MiB copy-on-write)".format(s.volume.vg, s.volume.name,
                                                                                 s.cow >> 20) for s in self.snaps)
                                 or "no active volume", "; ".join(lines)))

    def _read_pv(self, offset: int, length: int) -> bytes:
        return self.pv_reader.read(self.base + offset, length)

    def names(self) -> List[str]:
        return ["{}/{}".format(s.volume.vg, s.volume.name) for s in self.snaps]

    def overrides(self) -> List[Override]:
        """Where the disk's bytes of this region come from instead of the disk itself."""
        start = self.region.offset
        out: List[Override] = [(start, start + self.pv.pe_start, lambda o, n: self.meta[o:o + n])]
        for v in self.pv.volumes:
            r = self.readers.get(v.name)
            if r is None:
                continue                  # inactive: nothing writes to it, the disk is read
            for seg in v.segments:
                out.append((start + seg.pv_offset, start + seg.pv_offset + seg.length,
                            (lambda base, rd: lambda o, n: rd.read(base + o, n))(seg.lv_offset, r)))
        return out

    def overflowed(self) -> List[str]:
        return [n for s, n in zip(self.snaps, self.names()) if lvm.invalid(s)]

    def close(self) -> Optional[str]:
        """Remove the snapshots; the first error, if one could not be removed."""
        err = None
        for r in self.readers.values():
            r.close()
        self.readers = {}
        for s in self.snaps:
            try:
                lvm.remove(s)
            except lvm.LvmError as e:
                err = err or str(e)
        self.snaps = []
        self.pv_reader.close()
        return err


def plan_map(disk: Disk, region: Region, pv: lvm.PhysicalVolume) -> Tuple[ExtentList, List[str]]:
    """``volume_map`` of the live volumes (their own device nodes): what a snapshot capture would send."""
    reader, base = region_reader(disk, region)
    opened: List[DeviceReader] = []
    try:
        reads: Dict[str, ReadFn] = {}
        for v in pv.volumes:
            if v.active and v.dm_path:
                r = DeviceReader(v.dm_path)
                opened.append(r)
                reads[v.name] = r.read
            else:
                reads[v.name] = _through_segments(v.segments, lambda o, n: reader.read(base + o, n))
        ext, lines, _ = volume_map(region, pv, reads)
        return ext, lines
    finally:
        for r in opened:
            r.close()
        reader.close()
