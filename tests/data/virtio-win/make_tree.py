"""Regenerate the synthetic virtio-win trees next to this file (the generated files are committed).

INF text is modelled on virtio-win's stamped INF files; .sys, .cat, .exe and .pdb files are empty.
  iso/  the virtio-win ISO layout <driver>/<os>/<arch>/, plus a flat amd64/2k22/ copy (as ISOs have) with
        a newer viostor and the same netkvm; viostor/2k8r2/amd64/viostor.inf is UTF-16LE with a BOM
  old/  older trees: <os>/<arch>/ in upper case (2K8R2/AMD64) and <arch>/<os>/ (x86/w7), shared dirs
Run: python3 tests/data/virtio-win/make_tree.py
"""
# ruff: noqa: E501  (the INF text keeps virtio-win's long lines)
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent

HEADER = """;/*++
;
;Copyright (c) 2008-2023 Red Hat Inc.
;
;Module Name:
;    {inf}
;
;Abstract:
;
;Installation Notes:
;    Step by step driver installation wiki:
;        https://github.com/virtio-win/kvm-guest-drivers-windows/wiki/Driver-installation
;
;--*/
"""

VIOSTOR = HEADER + r"""
[Version]
Signature="$Windows NT$"
Class=SCSIAdapter
ClassGUID={{4D36E97B-E325-11CE-BFC1-08002BE10318}}
Provider=%VENDOR%
DriverVer = {driver_ver}
CatalogFile=viostor.cat
DriverPackageType = PlugAndPlay
DriverPackageDisplayName = %VioStorScsi.DeviceDesc%
PnpLockdown=1

[SourceDisksNames]
1 = %DiskId1%,,,""

[SourceDisksFiles]
viostor.sys = 1,,

[ControlFlags]
;ExcludeFromSelect = *

[DestinationDirs]
viostor_Files_Driver = {dirid}

[Manufacturer]
%VENDOR%   = VioStor,{deco}

[VioStor.{deco}]
%VioStorScsi.DeviceDesc% = scsi_inst, PCI\VEN_1AF4&DEV_1001&SUBSYS_00021AF4&REV_00, PCI\VEN_1AF4&DEV_1001
%VioStorScsi.DeviceDesc% = scsi_inst, PCI\VEN_1AF4&DEV_1042&SUBSYS_11001AF4&REV_01, PCI\VEN_1AF4&DEV_1042

[viostor_Files_Driver]
viostor.sys,,,2

[scsi_inst]
CopyFiles=viostor_Files_Driver

[scsi_inst.Services]
AddService = viostor, %SPSVCINST_ASSOCSERVICE% , scsi_Service_Inst, scsi_EventLog_Inst

[scsi_Service_Inst]
ServiceType    = %SERVICE_KERNEL_DRIVER%
StartType      = %SERVICE_BOOT_START%
ErrorControl   = %SERVICE_ERROR_NORMAL%
ServiceBinary  = %{dirid}%\viostor.sys
LoadOrderGroup = SCSI miniport
AddReg         = pnpsafe_pci_addreg

[scsi_inst.HW]
AddReg         = pnpsafe_pci_addreg_msix

[scsi_EventLog_Inst]
AddReg = scsi_EventLog_AddReg

[scsi_EventLog_AddReg]
HKR,,EventMessageFile,%REG_EXPAND_SZ%,"%%SystemRoot%%\System32\IoLogMsg.dll"
HKR,,TypesSupported,%REG_DWORD%,7

[pnpsafe_pci_addreg]
HKR, "Parameters\PnpInterface", "5", %REG_DWORD%, 0x00000001
HKR, "Parameters", "BusType", %REG_DWORD%, 0x00000001

[pnpsafe_pci_addreg_msix]
HKR, "Interrupt Management\MessageSignaledInterruptProperties", MSISupported, 0x00010001, 1
HKR, "Interrupt Management\MessageSignaledInterruptProperties", MessageNumberLimit, 0x00010001, 257

[Strings]
;
; Localizable Strings
;
VENDOR = "Red Hat, Inc."
diskId1 = "Red Hat VirtIO SCSI controller Installation Disk"
VioStorScsi.DeviceDesc = "Red Hat VirtIO SCSI controller"

;
; Non-Localizable Strings
;
REG_EXPAND_SZ  = 0x00020000
REG_DWORD      = 0x00010001
SERVICE_KERNEL_DRIVER  = 1
SERVICE_BOOT_START     = 0
SERVICE_ERROR_NORMAL   = 1
SPSVCINST_ASSOCSERVICE = 0x00000002
"""

