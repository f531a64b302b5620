"""Which container format a disk image is in, judged from its bytes (never its file name), and whether
its own headers say it is truncated.

``probe`` is pure: it reads through a ``read(offset, length) -> bytes`` callable. ``probe_file`` is
the thin wrapper that opens a file. Format names are qemu-img's: raw, qcow2, vmdk, vpc, vhdx.
Standard library only, Python 3.6+.
"""
import array
import os
import re
import struct
import sys
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

from .errors import FormatError
from .gpt import guid_from_bytes

ReadFn = Callable[[int, int], bytes]

SECTOR = 512
_HEAD_BYTES = 4096
_MAX_DESCRIPTOR_BYTES = 1024 * 1024
_READ_CHUNK = 1024 * 1024

FORMAT_LABELS = {"raw": "raw image", "qcow2": "qcow2", "vmdk": "VMDK", "vpc": "VHD", "vhdx": "VHDX"}


class VmdkExtent(NamedTuple):
    """One extent line of a VMDK descriptor, e.g. ``RW 4192256 SPARSE "disk-s001.vmdk"``."""
    access: str  # RW, RDONLY or NOACCESS
    sectors: int
    kind: str  # FLAT, SPARSE, ZERO, VMFS, VMFSSPARSE, VMFSRDM, VMFSRAW, SESPARSE
    filename: Optional[str]  # relative to the descriptor; None for ZERO extents
    offset: int  # in sectors, into a FLAT extent's file


class ImageInfo(NamedTuple):
    """What ``probe`` found.

    format: qemu-img's name (raw, qcow2, vmdk, vpc, vhdx); pass it to qemu-img with -f, since qemu's
    own detection misses fixed VHDs. virtual_size: bytes the guest sees. subformat: qcow2 compat level
    ('0.10' or '1.1'); VMDK createType ('monolithicSparse', 'streamOptimized', 'monolithicFlat' ...);
    VHD/VHDX 'fixed', 'dynamic' or 'differencing'; None for raw. backing_file/backing_format: as the
    image records them. problems: one-line notes on things that are wrong but did not stop the probe.
    extents: the extent lines of a VMDK descriptor (text or embedded). file_size: bytes probed.
    """
    format: str
    virtual_size: int
    subformat: Optional[str]
    backing_file: Optional[str]
    problems: List[str]
    backing_format: Optional[str]
    extents: List[VmdkExtent]
    file_size: int


