"""Windows guests we refuse to convert, each check pure: bytes or parsed tables in, a one-line reason (or
None) out. The caller raises ``v2v.errors.UnsupportedGuest`` with the reason.

Why refuse rather than fix: a hibernated (or Fast Startup) NTFS volume holds state the resumed kernel
will trust, so any change we make is lost or corrupts the volume; a BitLocker volume cannot be read
without its key; a dynamic disk keeps its real layout in the LDM database, which nothing here rewrites.
"""
from typing import Optional

from diskfmt import gpt as gpt_table
from diskfmt import mbr as mbr_table

from .registry import Hive

HIBERNATED_MAGICS = (b"hibr", b"HIBR", b"wake", b"WAKE", b"rstr", b"RSTR")
BITLOCKER_OEM_ID = b"-FVE-FS-"


def hibernation_reason(hiberfil_header: bytes, hiberboot_enabled: Optional[bool] = None) -> Optional[str]:
    """Why a guest whose hiberfil.sys starts with ``hiberfil_header`` cannot be converted, or None.

    A zeroed (or empty, or absent) header is a clean shutdown; an unknown non-zero one is not taken as
    hibernated, since Windows only writes the magics above for a resumable image.
    """
    magic = bytes(hiberfil_header[:4])
    if magic not in HIBERNATED_MAGICS:
        return None
    shown = magic.decode("ascii")
    if hiberboot_enabled:
        return ("Windows was shut down with Fast Startup (hiberfil.sys header {!r}): start it, then shut "
                "it down with 'shutdown /s /f /t 0' or disable Fast Startup (powercfg /h off)".format(shown))
    return ("Windows is hibernated (hiberfil.sys header {!r}): resume it and shut it down fully "
            "('shutdown /s /f /t 0'), then convert".format(shown))


def hiberboot_enabled(system: Hive) -> Optional[bool]:
    """Fast Startup as SYSTEM ...\\Control\\Session Manager\\Power\\HiberbootEnabled says; None if unset."""
    value = system.get(system.current_control_set() + "\\Control\\Session Manager\\Power", "HiberbootEnabled")
    return bool(value) if isinstance(value, int) else None


def bitlocker_reason(boot_sector: bytes, volume: str) -> Optional[str]:
    """Why a volume whose first sector is ``boot_sector`` blocks conversion (BitLocker), or None."""
    if bytes(boot_sector[3:11]) == BITLOCKER_OEM_ID:
        return ("{} is encrypted with BitLocker: decrypt it in the guest (manage-bde -off) or suspend "
                "protection and convert a decrypted copy".format(volume))
    return None


def dynamic_disk_reason(disk: str, mbr: Optional[mbr_table.Mbr] = None,
                        gpt: Optional[gpt_table.Gpt] = None) -> Optional[str]:
    """Why ``disk`` (its parsed MBR or GPT) blocks conversion (a Windows dynamic disk), or None."""
    if gpt is not None and gpt_table.is_dynamic_disk(gpt):
        return ("{} is a Windows dynamic disk (GPT LDM partitions): convert it to a basic disk in the guest "
                "first".format(disk))
    if mbr is not None and mbr_table.is_dynamic_disk(mbr):
        return ("{} is a Windows dynamic disk (MBR partition type 0x42): convert it to a basic disk in the "
                "guest first".format(disk))
    return None
