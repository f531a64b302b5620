"""ExtentList against a plain set of byte offsets: random ranges over a small space, many seeds."""
import json
import random
from typing import List, Set, Tuple

import pytest

from diskfmt.extents import Extent, ExtentList

SPACE = 96
SEEDS = range(300)


def _random_ranges(rng: random.Random) -> List[Tuple[int, int]]:
    out = []
    for _ in range(rng.randint(0, 8)):
        start = rng.randrange(SPACE)
        out.append((start, start + rng.randint(0, 12)))
    return out


def _bytes_of(ranges: List[Tuple[int, int]]) -> Set[int]:
    return {b for start, end in ranges for b in range(start, end)}


def _bytes_in(extents: ExtentList) -> Set[int]:
    return _bytes_of(list(extents))


def _assert_canonical(extents: ExtentList) -> None:
    prev_end = -1
    for start, end in extents:
        assert start < end, "empty range kept"
        assert start > prev_end, "ranges overlap, touch or are out of order"
        prev_end = end


def test_set_operations_match_sets_of_bytes() -> None:
    for seed in SEEDS:
        rng = random.Random(seed)
        ra, rb = _random_ranges(rng), _random_ranges(rng)
        a, b = ExtentList(ra), ExtentList(rb)
        sa, sb = _bytes_of(ra), _bytes_of(rb)
        for result, expected in ((a, sa), (b, sb), (a | b, sa | sb), (a & b, sa & sb),
                                 (a - b, sa - sb), (b - a, sb - sa)):
            _assert_canonical(result)
            assert _bytes_in(result) == expected, "seed {}".format(seed)
            assert result.total() == len(expected)
        assert a.union(b) == b.union(a)
        assert a.intersect(b) == b.intersect(a)


def test_adding_in_any_order_gives_the_same_list() -> None:
    for seed in SEEDS:
        rng = random.Random(seed)
        ranges = _random_ranges(rng) + _random_ranges(rng)
        shuffled = list(ranges)
        rng.shuffle(shuffled)
        assert ExtentList(ranges) == ExtentList(shuffled) == ExtentList(sorted(ranges))


def test_aligned_rounds_out_to_whole_chunks() -> None:
    for seed in SEEDS:
        rng = random.Random(seed)
        ranges = _random_ranges(rng)
        chunk = rng.choice([1, 2, 3, 4, 8, 16])
        extents = ExtentList(ranges)
        aligned = extents.aligned(chunk)
        _assert_canonical(aligned)
        chunks = {x // chunk for x in _bytes_of(ranges)}
        expected = {b for c in chunks for b in range(c * chunk, (c + 1) * chunk)}
        assert _bytes_in(aligned) == expected, "seed {}".format(seed)
        for start, end in aligned:
            assert start % chunk == 0 and end % chunk == 0


def test_membership_covers_and_clip_match_sets() -> None:
    for seed in SEEDS:
        rng = random.Random(seed)
        ranges = _random_ranges(rng)
        extents, expected = ExtentList(ranges), _bytes_of(ranges)
        for offset in range(SPACE + 12):
            assert (offset in extents) == (offset in expected)
        lo = rng.randrange(SPACE)
        hi = lo + rng.randint(0, 20)
        assert extents.covers(lo, hi) == all(b in expected for b in range(lo, hi))
        assert _bytes_in(extents.clip(lo, hi)) == {b for b in expected if lo <= b < hi}


def test_compact_and_bytes_forms_round_trip() -> None:
    for seed in SEEDS:
        rng = random.Random(seed)
        extents = ExtentList((s * 4096 + rng.randrange(1 << 40), e * 4096 + (1 << 41))
                             for s, e in _random_ranges(rng))
        compact = extents.to_compact()
        assert ExtentList.from_compact(json.loads(json.dumps(compact))) == extents
        assert ExtentList.from_bytes(extents.to_bytes()) == extents, "seed {}".format(seed)


def test_shift_moves_filesystem_offsets_to_disk_offsets() -> None:
    fs_map = ExtentList([(0, 4096), (8192, 12288)])
    assert list(fs_map.shift(1048576)) == [Extent(1048576, 1052672), Extent(1056768, 1060864)]
    with pytest.raises(ValueError):
        fs_map.shift(-1)


def test_iteration_yields_named_ranges_and_len_counts_ranges() -> None:
    extents = ExtentList([(10, 20), (20, 30), (40, 41)])
    assert list(extents) == [Extent(10, 30), Extent(40, 41)]
    assert extents.total() == 21 and len(extents) == 2 and extents
    assert not ExtentList() and ExtentList().total() == 0


def test_empty_and_negative_ranges_are_handled() -> None:
    assert ExtentList([(5, 5), (7, 3)]) == ExtentList()
    with pytest.raises(ValueError):
        ExtentList([(-1, 4)])
    with pytest.raises(ValueError):
        ExtentList().aligned(0)


@pytest.mark.parametrize("compact", [[1], [0, 0], [-1, 4], [0, 4, 0, 4], [0, 4, 1, -2]])
def test_malformed_compact_form_is_refused(compact: List[int]) -> None:
    with pytest.raises(ValueError):
        ExtentList.from_compact(compact)


def test_truncated_varint_bytes_are_refused() -> None:
    with pytest.raises(ValueError):
        ExtentList.from_bytes(b"\x00\x80")


def test_many_ascending_adds_stay_fast() -> None:
    extents = ExtentList()
    for i in range(200000):
        extents.add(i * 8, i * 8 + 4)
    assert len(extents) == 200000 and extents.total() == 800000
