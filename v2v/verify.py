"""Boot proof: boot a throwaway overlay of the result (never the result) and watch the serial console.

A one-shot systemd unit injected into the overlay prints a marker with a fresh nonce, the root device
and the NICs' addresses on ttyS0 once multi-user is reached; failure patterns end the wait early.
"""
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from diskfmt import image

from .errors import V2VError
from .events import Emitter
from .types import BootProof, Result

QEMU = "qemu-system-x86_64"
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"

FAILURE_PATTERNS = (
    r"Kernel panic - not syncing",
    r"Gave up waiting for root",
    r"ALERT! .* does not exist",
    r"You are in emergency mode",
    r"Give root password for maintenance",
    r"Entering emergency mode",
    r"No bootable device",
    r"Boot failed: not a bootable disk",
    r"\(initramfs\) ?$",
)

UNIT = "v2v-bootproof.service"
SCRIPT_PATH = "/usr/local/sbin/v2v-bootproof"
UNIT_TEXT = """[Unit]
Description=v2v boot proof (one shot, on a throwaway overlay)
After=multi-user.target network-online.target
Wants=network-online.target

[Service]
Type=oneshot
ExecStart=/bin/sh {script}

[Install]
WantedBy=multi-user.target
""".format(script=SCRIPT_PATH)
# Runs inside the guest: wait (bounded) for an IPv4 address, then print one line on the serial port.
SCRIPT_TEXT = """#!/bin/sh
i=0
while [ $i -lt 30 ] && ! ip -4 -o addr show scope global 2>/dev/null | grep -q inet; do
    sleep 1; i=$((i+1))
done
nics=$(ip -o link show 2>/dev/null | awk -F': ' '$2 != "lo" {{ printf "%s,", $2 }}')
addrs=$(ip -4 -o addr show scope global 2>/dev/null | awk '{{ printf "%s:%s,", $2, $4 }}')
echo "{marker} root=$(findmnt -no SOURCE /) nics=${{nics%,}} ipv4=${{addrs%,}}" > /dev/ttyS0
"""


@dataclass(frozen=True)
class BootOutcome:
    ok: bool
    seconds: float
    matched: str               # the marker line, or the failure pattern seen, or "" on timeout
    console_tail: Tuple[str, ...]
    reason: str
    console: str = ""          # the whole console log, control sequences removed


