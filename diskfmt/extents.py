"""Sets of byte ranges: which parts of a disk or filesystem hold data worth sending.

An ``ExtentList`` keeps sorted, merged, non-overlapping half-open ranges ``[start, end)``. Ranges that
touch are merged, so two lists holding the same bytes compare equal. Standard library only, Python 3.6+.
"""
import bisect
from typing import Iterable, Iterator, List, NamedTuple, Sequence, Tuple


class Extent(NamedTuple):
    """One byte range ``[start, end)``."""
    start: int
    end: int


class ExtentList:
    """Sorted, merged, non-overlapping byte ranges; set operations return new lists."""

    __slots__ = ("_starts", "_ends")

    def __init__(self, ranges: Iterable[Tuple[int, int]] = ()) -> None:
        self._starts: List[int] = []
        self._ends: List[int] = []
        for start, end in ranges:
            self.add(start, end)

    @classmethod
    def _from_sorted(cls, starts: List[int], ends: List[int]) -> "ExtentList":
        new = cls()
        new._starts = starts
        new._ends = ends
        return new

    # -- building

    def add(self, start: int, end: int) -> None:
        """Add ``[start, end)``, merging with every range it overlaps or touches; empty ranges are ignored."""
        if start < 0:
            raise ValueError("extent [{}, {}) starts before 0".format(start, end))
        if end <= start:
            return
        starts, ends = self._starts, self._ends
        # Fast path: parsers add ranges in ascending order.
        if not starts or start > ends[-1]:
            starts.append(start)
            ends.append(end)
            return
        if start >= starts[-1]:
            if end > ends[-1]:
                ends[-1] = end
            return
        # First range whose end reaches start, and first range that starts after end.
        lo = bisect.bisect_left(ends, start)
        hi = bisect.bisect_right(starts, end)
        if lo == hi:
            starts.insert(lo, start)
            ends.insert(lo, end)
            return
        new_start = min(start, starts[lo])
        new_end = max(end, ends[hi - 1])
        starts[lo:hi] = [new_start]
        ends[lo:hi] = [new_end]

    def copy(self) -> "ExtentList":
        return self._from_sorted(list(self._starts), list(self._ends))

    # -- set operations

    def union(self, other: "ExtentList") -> "ExtentList":
        """Bytes in either list."""
        merged = sorted(zip(self._starts + other._starts, self._ends + other._ends))
        starts: List[int] = []
        ends: List[int] = []
        for start, end in merged:
            if ends and start <= ends[-1]:
                if end > ends[-1]:
                    ends[-1] = end
            else:
                starts.append(start)
                ends.append(end)
        return self._from_sorted(starts, ends)

    def intersect(self, other: "ExtentList") -> "ExtentList":
        """Bytes in both lists."""
        starts: List[int] = []
        ends: List[int] = []
        a_s, a_e, b_s, b_e = self._starts, self._ends, other._starts, other._ends
        i = j = 0
        while i < len(a_s) and j < len(b_s):
            lo = max(a_s[i], b_s[j])
            hi = min(a_e[i], b_e[j])
            if lo < hi:
                starts.append(lo)
                ends.append(hi)
            if a_e[i] < b_e[j]:
                i += 1
            else:
                j += 1
        return self._from_sorted(starts, ends)

    def subtract(self, other: "ExtentList") -> "ExtentList":
        """Bytes in this list and not in ``other``."""
        starts: List[int] = []
        ends: List[int] = []
        b_s, b_e = other._starts, other._ends
        j = 0
        for start, end in zip(self._starts, self._ends):
            while j < len(b_s) and b_e[j] <= start:
                j += 1
            k = j
            cur = start
            while k < len(b_s) and b_s[k] < end:
                if b_s[k] > cur:
                    starts.append(cur)
                    ends.append(b_s[k])
                cur = max(cur, b_e[k])
                if b_e[k] >= end:
                    break
                k += 1
            if cur < end:
                starts.append(cur)
                ends.append(end)
        return self._from_sorted(starts, ends)

    def clip(self, start: int, end: int) -> "ExtentList":
        """The part of this list inside ``[start, end)``."""
        return self.intersect(ExtentList([(start, end)]))

    def shift(self, delta: int) -> "ExtentList":
        """Every range moved by ``delta`` bytes, e.g. from filesystem to disk offsets."""
        if self._starts and self._starts[0] + delta < 0:
            raise ValueError("shift by {} moves extents before 0".format(delta))
        return self._from_sorted([s + delta for s in self._starts], [e + delta for e in self._ends])

    def aligned(self, chunk: int) -> "ExtentList":
        """Every range rounded out to multiples of ``chunk`` (a superset; touching results merge)."""
        if chunk <= 0:
            raise ValueError("chunk size must be positive, not {}".format(chunk))
        starts: List[int] = []
        ends: List[int] = []
        for start, end in zip(self._starts, self._ends):
            start = start // chunk * chunk
            end = -(-end // chunk) * chunk
            if ends and start <= ends[-1]:
                if end > ends[-1]:
                    ends[-1] = end
            else:
                starts.append(start)
                ends.append(end)
        return self._from_sorted(starts, ends)

    __or__ = union
    __and__ = intersect
    __sub__ = subtract

    # -- queries

    def total(self) -> int:
        """Number of bytes covered."""
        return sum(self._ends) - sum(self._starts)

    def __iter__(self) -> Iterator[Extent]:
        for start, end in zip(self._starts, self._ends):
            yield Extent(start, end)

    def __len__(self) -> int:
        """Number of ranges (not bytes: see ``total``)."""
        return len(self._starts)

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __contains__(self, offset: object) -> bool:
        if not isinstance(offset, int):
            return False
        i = bisect.bisect_right(self._starts, offset) - 1
        return i >= 0 and offset < self._ends[i]

    def covers(self, start: int, end: int) -> bool:
        """True when every byte of ``[start, end)`` is in the list."""
        if end <= start:
            return True
        i = bisect.bisect_right(self._starts, start) - 1
        return i >= 0 and self._ends[i] >= end

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExtentList):
            return NotImplemented
        return self._starts == other._starts and self._ends == other._ends

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join("[{}, {})".format(s, e) for s, e in list(self)[:4])
        more = ", ... {} more".format(len(self) - 4) if len(self) > 4 else ""
        return "ExtentList({} bytes: {}{})".format(self.total(), shown, more)

    # -- serialisation

    def to_compact(self) -> List[int]:
        """A flat, JSON-able list ``[gap, length, gap, length, ...]``; gaps count from the previous end."""
        out: List[int] = []
        prev = 0
        for start, end in zip(self._starts, self._ends):
            out.append(start - prev)
            out.append(end - start)
            prev = end
        return out

    @classmethod
    def from_compact(cls, values: Sequence[int]) -> "ExtentList":
        """The inverse of ``to_compact``; raises ValueError on a malformed list."""
        if len(values) % 2:
            raise ValueError("compact extent list has an odd number of values ({})".format(len(values)))
        starts: List[int] = []
        ends: List[int] = []
        pos = 0
        for i in range(0, len(values), 2):
            gap, length = values[i], values[i + 1]
            if not isinstance(gap, int) or not isinstance(length, int):
                raise ValueError("compact extent list holds a non-integer")
            if gap < 0 or length <= 0 or (gap == 0 and i > 0):
                raise ValueError("compact extent list entry {} is not a gap/length pair".format(i // 2))
            start = pos + gap
            pos = start + length
            starts.append(start)
            ends.append(pos)
        return cls._from_sorted(starts, ends)

    def to_bytes(self) -> bytes:
        """``to_compact`` as unsigned LEB128 varints: a few bytes per range on the wire."""
        out = bytearray()
        for value in self.to_compact():
            while True:
                byte = value & 0x7F
                value >>= 7
                if value:
                    out.append(byte | 0x80)
                else:
                    out.append(byte)
                    break
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> "ExtentList":
        """The inverse of ``to_bytes``; raises ValueError on truncated or malformed input."""
        values: List[int] = []
        value = shift = 0
        pending = False
        for byte in bytearray(data):
            value |= (byte & 0x7F) << shift
            if byte & 0x80:
                shift += 7
                pending = True
            else:
                values.append(value)
                value = shift = 0
                pending = False
        if pending:
            raise ValueError("extent list bytes end inside a varint")
        return cls.from_compact(values)
