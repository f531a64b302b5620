"""Synthetic Windows guests: real NTFS (and FAT32 ESP) with real hives, a real BCD store, INF files and a
small real winre.wim; enough for libguestfs inspection and for every Windows fixup, never booted.

    win2019-bios        MBR, signature 0x5EED2019: p1 "System Reserved" NTFS 50 MiB (active) with
                        \\bootmgr, \\Boot\\BCD; p2 NTFS C: (Windows, WinRE in C:\\Recovery\\WindowsRE)
    win2008r2-bios      the same layout with signature 0x5EED2008 and 2008 R2 hives (CriticalDeviceDatabase)
    win11-uefi          GPT (fixed GUIDs): ESP FAT32 100 MiB (\\EFI\\Microsoft\\Boot\\{bootmgfw.efi,BCD}),
                        MSR 16 MiB, C: NTFS, a recovery partition (NTFS) holding WinRE
    win2019-hibernated  win2019-bios whose hiberfil.sys starts with "HIBR"
    win2019-bitlocker   win2019-bios whose C: boot sector says "-FVE-FS-" (BitLocker's OEM id)
    win2019-dynamic     win2019-bios whose MBR partitions have type 0x42 (LDM, a dynamic disk)

Each base image is made in one libguestfs session; the refusal variants patch bytes of a copy of
win2019-bios. Images are cached by recipe hash like the Linux guests (testvms/cache.py).
"""
import os
import struct
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from guest_fixups.windows import registry
from guest_fixups.windows.bcd_device import gpt_location, mbr_location
from testvms import cache
from testvms.windows import bcdstore, emptyhive, hives
from v2v.command import run

MIB = 1024 * 1024
SECTOR = 512

# GPT partition type GUIDs Windows uses
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
MSR_TYPE = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE"
BASIC_DATA_TYPE = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
RECOVERY_TYPE = "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC"
RECOVERY_ATTRIBUTES = 0x8000000000000001          # required + no drive letter, as Windows setup sets

WINRE_BCD_ID = bcdstore.WINRE_LOADER
WINRE_IMAGE_NAME = "Microsoft Windows Recovery Environment (x64)"
HIBERFIL_MARKER = b"V2V-TESTVM-HIBERFIL-FIRST-PAGE"  # at byte 512 of hiberfil.sys: lets a copy find it
HIBERFIL_MARKER_AT = 512

# Partitions are (name, start MiB, size MiB or None = to the end, role). Roles: system (bootmgr + BCD on
# BIOS), windows (C:), esp, msr, recovery.
VARIANTS: Dict[str, Dict] = {
    "win2019-bios": {"version": "2019", "firmware": "bios", "disk_mib": 300, "signature": 0x5EED2019,
                     "hostname": "WIN2019-SRV",
                     "partitions": [("System Reserved", 1, 50, "system"), ("Windows", 51, None, "windows")]},
    "win2008r2-bios": {"version": "2008r2", "firmware": "bios", "disk_mib": 300, "signature": 0x5EED2008,
                       "hostname": "WIN2008R2-SRV",
                       "partitions": [("System Reserved", 1, 50, "system"), ("Windows", 51, None, "windows")]},
    "win11-uefi": {"version": "11", "firmware": "uefi", "disk_mib": 320,
                   "disk_guid": "5EED0011-0000-4000-8000-0000000D15C0", "hostname": "WIN11-DESK",
                   "partitions": [("EFI system partition", 1, 100, "esp"),
                                  ("Microsoft reserved partition", 101, 16, "msr"),
                                  ("Basic data partition", 117, 166, "windows"),
                                  ("Recovery", 283, 32, "recovery")],
                   "partition_guids": {"esp": "5EED0011-0001-4000-8000-0000000000E5",
                                       "msr": "5EED0011-0002-4000-8000-000000000475",
                                       "windows": "5EED0011-0003-4000-8000-00000000000C",
                                       "recovery": "5EED0011-0004-4000-8000-0000000000AE"}},
}

# refusal variants: (base variant, patch)
DERIVED: Dict[str, Tuple[str, str]] = {
    "win2019-hibernated": ("win2019-bios", "hibernated"),
    "win2019-bitlocker": ("win2019-bios", "bitlocker"),
    "win2019-dynamic": ("win2019-bios", "dynamic"),
}

