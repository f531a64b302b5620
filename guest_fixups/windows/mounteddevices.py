"""SYSTEM\\MountedDevices: which volume gets which drive letter ("\\DosDevices\\C:") and volume GUID
("\\??\\Volume{...}"), keyed by where the partition is.

Each value is REG_BINARY: on an MBR disk 12 bytes (u32 disk signature, u64 byte offset of the partition,
little-endian); on a GPT disk b"DMIO:ID:" and the 16-byte partition GUID (mixed-endian). Anything else
(UTF-16 device-interface paths of removable media, CD-ROMs) names no partition and is left alone.

The codec is pure (standard library, Python 3.6+); ``rewrite_mounted_devices`` takes an open SYSTEM hive.
"""
import struct
import uuid
from typing import List, Mapping, Optional

from guest_fixups.windows.bcd_device import (PartitionLocation, canonical, canonical_guid, mbr_location,
                                                same_partition)

KEY = "MountedDevices"
GPT_PREFIX = b"DMIO:ID:"
MBR_SIZE = 12
GPT_SIZE = len(GPT_PREFIX) + 16
REG_BINARY = 3


def decode_mounted_device(data: bytes) -> Optional[PartitionLocation]:
    """The partition a MountedDevices value names, or None for values that name no partition. A GPT
    location has no disk GUID: Windows stores the partition GUID alone."""
    data = bytes(data)
    if len(data) == GPT_SIZE and data.startswith(GPT_PREFIX):
        return gpt_location_without_disk(str(uuid.UUID(bytes_le=data[len(GPT_PREFIX):])))
    if len(data) == MBR_SIZE:
        signature, offset = struct.unpack("<IQ", data)
        return mbr_location(signature, offset)
    return None


def gpt_location_without_disk(partition_guid: str) -> PartitionLocation:
    """A GPT location known by its partition GUID only (as MountedDevices keeps it)."""
    return PartitionLocation("gpt", 0, 0, "", canonical_guid(partition_guid))


def encode_mounted_device(loc: PartitionLocation) -> bytes:
    """The MountedDevices value Windows writes for the partition at ``loc``."""
    loc = canonical(loc)
    if loc.style == "mbr":
        return struct.pack("<IQ", loc.disk_signature, loc.offset)
    return GPT_PREFIX + uuid.UUID(loc.partition_guid).bytes_le


def _target(mapping: Mapping[PartitionLocation, PartitionLocation],
            loc: PartitionLocation) -> Optional[PartitionLocation]:
    for old, new in mapping.items():
        if same_partition(old, loc):
            return new
    return None


def rewrite_mounted_devices(hive, mapping: Mapping[PartitionLocation, PartitionLocation]) -> List[str]:
    """Point every MountedDevices value naming an old partition of ``mapping`` at its new location.

    ``hive`` is a SYSTEM hive (guest_fixups.windows.registry.Hive) opened for writing; the caller commits.
    Returns one line per changed value, e.g. "\\DosDevices\\C: disk 0x1234abcd @1048576 -> disk ...".
    Values already right, naming other partitions, or naming no partition are left as they are.
    """
    changes = []
    for name, (vtype, data) in sorted(hive.raw_values(KEY).items()):
        if vtype != REG_BINARY:
            continue
        loc = decode_mounted_device(data)
        if loc is None:
            continue
        new = _target(mapping, loc)
        if new is None:
            continue
        encoded = encode_mounted_device(new)
        if encoded == bytes(data):
            continue
        changes.append((name, loc, new, encoded))
    for name, _loc, _new, encoded in changes:
        hive.set_binary(KEY, name, encoded)
    return ["{} {} -> {}".format(name, loc.describe(), decode_mounted_device(encoded).describe())
            for name, loc, _new, encoded in changes]
