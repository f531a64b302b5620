"""Used-block map of Linux swap: the header page only, plus the bad pages it lists.

Swap content does not survive a reboot, so only the signature page (label, UUID, size) is worth sending.
The page size is found from where the signature sits (4 KiB to 64 KiB). A swap area that holds a
hibernation image (``S1SUSPEND`` and friends) is kept whole: the image is the data. Standard library only,
Python 3.6+.
"""
import struct
from typing import Optional, Tuple

from ..errors import FormatError
from ..extents import ExtentList
from . import ReadFn, read_exact

SWAP_MAGICS = (b"SWAPSPACE2", b"SWAP-SPACE")
HIBERNATION_MAGICS = (b"S1SUSPEND\x00", b"S2SUSPEND\x00", b"ULSUSPEND\x00", b"LINHIB0001")
PAGE_SIZES = (4096, 8192, 16384, 65536)
BADPAGES_OFFSET = 1536  # swap_header.info.badpages: after version, last_page, nr_badpages, uuid, label, pad


def find_signature(read: ReadFn, size: int) -> Tuple[int, bytes]:
    """(page size, signature) of a swap area; FormatError when there is none."""
    for page in PAGE_SIZES:
        if page > size:
            break
        magic = read(page - 10, 10)
        if magic in SWAP_MAGICS or magic in HIBERNATION_MAGICS:
            return page, bytes(magic)
    raise FormatError("no Linux swap signature at the end of the first page")


def probe(read: ReadFn, size: int) -> Optional[str]:
    try:
        find_signature(read, size)
    except FormatError:
        return None
    return "swap"


def used_map(read: ReadFn, size: int, allow_dirty: bool = False) -> ExtentList:
    """The header page and the listed bad pages; the whole area when it holds a hibernation image."""
    page, magic = find_signature(read, size)
    if magic in HIBERNATION_MAGICS:
        return ExtentList([(0, size)])
    used = ExtentList([(0, page)])
    if magic != b"SWAPSPACE2":
        return used  # version 0: the first page is the usable-page bitmap, nothing else is listed
    header = read_exact(read, 1024, 12, "swap header")
    for order in ("<", ">"):  # written in the byte order of the machine that ran mkswap
        version, last_page, nr_bad = struct.unpack(order + "III", header)
        if version == 1:
            break
    else:
        raise FormatError("swap header has unknown version")
    nr_bad = min(nr_bad, (page - BADPAGES_OFFSET) // 4)
    if nr_bad:
        raw = read_exact(read, BADPAGES_OFFSET, 4 * nr_bad, "swap bad-page list")
        for bad in struct.unpack(order + "{}I".format(nr_bad), raw):
            if 0 < bad <= last_page and (bad + 1) * page <= size:
                used.add(bad * page, (bad + 1) * page)
    return used
