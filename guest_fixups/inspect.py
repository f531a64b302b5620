"""Inspection: what OS the overlays hold, where it mounts, how it boots."""
from typing import List, Sequence, Tuple

from v2v.errors import InspectionError, UnsupportedGuest
from v2v.types import Filesystem, Guest, SourceDisk

from .appliance import Appliance

ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"


def inspect(app: Appliance, disks: Sequence[SourceDisk]) -> Guest:
    """Inspect the launched appliance; mounts the guest read-write (fixups run next in the same session)."""
    g = app.g
    try:
        roots = g.inspect_os()
    except RuntimeError as e:
        if "hivex" in str(e).lower():
            bad = _corrupt_hive(app)
            if bad:
                raise InspectionError(bad) from None
        raise InspectionError("inspection failed: {}".format(e)) from None
    if not roots:
        from .windows.convert import refusal
        why = refusal(app, None)   # BitLocker or a dynamic disk hides the OS from inspection: say so
        if why:
            raise UnsupportedGuest(why)
        raise InspectionError("no operating system was found on the disk(s): is this the right image, "
                              "and is it whole? (a data disk needs the OS disk given with it)")
    if len(roots) > 1:
        raise InspectionError("several operating systems were found ({}); multi-boot guests are not "
                              "supported".format(", ".join(roots)))
    root = roots[0]
    ostype = g.inspect_get_type(root)
    mps = g.inspect_get_mountpoints(root)
    mountpoints: Tuple[Tuple[str, str], ...] = tuple(sorted(mps.items(), key=lambda kv: len(kv[0])))
    app.mount_guest(mountpoints)
    by_dev = {dev: mp for mp, dev in mountpoints}
    filesystems: List[Filesystem] = []
    for dev, fstype in sorted(g.list_filesystems().items()):
        if fstype in ("unknown", ""):
            continue
        filesystems.append(Filesystem(device=dev, fstype=fstype, uuid=_safe(g.vfs_uuid, dev),
                                      label=_safe(g.vfs_label, dev), mountpoint=by_dev.get(dev, "")))
    kernels: Tuple[str, ...] = ()
    apps: Tuple[str, ...] = ()
    if ostype == "linux":
        kernels = tuple(sorted(p[len("vmlinuz-"):] for p in g.ls("/boot") if p.startswith("vmlinuz-")))
        try:
            apps = tuple(sorted({a["app2_name"] for a in g.inspect_list_applications2(root)}))
        except RuntimeError:
            apps = ()
    return Guest(
        type=ostype,
        distro=g.inspect_get_distro(root),
        product_name=g.inspect_get_product_name(root),
        major=g.inspect_get_major_version(root),
        minor=g.inspect_get_minor_version(root),
        arch=g.inspect_get_arch(root),
        hostname=g.inspect_get_hostname(root),
        root=root,
        firmware=_firmware(app, ostype),
        package_format=g.inspect_get_package_format(root),
        package_management=g.inspect_get_package_management(root),
        osinfo=g.inspect_get_osinfo(root),
        mountpoints=mountpoints,
        filesystems=tuple(filesystems),
        kernels=kernels,
        applications=apps,
        disks=tuple(disks),
        **(_windows(app, root) if ostype == "windows" else {}),
    )


def _windows(app: Appliance, root: str) -> dict:
    """Windows facts the fixups need: the systemroot, Server or Client, and the build number (which tells
    Windows 11 from 10 and 2019 from 2016: their ProductName and version are the same)."""
    g = app.g
    systemroot = g.inspect_get_windows_systemroot(root)
    build = ""
    try:
        build = g.inspect_get_build_id(root)          # libguestfs >= 1.50
    except (RuntimeError, AttributeError):
        from .windows.registry import read_guest_hive
        with read_guest_hive(app, systemroot.rstrip("/") + "/System32/config/SOFTWARE") as software:
            key = "Microsoft\\Windows NT\\CurrentVersion"
            build = str(software.get(key, "CurrentBuildNumber") or software.get(key, "CurrentBuild") or "")
    return {"windows_systemroot": systemroot,
            "product_variant": g.inspect_get_product_variant(root),
            "build": build if build.isdigit() else ""}


def _corrupt_hive(app: Appliance) -> str:
    """Which Windows registry hive made inspection fail, as a line a user can act on, or ""."""
    from .windows.registry import read_guest_hive
    g = app.g
    for dev, fstype in sorted(g.list_filesystems().items()):
        if fstype != "ntfs":
            continue
        try:
            g.mount_ro(dev, "/")
        except RuntimeError:
            continue
        try:
            for hive in ("SYSTEM", "SOFTWARE"):
                path = "/Windows/System32/config/" + hive
                try:
                    real = g.case_sensitive_path(path)
                    if not g.is_file(real):
                        continue
                    with read_guest_hive(app, real):
                        pass
                except InspectionError as e:
                    return ("the Windows registry hive {} on {} is corrupt ({}): restore it from a backup "
                            "(for example C:\\Windows\\System32\\config\\RegBack) or repair it in Windows, "
                            "then convert".format(path, dev, e))
                except RuntimeError:
                    continue
        finally:
            g.umount_all()
    return ""


def _firmware(app: Appliance, ostype: str) -> str:
    """uefi when a disk has an EFI System Partition that holds a bootloader, else bios."""
    g = app.g
    for dev in g.list_devices():
        try:
            if g.part_get_parttype(dev) != "gpt":
                continue
        except RuntimeError:
            continue
        for part in g.part_list(dev):
            num = part["part_num"]
            try:
                guid = g.part_get_gpt_type(dev, num).upper()
            except RuntimeError:
                continue
            if guid == ESP_GUID:
                return "uefi"
    return "bios"


def _safe(fn, dev: str) -> str:
    try:
        return fn(dev) or ""
    except RuntimeError:
        return ""
