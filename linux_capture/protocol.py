"""The agent's wire protocol: framed binary messages on a byte stream (ssh's stdin/stdout).

Every frame is ``header | payload | crc32``::

    header   ">4sBBHI"  magic b"V2VF", frame type, codec, disk index, payload length
    payload  JSON (UTF-8) for control frames; for CHUNK/ZERO frames
             ">QI32s" offset, raw length, sha256 of the raw bytes, then the encoded data
    crc32    ">I" zlib.crc32 of header + payload: a damaged frame is refused before it is decoded

The converter sends OPTIONS, then one HAVE frame per disk (digests of chunks it already holds, for
resume), then GO. The agent sends HELLO, DISCOVERY, PLAN, then CHUNK/ZERO/INFO frames and END, or
ERROR. Parsing is strict: a truncated or damaged frame raises ``TruncatedFrame`` or ``CorruptFrame``
naming the disk and offset when they are known. Pure: no I/O beyond the ``read``/``write`` callables
it is given. Standard library only, Python 3.6+.
"""
import hashlib
import json
import lzma
import struct
import zlib
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

PROTOCOL_VERSION = 1
MAGIC = b"V2VF"

HELLO, OPTIONS, DISCOVERY, PLAN, HAVE, GO, CHUNK, ZERO, INFO, END, ERROR = range(1, 12)
FRAME_NAMES = {HELLO: "HELLO", OPTIONS: "OPTIONS", DISCOVERY: "DISCOVERY", PLAN: "PLAN", HAVE: "HAVE",
               GO: "GO", CHUNK: "CHUNK", ZERO: "ZERO", INFO: "INFO", END: "END", ERROR: "ERROR"}

CODEC_NONE, CODEC_ZLIB, CODEC_LZMA = 0, 1, 2
CODECS = {"none": CODEC_NONE, "zlib": CODEC_ZLIB, "lzma": CODEC_LZMA}
CODEC_NAMES = {v: k for k, v in CODECS.items()}

_HEADER = struct.Struct(">4sBBHI")
_CHUNK = struct.Struct(">QI32s")
_HAVE_ENTRY = struct.Struct(">QI32s")
_CRC = struct.Struct(">I")

Buffer = Union[bytes, bytearray, memoryview]

MAX_CHUNK = 16 << 20                 # raw bytes in one chunk
MAX_PAYLOAD = MAX_CHUNK + (1 << 20)  # encoded data may grow a little; JSON control frames are small
MAX_HAVE_PAYLOAD = 64 << 20          # one HAVE frame: ~1.5 million chunks


class ProtocolError(ValueError):
    """The byte stream is not a valid frame sequence; str() names the disk and offset when known."""


class TruncatedFrame(ProtocolError):
    """The stream ended inside a frame (a dropped connection)."""
    partial = b""


class CorruptFrame(ProtocolError):
    """A frame's bytes are damaged: bad magic, length, checksum, codec, data or digest."""


class Frame(NamedTuple):
    type: int
    codec: int
    disk: int
    payload: bytes


class Chunk(NamedTuple):
    """A decoded CHUNK or ZERO frame: ``data`` is None for a run of zeros (a view into the frame when it went raw)."""
    disk: int
    offset: int
    length: int
    digest: bytes
    data: Optional[Buffer]


def frame_name(ftype: int) -> str:
    return FRAME_NAMES.get(ftype, "type-{}".format(ftype))


def frame_parts(ftype: int, payload: Sequence[Buffer] = (), disk: int = 0, codec: int = 0) -> List[Buffer]:
    """One frame as pieces to write in order (header, the payload's pieces, crc32): a chunk's data is
    never copied into a frame of its own."""
    if ftype not in FRAME_NAMES:
        raise ValueError("unknown frame type {}".format(ftype))
    length = sum(len(p) for p in payload)
    limit = MAX_HAVE_PAYLOAD if ftype == HAVE else MAX_PAYLOAD
    if length > limit:
        raise ValueError("{} payload of {} bytes exceeds {}".format(frame_name(ftype), length, limit))
    head = _HEADER.pack(MAGIC, ftype, codec, disk, length)
    crc = zlib.crc32(head)
    for p in payload:
        crc = zlib.crc32(p, crc)
    return [head] + list(payload) + [_CRC.pack(crc & 0xFFFFFFFF)]


def encode_frame(ftype: int, payload: bytes = b"", disk: int = 0, codec: int = 0) -> bytes:
    """The bytes of one frame."""
    return b"".join(frame_parts(ftype, (payload,), disk, codec))


def encode_json(ftype: int, obj: Any, disk: int = 0) -> bytes:
    return encode_frame(ftype, json.dumps(obj, sort_keys=True).encode("utf-8"), disk)