ALL_VARIANTS = sorted(list(VARIANTS) + list(DERIVED))

VMWARE_DRIVERS = ["vmci", "vmxnet3", "pvscsi", "vm3dmp", "vm3dmp_loader", "vmmouse", "vmhgfs", "vmmemctl",
                  "CDPDisk", "CDPTuner"]
INBOX_DRIVERS = ["disk", "partmgr", "volsnap", "tcpip", "atapi", "intelide", "pciide", "ntfs", "classpnp"]
VMWARE_TOOLS_FILES = ["vmtoolsd.exe", "VMwareToolboxCmd.exe", "VMwareResolutionSet.exe", "vmtools.dll"]

INF_PVSCSI = """\
; pvscsi.inf - VMware PVSCSI storage controller (as installed by VMware Tools)
[Version]
Signature="$WINDOWS NT$"
Class=SCSIAdapter
ClassGUID={4D36E97B-E325-11CE-BFC1-08002BE10318}
Provider=%VMWARE%
DriverVer=04/11/2023,1.3.26.0
CatalogFile=pvscsi.cat

[Manufacturer]
%VMWARE%=VMWARE,NTamd64

[VMWARE.NTamd64]
%DEVICE%=DDInstall,PCI\\VEN_15AD&DEV_07C0

[DDInstall.Services]
AddService=pvscsi,0x00000002,Service_Install

[Service_Install]
ServiceType=1
StartType=0
ErrorControl=1
ServiceBinary=%12%\\pvscsi.sys
LoadOrderGroup=SCSI miniport

[Strings]
VMWARE="VMware, Inc."
DEVICE="VMware PVSCSI Controller"
"""

INF_VMXNET3 = """\
; vmxnet3.inf - VMware vmxnet3 network adapter
[Version]
Signature="$WINDOWS NT$"
Class=Net
ClassGUID={4d36e972-e325-11ce-bfc1-08002be10318}
Provider=%VMWARE%
DriverVer=02/20/2023,1.9.12.0

[Manufacturer]
%VMWARE%=VMWARE,NTamd64.10.0

[VMWARE.NTamd64.10.0]
%VMXNET3%=vmxnet3.ndi,PCI\\VEN_15AD&DEV_07B0

[vmxnet3.ndi.Services]
AddService=vmxnet3ndis6,2,vmxnet3.Service

[vmxnet3.Service]
ServiceType=1
StartType=3
ErrorControl=1
ServiceBinary=%12%\\vmxnet3.sys

[Strings]
VMWARE="VMware, Inc."
VMXNET3="vmxnet3 Ethernet Adapter"
"""

INF_MSHDC = """\
; mshdc.inf - in-box IDE/ATA controllers (abridged)
[Version]
Signature="$WINDOWS NT$"
Class=hdc
ClassGUID={4D36E96A-E325-11CE-BFC1-08002BE10318}
Provider=%MSFT%

[Manufacturer]
%MSFT%=Standard,NTamd64

[Standard.NTamd64]
%PCI\\VEN_8086&DEV_7010.DeviceDesc%=intelide_Inst,PCI\\VEN_8086&DEV_7010
%PCI\\CC_0101.DeviceDesc%=pciide_Inst,PCI\\CC_0101

[Strings]
MSFT="Microsoft"
PCI\\VEN_8086&DEV_7010.DeviceDesc="Intel(R) 82371SB PCI Bus Master IDE Controller"
PCI\\CC_0101.DeviceDesc="Standard Dual Channel PCI IDE Controller"
"""

WINPESHL_INI = "[LaunchApps]\r\n%SYSTEMDRIVE%\\sources\\recovery\\recenv.exe\r\n"


