"""Used-block map of NTFS: the set bits of the cluster bitmap, ``$Bitmap`` (MFT record 6), which covers
every cluster in use, the MFT included.

Reads the boot sector, MFT record 0 (``$MFT``) for the MFT's own run list, then record 6's unnamed
``$DATA`` run list (following an ``$ATTRIBUTE_LIST`` into extension records), and the bitmap itself.
MFT records get their update-sequence fixups applied. A volume whose ``$Volume`` says dirty, or whose
``$LogFile`` restart area is not clean, is refused unless ``allow_dirty``: replaying its log could mark
clusters used that the bitmap on disk still calls free. Standard library only, Python 3.6+.
"""
import struct
from typing import List, NamedTuple, Optional, Tuple

from ..errors import FormatError
from ..extents import ExtentList
from . import ReadFn, UnsupportedFilesystem, add_bitmap, check_fits, keep_tail, read_exact

OEM_ID = b"NTFS    "
AT_VOLUME_INFORMATION = 0x70
AT_ATTRIBUTE_LIST = 0x20
AT_DATA = 0x80
AT_END = 0xFFFFFFFF
MFT_RECORD_IN_USE = 0x1
VOLUME_IS_DIRTY = 0x1
RESTART_VOLUME_IS_CLEAN = 0x2
LOGFILE_NO_CLIENT = 0xFFFF
FIXUP_STRIDE = 512  # NTFS_BLOCK_SIZE, whatever the sector size
REC_MFT, REC_LOGFILE, REC_VOLUME, REC_BITMAP = 0, 2, 3, 6
_BITMAP_CHUNK = 1 << 20

# One run: (first VCN, length in clusters, first LCN or None for a sparse run).
Run = Tuple[int, int, Optional[int]]


class BootSector(NamedTuple):
    bytes_per_sector: int
    cluster_size: int
    total_sectors: int
    mft_lcn: int
    record_size: int

    @property
    def clusters(self) -> int:
        return self.total_sectors * self.bytes_per_sector // self.cluster_size


def read_boot_sector(read: ReadFn) -> BootSector:
    raw = read_exact(read, 0, 512, "NTFS boot sector")
    if raw[3:11] != OEM_ID:
        raise FormatError("no NTFS OEM id in the boot sector")
    bps, spc_raw = struct.unpack_from("<HB", raw, 11)
    total_sectors, mft_lcn, _mirr = struct.unpack_from("<QQQ", raw, 40)
    rec_raw = struct.unpack_from("<b", raw, 64)[0]
    if bps not in (256, 512, 1024, 2048, 4096) or spc_raw == 0:
        raise FormatError("NTFS boot sector has an impossible sector or cluster size")
    spc = spc_raw if spc_raw <= 0x80 else 1 << (256 - spc_raw)
    if spc & (spc - 1):
        raise FormatError("NTFS boot sector has an impossible cluster size")
    cluster_size = bps * spc
    record_size = rec_raw * cluster_size if rec_raw > 0 else 1 << -rec_raw
    if record_size < 256 or record_size > 65536 or record_size & (record_size - 1):
        raise FormatError("NTFS boot sector has an impossible MFT record size")
    if total_sectors == 0 or mft_lcn == 0 or mft_lcn * spc >= total_sectors:
        raise FormatError("NTFS boot sector puts the MFT outside the volume")
    return BootSector(bps, cluster_size, total_sectors, mft_lcn, record_size)


def probe(read: ReadFn, size: int) -> Optional[str]:
    try:
        read_boot_sector(read)
    except FormatError:
        return None
    return "ntfs"


def apply_fixups(record: bytes, magic: bytes, what: str) -> bytes:
    """A multi-sector record with its update sequence array applied; FormatError on a torn record."""
    if record[:4] != magic:
        raise FormatError("{} has no {!r} magic".format(what, magic.decode()))
    usa_ofs, usa_count = struct.unpack_from("<HH", record, 4)
    strides = len(record) // FIXUP_STRIDE
    if usa_count == 0 or usa_count - 1 > strides or usa_ofs + 2 * usa_count > FIXUP_STRIDE - 2:
        raise FormatError("{} has an impossible update sequence array".format(what))
    buf = bytearray(record)
    usn = buf[usa_ofs:usa_ofs + 2]
    for i in range(1, usa_count):
        end = i * FIXUP_STRIDE
        if buf[end - 2:end] != usn:
            raise FormatError("{} is torn: sector {} fails its update sequence check".format(what, i - 1))
        buf[end - 2:end] = buf[usa_ofs + 2 * i:usa_ofs + 2 * i + 2]
    return bytes(buf)