VIOSCSI = HEADER + r"""
[Version]
Signature="$Windows NT$"
Class=SCSIAdapter
ClassGUID={{4D36E97B-E325-11CE-BFC1-08002BE10318}}
Provider=%VENDOR%
DriverVer = {driver_ver}
CatalogFile=vioscsi.cat
DriverPackageType = PlugAndPlay
DriverPackageDisplayName = %VioScsi.DeviceDesc%
PnpLockdown = 1

[SourceDisksNames]
1 = %DiskId1%,,,""

[SourceDisksFiles]
vioscsi.sys = 1,,

[DestinationDirs]
vioscsi_Files_Driver = {dirid}

[Manufacturer]
%VENDOR%   = VioScsi,{deco}

[VioScsi.{deco}]
%VioScsi.DeviceDesc% = scsi_inst, \
                       PCI\VEN_1AF4&DEV_1004&SUBSYS_00081AF4&REV_00, \
                       PCI\VEN_1AF4&DEV_1004
%VioScsi.DeviceDesc% = scsi_inst, PCI\VEN_1AF4&DEV_1048&SUBSYS_11001AF4&REV_01, PCI\VEN_1AF4&DEV_1048

[vioscsi_Files_Driver]
vioscsi.sys,,,2

[scsi_inst]
CopyFiles=vioscsi_Files_Driver

[scsi_inst.Services]
AddService = vioscsi, 0x00000002 , scsi_Service_Inst, scsi_EventLog_Inst

[scsi_Service_Inst]
ServiceType    = 1      ; %SERVICE_KERNEL_DRIVER%
StartType      = 0      ; %SERVICE_BOOT_START%
ErrorControl   = 1      ; %SERVICE_ERROR_NORMAL%
ServiceBinary  = %{dirid}%\vioscsi.sys
LoadOrderGroup = SCSI miniport
AddReg         = pnpsafe_pci_addreg

[scsi_EventLog_Inst]
AddReg = scsi_EventLog_AddReg

[scsi_EventLog_AddReg]
HKR,,EventMessageFile,%REG_EXPAND_SZ%,"%%SystemRoot%%\System32\IoLogMsg.dll"
HKR,,TypesSupported,%REG_DWORD%,7

[pnpsafe_pci_addreg]
HKR, "Parameters\PnpInterface", "5", %REG_DWORD%, 0x00000001
HKR, "Parameters", "BusType", %REG_DWORD%, 0x0000000A

[Strings]
VENDOR = "Red Hat, Inc."
diskId1 = "Red Hat VirtIO SCSI pass-through controller Installation Disk"
VioScsi.DeviceDesc = "Red Hat VirtIO SCSI pass-through controller"
REG_EXPAND_SZ  = 0x00020000
REG_DWORD      = 0x00010001
"""