def compress(data: bytes, codec: int, level: int = 1) -> bytes:
    if codec == CODEC_NONE:
        return data
    if codec == CODEC_ZLIB:
        return zlib.compress(data, level)
    if codec == CODEC_LZMA:
        return lzma.compress(data, preset=min(level, 9))
    raise ValueError("unknown codec {}".format(codec))


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


_ZEROS = bytes(1 << 20)


def is_zero(data: bytes) -> bool:
    if len(data) <= len(_ZEROS):
        return data == _ZEROS[:len(data)] if data[:1] == b"\x00" else False
    return not data.strip(b"\x00")


def worth_compressing(data: bytes, codec: int, level: int = 1, sample: int = 32768) -> bool:
    """A sample from the middle of the data shrinks by at least 5 % (random data is sent raw)."""
    if codec == CODEC_NONE:
        return False
    if len(data) <= 2 * sample:
        return True
    mid = len(data) // 2
    part = data[mid:mid + sample]
    return len(zlib.compress(part, 1)) < 0.95 * len(part)


def chunk_frame_parts(disk: int, offset: int, data: Buffer, codec: int = CODEC_ZLIB, level: int = 1,
                      sha: Optional[bytes] = None) -> List[Buffer]:
    """A CHUNK frame for ``data`` at ``offset`` of ``disk`` (a ZERO frame when it is all zeros), as the
    pieces ``frame_parts`` gives; the data goes raw when the codec does not make it smaller."""
    if not 0 < len(data) <= MAX_CHUNK:
        raise ValueError("chunk of {} bytes at offset {} is empty or larger than {}".format(
            len(data), offset, MAX_CHUNK))
    sha = sha or digest(data)
    if is_zero(data):
        return frame_parts(ZERO, (_CHUNK.pack(offset, len(data), sha),), disk, CODEC_NONE)
    body = compress(data, codec, level)
    if codec != CODEC_NONE and len(body) >= len(data):
        codec, body = CODEC_NONE, data
    return frame_parts(CHUNK, (_CHUNK.pack(offset, len(data), sha), body), disk, codec)


def encode_chunk(disk: int, offset: int, data: bytes, codec: int = CODEC_ZLIB, level: int = 1,
                 sha: Optional[bytes] = None) -> bytes:
    """The bytes of the frame ``chunk_frame_parts`` describes."""
    return b"".join(chunk_frame_parts(disk, offset, data, codec, level, sha))


def _where(disk: int, offset: Optional[int]) -> str:
    return "disk {} offset {}".format(disk, offset) if offset is not None else "disk {}".format(disk)


def chunk_header(frame: Frame) -> Tuple[int, int]:
    """(offset, length) of a CHUNK/ZERO frame, without decoding its data."""
    if frame.type not in (CHUNK, ZERO) or len(frame.payload) < _CHUNK.size:
        raise CorruptFrame("{} frame for disk {} is not a chunk".format(frame_name(frame.type), frame.disk))
    offset, length, _ = _CHUNK.unpack_from(frame.payload)
    return offset, length


def decode_chunk(frame: Frame) -> Chunk:
    """The chunk a CHUNK/ZERO frame carries, decompressed and checked against its sha256."""
    if frame.type not in (CHUNK, ZERO):
        raise CorruptFrame("expected a CHUNK frame for disk {}, got {}".format(frame.disk, frame_name(frame.type)))
    if len(frame.payload) < _CHUNK.size:
        raise CorruptFrame("chunk frame for disk {} is {} bytes, shorter than its {}-byte header".format(
            frame.disk, len(frame.payload), _CHUNK.size))
    offset, length, sha = _CHUNK.unpack_from(frame.payload)
    where = _where(frame.disk, offset)
    if not 0 < length <= MAX_CHUNK:
        raise CorruptFrame("chunk at {} claims {} bytes (at most {})".format(where, length, MAX_CHUNK))
    body = memoryview(frame.payload)[_CHUNK.size:]      # a view: the data is not copied out of the frame
    if frame.type == ZERO:
        if body:
            raise CorruptFrame("zero chunk at {} carries {} data bytes".format(where, len(body)))
        if sha != digest(bytes(length)):
            raise CorruptFrame("zero chunk at {}: digest does not match {} zero bytes".format(where, length))
        return Chunk(frame.disk, offset, length, sha, None)
    try:
        if frame.codec == CODEC_NONE:
            data = body
        elif frame.codec == CODEC_ZLIB:
            dec = zlib.decompressobj()
            data = dec.decompress(body, length + 1)
            if not dec.eof:
                raise CorruptFrame("zlib data of chunk at {} is incomplete".format(where))
        elif frame.codec == CODEC_LZMA:
            ldec = lzma.LZMADecompressor()
            data = ldec.decompress(body, length + 1)
            if not ldec.eof:
                raise CorruptFrame("lzma data of chunk at {} is incomplete".format(where))
        else:
            raise CorruptFrame("chunk at {} uses unknown codec {}".format(where, frame.codec))
    except (zlib.error, lzma.LZMAError) as e:
        raise CorruptFrame("chunk at {} does not decompress ({}): {}".format(
            where, CODEC_NAMES.get(frame.codec), e)) from None
    if len(data) != length:
        raise CorruptFrame("chunk at {} holds {} bytes, its header says {}".format(where, len(data), length))
    if digest(data) != sha:
        raise CorruptFrame("chunk at {}: sha256 of the data does not match the digest sent".format(where))
    return Chunk(frame.disk, offset, length, sha, data)