class Attribute(NamedTuple):
    type: int
    name: str
    resident: bool
    value: bytes  # resident value, or b"" when non-resident
    lowest_vcn: int
    runs: List[Run]  # non-resident run list, [] when resident
    data_size: int
    initialized_size: int


def decode_runs(raw: bytes, offset: int, lowest_vcn: int) -> List[Run]:
    """A mapping-pairs array starting at ``offset``, as runs from ``lowest_vcn``."""
    runs: List[Run] = []
    vcn, lcn = lowest_vcn, 0
    pos = offset
    while pos < len(raw) and raw[pos]:
        header = raw[pos]
        len_size, off_size = header & 0xF, header >> 4
        if len_size == 0 or len_size > 8 or off_size > 8 or pos + 1 + len_size + off_size > len(raw):
            raise FormatError("NTFS run list has a malformed run header at byte {}".format(pos))
        length = int.from_bytes(raw[pos + 1:pos + 1 + len_size], "little", signed=True)
        if length <= 0:
            raise FormatError("NTFS run list has a run of {} clusters".format(length))
        if off_size:
            delta_at = pos + 1 + len_size
            lcn += int.from_bytes(raw[delta_at:delta_at + off_size], "little", signed=True)
            if lcn < 0:
                raise FormatError("NTFS run list points before cluster 0")
            runs.append((vcn, length, lcn))
        else:
            runs.append((vcn, length, None))
        vcn += length
        pos += 1 + len_size + off_size
    return runs


def parse_attributes(record: bytes) -> List[Attribute]:
    """The attributes of a fixed-up MFT record."""
    attrs_offset, flags, used_size = struct.unpack_from("<HHI", record, 20)
    if not flags & MFT_RECORD_IN_USE:
        raise FormatError("NTFS MFT record is not in use")
    if used_size > len(record) or attrs_offset >= used_size:
        raise FormatError("NTFS MFT record has an impossible size")
    out: List[Attribute] = []
    pos = attrs_offset
    while pos + 8 <= used_size:
        atype, alen = struct.unpack_from("<II", record, pos)
        if atype == AT_END:
            break
        if alen < 24 or pos + alen > used_size or alen % 8:
            raise FormatError("NTFS attribute 0x{:x} has an impossible length".format(atype))
        attr = record[pos:pos + alen]
        non_resident, name_len, name_ofs = struct.unpack_from("<BBH", attr, 8)
        name = attr[name_ofs:name_ofs + 2 * name_len].decode("utf-16-le", "replace")
        if non_resident:
            if alen < 64:
                raise FormatError("NTFS non-resident attribute 0x{:x} is too short".format(atype))
            lowest, _highest, runs_ofs = struct.unpack_from("<QQH", attr, 16)
            _alloc, data_size, init_size = struct.unpack_from("<QQQ", attr, 40)
            runs = decode_runs(attr, runs_ofs, lowest)
            out.append(Attribute(atype, name, False, b"", lowest, runs, data_size, init_size))
        else:
            vlen, vofs = struct.unpack_from("<IH", attr, 16)
            if vofs + vlen > alen:
                raise FormatError("NTFS resident attribute 0x{:x} overruns its record".format(atype))
            value = attr[vofs:vofs + vlen]
            out.append(Attribute(atype, name, True, value, 0, [], vlen, vlen))
        pos += alen
    return out


