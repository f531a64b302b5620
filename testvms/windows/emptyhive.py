"""An empty registry hive (regf), made from the documented on-disk layout, for hivex to fill.

hivex can edit a hive but not create one; tests need real hives with known contents, so we write the
smallest valid one (a base block, one hbin, a root key and its security cell) and add keys with hivex.
"""
import struct

BLOCK = 4096
FILETIME_2020 = 132223104000000000  # 2020-01-01, a fixed stamp so that built hives are reproducible


def _cell(payload: bytes) -> bytes:
    size = (4 + len(payload) + 7) & ~7
    return struct.pack("<i", -size) + payload + b"\0" * (size - 4 - len(payload))


def empty_hive(root_name: str = "ROOT", file_name: str = "") -> bytes:
    """The bytes of a valid hive whose root key has no subkeys and no values."""
    name = root_name.encode("ascii")
    nk_off = 0x20                    # offsets are relative to the first hbin
    nk_len = (4 + 0x4C + len(name) + 7) & ~7
    sk_off = nk_off + nk_len
    # self-relative security descriptor: revision 1, SE_SELF_RELATIVE | SE_DACL_PRESENT, no ACLs
    descriptor = struct.pack("<BBHIIII", 1, 0, 0x8004, 0, 0, 0, 0)
    sk = b"sk" + struct.pack("<HIIII", 0, sk_off, sk_off, 1, len(descriptor)) + descriptor
    nk = b"nk" + struct.pack(
        "<HQIIIIIIIIIIIIIIIHH",
        0x2C,                        # KEY_HIVE_ENTRY | KEY_NO_DELETE | KEY_COMP_NAME
        FILETIME_2020, 0,
        0xFFFFFFFF,                  # parent (none)
        0, 0,                        # subkeys, volatile subkeys
        0xFFFFFFFF, 0xFFFFFFFF,      # subkey lists
        0, 0xFFFFFFFF,               # values, value list
        sk_off, 0xFFFFFFFF,          # security, class name
        0, 0, 0, 0, 0,               # max lengths, workvar
        len(name), 0) + name
    cells = _cell(nk) + _cell(sk)
    free = BLOCK - 0x20 - len(cells)
    hbin = (b"hbin" + struct.pack("<IIQQI", 0, BLOCK, 0, FILETIME_2020, 0)
            + cells + struct.pack("<i", free) + b"\0" * (free - 4))
    assert len(hbin) == BLOCK
    fname = file_name.encode("utf-16-le")[:64].ljust(64, b"\0")
    head = (b"regf" + struct.pack("<IIQIIIIIII", 1, 1, FILETIME_2020, 1, 3, 0, 1, nk_off, BLOCK, 1)
            + fname)
    head = head.ljust(0x1FC, b"\0")
    checksum = 0
    for (word,) in struct.iter_unpack("<I", head):
        checksum ^= word
    head += struct.pack("<I", checksum)
    return head.ljust(BLOCK, b"\0") + hbin