NETKVM = r""";-------------------------------------------------------------------------------
; Copyright (c) 2008-2023 Red Hat Inc.
;
;Module Name:
;    netkvm.inf
;
; VirtIO Ethernet Adapter
;
;-------------------------------------------------------------------------------

[version]
Signature   = "$Windows NT$"
Class       = Net
CatalogFile = netkvm.cat
ClassGUID   = {{4d36e972-e325-11ce-bfc1-08002be10318}}
Provider=%VENDOR%
DriverVer = {driver_ver}
DriverPackageType = PlugAndPlay
DriverPackageDisplayName = %kvmnet6.DeviceDesc%

[Manufacturer]
%VENDOR% = NetKVM, {deco}

[NetKVM.{deco}]
%kvmnet6.DeviceDesc%    = kvmnet6.ndi, PCI\VEN_1AF4&DEV_1000&SUBSYS_00011AF4&REV_00, PCI\VEN_1AF4&DEV_1000
%kvmnet6.DeviceDesc%    = kvmnet6.ndi, PCI\VEN_1AF4&DEV_1041&SUBSYS_11001AF4&REV_01, PCI\VEN_1AF4&DEV_1041

[kvmnet6.ndi.hw]
AddReg          = kvmnet6.EnableMSI

[kvmnet6.EnableMSI]
HKR, "Interrupt Management\MessageSignaledInterruptProperties", MSISupported, 0x00010001, 1
HKR, "Interrupt Management\MessageSignaledInterruptProperties", MessageNumberLimit, 0x00010001, 2048

[kvmnet6.ndi]
Characteristics = 0x84 ; NCF_PHYSICAL  | NCF_HAS_UI
BusType     = 5 ; PCI
AddReg          = kvmnet6.Reg
CopyFiles       = kvmnet6.CopyFiles
*IfType         = 6
*MediaType      = 0     ; NdisMedium802_3
*PhysicalMediaType = 0      ; NdisPhysicalMediumUnspecified

[kvmnet6.ndi.Services]
AddService      = netkvm, 2, kvmnet6.Service, kvmnet6.EventLog

[kvmnet6.Reg]
HKR,    ,                         BusNumber,           0, "0"
HKR, Ndi,                         Service,             0, "netkvm"
HKR, Ndi\Interfaces,              UpperRange,          0, "ndis5"
HKR, Ndi\Interfaces,              LowerRange,          0, "ethernet"
HKR, Ndi\params\*RSS,             ParamDesc,           0, "Receive Side Scaling"
HKR, Ndi\params\*RSS,             Default,             0, "1"

[kvmnet6.CopyFiles]
netkvm.sys,,,2

[kvmnet6.Service]
DisplayName     = %kvmnet6.Service.DispName%
ServiceType     = 1 ;%SERVICE_KERNEL_DRIVER%
StartType       = 3 ;%SERVICE_DEMAND_START%
ErrorControl    = 1 ;%SERVICE_ERROR_NORMAL%
ServiceBinary   = %{dirid}%\netkvm.sys
LoadOrderGroup  = NDIS
AddReg          = TextModeFlags.Reg

[kvmnet6.EventLog]
AddReg = kvmnet6.AddEventLog.Reg

[kvmnet6.AddEventLog.Reg]
HKR, , EventMessageFile, 0x00020000, "%%SystemRoot%%\System32\netevent.dll"
HKR, , TypesSupported,   0x00010001, 7

[TextModeFlags.Reg]
HKR,,TextModeFlags,0x00010001, 0x0001

[SourceDisksNames]
1 = %DiskId1%,,,""

[SourceDisksFiles]
netkvm.sys  = 1,,

[DestinationDirs]
kvmnet6.CopyFiles = {dirid}

[Strings]
VENDOR = "Red Hat, Inc."
kvmnet6.DeviceDesc        = "Red Hat VirtIO Ethernet Adapter"
kvmnet6.Service.DispName    = "Red Hat VirtIO Ethernet Adapter Service"
DiskId1 = "Red Hat VirtIO Ethernet Adapter Driver Disk #1"
Tx = "Tx Enabled";
Rx = "Rx Enabled";
TxRx = "Rx & Tx Enabled";
"""

BALLOON = r""";/*++
;
;Copyright (c) 2009-2023 Red Hat Inc.
;
;Module Name:
;    BALLOON.INF
;
;Abstract:
;
;Installation Notes:
;    Using Devcon: Type "devcon install BALLOON.inf PCI\VEN_1AF4&DEV_1002" to install
;
;--*/

[Version]
Signature="$WINDOWS NT$"
Class=System
ClassGuid={{4d36e97d-e325-11ce-bfc1-08002be10318}}
Provider=%VENDOR%
DriverVer = {driver_ver}
CatalogFile=Balloon.cat
PnpLockdown = 1
DriverPackageType = PlugAndPlay
DriverPackageDisplayName = %BALLOON.DeviceDesc%

[DestinationDirs]
DefaultDestDir = {dirid}

[SourceDisksNames]
1 = %DiskName%,,,""

[SourceDisksFiles]
balloon.sys  = 1,,

[Manufacturer]
%VENDOR%=Standard,{deco}

[Standard.{deco}]
%BALLOON.DeviceDesc%=BALLOON_Device, PCI\VEN_1AF4&DEV_1002&SUBSYS_00051AF4&REV_00, PCI\VEN_1AF4&DEV_1002
%BALLOON.DeviceDesc%=BALLOON_Device, PCI\VEN_1AF4&DEV_1045&SUBSYS_11001AF4&REV_01, PCI\VEN_1AF4&DEV_1045

[BALLOON_Device.NT]
CopyFiles=Drivers_Dir

[Drivers_Dir]
balloon.sys

[BALLOON_Device.NT.Services]
AddService = BALLOON,%SPSVCINST_ASSOCSERVICE%, BALLOON_Service_Inst

[BALLOON_Service_Inst]
DisplayName    = %BALLOON.SVCDESC%
ServiceType    = 1               ; SERVICE_KERNEL_DRIVER
StartType      = 3               ; SERVICE_DEMAND_START
ErrorControl   = 1               ; SERVICE_ERROR_NORMAL
ServiceBinary  = %{dirid}%\balloon.sys

[BALLOON_Device.NT.Wdf]
KmdfService =  BALLOON, BALLOON_wdfsect

[BALLOON_wdfsect]
KmdfLibraryVersion = 1.15

[Strings]
SPSVCINST_ASSOCSERVICE= 0x00000002
VENDOR = "Red Hat, Inc."
DiskName = "VirtIO Balloon Installation Disk"
BALLOON.DeviceDesc = "VirtIO Balloon Driver"
BALLOON.SVCDESC = "VirtIO Balloon Service"
"""