def reagent_xml(directory: str, disk_id: int, offset: int, disk_guid: Optional[str], version: str,
                build: str, server: bool = True) -> bytes:
    """ReAgent.xml as reagentc writes it once WinRE is enabled (UTF-8 with a BOM, CRLF)."""
    zero = "{00000000-0000-0000-0000-000000000000}"
    guid = "{" + disk_guid.lower() + "}" if disk_guid else zero
    lines = [
        "<?xml version='1.0' encoding='utf-8'?>",
        "",
        '<WindowsRE version="{}">'.format(version),
        '  <WinreBCD id="{}"/>'.format(WINRE_BCD_ID),
        '  <WinreLocation path="{}" id="{}" offset="{}" guid="{}"/>'.format(directory, disk_id, offset, guid),
        '  <ImageLocation path="" id="0" offset="0" guid="{}"/>'.format(zero),
        '  <PBRImageLocation path="" id="0" offset="0" guid="{}" index="0"/>'.format(zero),
        '  <PBRCustomImageLocation path="" id="0" offset="0" guid="{}" index="0"/>'.format(zero),
        '  <InstallState state="1"/>',
        '  <OsInstallAvailable state="0"/>',
        '  <CustomImageAvailable state="0"/>',
        '  <IsAutoRepairOn state="1"/>',
        '  <WinREStaged state="0"/>',
        '  <OperationParam path=""/>',
        '  <OsBuildVersion path="{}"/>'.format(build),
        '  <OemTool state="0"/>',
        '  <IsServer state="{}"/>'.format(int(server)),
        '  <DownlevelWinreLocation path="" offset="0" guid="{}" id="0"/>'.format(zero),
        '  <IsWimBoot state="0"/>',
        '  <NarratorScheduled state="0"/>',
        '  <ScheduledOperation state="4"/>',
        "</WindowsRE>",
        ""]
    return b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8")


def pe_image(subsystem: int = 3, machine: int = 0x8664) -> bytes:
    """The headers of a PE32+ file (no sections): `file` and libguestfs read its architecture from them.

    subsystem 1 = native (drivers), 2 = GUI, 3 = console; machine 0x8664 = x86-64."""
    dos = b"MZ" + b"\0" * 58 + struct.pack("<I", 0x40)
    coff = struct.pack("<HHIIIHH", machine, 0, 0, 0, 0, 0xF0, 0x22)
    optional = (struct.pack("<HBB", 0x20B, 14, 0) + b"\0" * (0x44 - 4) + struct.pack("<H", subsystem)
                + b"\0" * (0xF0 - 0x46))
    return dos + b"PE\0\0" + coff + optional


# --- the winre.wim ------------------------------------------------------------------------------------

def build_winre_wim(path: str, version: str = "2019", work_dir: Optional[str] = None) -> str:
    """A small real WIM (one bootable image) shaped like winre.wim: a WinPE SYSTEM hive, a few drivers,
    winpeshl.ini and recenv.exe. Returns path."""
    with tempfile.TemporaryDirectory(prefix="v2v-winre-tree-", dir=work_dir) as tmp:
        root = Path(tmp) / "tree"
        system32 = root / "Windows" / "System32"
        (system32 / "config").mkdir(parents=True)
        (system32 / "drivers").mkdir()
        (root / "sources" / "recovery").mkdir(parents=True)
        # WinPE's SYSTEM hive: a control set with the in-box drivers, no NIC setup, computer MINWINPC
        hives.build_system_hive(str(system32 / "config" / "SYSTEM"), version=version, computer_name="MINWINPC",
                                mac=None, static_ip=None, stale_control_set=False)
        for name in ("SOFTWARE", "DEFAULT"):
            (system32 / "config" / name).write_bytes(emptyhive.empty_hive(file_name=name))
        for drv in ("disk", "partmgr", "storahci", "atapi", "pciide", "intelide", "classpnp"):
            (system32 / "drivers" / (drv + ".sys")).write_bytes(pe_image(1))
        (system32 / "winpeshl.ini").write_bytes(WINPESHL_INI.encode("ascii"))
        (system32 / "cmd.exe").write_bytes(pe_image(3))
        (root / "sources" / "recovery" / "recenv.exe").write_bytes(pe_image(2))
        run(["wimlib-imagex", "capture", str(root), path, WINRE_IMAGE_NAME, "--boot"],
            what="wimlib-imagex capture (winre.wim)")
    return path


# --- the host-side trees --------------------------------------------------------------------------------

def _offsets(spec: Dict) -> Dict[str, int]:
    """role -> partition byte offset."""
    return {role: start * MIB for _, start, _, role in spec["partitions"]}