def decode_json(frame: Frame) -> Dict[str, Any]:
    try:
        obj = json.loads(frame.payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CorruptFrame("{} frame for disk {} is not JSON: {}".format(frame_name(frame.type), frame.disk, e)) \
            from None
    if not isinstance(obj, dict):
        raise CorruptFrame("{} frame for disk {} is not a JSON object".format(frame_name(frame.type), frame.disk))
    return obj


def encode_have(disk: int, entries: Iterable[Tuple[int, int, bytes]]) -> bytes:
    """HAVE frames: (offset, length, sha256) of every chunk of ``disk`` the converter holds verified;
    as many frames as needed (the agent merges them), always at least one."""
    per_frame = MAX_HAVE_PAYLOAD // _HAVE_ENTRY.size
    items = list(entries)
    frames = [encode_frame(HAVE, b"".join(_HAVE_ENTRY.pack(o, n, d) for o, n, d in items[i:i + per_frame]), disk)
              for i in range(0, len(items), per_frame)]
    return b"".join(frames) or encode_frame(HAVE, b"", disk)


def decode_have(frame: Frame) -> List[Tuple[int, int, bytes]]:
    if frame.type != HAVE or len(frame.payload) % _HAVE_ENTRY.size:
        raise CorruptFrame("HAVE frame for disk {} is malformed".format(frame.disk))
    return [_HAVE_ENTRY.unpack_from(frame.payload, i) for i in range(0, len(frame.payload), _HAVE_ENTRY.size)]


ReadFn = Callable[[int], bytes]


class FrameReader:
    """Frames from a stream, read through ``read(n) -> bytes`` (short reads allowed, b"" at the end)."""

    def __init__(self, read: ReadFn) -> None:
        self._read = read
        self.position = 0        # stream bytes consumed, for error messages and accounting

    def _exact(self, n: int, what: str) -> bytes:
        parts = []
        got = 0
        while got < n:
            b = self._read(n - got)
            if not b:
                break
            parts.append(b)
            got += len(b)
        data = b"".join(parts)
        self.position += len(data)
        if len(data) != n and (data or what != "header"):
            err = TruncatedFrame("stream ends inside {} ({} of {} bytes)".format(what, len(data), n))
            err.partial = data
            raise err
        return data

    def read_frame(self) -> Optional[Frame]:
        """The next frame, or None at a clean end of stream (between frames)."""
        start = self.position
        head = self._exact(_HEADER.size, "header")
        if not head:
            return None
        magic, ftype, codec, disk, length = _HEADER.unpack(head)
        if magic != MAGIC:
            raise CorruptFrame("bad frame magic {!r} at stream byte {}".format(magic, start))
        if ftype not in FRAME_NAMES:
            raise CorruptFrame("unknown frame type {} for disk {} at stream byte {}".format(ftype, disk, start))
        limit = MAX_HAVE_PAYLOAD if ftype == HAVE else MAX_PAYLOAD
        if length > limit:
            raise CorruptFrame("{} frame for disk {} claims {} payload bytes (at most {})".format(
                frame_name(ftype), disk, length, limit))
        what = "a {} frame for disk {}".format(frame_name(ftype), disk)
        try:
            payload = self._exact(length, what)
        except TruncatedFrame as e:
            if ftype in (CHUNK, ZERO) and len(e.partial) >= 8:
                what = "a {} frame for {}".format(frame_name(ftype), _where(disk, struct.unpack_from(">Q", e.partial)[0]))
                raise TruncatedFrame("stream ends inside {} ({} of {} bytes)".format(what, len(e.partial), length)) \
                    from None
            raise
        offset = _CHUNK.unpack_from(payload)[0] if ftype in (CHUNK, ZERO) and length >= _CHUNK.size else None
        if offset is not None:
            what = "a {} frame for {}".format(frame_name(ftype), _where(disk, offset))
        (crc,) = _CRC.unpack(self._exact(_CRC.size, what))
        if crc != zlib.crc32(payload, zlib.crc32(head)) & 0xFFFFFFFF:
            raise CorruptFrame("checksum mismatch in {}".format(what))
        return Frame(ftype, codec, disk, payload)