def read_runs(read: ReadFn, boot: BootSector, runs: List[Run], start: int, length: int, what: str) -> bytes:
    """``length`` bytes at byte ``start`` of a non-resident stream; sparse runs read as zeros."""
    cs = boot.cluster_size
    out = bytearray()
    pos = start
    end = start + length
    for vcn, count, lcn in runs:
        run_start, run_end = vcn * cs, (vcn + count) * cs
        if run_end <= pos or run_start >= end:
            continue
        if run_start > pos:
            raise FormatError("{}: byte {} is not mapped by its run list".format(what, pos))
        take = min(end, run_end) - pos
        if lcn is None:
            out += bytes(take)
        else:
            if lcn + count > boot.clusters:
                raise FormatError("{}: run at cluster {} lies past the volume's end".format(what, lcn))
            out += read_exact(read, lcn * cs + (pos - run_start), take, what)
        pos += take
        if pos >= end:
            break
    if pos < end:
        raise FormatError("{}: byte {} is not mapped by its run list".format(what, pos))
    return bytes(out)


class Mft:
    """The MFT of one volume, readable record by record."""

    def __init__(self, read: ReadFn, boot: BootSector) -> None:
        self.read = read
        self.boot = boot
        first = read_exact(read, boot.mft_lcn * boot.cluster_size, boot.record_size, "NTFS $MFT record")
        base = parse_attributes(apply_fixups(first, b"FILE", "NTFS $MFT record"))
        # Bootstrap from record 0's own first $DATA segment, then complete it from any extensions.
        self.mft_runs: List[Run] = []
        for attr in base:
            if attr.type == AT_DATA and not attr.name and not attr.resident and attr.lowest_vcn == 0:
                self.mft_runs = attr.runs
        if not self.mft_runs:
            raise FormatError("NTFS $MFT record has no $DATA run list")
        self.mft_runs = self.stream_runs(REC_MFT, base)

    def record_offset(self, number: int) -> int:
        """Byte offset of MFT record ``number`` from the start of the volume."""
        start = number * self.boot.record_size
        for vcn, count, lcn in self.mft_runs:
            run_start = vcn * self.boot.cluster_size
            if lcn is not None and run_start <= start < run_start + count * self.boot.cluster_size:
                return lcn * self.boot.cluster_size + start - run_start
        raise FormatError("NTFS MFT record {} is not mapped by the MFT's run list".format(number))

    def record(self, number: int) -> List[Attribute]:
        size = self.boot.record_size
        what = "NTFS MFT record {}".format(number)
        raw = read_runs(self.read, self.boot, self.mft_runs, number * size, size, what)
        return parse_attributes(apply_fixups(raw, b"FILE", what))

    def segments(self, number: int, atype: int, attrs: Optional[List[Attribute]] = None) -> List[Attribute]:
        """Every segment of record ``number``'s unnamed attribute ``atype``, extension records included."""
        if attrs is None:
            attrs = self.record(number)
        found = [a for a in attrs if a.type == atype and not a.name]
        lists = [a for a in attrs if a.type == AT_ATTRIBUTE_LIST]
        if not lists:
            return found
        al = lists[0]
        raw = al.value if al.resident else read_runs(self.read, self.boot, al.runs, 0, al.data_size,
                                                      "NTFS attribute list of record {}".format(number))
        extension_records = set()
        pos = 0
        while pos + 26 <= len(raw):
            etype, elen, ename_len = struct.unpack_from("<IHB", raw, pos)
            if elen < 26:
                raise FormatError("NTFS attribute list of record {} is malformed".format(number))
            ref = struct.unpack_from("<Q", raw, pos + 16)[0] & 0xFFFFFFFFFFFF
            if etype == atype and ename_len == 0 and ref != number:
                extension_records.add(ref)
            pos += elen
        for ref in sorted(extension_records):
            found += [a for a in self.record(ref) if a.type == atype and not a.name]
        return found

    def stream_runs(self, number: int, attrs: Optional[List[Attribute]] = None) -> List[Run]:
        """The whole run list of record ``number``'s unnamed $DATA, segments joined in VCN order."""
        segs = sorted((a for a in self.segments(number, AT_DATA, attrs) if not a.resident),
                      key=lambda a: a.lowest_vcn)
        runs: List[Run] = []
        next_vcn = 0
        for seg in segs:
            if seg.lowest_vcn != next_vcn:
                raise FormatError("NTFS record {} $DATA segments leave a gap at VCN {}".format(
                    number, next_vcn))
            runs += seg.runs
            next_vcn = runs[-1][0] + runs[-1][1] if runs else next_vcn
        return runs

    def data_sizes(self, number: int) -> Tuple[int, int]:
        for attr in self.record(number):
            if attr.type == AT_DATA and not attr.name and attr.lowest_vcn == 0:
                return attr.data_size, attr.initialized_size
        raise FormatError("NTFS record {} has no $DATA".format(number))