def _file(root: Path, rel: str, data: bytes) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def _windows_tree(root: Path, spec: Dict, work: Path) -> None:
    """C: as Windows leaves it: hives, binaries, drivers, INF files, ReAgent.xml and (when WinRE is on C:)
    the Recovery folder, pagefile and a non-hibernated hiberfil.sys."""
    rel = hives.release(spec["version"])
    offsets = _offsets(spec)
    config = root / "Windows" / "System32" / "config"
    config.mkdir(parents=True)
    hives.build_system_hive(str(config / "SYSTEM"), version=spec["version"], computer_name=spec["hostname"],
                            disk_signature=spec.get("signature", 0), partition_offset=offsets["windows"])
    if spec["firmware"] == "uefi":
        _gpt_mounted_devices(str(config / "SYSTEM"), spec["partition_guids"]["windows"])
    hives.build_software_hive(str(config / "SOFTWARE"), version=spec["version"])
    for name in ("SAM", "SECURITY", "DEFAULT"):
        (config / name).write_bytes(emptyhive.empty_hive(file_name=name))
    _file(root, "Windows/System32/cmd.exe", pe_image(3))
    _file(root, "Windows/System32/ntoskrnl.exe", pe_image(1))
    _file(root, "Windows/System32/winload.exe" if spec["firmware"] == "bios" else "Windows/System32/winload.efi",
          pe_image(1))
    _file(root, "Windows/explorer.exe", pe_image(2))
    for drv in VMWARE_DRIVERS + INBOX_DRIVERS + (["storahci", "stornvme"] if rel.uses_driver_database
                                                 else ["msahci"]):
        _file(root, "Windows/System32/drivers/{}.sys".format(drv), pe_image(1))
    _file(root, "Windows/INF/oem3.inf", INF_PVSCSI.replace("\n", "\r\n").encode("ascii"))
    _file(root, "Windows/INF/oem4.inf", INF_VMXNET3.replace("\n", "\r\n").encode("ascii"))
    _file(root, "Windows/INF/mshdc.inf", INF_MSHDC.replace("\n", "\r\n").encode("ascii"))
    for name in VMWARE_TOOLS_FILES:
        _file(root, "Program Files/VMware/VMware Tools/" + name, pe_image(2))
    _file(root, "Program Files/VMware/VMware Tools/tools.conf", b"[logging]\r\nlog = false\r\n")
    (root / "Users" / "Administrator").mkdir(parents=True)
    (root / "ProgramData").mkdir()
    (root / "Windows" / "Temp").mkdir()     # every installed Windows has it (virt-v2v writes into it)
    # not hibernated: a zero header; the marker lets a refusal variant find the file's first cluster
    hiberfil = bytearray(MIB)
    hiberfil[HIBERFIL_MARKER_AT:HIBERFIL_MARKER_AT + len(HIBERFIL_MARKER)] = HIBERFIL_MARKER
    _file(root, "hiberfil.sys", bytes(hiberfil))
    _file(root, "pagefile.sys", b"\0" * MIB)
    _file(root, "swapfile.sys", b"\0" * (256 * 1024))
    winre_on = "recovery" if "recovery" in offsets else "windows"
    reagent = reagent_xml("\\Recovery\\WindowsRE", spec.get("signature", 0), offsets[winre_on],
                          spec.get("disk_guid"), "1.0" if spec["version"] == "2008r2" else "2.0",
                          "{}.1.amd64fre".format(rel.build), rel.installation_type == "Server")
    _file(root, "Windows/System32/Recovery/ReAgent.xml", reagent)
    if winre_on == "windows":
        _recovery_folder(root, spec, work, reagent)


def _recovery_folder(root: Path, spec: Dict, work: Path, reagent: bytes) -> None:
    folder = root / "Recovery" / "WindowsRE"
    folder.mkdir(parents=True)
    build_winre_wim(str(folder / "Winre.wim"), spec["version"], str(work))
    # boot.sdi: the ramdisk's System Deployment Image header; content does not matter here
    (folder / "boot.sdi").write_bytes(b"$SDI0001" + b"\0" * (64 * 1024 - 8))
    (folder / "ReAgent.xml").write_bytes(reagent)


