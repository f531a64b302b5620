"""The small libvirt layer shared by outputs/libvirt.py and verify.py; only place importing libvirt."""
import contextlib
from typing import Any, Iterator, Optional

from .errors import OutputError

try:
    import libvirt
except ImportError:
    libvirt = None


def _silence(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; we report them ourselves."""


def connect_quietly(uri: str):
    if libvirt is None:
        raise OutputError("the libvirt Python binding is missing: apt-get install python3-libvirt")
    libvirt.registerErrorHandler(_silence, None)
    return libvirt.open(uri)


def connect(uri: str):
    if libvirt is None:
        raise OutputError("the libvirt Python binding is missing: apt-get install python3-libvirt")
    try:
        return connect_quietly(uri)
    except libvirt.libvirtError as e:
        raise OutputError("cannot connect to libvirt at {}: {} (is libvirtd running? "
                          "try `v2v doctor`)".format(uri, e.get_error_message())) from None


@contextlib.contextmanager
def connection(uri: str) -> Iterator[Any]:
    """A libvirt connection to uri (see connect), closed when the block ends."""
    conn = connect(uri)
    try:
        yield conn
    finally:
        conn.close()


def lookup_domain(conn, name: str):
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError:
        return None


def pool_path(conn, pool: str) -> Optional[str]:
    """The target directory of a directory-backed storage pool, or None if there is no such pool."""
    from lxml import etree
    try:
        p = conn.storagePoolLookupByName(pool)
    except libvirt.libvirtError:
        return None
    node = etree.fromstring(p.XMLDesc(0).encode()).find("target/path")
    return node.text if node is not None else None


def refresh_pools_containing(conn, directory: str) -> None:
    """Let a pool that owns directory see new volumes (best effort)."""
    from lxml import etree
    import os
    try:
        pools = conn.listAllStoragePools(0)
    except libvirt.libvirtError:
        return
    for p in pools:
        node = etree.fromstring(p.XMLDesc(0).encode()).find("target/path")
        if node is not None and os.path.realpath(node.text or "") == os.path.realpath(directory):
            try:
                if p.isActive():
                    p.refresh(0)
            except libvirt.libvirtError:
                pass


def define(conn, xml: str):
    try:
        return conn.defineXML(xml)
    except libvirt.libvirtError as e:
        raise OutputError("libvirt refused the domain: {}".format(e.get_error_message())) from None


def libvirt_error():
    return libvirt.libvirtError if libvirt is not None else Exception