VIOSER = r""";/*++
;
;Copyright (c) 2010-2023 Red Hat Inc.
;
;Module Name:
;    VIOSER.INF
;
;--*/

[Version]
Signature="$WINDOWS NT$"
Class=System
ClassGuid={{4d36e97d-e325-11ce-bfc1-08002be10318}}
Provider=%VENDOR%
DriverVer = {driver_ver}
CatalogFile=vioser.cat
PnpLockdown = 1
DriverPackageType = PlugAndPlay
DriverPackageDisplayName = %VirtioSerial.DeviceDesc%

[DestinationDirs]
DefaultDestDir = {dirid}

[SourceDisksNames]
1 = %DiskName%,,,""

[SourceDisksFiles]
vioser.sys  = 1,,

[Manufacturer]
%VENDOR%=Standard,{deco}

[Standard.{deco}]
%VirtioSerial.DeviceDesc%=VirtioSerial_Device, PCI\VEN_1AF4&DEV_1003&SUBSYS_00031AF4&REV_00, PCI\VEN_1AF4&DEV_1003
%VirtioSerial.DeviceDesc%=VirtioSerial_Device, PCI\VEN_1AF4&DEV_1043&SUBSYS_11001AF4&REV_01, PCI\VEN_1AF4&DEV_1043

[VirtioSerial_Device.NT]
CopyFiles=Drivers_Dir

[VirtioSerial_Device.NT.HW]
AddReg=VirtioSerial_AddReg

[VirtioSerial_AddReg]
HKR,Interrupt Management,,0x00000010
HKR,Interrupt Management\MessageSignaledInterruptProperties,,0x00000010
HKR,Interrupt Management\MessageSignaledInterruptProperties,MSISupported,0x00010001,1

[Drivers_Dir]
vioser.sys

[VirtioSerial_Device.NT.Services]
AddService = VirtioSerial,%SPSVCINST_ASSOCSERVICE%, VirtioSerial_Service_Inst, VirtioSerial_EventLog_Inst

[VirtioSerial_Service_Inst]
DisplayName    = %VirtioSerial.SVCDESC%
ServiceType    = 1               ; SERVICE_KERNEL_DRIVER
StartType      = 3               ; SERVICE_DEMAND_START
ErrorControl   = 1               ; SERVICE_ERROR_NORMAL
ServiceBinary  = %{dirid}%\vioser.sys
LoadOrderGroup = Extended Base

[VirtioSerial_EventLog_Inst]
AddReg = VirtioSerial_EventLog_AddReg

[VirtioSerial_EventLog_AddReg]
HKR,,EventMessageFile,0x00020000,"%%SystemRoot%%\System32\IoLogMsg.dll;%%SystemRoot%%\System32\drivers\vioser.sys"
HKR,,TypesSupported,0x00010001,7

[Strings]
SPSVCINST_ASSOCSERVICE= 0x00000002
VENDOR = "Red Hat, Inc."
DiskName = "VirtIO Serial Installation Disk"
VirtioSerial.DeviceDesc = "VirtIO Serial Driver"
VirtioSerial.SVCDESC = "VirtIO Serial Service"
"""

# (template, INF file name, other files in the directory)
DRIVERS = {
    "viostor": (VIOSTOR, "viostor.inf", ("viostor.sys", "viostor.cat")),
    "vioscsi": (VIOSCSI, "vioscsi.inf", ("vioscsi.sys", "vioscsi.cat")),
    "NetKVM": (NETKVM, "netkvm.inf", ("netkvm.sys", "netkvm.cat")),
    "Balloon": (BALLOON, "balloon.inf", ("balloon.sys", "balloon.cat", "blnsvr.exe")),
    "vioserial": (VIOSER, "vioser.inf", ("vioser.sys", "vioser.cat")),
}