def _gpt_mounted_devices(path: str, partition_guid: str) -> None:
    """GPT volumes are named in MountedDevices by "DMIO:ID:" + the partition GUID (mixed-endian bytes)."""
    blob = b"DMIO:ID:" + uuid.UUID(partition_guid).bytes_le
    h = registry.Hive(path, write=True)
    h.set_binary("MountedDevices", "\\DosDevices\\C:", blob)
    h.set_binary("MountedDevices", "\\??\\Volume" + hives.VOLUME_GUID, blob)
    h.commit()


def _write_bcd(path: str, spec: Dict) -> None:
    """The BCD store of the boot partition: bootmgr there, Windows on C:, WinRE where ReAgent.xml says."""
    offsets = _offsets(spec)
    if spec["firmware"] == "uefi":
        guids = spec["partition_guids"]
        system = gpt_location(spec["disk_guid"], guids["esp"])
        windows = gpt_location(spec["disk_guid"], guids["windows"])
        recovery = gpt_location(spec["disk_guid"], guids["recovery"]) if "recovery" in guids else None
    else:
        system = mbr_location(spec["signature"], offsets["system"])
        windows = mbr_location(spec["signature"], offsets["windows"])
        recovery = None
    bcdstore.build_bcd(path, system, windows, firmware=spec["firmware"], recovery=recovery)


def _system_tree(root: Path, spec: Dict) -> None:
    """The BIOS "System Reserved" partition: bootmgr and the BCD store."""
    _file(root, "bootmgr", b"BOOTMGR\0" + b"\0" * (64 * 1024 - 8))
    (root / "Boot").mkdir()
    _write_bcd(str(root / "Boot" / "BCD"), spec)


def _esp_tree(root: Path, spec: Dict) -> None:
    for rel in ("EFI/Microsoft/Boot/bootmgfw.efi", "EFI/Microsoft/Boot/bootmgr.efi", "EFI/Boot/bootx64.efi"):
        _file(root, rel, pe_image(10))                       # 10 = EFI application
    _write_bcd(str(root / "EFI" / "Microsoft" / "Boot" / "BCD"), spec)


def _recovery_tree(root: Path, spec: Dict, work: Path) -> None:
    """A separate recovery partition (Windows 10+ on UEFI): \\Recovery\\WindowsRE."""
    rel = hives.release(spec["version"])
    reagent = reagent_xml("\\Recovery\\WindowsRE", 0, _offsets(spec)["recovery"], spec.get("disk_guid"),
                          "2.0", "{}.1.amd64fre".format(rel.build), rel.installation_type == "Server")
    _recovery_folder(root, spec, work, reagent)


def _tarball(tree: Path, out: Path) -> Path:
    """An uncompressed tar of tree, owned by root with a fixed mtime (NTFS/FAT cannot keep other owners)."""
    def reset(ti: tarfile.TarInfo) -> tarfile.TarInfo:
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        ti.mtime = 1577836800
        return ti
    with tarfile.open(str(out), "w", format=tarfile.GNU_FORMAT) as tar:
        for child in sorted(tree.iterdir()):
            tar.add(str(child), arcname=child.name, filter=reset)
    return out


# --- the build -----------------------------------------------------------------------------------------

def recipe_sources() -> List[Path]:
    """The files whose code shapes an image: this recipe and every helper it writes the guest with."""
    here = Path(__file__).resolve().parent
    fixups = here.parent.parent / "guest_fixups" / "windows"
    names = [here / "guest.py", here / "hives.py", here / "emptyhive.py", here / "bcdstore.py",
             fixups / "registry.py", fixups / "bcd_device.py", here.parent / "cache.py"]
    return [p for p in names if p.exists()]


def image_key(variant: str) -> str:
    if variant in DERIVED:
        base, patch = DERIVED[variant]
        return cache.recipe_key({"variant": variant, "base": image_key(base), "patch": patch},
                                [Path(__file__)])
    return cache.recipe_key({"variant": variant, "spec": VARIANTS[variant]}, recipe_sources())


def image_path(variant: str, cache_path: Optional[str] = None) -> Path:
    """Where the image of the current recipe lives (it may not be built yet)."""
    return cache.cache_dir(cache_path) / "{}-{}.img".format(variant, image_key(variant)[:16])