class _Image:
    """The bytes being probed, with bounds checks that turn into user-facing FormatErrors."""

    def __init__(self, read: ReadFn, size: int, name: str) -> None:
        self.read_fn = read
        self.size = size
        self.name = name

    def error(self, message: str) -> FormatError:
        return FormatError(f"{self.name}: {message}" if self.name else message)

    def need(self, fmt: str, what: str, offset: int, length: int) -> None:
        """Raise the truncation error unless ``length`` bytes at ``offset`` lie inside the file."""
        if offset >= self.size:
            raise self.error(f"truncated {FORMAT_LABELS[fmt]}: {what} at byte {offset} "
                             f"is beyond the end of the file (size {self.size})")
        if offset + length > self.size:
            end = offset + length - 1
            raise self.error(f"truncated {FORMAT_LABELS[fmt]}: {what} at bytes {offset}-{end} "
                             f"runs past the end of the file (size {self.size})")

    def need_all(self, fmt: str, regions: List[Tuple[str, int, int]]) -> None:
        """``need`` for each (what, offset, length), nearest the start first: a cut file is reported by
        the first structure the cut reaches."""
        for what, offset, length in sorted(regions, key=lambda region: region[1]):
            self.need(fmt, what, offset, length)

    def get(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset`` (the caller has checked they are inside the file)."""
        parts = []
        done = 0
        while done < length:
            want = min(length - done, _READ_CHUNK)
            chunk = self.read_fn(offset + done, want)[:want]
            if not chunk:
                raise self.error(f"short read at byte {offset + done} (wanted {length - done} more bytes, "
                                 f"file size {self.size}): did the file change while it was read?")
            parts.append(chunk)
            done += len(chunk)
        return b"".join(parts)

    def checked(self, fmt: str, what: str, offset: int, length: int) -> bytes:
        self.need(fmt, what, offset, length)
        return self.get(offset, length)


def probe(read: ReadFn, size: int, name: str = "") -> ImageInfo:
    """Identify the disk image of ``size`` bytes read through ``read``.

    Raises FormatError (prefixed with ``name`` when given) for an empty file, text, archives and
    compressed files, disk formats this converter does not take, a raw image whose size is not a
    multiple of 512, and any image whose own metadata lies beyond the end of the file (truncated).
    """
    img = _Image(read, size, name)
    if size <= 0:
        raise img.error("empty file (0 bytes): not a disk image")
    head = img.get(0, min(size, _HEAD_BYTES))
    if head[:4] == b"QFI\xfb":
        return _probe_qcow2(img)
    if head[:4] == b"KDMV":
        return _probe_vmdk_sparse(img)
    if head[:4] == b"COWD":
        return _probe_vmdk_cowd(img)
    if head[:8] == b"vhdxfile":
        return _probe_vhdx(img)
    if head[:8] == b"conectix":
        return _probe_vpc_dynamic(img, head)
    _refuse_other_formats(img, head)
    if _is_vmdk_descriptor(head):
        return _probe_vmdk_descriptor(img)
    problems = []
    tail = img.get(size - SECTOR, SECTOR) if size >= SECTOR else b""
    if tail[:8] == b"conectix":
        fixed = _probe_vpc_fixed(img, tail)
        if isinstance(fixed, ImageInfo):
            return fixed
        problems.append(fixed)
    if tail[:4] == b"koly":
        raise img.error("Apple disk image (DMG): not supported; convert it first with "
                        "'qemu-img convert -f dmg -O qcow2'")
    text = _text_start(head)
    if text is not None:
        raise img.error(f"this is a text file, not a disk image (it starts with {text!r})")
    if size % SECTOR:
        raise img.error(f"size {size} is not a multiple of 512 bytes: not a raw disk image "
                        "(truncated, or not a disk image at all)")
    return ImageInfo("raw", size, None, None, problems, None, [], size)


def probe_file(path: str) -> ImageInfo:
    """``probe`` on the file or block device at ``path``; errors name ``path``. OSError passes through."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)

        def read(offset: int, length: int) -> bytes:
            f.seek(offset)
            return f.read(length)

        return probe(read, size, path)


# --- not disk images, or not ones we take -------------------------------------------------------

_CONVERT_PARALLELS = "convert it first with 'qemu-img convert -f parallels -O qcow2'"
_FOREIGN = [
    # (offset, magic, what it is, what to do)
    (0, b"\x1f\x8b\x08", "a gzip-compressed file", "decompress it first"),
    (0, b"\xfd7zXZ\x00", "an xz-compressed file", "decompress it first"),
    (0, b"\x28\xb5\x2f\xfd", "a zstd-compressed file", "decompress it first"),
    (0, b"PK\x03\x04", "a zip archive", "extract the disk image from it first"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-zip archive", "extract the disk image from it first"),
    (257, b"ustar", "a tar archive (an OVA?)", "use it as an OVA source or extract the disk image from it"),
    (0, b"QED\x00", "a QED image", "convert it first with 'qemu-img convert -f qed -O qcow2'"),
    (0, b"WithoutFreeSpace", "a Parallels image", _CONVERT_PARALLELS),
    (0, b"WithouFreSpacExt", "a Parallels image", _CONVERT_PARALLELS),
]


def _refuse_other_formats(img: _Image, head: bytes) -> None:
    for offset, magic, what, todo in _FOREIGN:
        if head[offset:offset + len(magic)] == magic:
            raise img.error(f"this is {what}, not a disk image: {todo}")
    if re.match(b"BZh[1-9]1AY&SY", head[:10]):
        raise img.error("this is a bzip2-compressed file, not a disk image: decompress it first")
    if len(head) >= 0x44 and struct.unpack_from("<I", head, 0x40)[0] == 0xBEDA107F:
        raise img.error("VirtualBox VDI image: not supported; convert it first with "
                        "'qemu-img convert -f vdi -O qcow2'")


def _text_start(head: bytes) -> Optional[str]:
    """The first line when ``head`` is text (UTF-8, no NULs, no control characters but whitespace)."""
    if b"\0" in head:
        return None
    for cut in range(4):  # the sample may end inside a multi-byte character
        try:
            text = head[:len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        return None
    if any(ord(c) < 32 and c not in "\t\n\r\f\v" for c in text):
        return None
    first = text.lstrip("\ufeff \t\r\n").split("\n", 1)[0].rstrip()
    return first[:60] + ("..." if len(first) > 60 else "")


# --- qcow2 --------------------------------------------------------------------------------------

_QCOW2_HEADER = struct.Struct(">4sIQIIQIIQQIIQ")
_QCOW2_V3 = struct.Struct(">QQQII")
_QCOW2_OFFSET_MASK = 0x00FFFFFFFFFFFE00
_QCOW2_REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00
_QCOW2_EXT_END = 0
_QCOW2_EXT_BACKING_FORMAT = 0xE2792ACA
_QCOW2_EXT_DATA_FILE = 0x44415441
_QCOW2_INCOMPAT_DIRTY = 1 << 0
_QCOW2_INCOMPAT_CORRUPT = 1 << 1
_QCOW2_INCOMPAT_DATA_FILE = 1 << 2
_QCOW2_INCOMPAT_KNOWN = 0x1F  # dirty, corrupt, external data file, compression type, extended L2


def _probe_qcow2(img: _Image) -> ImageInfo:
    header = img.checked("qcow2", "header", 0, _QCOW2_HEADER.size)
    (_magic, version, backing_offset, backing_size, cluster_bits, virtual_size, crypt_method, l1_size,
     l1_offset, refcount_table_offset, refcount_table_clusters, nb_snapshots,
     _snapshots_offset) = _QCOW2_HEADER.unpack(header)
    if version == 1:
        raise img.error("qcow (version 1) image: not supported; convert it first with "
                        "'qemu-img convert -f qcow -O qcow2'")
    if version not in (2, 3):
        raise img.error(f"qcow2 header has unknown version {version} "
                        "(corrupt, or newer than this converter)")
    if not 9 <= cluster_bits <= 21:
        raise img.error(f"invalid qcow2 header: cluster size 2**{cluster_bits} is out of range "
                        "(corrupt header)")
    cluster = 1 << cluster_bits
    incompatible, header_length, refcount_order = 0, _QCOW2_HEADER.size, 4
    if version == 3:
        ext = img.checked("qcow2", "version 3 header", _QCOW2_HEADER.size, _QCOW2_V3.size)
        incompatible, _compatible, _autoclear, refcount_order, header_length = _QCOW2_V3.unpack(ext)
        if header_length < _QCOW2_HEADER.size + _QCOW2_V3.size or header_length > cluster:
            raise img.error(f"invalid qcow2 header: header length {header_length} (corrupt header)")
        if refcount_order > 6:
            raise img.error(f"invalid qcow2 header: refcount order {refcount_order} (corrupt header)")
    if virtual_size == 0:
        raise img.error("qcow2 image has a virtual size of 0 bytes: not a usable disk")

    problems = []
    if incompatible & _QCOW2_INCOMPAT_DIRTY:
        problems.append("qcow2 image was not closed cleanly (dirty bit set); "
                        "'qemu-img check -r all' repairs its refcounts")
    if incompatible & _QCOW2_INCOMPAT_CORRUPT:
        problems.append("qcow2 image is marked corrupt; run 'qemu-img check -r all' on a copy of it")
    if incompatible & ~_QCOW2_INCOMPAT_KNOWN:
        unknown = incompatible & ~_QCOW2_INCOMPAT_KNOWN
        problems.append(f"qcow2 image uses unknown incompatible features (bits 0x{unknown:x}): "
                        "qemu-img may refuse it")
    if crypt_method == 1:
        problems.append("qcow2 image is encrypted with the legacy AES method: decrypt it first")
    elif crypt_method == 2:
        problems.append("qcow2 image is LUKS-encrypted: a passphrase is needed to read it")
    elif crypt_method:
        problems.append(f"qcow2 image uses unknown encryption method {crypt_method}")
    if nb_snapshots:
        problems.append(f"qcow2 image has {nb_snapshots} internal snapshot(s); "
                        "only its current state is converted")

    backing_file = None
    if backing_offset:
        if backing_size > 1023 or backing_offset + backing_size > cluster:
            raise img.error(f"invalid qcow2 header: the backing file name at byte {backing_offset} "
                            f"({backing_size} bytes) does not fit in the first cluster")
        raw = img.checked("qcow2", "backing file name", backing_offset, backing_size)
        backing_file = raw.decode("utf-8", errors="replace")
    backing_format, data_file = _qcow2_extensions(img, header_length, backing_offset or cluster)
    if data_file is not None or incompatible & _QCOW2_INCOMPAT_DATA_FILE:
        named = f" ({data_file!r})" if data_file else ""
        problems.append(f"qcow2 image keeps its data in an external file{named}: probe that file too")

    refcount_length = refcount_table_clusters * cluster
    tables = [("refcount table", refcount_table_offset, refcount_length)]
    if l1_size:
        tables.append(("L1 table", l1_offset, l1_size * 8))
    img.need_all("qcow2", tables)
    l1 = img.get(l1_offset, l1_size * 8) if l1_size else b""
    l2_tables = [offset for _index, offset in _entries(l1, ">Q", _QCOW2_OFFSET_MASK)]
    blocks = list(_entries(img.get(refcount_table_offset, refcount_length), ">Q", _QCOW2_REFT_OFFSET_MASK))
    second_level = []
    if l2_tables:
        second_level.append(("L2 table", max(l2_tables), cluster))
    if blocks:
        second_level.append(("refcount block", max(offset for _index, offset in blocks), cluster))
    img.need_all("qcow2", second_level)
    if not incompatible & _QCOW2_INCOMPAT_DIRTY:
        # refcounts are exact on a clean image: the highest cluster in use must start inside the file
        for index, offset in reversed(blocks):
            highest = _highest_nonzero(img.get(offset, cluster), 1 << refcount_order)
            if highest is not None:
                cluster_index = index * (cluster * 8 >> refcount_order) + highest
                img.need("qcow2", "allocated cluster", cluster_index * cluster, 1)
                break
    subformat = "0.10" if version == 2 else "1.1"
    return ImageInfo("qcow2", virtual_size, subformat, backing_file, problems, backing_format, [], img.size)


def _qcow2_extensions(img: _Image, start: int, end: int) -> Tuple[Optional[str], Optional[str]]:
    """Backing format and external data file name from the header extensions in [start, end)."""
    backing_format = data_file = None
    offset = start
    end = min(end, img.size)
    while offset + 8 <= end:
        ext_type, length = struct.unpack(">II", img.get(offset, 8))
        if ext_type == _QCOW2_EXT_END:
            break
        if offset + 8 + length > end:
            raise img.error(f"invalid qcow2 header: header extension 0x{ext_type:08x} at byte {offset} "
                            "runs past the header area")
        if ext_type == _QCOW2_EXT_BACKING_FORMAT:
            backing_format = img.get(offset + 8, length).decode("utf-8", errors="replace")
        elif ext_type == _QCOW2_EXT_DATA_FILE:
            data_file = img.get(offset + 8, length).decode("utf-8", errors="replace")
        offset += 8 + (length + 7) // 8 * 8
    return backing_format, data_file


def _entries(table: bytes, fmt: str, mask: int) -> Iterator[Tuple[int, int]]:
    """(index, value & mask) for each entry of ``table`` whose masked value is not zero."""
    width = struct.calcsize(fmt)
    for index, (value,) in enumerate(struct.iter_unpack(fmt, table[:len(table) // width * width])):
        value &= mask
        if value:
            yield index, value


def _u32_array(data: bytes, big_endian: bool) -> "array.array[int]":
    """``data`` as unsigned 32-bit integers, for tables too long to unpack one entry at a time."""
    values = array.array("I" if array.array("I").itemsize == 4 else "L")
    values.frombytes(data[:len(data) // 4 * 4])
    if big_endian != (sys.byteorder == "big"):
        values.byteswap()
    return values


def _highest_nonzero(block: bytes, bits: int) -> Optional[int]:
    """Index of the last non-zero ``bits``-wide big-endian refcount in ``block`` (sub-byte ones LSB first)."""
    stripped = block.rstrip(b"\0")
    if not stripped:
        return None
    last = len(stripped) - 1
    if bits >= 8:
        return last // (bits // 8)
    per_byte = 8 // bits
    byte = stripped[last]
    for sub in reversed(range(per_byte)):
        if (byte >> (sub * bits)) & ((1 << bits) - 1):
            return last * per_byte + sub
    return None  # unreachable: the byte is non-zero


# --- VMDK ---------------------------------------------------------------------------------------

_VMDK_HEADER = struct.Struct("<4sIIQQQQIQQQB4BH")
_VMDK_GD_AT_END = 0xFFFFFFFFFFFFFFFF
_VMDK_FLAG_RGD = 1 << 1
_VMDK_FLAG_COMPRESSED = 1 << 16
_VMDK_FLAG_MARKERS = 1 << 17
_VMDK_COMPRESS_DEFLATE = 1
_VMDK_MARKER_EOS = 0
_VMDK_MARKER_FOOTER = 3
_EXTENT_RE = re.compile(r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$')
_KEY_RE = re.compile(r'^([A-Za-z][\w.]*)\s*=\s*"?([^"]*)"?\s*$')


class _Descriptor(NamedTuple):
    create_type: Optional[str]
    parent_hint: Optional[str]
    extents: List[VmdkExtent]


def _parse_descriptor(text: str) -> _Descriptor:
    create_type = parent_hint = None
    extents = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        extent = _EXTENT_RE.match(line)
        if extent:
            access, sectors, kind, filename, offset = extent.groups()
            extents.append(VmdkExtent(access, int(sectors), kind.upper(), filename, int(offset or 0)))
            continue
        pair = _KEY_RE.match(line)
        if pair:
            key, value = pair.group(1), pair.group(2).strip()
            if key == "createType":
                create_type = value
            elif key == "parentFileNameHint":
                parent_hint = value or None
    return _Descriptor(create_type, parent_hint, extents)


def _is_vmdk_descriptor(head: bytes) -> bool:
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"# Disk DescriptorFile")


def _probe_vmdk_descriptor(img: _Image) -> ImageInfo:
    if img.size > _MAX_DESCRIPTOR_BYTES:
        raise img.error(f"starts like a VMDK descriptor but is {img.size} bytes long: "
                        "not a VMDK descriptor")
    desc = _parse_descriptor(img.get(0, img.size).decode("utf-8", errors="replace"))
    if not desc.extents:
        raise img.error("VMDK descriptor lists no extents: not a usable disk")
    capacity = sum(e.sectors for e in desc.extents) * SECTOR
    if capacity == 0:
        raise img.error("VMDK descriptor's extents add up to 0 sectors: not a usable disk")
    return ImageInfo("vmdk", capacity, desc.create_type, desc.parent_hint, [], None, desc.extents, img.size)


def _probe_vmdk_sparse(img: _Image) -> ImageInfo:
    fields = _VMDK_HEADER.unpack(img.checked("vmdk", "sparse header", 0, SECTOR)[:_VMDK_HEADER.size])
    (_magic, version, flags, capacity, grain, desc_offset, desc_size, gtes_per_gt, rgd_offset, gd_offset,
     overhead, _unclean, _c1, _c2, _c3, _c4, compress) = fields
    if version not in (1, 2, 3):
        raise img.error(f"VMDK sparse header has unknown version {version}")
    if capacity == 0:
        raise img.error("invalid VMDK: the sparse header's capacity is 0 sectors "
                        "(corrupt header, or not a usable disk)")
    if grain == 0 or grain & (grain - 1) or not 0 < gtes_per_gt <= 4096:
        raise img.error(f"invalid VMDK sparse header: grain size {grain} sectors, "
                        f"{gtes_per_gt} entries per grain table (corrupt header)")
    stream = bool(flags & _VMDK_FLAG_COMPRESSED) and compress == _VMDK_COMPRESS_DEFLATE
    markers = bool(flags & _VMDK_FLAG_MARKERS)
    problems = []
    if gd_offset == _VMDK_GD_AT_END:
        # a true stream: the grain directory is at the end, found through the footer's header copy
        gd_offset, rgd_offset = _vmdk_footer(img)
    gd_bytes = -(-capacity // (grain * gtes_per_gt)) * 4
    regions = [("grain directory", gd_offset * SECTOR, gd_bytes)]
    if desc_offset and desc_size:
        regions.append(("embedded descriptor", desc_offset * SECTOR, desc_size * SECTOR))
    if flags & _VMDK_FLAG_RGD and rgd_offset:
        regions.append(("redundant grain directory", rgd_offset * SECTOR, gd_bytes))
    img.need_all("vmdk", regions)
    desc = _Descriptor(None, None, [])
    if desc_offset and desc_size:
        text = img.get(desc_offset * SECTOR, desc_size * SECTOR)
        desc = _parse_descriptor(text.split(b"\0", 1)[0].decode("utf-8", errors="replace"))
    if not desc.extents:
        problems.append("VMDK sparse extent without a descriptor of its own (one piece of a split disk?): "
                        "open the descriptor .vmdk file instead")
    subformat = "streamOptimized" if stream else "monolithicSparse"
    if desc.create_type and desc.create_type != subformat:
        problems.append(f"VMDK descriptor says createType {desc.create_type!r} "
                        f"but the header flags say {subformat}")

    tables = sorted(set(_u32_array(img.get(gd_offset * SECTOR, gd_bytes), big_endian=False)) - {0})
    if tables:
        img.need("vmdk", "grain table", tables[-1] * SECTOR, gtes_per_gt * 4)
    img.need("vmdk", "metadata area", 0, overhead * SECTOR)  # grains start after it
    last_grain = _last_grain(img, tables, gtes_per_gt * 4)
    if last_grain:
        if stream and markers:
            marker = img.checked("vmdk", "compressed grain", last_grain * SECTOR, 12)
            length = struct.unpack_from("<I", marker, 8)[0]
            img.need("vmdk", "compressed grain", last_grain * SECTOR, 12 + length)
        elif not stream:
            img.need("vmdk", "grain", last_grain * SECTOR, grain * SECTOR)
    if stream and markers and img.size >= SECTOR:
        val, size, kind = struct.unpack("<QII", img.get(img.size - SECTOR, 16))
        if (val, size, kind) != (0, 0, _VMDK_MARKER_EOS):
            problems.append("streamOptimized VMDK does not end with an end-of-stream marker: "
                            "the file may be truncated")
    return ImageInfo("vmdk", capacity * SECTOR, subformat, desc.parent_hint, problems, None, desc.extents,
                     img.size)


def _vmdk_footer(img: _Image) -> Tuple[int, int]:
    """Grain directory offsets from the footer of a stream whose header defers them to the end."""
    footer = b""
    if img.size >= 3 * SECTOR:
        footer = img.get(img.size - 3 * SECTOR, 3 * SECTOR)
    ok = (len(footer) == 3 * SECTOR
          and struct.unpack_from("<QII", footer, 0)[1:] == (0, _VMDK_MARKER_FOOTER)
          and footer[SECTOR:SECTOR + 4] == b"KDMV"
          and struct.unpack_from("<QII", footer, 2 * SECTOR)[1:] == (0, _VMDK_MARKER_EOS))
    if not ok:
        raise img.error("truncated VMDK: the streamOptimized footer is missing at the end of the file "
                        f"(size {img.size}): the export or download did not finish")
    fields = _VMDK_HEADER.unpack_from(footer, SECTOR)
    gd_offset, rgd_offset = fields[9], fields[8]
    if gd_offset == _VMDK_GD_AT_END:
        raise img.error("invalid VMDK: the streamOptimized footer does not say where the grain directory is")
    return gd_offset, rgd_offset


def _last_grain(img: _Image, tables: List[int], table_bytes: int) -> int:
    """The highest grain offset (in sectors) that any grain table points to, or 0 (1 marks a zeroed
    grain, never a real one). Adjacent tables, the usual layout, are read in bulk."""
    stride = -(-table_bytes // SECTOR)  # sectors from one table to the next when they are adjacent
    last = 0
    for first, count in _runs(tables, stride, max(1, _READ_CHUNK // (stride * SECTOR))):
        data = img.get(first * SECTOR, (count - 1) * stride * SECTOR + table_bytes)
        for i in range(count):
            start = i * stride * SECTOR
            last = max(last, max(_u32_array(data[start:start + table_bytes], big_endian=False), default=0))
    return last if last > 1 else 0


def _runs(starts: List[int], stride: int, limit: int) -> Iterator[Tuple[int, int]]:
    """Group sorted ``starts`` into (first, count) runs, each next one ``stride`` after the previous."""
    first, count = -1, 0
    for start in starts:
        if count and count < limit and start == first + count * stride:
            count += 1
            continue
        if count:
            yield first, count
        first, count = start, 1
    if count:
        yield first, count


def _probe_vmdk_cowd(img: _Image) -> ImageInfo:
    header = img.checked("vmdk", "COWD header", 0, 32)
    _magic, _version, _flags, capacity, _grain, l1_offset, l1_size = struct.unpack_from("<4s6I", header)
    if capacity == 0:
        raise img.error("invalid VMDK: the COWD header's capacity is 0 sectors (corrupt header)")
    img.need("vmdk", "grain directory", l1_offset * SECTOR, l1_size * 4)
    problems = ["VMFS sparse extent (an ESXi snapshot delta): open its descriptor .vmdk file instead"]
    return ImageInfo("vmdk", capacity * SECTOR, "vmfsSparse", None, problems, None, [], img.size)


# --- VHD (qemu's vpc) ---------------------------------------------------------------------------

_VHD_FOOTER = struct.Struct(">8sIIQI4sI4sQQHBBII16sB")
_VHD_DYNAMIC = struct.Struct(">8sQQIIII16sI4x512s")
_VHD_FIXED, _VHD_DYNAMIC_DISK, _VHD_DIFFERENCING = 2, 3, 4
_VHD_TYPES = {_VHD_FIXED: "fixed", _VHD_DYNAMIC_DISK: "dynamic", _VHD_DIFFERENCING: "differencing"}
_VHD_MAX_GEOMETRY = 65535 * 16 * 255
_VHD_CHS_CREATORS = (b"vpc ", b"qemu")  # size the disk by its geometry, as Virtual PC did
_VHD_OLD_QEMU_CURRENT_SIZE = (b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0")


class _VhdFooter(NamedTuple):
    data_offset: int
    creator: bytes
    current_size: int
    geometry_sectors: int
    disk_type: int
    checksum_ok: bool
    saved_state: bool


def _parse_vhd_footer(raw: bytes) -> _VhdFooter:
    (_cookie, _features, _version, data_offset, _timestamp, creator, _creator_version, _host_os,
     _original_size, current_size, cylinders, heads, sectors, disk_type, checksum, _uuid,
     saved_state) = _VHD_FOOTER.unpack_from(raw)
    blank = bytearray(raw[:SECTOR])
    blank[64:68] = b"\0\0\0\0"
    computed = ~sum(blank) & 0xFFFFFFFF
    return _VhdFooter(data_offset, creator, current_size, cylinders * heads * sectors, disk_type,
                      computed == checksum, bool(saved_state))


def _probe_vpc_dynamic(img: _Image, head: bytes) -> ImageInfo:
    """A VHD with a footer copy at offset 0: dynamic or differencing."""
    if len(head) < SECTOR:
        raise img.error(f"truncated VHD: the footer copy at the start of the file is cut short "
                        f"(size {img.size})")
    head = head[:SECTOR]
    footer = _parse_vhd_footer(head)
    if footer.disk_type not in (_VHD_DYNAMIC_DISK, _VHD_DIFFERENCING):
        raise img.error(f"invalid VHD: the footer copy at the start of the file has disk type "
                        f"{footer.disk_type}, not dynamic (3) or differencing (4) (corrupt footer)")
    problems = _vhd_footer_problems(footer)
    virtual_size = _vhd_size(img, footer, problems)
    tail = img.get(img.size - SECTOR, SECTOR)
    if tail[:8] != b"conectix":
        problems.append("VHD footer is missing at the end of the file (truncated, or still being written?)")
    elif tail != head:
        problems.append("the VHD footer copies at the start and at the end of the file differ")
    backing_file = _vhd_dynamic(img, footer, problems)
    return ImageInfo("vpc", virtual_size, _VHD_TYPES[footer.disk_type], backing_file, problems, None, [],
                     img.size)


def _probe_vpc_fixed(img: _Image, tail: bytes) -> Union[ImageInfo, str]:
    """A fixed VHD from the footer in the last sector, or, when that footer cannot belong to this file,
    a note for the raw image it then is: a raw disk may end with a VHD file stored in its last blocks."""
    footer = _parse_vhd_footer(tail)
    if not footer.checksum_ok or footer.disk_type != _VHD_FIXED:
        return ("the file ends with what looks like a VHD footer, but it is not a valid fixed-disk footer; "
                "treated as raw")
    if img.size < footer.current_size + SECTOR:
        raise img.error(f"truncated VHD: a fixed disk of {footer.current_size} bytes needs a file of at "
                        f"least {footer.current_size + SECTOR} bytes, but the file has {img.size}")
    if img.size > footer.current_size + SECTOR:
        return (f"the file ends with a VHD footer for a disk of {footer.current_size} bytes, which does not "
                f"match the file size; treated as raw")
    problems = _vhd_footer_problems(footer)
    virtual_size = _vhd_size(img, footer, problems)
    return ImageInfo("vpc", virtual_size, "fixed", None, problems, None, [], img.size)


def _vhd_footer_problems(footer: _VhdFooter) -> List[str]:
    problems = []
    if not footer.checksum_ok:
        problems.append("VHD footer checksum is wrong (the footer may be corrupt)")
    if footer.saved_state:
        problems.append("VHD was saved while its VM was in a saved (suspended) state: "
                        "shut the VM down cleanly first")
    return problems


def _vhd_size(img: _Image, footer: _VhdFooter, problems: List[str]) -> int:
    """The guest-visible size as current qemu computes it (the footer's current size, except for Virtual
    PC and old qemu images, sized by their CHS geometry); notes in ``problems`` when older qemu disagrees."""
    chs = footer.geometry_sectors * SECTOR
    max_geometry = footer.geometry_sectors == _VHD_MAX_GEOMETRY
    size = chs if footer.creator in _VHD_CHS_CREATORS and not max_geometry else footer.current_size
    if (size != chs and footer.creator not in _VHD_OLD_QEMU_CURRENT_SIZE and not max_geometry):
        creator = footer.creator.decode("latin-1")
        problems.append(f"VHD made by {creator!r}: QEMU before 10.0 sizes it by its geometry ({chs} bytes) "
                        f"rather than its current size ({footer.current_size} bytes); "
                        "open it with force_size_calc=current_size")
    if size == 0:
        raise img.error("VHD footer gives a disk size of 0 bytes: not a usable disk")
    return size


def _vhd_dynamic(img: _Image, footer: _VhdFooter, problems: List[str]) -> Optional[str]:
    raw = img.checked("vpc", "dynamic disk header", footer.data_offset, 1024)
    (cookie, _data_offset, table_offset, _version, max_entries, block_size, _checksum, _parent_uuid,
     _parent_time, parent_name) = _VHD_DYNAMIC.unpack_from(raw)
    if cookie != b"cxsparse":
        raise img.error("invalid VHD: no 'cxsparse' cookie in the dynamic disk header at byte "
                        f"{footer.data_offset} (corrupt header)")
    if block_size < SECTOR or block_size & (block_size - 1):
        raise img.error(f"invalid VHD: block size {block_size} in the dynamic disk header (corrupt header)")
    bat = img.checked("vpc", "block allocation table (BAT)", table_offset, max_entries * 4)
    bitmap = -(-(block_size // SECTOR) // (8 * SECTOR)) * SECTOR  # one bit per sector, padded to a sector
    last = max((s for s in _u32_array(bat, big_endian=True) if s != 0xFFFFFFFF), default=None)
    if last is not None:
        img.need("vpc", "data block", last * SECTOR, bitmap + block_size)
    if footer.disk_type != _VHD_DIFFERENCING:
        return None
    name = parent_name.decode("utf-16-be", errors="replace").split("\0", 1)[0] or None
    named = f" ({name!r})" if name else ""
    problems.append(f"differencing VHD: qemu does not read its parent{named}; merge it into the parent first")
    return name


# --- VHDX ---------------------------------------------------------------------------------------

_VHDX_HEADER = struct.Struct("<4sIQ16s16s16sHHIQ")
_VHDX_REGION_ENTRY = struct.Struct("<16sQII")
_VHDX_META_ENTRY = struct.Struct("<16sIII4x")
_VHDX_BAT = "2DC27766-F623-4200-9D64-115E9BFD4A08"
_VHDX_METADATA = "8B7CA206-4790-4B9A-B8FE-575F050F886E"
_VHDX_FILE_PARAMETERS = "CAA16737-FA36-4D43-B3B6-33F0AA44E76B"
_VHDX_VIRTUAL_DISK_SIZE = "2FA54224-CD1B-4876-B211-5DBED83BF4B8"
_VHDX_LOGICAL_SECTOR_SIZE = "8141BF1D-A96F-4709-BA47-F233A8FAAB5F"
_VHDX_BLOCK_PRESENT = (6, 7)  # fully and partially present
_KIB = 1024
_MIB = 1024 * 1024


def _crc32c_table() -> List[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum VHDX uses; zlib only has the other CRC-32."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _vhdx_checksum_ok(block: bytes) -> bool:
    blank = bytearray(block)
    stored: int = struct.unpack_from("<I", blank, 4)[0]
    blank[4:8] = b"\0\0\0\0"
    return crc32c(bytes(blank)) == stored


def _probe_vhdx(img: _Image) -> ImageInfo:
    problems = []
    headers = []
    for offset in (64 * _KIB, 128 * _KIB):
        raw = img.checked("vhdx", "header", offset, 4 * _KIB)
        if raw[:4] == b"head" and _vhdx_checksum_ok(raw):
            headers.append(_VHDX_HEADER.unpack_from(raw))
    if not headers:
        raise img.error("invalid VHDX: both headers (at 64 KiB and 128 KiB) are corrupt")
    if len(headers) == 1:
        problems.append("one of the two VHDX headers is corrupt; the other one was used")
    header = max(headers, key=lambda h: h[2])
    log_guid, version, log_length, log_offset = header[5], header[7], header[8], header[9]
    if version != 1:
        raise img.error(f"VHDX header has unknown version {version}")
    if log_guid != bytes(16):
        problems.append("VHDX has a log that must be replayed before qemu can read it: run "
                        "'qemu-img check -r all' on it (this writes to the file) or open it once in Hyper-V")

    regions = None
    for offset in (192 * _KIB, 256 * _KIB):
        raw = img.checked("vhdx", "region table", offset, 64 * _KIB)
        if raw[:4] == b"regi" and _vhdx_checksum_ok(raw):
            regions = _vhdx_regions(img, raw)
            break
        problems.append(f"VHDX region table at byte {offset} is corrupt")
    if regions is None:
        raise img.error("invalid VHDX: both region tables are corrupt")
    if _VHDX_METADATA not in regions or _VHDX_BAT not in regions:
        raise img.error("invalid VHDX: the region table lacks the metadata or BAT region")
    meta_offset, meta_length = regions[_VHDX_METADATA]
    bat_offset, bat_length = regions[_VHDX_BAT]
    img.need_all("vhdx", [("log", log_offset, log_length), ("metadata region", meta_offset, meta_length),
                          ("BAT region", bat_offset, bat_length)])
    metadata = img.get(meta_offset, meta_length)
    items = _vhdx_metadata_items(img, metadata)
    for key in (_VHDX_FILE_PARAMETERS, _VHDX_VIRTUAL_DISK_SIZE):
        if key not in items:
            raise img.error(f"invalid VHDX: the metadata region lacks item {key}")
    block_size, param_flags = struct.unpack_from("<II", items[_VHDX_FILE_PARAMETERS])
    virtual_size = struct.unpack_from("<Q", items[_VHDX_VIRTUAL_DISK_SIZE])[0]
    sector_size = struct.unpack_from("<I", items.get(_VHDX_LOGICAL_SECTOR_SIZE, b"\0\2\0\0"))[0]
    if virtual_size == 0:
        raise img.error("VHDX metadata gives a disk size of 0 bytes: not a usable disk")
    if block_size < _MIB or block_size & (block_size - 1) or sector_size not in (512, 4096):
        raise img.error(f"invalid VHDX metadata: block size {block_size}, "
                        f"logical sector size {sector_size} (corrupt)")
    if param_flags & 2:
        subformat = "differencing"
        problems.append("differencing VHDX (it has a parent): qemu cannot read it; "
                        "merge it into its parent first")
    else:
        subformat = "fixed" if param_flags & 1 else "dynamic"

    bat = img.get(bat_offset, bat_length)
    chunk_ratio = (1 << 23) * sector_size // block_size  # data blocks per sector-bitmap block
    last_block = last_bitmap = None
    for index, (entry,) in enumerate(struct.iter_unpack("<Q", bat[:len(bat) // 8 * 8])):
        state, offset = entry & 7, (entry >> 20) * _MIB
        if state not in _VHDX_BLOCK_PRESENT:
            continue
        if (index + 1) % (chunk_ratio + 1) == 0:
            last_bitmap = offset if last_bitmap is None else max(last_bitmap, offset)
        else:
            last_block = offset if last_block is None else max(last_block, offset)
    if last_bitmap is not None:
        img.need("vhdx", "sector bitmap block", last_bitmap, _MIB)
    if last_block is not None:
        img.need("vhdx", "data block", last_block, block_size)
    return ImageInfo("vhdx", virtual_size, subformat, None, problems, None, [], img.size)


def _vhdx_regions(img: _Image, raw: bytes) -> Dict[str, Tuple[int, int]]:
    count = struct.unpack_from("<I", raw, 8)[0]
    if count > 2047:
        raise img.error(f"invalid VHDX: region table claims {count} entries (corrupt)")
    regions = {}
    for index in range(count):
        guid, offset, length, required = _VHDX_REGION_ENTRY.unpack_from(raw, 16 + index * 32)
        key = guid_from_bytes(guid)
        if key not in (_VHDX_BAT, _VHDX_METADATA) and required & 1:
            raise img.error(f"VHDX requires region {key} that this converter does not know")
        regions[key] = (offset, length)
    return regions


def _vhdx_metadata_items(img: _Image, metadata: bytes) -> Dict[str, bytes]:
    if metadata[:8] != b"metadata":
        raise img.error("invalid VHDX: no 'metadata' signature at the start of the metadata region")
    count = struct.unpack_from("<H", metadata, 10)[0]
    if 32 + count * 32 > min(len(metadata), 64 * _KIB):
        raise img.error(f"invalid VHDX: metadata table claims {count} entries (corrupt)")
    items = {}
    for index in range(count):
        guid, offset, length, _flags = _VHDX_META_ENTRY.unpack_from(metadata, 32 + index * 32)
        if offset + length > len(metadata):
            raise img.error(f"invalid VHDX: metadata item {guid_from_bytes(guid)} "
                            "lies outside the metadata region")
        items[guid_from_bytes(guid)] = metadata[offset:offset + length]
    return items
