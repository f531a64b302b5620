"""A first-boot mechanism for converted Windows guests, after virt-v2v's (libguestfs-common
mlcustomize/firstboot.ml): a service in SYSTEM runs ``firstboot.bat``, which runs the numbered scripts
in %SystemRoot%\\v2v\\firstboot\\scripts in name order, logs to log.txt, keeps a script that exits 249
for the next boot, and deletes the service when all are done.

Windows' service control manager only runs programs that speak its protocol, so the service's image
is a service wrapper (virt-v2v's rhsrvany.exe or pvvxsvc.exe, copied by the caller) that starts
Parameters\\CommandLine. Everything here is data in, registry values and script texts out.
"""
import ipaddress
import ntpath
import os
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from v2v.errors import FixupError

from .conflicts import Uninstaller
from .registry import Hive
from .virtio import VIRTIO_DIR, FileCopy

SERVICE_NAME = "v2vfirstboot"
FIRSTBOOT_DIR = "v2v\\firstboot"  # relative to %SystemRoot%
SCRIPTS_DIR = FIRSTBOOT_DIR + "\\scripts"
RETRY_EXIT_CODE = 249  # a script exiting with this runs again at next boot (virt-v2v's convention)
SERVICE_WIN32_OWN_PROCESS, SERVICE_AUTO_START = 0x10, 2
SERVICE_RUNNERS = ("rhsrvany.exe", "pvvxsvc.exe")
RUNNER_DIRS = ("/usr/share/virt-tools", "/usr/local/share/virt-tools")
NET_CLASS = "{4d36e972-e325-11ce-bfc1-08002be10318}"


@dataclass(frozen=True)
class NicConfig:
    """A static IPv4 configuration the old NIC had, and how to find its replacement."""

    interface: str  # the Tcpip interface GUID (the old adapter's NetCfgInstanceId)
    mac: Optional[str]  # "00:50:56:91:A2:B3"; None: matched by order instead
    addresses: Tuple[Tuple[str, str], ...]  # (address, subnet mask)
    gateways: Tuple[str, ...]
    nameservers: Tuple[str, ...]


def normalize_mac(text: str) -> str:
    """'00-50-56-91-a2-b3', '005056 91A2B3' ... -> '00:50:56:91:A2:B3' (the form WMI reports)."""
    digits = re.sub(r"[^0-9A-Fa-f]", "", text)
    if len(digits) != 12:
        raise FixupError("{!r} is not a MAC address".format(text))
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2)).upper()


def _list(value: object) -> List[str]:
    """A Tcpip value as a list: MULTI_SZ as is, REG_SZ split on commas or spaces (NameServer)."""
    if isinstance(value, list):
        items = value
    elif isinstance(value, str):
        items = re.split(r"[,\s]+", value)
    else:
        items = []
    return [i.strip() for i in items if i.strip()]