def build(variant: str, cache_path: Optional[str] = None, *, force: bool = False,
          log: Callable[[str], None] = print) -> Path:
    """The cached raw image of `variant`, built first if needed (never write to it: use an overlay)."""
    if variant not in VARIANTS and variant not in DERIVED:
        raise KeyError("unknown Windows test guest {!r} (known: {})".format(variant, ", ".join(ALL_VARIANTS)))
    d = cache.cache_dir(cache_path)
    key = image_key(variant)
    target = d / "{}-{}.img".format(variant, key[:16])
    if target.exists() and not force:     # files appear only by rename: no lock needed to see one
        cache.touch(target.with_suffix(".json"))
        return target
    if variant in DERIVED:
        base_variant, patch = DERIVED[variant]
        base = build(base_variant, cache_path, log=log)
        meta = {"kind": "image", "variant": variant, "key": key, "base": base.name, "patch": patch,
                "format": "raw"}
        return cache.get_or_build(d, target.name, meta,
                                  lambda tmp: _derive(tmp, base, VARIANTS[base_variant], patch),
                                  force=force, log=log)
    meta = {"kind": "image", "variant": variant, "key": key, "spec": VARIANTS[variant], "format": "raw"}
    return cache.get_or_build(d, target.name, meta, lambda tmp: _build_image(tmp, variant, log),
                              force=force, log=log)


