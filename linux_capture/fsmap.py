"""Which bytes of a disk to send: used-block maps of its filesystems, everything else whole.

Partitions holding ext2/3/4, XFS, FAT, NTFS or swap send what ``diskfmt.usedmap`` maps (swap: its
header); unknown filesystems, LVM/crypt members, partition tables and unpartitioned space are sent
whole (runs of zeros travel as ZERO frames of a few bytes). Devices are read with O_DIRECT so that a
filesystem's writes through its own page cache are seen (a buffered read of the disk node can return
stale pages). Standard library only, Python 3.6+.
"""
import errno
import mmap
import os
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

from diskfmt.errors import FormatError
from diskfmt.extents import ExtentList
from diskfmt.gpt import read_gpt
from diskfmt.mbr import is_extended_type, read_mbr
from diskfmt.usedmap import map_filesystem

from .discover import Disk, Region

ReadFn = Callable[[int, int], bytes]

ALIGN = 4096
CHUNK = 1 << 20


class DeviceReader:
    """Coherent reads of a block device (or image file): ``read(offset, length) -> bytes``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.direct = True
        try:
            self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0) | os.O_CLOEXEC)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            self.direct = False
        self._buf = mmap.mmap(-1, CHUNK + 2 * ALIGN)   # page-aligned, as O_DIRECT needs
        self.bytes_read = 0

    def close(self) -> None:
        os.close(self.fd)
        self._buf.close()

    def _read_aligned(self, start: int, length: int) -> bytes:
        out = []
        view = memoryview(self._buf)
        try:
            while length > 0:
                n = min(length, len(self._buf) // ALIGN * ALIGN)
                os.lseek(self.fd, start, os.SEEK_SET)
                try:
                    got = os.readv(self.fd, [view[:n]])
                except OSError as e:
                    if e.errno != errno.EINVAL or not self.direct:
                        raise
                    self._fall_back_to_buffered()
                    continue
                if got <= 0:
                    break
                out.append(bytes(view[:got]))
                start += got
                length -= got
                if got < n:
                    break
        finally:
            view.release()
        return b"".join(out)

    def _fall_back_to_buffered(self) -> None:
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self.direct = False

    def read(self, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        start = offset // ALIGN * ALIGN
        end = -(-(offset + length) // ALIGN) * ALIGN
        data = self._read_aligned(start, end - start)
        self.bytes_read += len(data)
        return data[offset - start:offset - start + length]


class RegionMap(NamedTuple):
    region: str
    fstype: Optional[str]
    extents: ExtentList     # disk offsets
    exact: bool
    reason: str


def map_region(region: Region, read: ReadFn, live: bool) -> RegionMap:
    """What to send of one partition (or unpartitioned disk), in disk offsets.

    ``live``: the filesystem is mounted read-write, so a journal that needs recovery is accepted (and
    the map is made again once the filesystem is frozen)."""
    if region.holders:
        whole = ExtentList([(0, region.size)])
        return RegionMap(region.name, None, whole.shift(region.offset), False,
                         "held by {} (LVM or dm): sent whole".format(", ".join(region.holders)))
    m = map_filesystem(read, region.size, None, allow_dirty=live)
    return RegionMap(region.name, m.fstype, m.extents.shift(region.offset), m.exact, m.reason)


def region_reader(disk: Disk, region: Region) -> Tuple[DeviceReader, int]:
    """A reader for the region and the offset to add to region-relative reads (0 for its own node)."""
    if region.partition and os.path.exists(region.device):
        return DeviceReader(region.device), 0
    return DeviceReader(disk.device), region.offset


def map_disk(disk: Disk, live_regions: Dict[str, bool]) -> Tuple[ExtentList, List[RegionMap]]:
    """(extents to send, per-region maps) for a whole disk; gaps between partitions are sent whole."""
    extents = ExtentList([(0, disk.size)])
    maps = []
    for region in disk.regions:
        reader, base = region_reader(disk, region)
        try:
            rm = map_region(region, lambda o, n: reader.read(base + o, n), live_regions.get(region.name, False))
        finally:
            reader.close()
        maps.append(rm)
        extents = extents.subtract(ExtentList([(region.offset, region.offset + region.size)])).union(rm.extents)
    return extents.clip(0, disk.size), maps


def table_partitions(disk: Disk) -> Disk:
    """The disk with the partitions of its own MBR/GPT when the kernel lists none (a loop device without
    partition scanning, a kernel without that table's parser); they are read through the disk node."""
    if len(disk.regions) != 1 or disk.regions[0].partition:
        return disk
    whole = disk.regions[0]
    if whole.mounts or whole.holders:
        return disk                  # the kernel uses the whole disk as one volume
    reader = DeviceReader(disk.device)
    try:
        try:
            mbr = read_mbr(reader.read, disk.size)
            if mbr.protective:
                gpt = read_gpt(reader.read, disk.size)
                spans = [(p.number, p.first_lba * gpt.sector_size, (p.last_lba - p.first_lba + 1) * gpt.sector_size)
                         for p in gpt.partitions]
            else:
                spans = [(p.number, p.start_lba * mbr.sector_size, p.sectors * mbr.sector_size)
                         for p in mbr.partitions if not is_extended_type(p.type_id)]
        except FormatError:
            return disk
    finally:
        reader.close()
    if not spans:
        return disk
    regions = tuple(Region("{}:{}".format(disk.name, n), "", off, size, (), (), True, ())
                    for n, off, size in sorted(spans, key=lambda s: s[1]))
    return disk._replace(regions=regions)


def chunks(extents: ExtentList, size: int, chunk: int = CHUNK) -> Iterator[Tuple[int, int]]:
    """(offset, length) pieces of ``extents`` rounded out to 4 KiB, cut at every ``chunk`` boundary."""
    for start, end in extents.aligned(ALIGN):
        end = min(end, size)
        pos = start
        while pos < end:
            stop = min(end, (pos // chunk + 1) * chunk)
            yield pos, stop - pos
            pos = stop


class DiskReader:
    """Reads of disk offsets, each through the node of the partition that holds it (whose page cache
    the mounted filesystem writes through); other ranges through the whole-disk node. Ranges given to
    ``override`` (an LVM snapshot's view of a volume's extents) are read from there instead."""

    def __init__(self, disk: Disk) -> None:
        self.whole = DeviceReader(disk.device)
        self.parts: List[Tuple[int, int, DeviceReader]] = []
        self.overrides: List[Tuple[int, int, ReadFn]] = []
        for r in disk.regions:
            if r.partition and os.path.exists(r.device):
                self.parts.append((r.offset, r.offset + r.size, DeviceReader(r.device)))

    def override(self, start: int, end: int, read: ReadFn) -> None:
        """Bytes [start, end) of the disk come from ``read(offset - start, length)``."""
        self.overrides.append((start, end, read))
        self.overrides.sort()

    def read(self, offset: int, length: int) -> bytes:
        if not self.overrides:
            return self._read(offset, length)
        out = []
        pos, end = offset, offset + length
        while pos < end:
            for start, stop, read in self.overrides:
                if start <= pos < stop:
                    n = min(end, stop) - pos
                    got = read(pos - start, n)
                    out.append(got)
                    if len(got) != n:
                        return b"".join(out)
                    break
            else:
                n = min([s for s, _, _ in self.overrides if s > pos] + [end]) - pos
                out.append(self._read(pos, n))
            pos += n
        return b"".join(out)

    def _read(self, offset: int, length: int) -> bytes:
        out = []
        pos, end = offset, offset + length
        while pos < end:
            for start, stop, reader in self.parts:
                if start <= pos < stop:
                    n = min(end, stop) - pos
                    out.append(reader.read(pos - start, n))
                    break
            else:
                n = min([s for s, _, _ in self.parts if s > pos] + [end]) - pos
                out.append(self.whole.read(pos, n))
            pos += n
        return b"".join(out)

    @property
    def bytes_read(self) -> int:
        return self.whole.bytes_read + sum(r.bytes_read for _, _, r in self.parts)

    def close(self) -> None:
        self.whole.close()
        for _, _, r in self.parts:
            r.close()