# token -> (decoration per arch, DriverVer, DIRID of the driver binary)
RELEASES = {
    "2k8r2": ({"amd64": "NTamd64.6.1.3"}, "08/30/2021,100.85.104.20800", 12),
    "w7": ({"amd64": "NTamd64.6.1", "x86": "NTx86.6.1"}, "08/30/2021,100.85.104.20800", 12),
    "2k12r2": ({"amd64": "NTamd64.6.3"}, "03/11/2023,100.92.104.23900", 12),
    "w10": ({"amd64": "NTamd64.10.0...16299", "x86": "NTx86.10.0...16299"}, "08/10/2023,100.94.104.24000", 13),
    "2k16": ({"amd64": "NTamd64.10.0...14393"}, "08/10/2023,100.94.104.24000", 13),
    "2k19": ({"amd64": "NTamd64.10.0...17763"}, "08/10/2023,100.94.104.24000", 13),
    "2k22": ({"amd64": "NTamd64.10.0...20348"}, "08/10/2023,100.94.104.24000", 13),
    "w11": ({"amd64": "NTamd64.10.0...22000"}, "08/10/2023,100.94.104.24000", 13),
}

# driver -> [(token, arch)]: a sparse matrix, so that some drivers are missing for some releases
ISO = {
    "viostor": [("2k8r2", "amd64"), ("w7", "amd64"), ("w7", "x86"), ("2k12r2", "amd64"), ("w10", "amd64"),
                ("w10", "x86"), ("2k16", "amd64"), ("2k19", "amd64"), ("2k22", "amd64"), ("w11", "amd64")],
    "vioscsi": [("w10", "amd64"), ("2k19", "amd64"), ("2k22", "amd64"), ("w11", "amd64")],
    "NetKVM": [("2k8r2", "amd64"), ("w10", "amd64"), ("w10", "x86"), ("2k19", "amd64"), ("2k22", "amd64"),
               ("w11", "amd64")],
    "Balloon": [("w10", "amd64"), ("2k19", "amd64"), ("2k22", "amd64"), ("w11", "amd64")],
    "vioserial": [("w10", "amd64"), ("2k19", "amd64")],
}

UTF16 = {("viostor", "2k8r2", "amd64")}


def inf_text(driver: str, deco: str, driver_ver: str, dirid: int) -> str:
    template, inf, _ = DRIVERS[driver]
    return template.format(inf=inf, deco=deco, driver_ver=driver_ver, dirid=dirid)


def write(directory: Path, driver: str, text: str, utf16: bool = False) -> None:
    _, inf, others = DRIVERS[driver]
    directory.mkdir(parents=True, exist_ok=True)
    crlf = text.replace("\n", "\r\n")
    (directory / inf).write_bytes(b"\xff\xfe" + crlf.encode("utf-16-le") if utf16 else crlf.encode("ascii"))
    for name in others:
        (directory / name).write_bytes(b"")


def main() -> None:
    for tree in ("iso", "old"):
        shutil.rmtree(HERE / tree, ignore_errors=True)
    iso = HERE / "iso"
    for driver, places in ISO.items():
        for token, arch in places:
            decos, driver_ver, dirid = RELEASES[token]
            write(iso / driver / token / arch, driver, inf_text(driver, decos[arch], driver_ver, dirid),
                  utf16=(driver, token, arch) in UTF16)
    (iso / "Balloon" / "w10" / "amd64" / "blnsvr.pdb").write_bytes(b"")
    # The ISO's flat copy: a newer viostor than viostor/2k22/amd64, the same netkvm as NetKVM/2k22/amd64.
    flat = iso / "amd64" / "2k22"
    write(flat, "viostor", inf_text("viostor", "NTamd64.10.0...20348", "01/15/2024,100.95.104.25100", 13))
    write(flat, "NetKVM", inf_text("NetKVM", "NTamd64.10.0...20348", "08/10/2023,100.94.104.24000", 13))
    old = HERE / "old"
    for driver in ("viostor", "NetKVM"):
        write(old / "2K8R2" / "AMD64", driver, inf_text(driver, "NTamd64", "06/07/2019,62.77.104.17100", 12))
    # An undecorated models section: x86 only.
    write(old / "x86" / "w7", "viostor", inf_text("viostor", "NTx86", "06/07/2019,62.77.104.17100", 12)
          .replace("VioStor,NTx86", "VioStor").replace("[VioStor.NTx86]", "[VioStor]"))


if __name__ == "__main__":
    main()