def _build_image(out: Path, variant: str, log: Callable[[str], None]) -> Dict:
    spec = VARIANTS[variant]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="v2v-wintree-") as tmp:
        work = Path(tmp)
        trees: Dict[str, Path] = {}
        for _, _, _, role in spec["partitions"]:
            tree = work / role
            tree.mkdir()
            if role == "windows":
                _windows_tree(tree, spec, work)
            elif role == "system":
                _system_tree(tree, spec)
            elif role == "esp":
                _esp_tree(tree, spec)
            elif role == "recovery":
                _recovery_tree(tree, spec, work)
            else:
                continue
            trees[role] = _tarball(tree, work / (role + ".tar"))
        with open(str(out), "wb") as f:
            f.truncate(spec["disk_mib"] * MIB)           # sparse raw file
        if "esp" in _offsets(spec):
            _mkfs_esp(out, spec)
        steps = {"host": time.monotonic() - t0}
        log("{}: launching the appliance".format(variant))
        facts = _populate(out, spec, trees)
        steps["appliance"] = time.monotonic() - t0 - steps["host"]
    facts.update({"seconds": round(time.monotonic() - t0, 1),
                  "step_seconds": {k: round(v, 1) for k, v in steps.items()},
                  "allocated_mib": os.stat(str(out)).st_blocks * 512 // MIB})
    log("{}: done in {:.0f}s".format(variant, facts["seconds"]))
    return facts


def _partition_size_mib(spec: Dict, role: str) -> int:
    for _, start, size, r in spec["partitions"]:
        if r == role:
            return size if size is not None else spec["disk_mib"] - start - 1
    raise KeyError(role)


def _mkfs_esp(out: Path, spec: Dict) -> None:
    """FAT32 on the ESP, made on the host: libguestfs' mkfs cannot ask mkfs.fat for FAT32."""
    start = _offsets(spec)["esp"] // SECTOR
    kib = _partition_size_mib(spec, "esp") * 1024
    run(["mkfs.fat", "-F", "32", "-s", "1", "-n", "SYSTEM", "-i", "5EED0011", "-h", str(start),
         "--offset", str(start), str(out), str(kib)], what="mkfs.fat (ESP)")


def _populate(out: Path, spec: Dict, trees: Dict[str, Path]) -> Dict:
    """One libguestfs session: partition table, NTFS filesystems, every partition's files."""
    import guestfs
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
    g = guestfs.GuestFS(python_return_dict=True)
    try:
        g.set_backend(os.environ.get("LIBGUESTFS_BACKEND", "direct"))
        if os.environ.get("V2V_ACCEL", "tcg") != "kvm":
            g.set_backend_settings(["force_tcg"])
        g.set_memsize(768)
        g.set_network(False)
        g.add_drive_opts(str(out), format="raw", cachemode="unsafe", discard="besteffort")
        g.launch()
        dev = "/dev/sda"
        total = g.blockdev_getsz(dev)
        gpt = spec["firmware"] == "uefi"
        g.part_init(dev, "gpt" if gpt else "msdos")
        layout = []
        for num, (name, start, size, role) in enumerate(spec["partitions"], 1):
            first = start * MIB // SECTOR
            last = first + size * MIB // SECTOR - 1 if size is not None else total - 1 - (34 if gpt else 0)
            g.part_add(dev, "p", first, last)
            part = "{}{}".format(dev, num)
            if gpt:
                g.part_set_name(dev, num, name)
                g.part_set_gpt_type(dev, num, {"esp": ESP_TYPE, "msr": MSR_TYPE, "windows": BASIC_DATA_TYPE,
                                               "recovery": RECOVERY_TYPE}[role])
                g.part_set_gpt_guid(dev, num, spec["partition_guids"][role])
                if role == "recovery":
                    # the binding takes a signed 64-bit integer
                    g.part_set_gpt_attributes(dev, num, RECOVERY_ATTRIBUTES - (1 << 64))
            else:
                g.part_set_mbr_id(dev, num, 0x07)
                if role == "system":
                    g.part_set_bootable(dev, num, True)
            if role in ("system", "windows", "recovery"):
                g.mkfs("ntfs", part, label={"system": "System Reserved", "windows": "",
                                            "recovery": "Recovery"}[role] or None)
            layout.append({"part": num, "role": role, "offset": first * SECTOR,
                           "size": (last - first + 1) * SECTOR})
        if gpt:
            g.part_set_disk_guid(dev, spec["disk_guid"])
        else:
            g.pwrite_device(dev, struct.pack("<I", spec["signature"]), 0x1B8)
        for num, (_, _, _, role) in enumerate(spec["partitions"], 1):
            if role not in trees:
                continue
            g.mount("{}{}".format(dev, num), "/")
            g.tar_in(str(trees[role]), "/")
            g.umount("/")
        g.sync()
        g.shutdown()
    finally:
        g.close()
    return {"layout": layout}


# --- refusal variants: byte patches on a copy --------------------------------------------------------

def _derive(out: Path, base: Path, spec: Dict, patch: str) -> Dict:
    run(["cp", "--sparse=always", str(base), str(out)], what="copying the base image")
    os.chmod(str(out), 0o644)
    windows_offset = _offsets(spec)["windows"]
    with open(str(out), "r+b") as f:
        if patch == "hibernated":
            where = _find_hiberfil(f)
            f.seek(where)
            f.write(b"HIBR")
            return {"hiberfil_offset": where}
        if patch == "bitlocker":
            f.seek(windows_offset + 3)
            if f.read(8) != b"NTFS    ":
                raise RuntimeError("the base image's C: does not start with an NTFS boot sector")
            f.seek(windows_offset + 3)
            f.write(b"-FVE-FS-")
            return {"bitlocker_boot_sector": windows_offset}
        if patch == "dynamic":
            for i in range(4):
                entry = 0x1BE + 16 * i
                f.seek(entry + 4)
                if f.read(1) != b"\0":
                    f.seek(entry + 4)
                    f.write(b"\x42")
            return {"mbr_type": "0x42"}
    raise KeyError(patch)


def _find_hiberfil(f) -> int:
    """Byte offset of hiberfil.sys's first byte in the image: the marker's sector, less its offset."""
    size = os.fstat(f.fileno()).st_size
    pos = 0
    while pos < size:
        try:
            data_at = os.lseek(f.fileno(), pos, os.SEEK_DATA)
        except OSError:                      # no data after pos
            break
        hole_at = os.lseek(f.fileno(), data_at, os.SEEK_HOLE)
        f.seek(data_at)
        chunk = f.read(hole_at - data_at)
        i = chunk.find(HIBERFIL_MARKER)
        while i >= 0:
            start = data_at + i - HIBERFIL_MARKER_AT
            if (data_at + i) % SECTOR == 0 and start >= data_at and chunk[i - HIBERFIL_MARKER_AT:i] == \
                    bytes(HIBERFIL_MARKER_AT):
                return start
            i = chunk.find(HIBERFIL_MARKER, i + 1)
        pos = hole_at
    raise RuntimeError("hiberfil.sys's marker is not in the base image")
