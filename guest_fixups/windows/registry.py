"""The one hivex wrapper: open a hive, read and change keys by path, commit; hives in the guest are
downloaded from the overlay, edited on the host and uploaded back.

Paths are backslash-separated and relative to the hive's root ("ControlSet001\\Services\\viostor");
lookups are case-insensitive as in Windows. Values are decoded by type: REG_SZ/REG_EXPAND_SZ -> str,
REG_MULTI_SZ -> list of str, REG_DWORD/REG_QWORD -> int, anything else -> bytes.
"""
import contextlib
import os
import struct
import tempfile
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

from v2v.errors import FixupError, InspectionError

try:
    import hivex
except ImportError:  # reported by `v2v doctor`
    hivex = None

REG_NONE, REG_SZ, REG_EXPAND_SZ, REG_BINARY, REG_DWORD = 0, 1, 2, 3, 4
REG_DWORD_BIG_ENDIAN, REG_LINK, REG_MULTI_SZ, REG_QWORD = 5, 6, 7, 11

Value = Union[str, List[str], int, bytes]


def encode_sz(text: str) -> bytes:
    return (text + "\0").encode("utf-16-le")


def encode_multi_sz(items: Sequence[str]) -> bytes:
    return "".join(s + "\0" for s in items).encode("utf-16-le") + b"\0\0"


def decode(vtype: int, raw: bytes) -> Value:
    """A value's data as Python: Windows writes odd lengths and missing terminators, so be lenient."""
    if vtype in (REG_SZ, REG_EXPAND_SZ, REG_LINK):
        return raw[:len(raw) & ~1].decode("utf-16-le", "replace").split("\0", 1)[0]
    if vtype == REG_MULTI_SZ:
        text = raw[:len(raw) & ~1].decode("utf-16-le", "replace")
        return [s for s in text.split("\0") if s]
    if vtype == REG_DWORD and len(raw) >= 4:
        return struct.unpack_from("<I", raw)[0]
    if vtype == REG_DWORD_BIG_ENDIAN and len(raw) >= 4:
        return struct.unpack_from(">I", raw)[0]
    if vtype == REG_QWORD and len(raw) >= 8:
        return struct.unpack_from("<Q", raw)[0]
    return bytes(raw)


def _parts(path: str) -> List[str]:
    return [p for p in path.replace("/", "\\").split("\\") if p]


if hivex is not None:
    class _UnopenedHivex(hivex.Hivex):
        def __del__(self) -> None:
            pass