def boot_and_watch(disks: Sequence[Tuple[str, str]], *, accel: str, success: str,
                   bus: str = "virtio", firmware: str = "bios", mac: Optional[str] = None,
                   memory_mib: int = 1024, vcpus: int = 2, timeout: float = 600.0,
                   log_path: Optional[str] = None, failure_patterns: Sequence[str] = FAILURE_PATTERNS,
                   machine: str = "q35") -> BootOutcome:
    """Boot disks (path, format) as they are (the caller passes throwaway overlays) and watch ttyS0.

    ok when a line matching `success` appears; fails early on a failure pattern; always kills qemu.
    """
    work = tempfile.mkdtemp(prefix="v2v-boot-")
    log = log_path or os.path.join(work, "console.log")
    argv = [QEMU, "-machine", "{},accel={}".format(machine, accel), "-cpu", "host" if accel == "kvm" else "max",
            "-m", str(memory_mib), "-smp", str(vcpus), "-nodefaults", "-display", "none", "-no-reboot",
            "-serial", "file:" + log, "-netdev", "user,id=n0,restrict=on"]
    argv += ["-device", "virtio-net-pci,netdev=n0" + (",mac=" + mac if mac else "")]
    if firmware == "uefi":
        vars_copy = os.path.join(work, "VARS.fd")
        shutil.copyfile(OVMF_VARS, vars_copy)
        argv += ["-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + OVMF_CODE,
                 "-drive", "if=pflash,format=raw,unit=1,file=" + vars_copy]
    if bus == "sata":
        argv += ["-device", "ahci,id=ahci0"]
    if bus == "scsi":
        argv += ["-device", "virtio-scsi-pci,id=scsi0"]
    for i, (path, fmt) in enumerate(disks):
        argv += ["-drive", "file={},format={},if=none,id=d{},cache=unsafe".format(path, fmt, i)]
        dev = {"virtio": "virtio-blk-pci,drive=d{}", "ide": "ide-hd,drive=d{}",
               "sata": "ide-hd,drive=d{},bus=ahci0.{}", "scsi": "scsi-hd,drive=d{},bus=scsi0.0"}[bus]
        argv += ["-device", dev.format(i, i) + (",bootindex=1" if i == 0 else "")]
    fails = [re.compile(p, re.M) for p in failure_patterns]
    ok_re = re.compile(re.escape(success) + r".*")
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    matched, reason, ok = "", "", False
    try:
        while True:
            time.sleep(1.0)
            text = _clean(_read(log))
            m = ok_re.search(text)
            if m:
                ok, matched = True, m.group(0).strip()
                break
            bad = next((f for f in fails if f.search(text)), None)
            if bad is not None:
                time.sleep(2.0)   # let the lines after the failure reach the log
                matched = bad.pattern
                reason = "boot failed: " + bad.pattern.replace("\\", "")
                break
            if proc.poll() is not None:
                err = proc.stderr.read().decode("utf-8", "replace").strip() if proc.stderr else ""
                reason = "qemu exited with {} before the guest came up{}".format(
                    proc.returncode, ": " + err.splitlines()[-1] if err else "")
                break
            if time.monotonic() - t0 > timeout:
                reason = "no boot marker on the serial console within {:.0f}s".format(timeout)
                break
    finally:
        _kill(proc)
        secs = time.monotonic() - t0
        console = _clean(_read(log))
        shutil.rmtree(work, ignore_errors=True)
    return BootOutcome(ok=ok, seconds=secs, matched=matched, console_tail=tuple(console.splitlines()[-25:]),
                       reason=reason, console=console)


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def _clean(text: str) -> str:
    """Console text without terminal control sequences, one line per line."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>cDEHMNOZ78]", "", text)
    text = re.sub(r"\r+\n", "\n", text).replace("\r", "\n")
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text)


def _kill(proc: "subprocess.Popen[bytes]") -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def inject_marker(overlays: Sequence[Tuple[str, str]], marker: str, accel: str) -> None:
    """Install the one-shot marker unit into the (throwaway) overlays through libguestfs."""
    from guest_fixups.appliance import Appliance
    with Appliance(overlays, accel=accel, memsize=512, smp=1) as app:
        app.launch()
        roots = app.g.inspect_os()
        if not roots:
            raise V2VError("boot check: no operating system found in the converted disks")
        mps = app.g.inspect_get_mountpoints(roots[0])
        app.mount_guest(sorted(mps.items(), key=lambda kv: len(kv[0])))
        if not app.g.is_dir("/etc/systemd/system"):
            raise V2VError("boot check: the guest does not use systemd; cannot inject the boot marker")
        app.g.mkdir_p("/usr/local/sbin")
        app.write_text(SCRIPT_PATH, SCRIPT_TEXT.format(marker=marker))
        app.g.chmod(0o755, SCRIPT_PATH)
        app.write_text("/etc/systemd/system/" + UNIT, UNIT_TEXT)
        app.g.mkdir_p("/etc/systemd/system/multi-user.target.wants")
        link = "/etc/systemd/system/multi-user.target.wants/" + UNIT
        app.g.rm_f(link)
        app.g.ln_s("/etc/systemd/system/" + UNIT, link)


def verify(result: Result, accel: str, events: Emitter, timeout: Optional[float] = None,
           keep_log: Optional[str] = None) -> BootProof:
    """Boot a throwaway overlay of the result's disks and report what the guest said."""
    assert result.plan is not None
    plan = result.plan
    work = tempfile.mkdtemp(prefix="v2v-verify-")
    try:
        overlays: List[Tuple[str, str]] = []
        for i, d in enumerate(result.disks):
            ov = os.path.join(work, "boot{}.qcow2".format(i))
            image.create_overlay(d.path, d.format, ov)
            overlays.append((ov, "qcow2"))
        nonce = secrets.token_hex(6)
        marker = "V2V-BOOTPROOF-" + nonce
        events.stage("verify", "boot check: injecting a one-shot marker into a throwaway overlay")
        inject_marker(overlays, marker, accel)
        limit = timeout if timeout is not None else (240.0 if accel == "kvm" else 900.0)
        events.stage("verify", "boot check: booting on virtio under qemu ({}), waiting up to {:.0f}s".format(
            accel.upper(), limit))
        out = boot_and_watch(overlays, accel=accel, success=marker, bus="virtio", firmware=plan.firmware,
                             mac=plan.network.mac, memory_mib=min(plan.memory_mib, 2048), timeout=limit,
                             log_path=keep_log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    details: Tuple[str, ...] = ()
    if out.ok:
        details = tuple(w for w in out.matched.split()[1:] if "=" in w)
    return BootProof(ok=out.ok, seconds=round(out.seconds, 1), accel=accel, marker=marker, details=details,
                     console_tail=out.console_tail, reason=out.reason)