def _ipv4(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 4 and text != "0.0.0.0"
    except ValueError:
        return False


def nic_macs_from_registry(system: Hive) -> Dict[str, str]:
    """Interface GUID -> MAC, from network class keys that keep one (NetworkAddress: only when the MAC
    was overridden; Windows does not otherwise store a NIC's burnt-in address in the registry)."""
    classes = "{}\\Control\\Class\\{}".format(system.current_control_set(), NET_CLASS)
    macs = {}
    for instance in system.subkeys(classes):
        values = {k.lower(): v for k, v in system.values(classes + "\\" + instance).items()}
        guid, mac = values.get("netcfginstanceid"), values.get("networkaddress")
        if isinstance(guid, str) and isinstance(mac, str) and mac.strip():
            try:
                macs[guid.lower()] = normalize_mac(mac)
            except FixupError:
                continue  # a malformed override Windows itself would ignore
    return macs


def static_nic_configs(system: Hive, macs: Optional[Mapping[str, str]] = None) -> List[NicConfig]:
    """The static IPv4 configurations of SYSTEM's Tcpip interfaces (EnableDHCP=0 with an address),
    in interface-key order. ``macs`` (interface GUID -> MAC, e.g. from the source VM's configuration)
    wins over what the registry keeps."""
    cs = system.current_control_set()
    base = cs + "\\Services\\Tcpip\\Parameters\\Interfaces"
    known = nic_macs_from_registry(system)
    known.update({g.lower(): normalize_mac(m) for g, m in (macs or {}).items()})
    configs = []
    for guid in system.subkeys(base):
        values = {k.lower(): v for k, v in system.values(base + "\\" + guid).items()}
        if values.get("enabledhcp", 1) != 0:
            continue
        ips = _list(values.get("ipaddress"))
        masks = _list(values.get("subnetmask"))
        pairs = tuple((ip, mask) for ip, mask in zip(ips, masks) if _ipv4(ip) and _ipv4(mask))
        if not pairs:
            continue
        gateways = tuple(g for g in _list(values.get("defaultgateway")) if _ipv4(g))
        dns = tuple(d for d in _list(values.get("nameserver")) if _ipv4(d))
        configs.append(NicConfig(guid, known.get(guid.lower()), pairs, gateways, dns))
    return configs


def register_firstboot_service(system: Hive, systemroot: str = "C:\\Windows",
                               runner: str = SERVICE_RUNNERS[0]) -> List[str]:
    """Services\\v2vfirstboot: an auto-start own-process service whose wrapper runs firstboot.bat."""
    folder = ntpath.join(systemroot, FIRSTBOOT_DIR)
    key = "{}\\Services\\{}".format(system.current_control_set(), SERVICE_NAME)
    system.set_dword(key, "Type", SERVICE_WIN32_OWN_PROCESS)
    system.set_dword(key, "Start", SERVICE_AUTO_START)
    system.set_dword(key, "ErrorControl", 1)
    # REG_EXPAND_SZ: the service control manager expands %SystemRoot% in ImagePath
    image = "%SystemRoot%\\{}\\{} -s {}".format(FIRSTBOOT_DIR, runner, SERVICE_NAME)
    system.set_expand_sz(key, "ImagePath", image)
    system.set_sz(key, "DisplayName", "v2v first boot scripts")
    system.set_sz(key, "ObjectName", "LocalSystem")
    # the wrapper passes these to CreateProcess unexpanded: spell the directory out
    command = 'cmd /c "{}"'.format(ntpath.join(folder, "firstboot.bat"))
    system.set_sz(key + "\\Parameters", "CommandLine", command)
    system.set_sz(key + "\\Parameters", "PWD", folder)
    return ["first boot service {} registered ({} runs {})".format(
        SERVICE_NAME, runner, ntpath.join(folder, "firstboot.bat"))]


def _crlf(lines: Iterable[str]) -> bytes:
    """cmd.exe wants CRLF line endings; PowerShell takes them too."""
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _runner_script() -> List[str]:
    return [
        "@echo off",
        "rem v2v first boot: run each script once, in name order; exit code 249 = run again next boot",
        "setlocal EnableDelayedExpansion",
        'set "firstboot=%SystemRoot%\\' + FIRSTBOOT_DIR + '"',
        'set "log=%firstboot%\\log.txt"',
        'call :main >> "%log%" 2>&1',
        "exit /b 0",
        "",
        ":main",
        "echo %DATE% %TIME% v2v first boot starting as %USERNAME%",
        'if not exist "%firstboot%\\scripts-done" mkdir "%firstboot%\\scripts-done"',
        'set "retry="',
        'for %%f in ("%firstboot%\\scripts\\*.bat") do (',
        "  echo !DATE! !TIME! running %%~nxf",
        '  pushd "%firstboot%\\scripts"',
        '  call "%%~ff"',
        "  set elvl=!errorlevel!",
        "  popd",
        "  echo !DATE! !TIME! %%~nxf exited with !elvl!",
        "  if !elvl! EQU {} (".format(RETRY_EXIT_CODE),
        "    set retry=1",
        "  ) else (",
        '    move /y "%%~ff" "%firstboot%\\scripts-done\\" >nul',
        "  )",
        ")",
        "if defined retry (",
        "  echo %DATE% %TIME% scripts left for the next boot",
        "  exit /b 0",
        ")",
        "echo %DATE% %TIME% all scripts done: removing the first boot service and scripts",
        "sc.exe delete {}".format(SERVICE_NAME),
        'rmdir /s /q "%firstboot%\\scripts"',
        'del /q "%firstboot%\\*.msi" 2>nul',
        "exit /b 0",
    ]


def _install_drivers_script() -> List[str]:
    return [
        "@echo off",
        "rem install every staged virtio-win driver into the driver store and onto present devices",
        'set "pnputil=%SystemRoot%\\System32\\pnputil.exe"',
        "rem a 32-bit runner sees SysWOW64 as System32: use the 64-bit pnputil through Sysnative",
        'if exist "%SystemRoot%\\Sysnative\\pnputil.exe" set "pnputil=%SystemRoot%\\Sysnative\\pnputil.exe"',
        'for %%i in ("%SystemRoot%\\' + VIRTIO_DIR + '\\*.inf") do (',
        "  echo installing %%~nxi",
        '  "%pnputil%" -i -a "%%~fi"',
        ")",
        'if exist "%SystemRoot%\\' + VIRTIO_DIR + '\\blnsvr.exe" (',
        "  echo installing the balloon service",
        '  "%SystemRoot%\\' + VIRTIO_DIR + '\\blnsvr.exe" -i',
        ")",
        "rem pnputil fails for a package with no present device (e.g. balloon): not an error",
        "exit /b 0",
    ]


def _ps_list(items: Sequence[str]) -> str:
    return "@(" + ", ".join('"{}"'.format(i) for i in items) + ")"


def _restore_network_ps1(nics: Sequence[NicConfig]) -> List[str]:
    lines = [
        "# v2v first boot: give the new NICs the static IPv4 settings the old ones had.",
        "# Matched by MAC address when it was known, else in order. PowerShell 2.0 compatible (2008 R2).",
        "$ErrorActionPreference = 'Continue'",
        "$nics = @(",
    ]
    for n, nic in enumerate(nics):
        fields = "Interface = '{}'; Mac = '{}'; IPs = {}; Masks = {}; Gateways = {}; Dns = {}".format(
            nic.interface, nic.mac or "", _ps_list([a for a, _ in nic.addresses]),
            _ps_list([m for _, m in nic.addresses]), _ps_list(nic.gateways), _ps_list(nic.nameservers))
        lines.append("    @{ " + fields + " }" + ("," if n + 1 < len(nics) else ""))
    lines += [
        ")",
        "function Get-Adapters {",
        "    @(Get-WmiObject Win32_NetworkAdapterConfiguration |",
        "      Where-Object { $_.IPEnabled -and $_.MACAddress } | Sort-Object Index)",
        "}",
        "# the virtio-net driver is being installed by the previous script: wait for the adapters",
        "$deadline = (Get-Date).AddMinutes(5)",
        "do {",
        "    $adapters = Get-Adapters",
        "    $missing = 0",
        "    foreach ($nic in $nics) {",
        "        $found = $adapters | Where-Object { $_.MACAddress -eq $nic.Mac }",
        "        if ($nic.Mac -and -not $found) { $missing++ }",
        "    }",
        "    if ($adapters.Count -ge $nics.Count -and $missing -eq 0) { break }",
        "    Start-Sleep -Seconds 5",
        "} while ((Get-Date) -lt $deadline)",
        "$used = @{}",
        "$plan = @()",
        "foreach ($nic in $nics) {",
        "    $match = $null",
        "    if ($nic.Mac) {",
        "        $match = $adapters | Where-Object { $_.MACAddress -eq $nic.Mac } | Select-Object -First 1",
        "    }",
        "    if ($match) { $used[$match.Index] = 1 }",
        "    $plan += ,@($nic, $match)",
        "}",
        "$failed = 0",
        "foreach ($step in $plan) {",
        "    $nic = $step[0]; $adapter = $step[1]",
        "    if (-not $adapter) {",
        "        # MAC unknown or not present: the first adapter no other configuration took",
        "        $free = $adapters | Where-Object { -not $used.ContainsKey($_.Index) }",
        "        $adapter = $free | Select-Object -First 1",
        "        if ($adapter) { $used[$adapter.Index] = 1 }",
        "    }",
        "    if (-not $adapter) {",
        "        $ips = $nic.IPs -join ','",
        "        Write-Output \"no adapter for $($nic.Interface) (MAC '$($nic.Mac)'): $ips not restored\"",
        "        $failed = 1",
        "        continue",
        "    }",
        "    $ips = $nic.IPs -join ','",
        "    Write-Output \"adapter $($adapter.Description) [$($adapter.MACAddress)] gets $ips\"",
        "    $r = $adapter.EnableStatic([string[]]$nic.IPs, [string[]]$nic.Masks)",
        "    Write-Output \"  EnableStatic: $($r.ReturnValue)\"",
        "    if ($nic.Gateways.Count -gt 0) {",
        "        $metrics = [UInt16[]](@(1) * $nic.Gateways.Count)",
        "        $r = $adapter.SetGateways([string[]]$nic.Gateways, $metrics)",
        "        Write-Output \"  SetGateways: $($r.ReturnValue)\"",
        "    }",
        "    if ($nic.Dns.Count -gt 0) {",
        "        $r = $adapter.SetDNSServerSearchOrder([string[]]$nic.Dns)",
        "        Write-Output \"  SetDNSServerSearchOrder: $($r.ReturnValue)\"",
        "    }",
        "}",
        "exit $failed",
    ]
    return lines


def _powershell_wrapper(ps1: str) -> List[str]:
    return [
        "@echo off",
        'powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -File "%~dp0{}"'.format(ps1),
        "exit /b %errorlevel%",
    ]


def _batch_echo(text: str) -> str:
    """Text safe after `echo`: cmd's special characters escaped."""
    return re.sub(r"([&|<>^()])", r"^\1", text.replace("%", "%%"))


def _uninstall_script(u: Uninstaller) -> List[str]:
    return [
        "@echo off",
        "echo uninstalling {}".format(_batch_echo(u.display_name)),
        u.command,  # as the Uninstall entry has it: %ProgramFiles% and the like are meant to expand
        'set "rc=%errorlevel%"',
        "rem 3010: removed, a reboot completes it; 1605: not installed any more",
        'if "%rc%"=="3010" exit /b 0',
        'if "%rc%"=="1605" exit /b 0',
        "exit /b %rc%",
    ]


def _guest_agent_script(msi_name: str) -> List[str]:
    msi = "%SystemRoot%\\{}\\{}".format(FIRSTBOOT_DIR, msi_name)
    return [
        "@echo off",
        "echo installing the QEMU guest agent",
        'msiexec.exe /i "{}" /qn /norestart /l*v "%SystemRoot%\\{}\\qemu-ga-install.log"'.format(
            msi, FIRSTBOOT_DIR),
        'set "rc=%errorlevel%"',
        'if "%rc%"=="3010" exit /b 0',
        "exit /b %rc%",
    ]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "tools"


def firstboot_scripts(install_drivers: bool = True, nics: Sequence[NicConfig] = (),
                      uninstallers: Sequence[Uninstaller] = (),
                      guest_agent_msi: Optional[str] = None) -> Dict[str, bytes]:
    """{guest path relative to %SystemRoot%: bytes} of firstboot.bat and the numbered scripts.

    Order: drivers first (the network restore waits for netkvm), then the static IPs, then the old
    tools' uninstallers, then the guest agent (``guest_agent_msi``: its file name in the firstboot dir).
    """
    files = {ntpath.join(FIRSTBOOT_DIR, "firstboot.bat"): _crlf(_runner_script())}

    def script(number: int, name: str, lines: List[str]) -> None:
        files[ntpath.join(SCRIPTS_DIR, "{:04d}-{}".format(number, name))] = _crlf(lines)

    if install_drivers:
        script(100, "install-virtio-drivers.bat", _install_drivers_script())
    if nics:
        script(200, "restore-network.ps1", _restore_network_ps1(nics))
        script(200, "restore-network.bat", _powershell_wrapper("0200-restore-network.ps1"))
    for n, u in enumerate(uninstallers):
        script(300 + n, "uninstall-{}.bat".format(_slug(u.display_name)), _uninstall_script(u))
    if guest_agent_msi:
        script(400, "install-guest-agent.bat", _guest_agent_script(guest_agent_msi))
    return files


def find_guest_agent_msi(tree: str, arch: str) -> Optional[str]:
    """The qemu-ga MSI for ``arch`` ('x86_64'/'amd64' or 'i386'/'x86') in a virtio-win tree, if any."""
    wanted = ("qemu-ga-x86_64.msi", "qemu-ga-x64.msi") if arch in ("x86_64", "amd64") \
        else ("qemu-ga-i386.msi", "qemu-ga-x86.msi")
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        for f in sorted(filenames):
            if f.lower() in wanted:
                return os.path.join(dirpath, f)
    return None


def find_service_runner(dirs: Sequence[str] = RUNNER_DIRS) -> Optional[str]:
    """A service wrapper on the host (rhsrvany.exe or pvvxsvc.exe), as virt-v2v ships them."""
    for d in dirs:
        for name in SERVICE_RUNNERS:
            path = os.path.join(d, name)
            if os.path.isfile(path):
                return path
    return None


def firstboot_file_copies(runner: str, guest_agent_msi: Optional[str] = None) -> List[FileCopy]:
    """The binary files firstboot needs in the guest: the service wrapper and the guest agent MSI."""
    copies = [FileCopy(runner, ntpath.join(FIRSTBOOT_DIR, os.path.basename(runner)))]
    if guest_agent_msi:
        guest = ntpath.join(FIRSTBOOT_DIR, os.path.basename(guest_agent_msi))
        copies.append(FileCopy(guest_agent_msi, guest))
    return copies