def _dirty_reason(vol: Mft) -> Optional[str]:
    """Why the volume's bitmap may lag its log, or None when it was cleanly unmounted."""
    for attr in vol.record(REC_VOLUME):
        if attr.type == AT_VOLUME_INFORMATION and attr.resident and len(attr.value) >= 12:
            if struct.unpack_from("<H", attr.value, 10)[0] & VOLUME_IS_DIRTY:
                return "NTFS volume is marked dirty (mounted, or needs chkdsk)"
    runs = vol.stream_runs(REC_LOGFILE)
    size, _init = vol.data_sizes(REC_LOGFILE)
    head = read_runs(vol.read, vol.boot, runs, 0, min(size, 4096), "NTFS $LogFile")
    if head.count(0xFF) == len(head):
        return None  # an emptied log (mkntfs, ntfs-3g): nothing to replay
    # Two restart pages, at 0 and at the system page size; the one with the newer LSN counts.
    page = struct.unpack_from("<I", head, 16)[0] if head[:4] in (b"RSTR", b"CHKD") else 4096
    if page < 512 or page > 65536 or page & (page - 1):
        page = 4096
    best: Optional[Tuple[int, int, int]] = None
    for offset in (0, page):
        if offset + page > size:
            continue
        raw = read_runs(vol.read, vol.boot, runs, offset, page, "NTFS $LogFile")
        if raw[:4] not in (b"RSTR", b"CHKD"):
            continue
        try:
            raw = apply_fixups(raw, raw[:4], "NTFS $LogFile restart page")
        except FormatError:
            continue
        ra_ofs = struct.unpack_from("<H", raw, 24)[0]
        if ra_ofs + 16 > len(raw):
            continue
        lsn, _clients, _free, in_use, flags = struct.unpack_from("<QHHHH", raw, ra_ofs)
        if best is None or lsn > best[0]:
            best = (lsn, in_use, flags)
    if best is None:
        return "NTFS $LogFile has no readable restart area"
    _lsn, in_use, flags = best
    if in_use != LOGFILE_NO_CLIENT and not flags & RESTART_VOLUME_IS_CLEAN:
        return "NTFS $LogFile was not closed cleanly (mounted, crashed or hibernated)"
    return None


def used_map(read: ReadFn, size: int, allow_dirty: bool = False) -> ExtentList:
    """Byte ranges of an NTFS volume in use: clusters set in $Bitmap, plus the tail (backup boot sector)."""
    boot = read_boot_sector(read)
    fs_bytes = boot.total_sectors * boot.bytes_per_sector
    check_fits("NTFS volume", fs_bytes, size)
    vol = Mft(read, boot)
    if not allow_dirty:
        reason = _dirty_reason(vol)
        if reason:
            raise UnsupportedFilesystem(reason + ": its cluster bitmap may lag the log")
    runs = vol.stream_runs(REC_BITMAP)
    data_size, init_size = vol.data_sizes(REC_BITMAP)
    clusters = boot.clusters
    need = (clusters + 7) // 8
    if data_size < need:
        raise FormatError("NTFS $Bitmap of {} bytes is too small for {} clusters".format(data_size, clusters))
    used = ExtentList([(0, boot.cluster_size)])  # the boot sector, whatever the bitmap says
    readable = min(need, init_size)  # bytes past the initialized size read as zero: nothing to add
    pos = 0
    while pos < readable:
        n = min(_BITMAP_CHUNK, readable - pos)
        chunk = read_runs(read, boot, runs, pos, n, "NTFS $Bitmap")
        add_bitmap(used, chunk, min(8 * n, clusters - 8 * pos), 8 * pos, boot.cluster_size)
        pos += n
    used = used.clip(0, clusters * boot.cluster_size)
    keep_tail(used, clusters * boot.cluster_size, size)
    return used