class Hive:
    """A hive file opened with hivex (for writing when write=True); commit() writes it back."""

    def __init__(self, path: str, write: bool = False) -> None:
        if hivex is None:
            raise InspectionError("the hivex Python binding is missing: apt-get install python3-hivex")
        self.path = path
        self.write = write
        h = hivex.Hivex.__new__(hivex.Hivex)
        try:
            h.__init__(path, write=write)
        except RuntimeError as e:
            # the binding's __del__ would close a handle its failed constructor never set, and print a
            # traceback to stderr whenever the object is collected: give that object a quiet class
            h.__class__ = _UnopenedHivex
            raise InspectionError("{} is not a valid registry hive ({})".format(
                os.path.basename(path), e)) from None
        self.h = h

    # --- keys
    def key(self, path: str) -> Optional[int]:
        """The node of path, or None when any part is missing."""
        node = self.h.root()
        for part in _parts(path):
            node = self.h.node_get_child(node, part)
            if node is None:
                return None
        return node

    def has_key(self, path: str) -> bool:
        return self.key(path) is not None

    def ensure_key(self, path: str) -> int:
        """The node of path, creating missing keys on the way."""
        node = self.h.root()
        for part in _parts(path):
            child = self.h.node_get_child(node, part)
            node = child if child is not None else self.h.node_add_child(node, part)
        return node

    def delete_key(self, path: str) -> bool:
        """Delete path and everything below it; False when it did not exist."""
        node = self.key(path)
        if node is None:
            return False
        if node == self.h.root():
            raise ValueError("cannot delete the root key")
        self.h.node_delete_child(node)
        return True

    def subkeys(self, path: str = "") -> List[str]:
        node = self.key(path)
        return [] if node is None else [self.h.node_name(c) for c in self.h.node_children(node)]

    # --- values
    def raw_values(self, path: str) -> Dict[str, Tuple[int, bytes]]:
        """name -> (type, data) for every value of path ("" is the default value); {} when missing."""
        node = self.key(path)
        if node is None:
            return {}
        out = {}
        for v in self.h.node_values(node):
            vtype, data = self.h.value_value(v)
            out[self.h.value_key(v)] = (vtype, data)
        return out

    def values(self, path: str) -> Dict[str, Value]:
        return {k: decode(t, d) for k, (t, d) in self.raw_values(path).items()}

    def get(self, path: str, name: str, default: Optional[Value] = None) -> Optional[Value]:
        for k, (t, d) in self.raw_values(path).items():
            if k.lower() == name.lower():
                return decode(t, d)
        return default

    def set_raw(self, path: str, name: str, vtype: int, data: bytes) -> None:
        node = self.ensure_key(path)
        self.h.node_set_value(node, {"key": name, "t": vtype, "value": data})

    def set_sz(self, path: str, name: str, text: str) -> None:
        self.set_raw(path, name, REG_SZ, encode_sz(text))

    def set_expand_sz(self, path: str, name: str, text: str) -> None:
        self.set_raw(path, name, REG_EXPAND_SZ, encode_sz(text))

    def set_multi_sz(self, path: str, name: str, items: Sequence[str]) -> None:
        self.set_raw(path, name, REG_MULTI_SZ, encode_multi_sz(items))

    def set_dword(self, path: str, name: str, number: int) -> None:
        self.set_raw(path, name, REG_DWORD, struct.pack("<I", number & 0xFFFFFFFF))

    def set_qword(self, path: str, name: str, number: int) -> None:
        self.set_raw(path, name, REG_QWORD, struct.pack("<Q", number))

    def set_binary(self, path: str, name: str, data: bytes) -> None:
        self.set_raw(path, name, REG_BINARY, data)

    def delete_value(self, path: str, name: str) -> bool:
        """hivex has no call to delete one value: rewrite the key's values without it."""
        node = self.key(path)
        if node is None:
            return False
        kept = []
        found = False
        for v in self.h.node_values(node):
            k = self.h.value_key(v)
            if k.lower() == name.lower():
                found = True
                continue
            vtype, data = self.h.value_value(v)
            kept.append({"key": k, "t": vtype, "value": data})
        if found:
            self.h.node_set_values(node, kept)
        return found

    def commit(self) -> None:
        try:
            self.h.commit(None)
        except RuntimeError as e:
            raise FixupError("could not write the registry hive {}: {}".format(self.path, e)) from None

    # --- Windows conventions
    def current_control_set(self) -> str:
        """"ControlSet00N" named by Select\\Current of a SYSTEM hive."""
        current = self.get("Select", "Current")
        if not isinstance(current, int) or current < 1:
            raise InspectionError("the SYSTEM hive has no Select\\Current value; is it a SYSTEM hive?")
        name = "ControlSet{:03d}".format(current)
        if not self.has_key(name):
            raise InspectionError("the SYSTEM hive names {} as current but has no such key".format(name))
        return name


@contextlib.contextmanager
def edit_guest_hive(app, guest_path: str, dry_run: bool = False) -> Iterator[Hive]:
    """Download a hive from the (overlay) guest, yield it for writing, then commit and upload it back.

    Nothing is uploaded when the body raises, so the guest's hive is never left half-changed; nothing at
    all with dry_run (the edits land in a throwaway copy, so a dry run reports exactly what would change).
    """
    real = app.g.case_sensitive_path(guest_path)
    with tempfile.TemporaryDirectory(prefix="v2v-hive-") as tmp:
        local = os.path.join(tmp, os.path.basename(real))
        app.g.download(real, local)
        hive = Hive(local, write=True)
        yield hive
        if dry_run:
            return
        hive.commit()
        Hive(local)  # re-open: what we upload must parse
        app.g.upload(local, real)


@contextlib.contextmanager
def read_guest_hive(app, guest_path: str) -> Iterator[Hive]:
    """A read-only copy of a guest hive."""
    real = app.g.case_sensitive_path(guest_path)
    with tempfile.TemporaryDirectory(prefix="v2v-hive-") as tmp:
        local = os.path.join(tmp, os.path.basename(real))
        app.g.download(real, local)
        yield Hive(local)


def hivex_available() -> Optional[str]:
    return None if hivex is not None else "apt-get install python3-hivex"
