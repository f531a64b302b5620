"""The one pipeline (DESIGN section 1): open, overlay, inspect, preflight, fix, copy, finalize, verify."""
import os
import secrets
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from diskfmt import image
from guest_fixups import inspect as inspection
from guest_fixups.appliance import Appliance
from guest_fixups.linux import distro as linux_distro
from guest_fixups.linux.network import configured_interfaces
from guest_fixups.windows import convert as windows

from . import osinfo, outputs, verify
from .doctor import choose_accel
from .errors import UnsupportedGuest, V2VError
from .events import Emitter
from .sources.disk import open_disks
from .types import FixLine, FixReport, Guest, NetworkPlan, Overlay, Plan, Result, SourceDisk, TargetDisk

DEFAULT_MEMORY_MIB = 2048
DEFAULT_WINDOWS_MEMORY_MIB = 4096
DEFAULT_VCPUS = 2


@dataclass(frozen=True)
class ConvertOptions:
    output: outputs.OutputOptions
    input_format: Optional[str] = None
    memory_mib: Optional[int] = None
    vcpus: Optional[int] = None
    mac: Optional[str] = None
    verify_boot: bool = False
    boot_timeout: Optional[float] = None
    workdir: Optional[str] = None
    virtio_win: Optional[str] = None     # a virtio-win directory or ISO (Windows guests)
    allow_no_virtio: bool = False        # Windows without virtio drivers: SATA disks, e1000e NIC
    disk_bus: str = "virtio"             # virtio (viostor) | scsi (vioscsi), for Windows guests
    initramfs_cache: Optional[str] = None   # a directory: a Linux initramfs rebuilt earlier from the same
                                            # inputs is reused from it (a standby's refreshes)


class Timer:
    def __init__(self) -> None:
        self.stages: List[Tuple[str, float]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.stages.append((name, round(time.monotonic() - t0, 1)))


@contextmanager
def workdir(base: Optional[str]) -> Iterator[str]:
    """A private temporary directory for overlays, removed whatever happens."""
    parent = base or os.environ.get("V2V_WORKDIR") or "/var/tmp"
    d = tempfile.mkdtemp(prefix="v2v-", dir=parent)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def make_overlays(disks: Sequence[SourceDisk], work: str) -> List[Overlay]:
    """qcow2 overlays over the sources: the source is never written."""
    overlays = []
    for d in disks:
        path = os.path.join(work, "overlay{}.qcow2".format(d.index))
        image.create_overlay(d.path, d.format, path)
        overlays.append(Overlay(path=path, source=d))
    return overlays


def preflight(app: Appliance, guest: Guest, name: str, opts: Optional[ConvertOptions] = None,
              virtio_win: Optional[str] = None) -> Tuple[Plan, Optional[windows.WindowsPlan]]:
    """Refuse what cannot be converted, before anything is written; decide the target's shape."""
    if guest.type not in ("linux", "windows"):
        raise UnsupportedGuest("{} ({}) is not supported: only Linux and Windows guests can be converted".format(
            guest.product_name, guest.type))
    if guest.arch not in ("x86_64", "i386", "i686"):
        raise UnsupportedGuest("{} is a {} guest; only x86 guests can be converted to x86 KVM".format(
            guest.product_name, guest.arch))
    osinfo_id, note = osinfo.lookup(guest.osinfo)
    mac = (opts.mac if opts and opts.mac else None) or random_mac()
    memory = opts.memory_mib if opts and opts.memory_mib else None
    vcpus = opts.vcpus if opts and opts.vcpus else DEFAULT_VCPUS
    if guest.type == "windows":
        if opts and opts.verify_boot:
            raise UnsupportedGuest("--verify-boot is not available for Windows guests yet (it needs a boot "
                                   "marker inside Windows); convert without it")
        wplan = windows.preflight(app, guest, virtio_win, bool(opts and opts.allow_no_virtio),
                                  opts.disk_bus if opts else "virtio")
        modern = (guest.major, guest.minor) >= (6, 2)
        win11 = guest.major >= 10 and windows.product_type(guest) == "client" and \
            guest.build.isdigit() and int(guest.build) >= 22000
        tpm_note = ""
        if win11 and opts is not None and opts.output.kind == "libvirt" and shutil.which("swtpm") is None:
            # libvirt refuses an emulated TPM without swtpm; Windows 11 boots without one
            win11, tpm_note = False, ("Windows 11 expects a TPM 2.0 but this host has no swtpm: the domain gets "
                                      "none (apt-get install swtpm swtpm-tools, then add one)")
        plan = Plan(name=name, disk_bus=wplan.disk_bus, firmware=guest.firmware, machine="q35",
                    memory_mib=memory or DEFAULT_WINDOWS_MEMORY_MIB, vcpus=vcpus, osinfo_id=osinfo_id,
                    network=NetworkPlan(mac=mac, model=wplan.nic_model),
                    notes=tuple(n for n in (note,) + wplan.notes + (tpm_note,) if n), os_type="windows",
                    secure_boot=guest.firmware == "uefi" and modern, tpm=win11)
        return plan, wplan
    linux_distro.for_guest(app, guest)      # raises UnsupportedGuest for an unknown family
    if not guest.kernels:
        raise UnsupportedGuest("no kernel found in /boot of {}; it cannot boot".format(guest.product_name))
    names, _ = configured_interfaces(app)
    return Plan(name=name, disk_bus="virtio", firmware=guest.firmware, machine="q35",
                memory_mib=memory or DEFAULT_MEMORY_MIB, vcpus=vcpus, osinfo_id=osinfo_id,
                network=NetworkPlan(mac=mac, guest_name=names[0] if names else ""),
                notes=(note,) if note else ()), None


def random_mac() -> str:
    """A locally administered address in qemu's 52:54:00 range."""
    return "52:54:00:" + ":".join("{:02x}".format(b) for b in secrets.token_bytes(3))


def fix(app: Appliance, guest: Guest, plan: Plan, events: Emitter,
        wplan: Optional[windows.WindowsPlan] = None, initramfs_cache: Optional[str] = None) -> FixReport:
    """All guest fixups, in the one appliance session."""
    if wplan is not None:
        lines = windows.convert(app, guest, wplan)
    else:
        lines = linux_distro.for_guest(app, guest, initramfs_cache=initramfs_cache).convert(plan)
    for ln in lines:
        (events.warning if ln.status == "warning" else events.info)("{}: {}".format(ln.name, ln.message))
    return FixReport(lines=tuple(lines))


def fix_overlays(overlays: Sequence[Overlay], opts: ConvertOptions, events: Emitter
                 ) -> Tuple[Guest, Plan, FixReport]:
    """Inspect, preflight and fix the guest on overlays the caller keeps (a standby's fixed layer):
    the stages of convert() up to fix, in one appliance session; copy and output are the caller's."""
    accel = choose_accel(events)
    with Appliance([(o.path, "qcow2") for o in overlays], accel=accel.accel) as app:
        with events.busy("inspect", "starting the libguestfs appliance ({})".format(accel.accel.upper())):
            app.launch()
        with events.busy("inspect", "inspecting the guest"):
            guest = inspection.inspect(app, [o.source for o in overlays])
            plan, wplan = preflight(app, guest, opts.output.name, opts, None)
        with events.busy("fix", "converting the guest for KVM"):
            report = fix(app, guest, plan, events, wplan, opts.initramfs_cache)
            app.fstrim_all()
            app.close()
    return guest, plan, report


def copy(overlays: Sequence[Overlay], targets: Sequence[TargetDisk], events: Emitter) -> List[TargetDisk]:
    """Copy each overlay (source blocks + fixups) into its target, sparse; then checksum the target."""
    total = sum(o.source.virtual_size for o in overlays) or 1
    base = 0
    done: List[TargetDisk] = []
    for ov, t in zip(overlays, targets):
        size = ov.source.virtual_size

        def progress(pct: float, base: int = base, size: int = size) -> None:
            events.progress("copy", base + int(size * pct / 100.0), total)

        image.convert(ov.path, "qcow2", t.path, t.format, progress=progress)
        base += size
        events.progress("copy", base, total)
        done.append(replace(t, sha256=image.sha256_file(t.path)))
    return done


def inspect_only(paths: Sequence[str], input_format: Optional[str], events: Emitter,
                 opts: Optional[ConvertOptions] = None) -> Dict:
    """What `v2v inspect` reports: the guest, the plan, and the refusal if any. Writes nothing."""
    disks = open_disks(paths, input_format)
    accel = choose_accel(events)
    with workdir(None) as work, _virtio_win(opts) as tree:
        overlays = make_overlays(disks, work)
        events.stage("inspect", "inspecting {} (libguestfs appliance, {})".format(
            ", ".join(os.path.basename(p) for p in paths), accel.accel.upper()))
        with Appliance([(o.path, "qcow2") for o in overlays], accel=accel.accel) as app:
            app.launch()
            guest = inspection.inspect(app, disks)
            plan = None
            refusal = ""
            would: Tuple[FixLine, ...] = ()
            try:
                plan, wplan = preflight(app, guest, default_name(paths), opts, tree)
                if wplan is not None:
                    would = tuple(windows.convert(app, guest, wplan, dry_run=True))
                else:
                    would = tuple(linux_distro.for_guest(app, guest, dry_run=True).convert(plan))
            except UnsupportedGuest as e:
                refusal = str(e)
    return {"guest": guest, "plan": plan, "refusal": refusal, "would": would}


def convert(paths: Sequence[str], opts: ConvertOptions, events: Emitter) -> Result:
    """Convert the guest on the disk images at paths; on any failure nothing is left behind."""
    timer = Timer()
    with timer.stage("open"):
        disks = open_disks(paths, opts.input_format)   # bad input fails here, before any probing
    accel = choose_accel(events)
    output_opts = replace(opts.output, domain_type="kvm" if accel.accel == "kvm" else "qemu")
    out = outputs.select(output_opts)
    with workdir(opts.workdir) as work, _virtio_win(opts) as tree:
        overlays = make_overlays(disks, work)
        out.check(overlays)
        try:
            with Appliance([(o.path, "qcow2") for o in overlays], accel=accel.accel) as app:
                with timer.stage("launch"), events.busy("inspect", "starting the libguestfs appliance ({})".format(
                        accel.accel.upper())):
                    app.launch()
                with timer.stage("inspect"), events.busy("inspect", "inspecting the guest"):
                    guest = inspection.inspect(app, disks)
                    events.info("found {} ({} {}, {}), root {}".format(
                        guest.product_name, guest.distro, guest.arch, guest.firmware.upper(), guest.root))
                    plan, wplan = preflight(app, guest, opts.output.name, opts, tree)
                for note in plan.notes:
                    events.warning(note)
                with timer.stage("fix"), events.busy("fix", "converting the guest for KVM"):
                    report = fix(app, guest, plan, events, wplan)
                    app.fstrim_all()
                    app.close()
            with timer.stage("copy"):
                needed = sum(out.measure(o) for o in overlays)
                targets = out.prepare(overlays, needed, bus=plan.disk_bus)
                events.stage("copy", "copying to {} ({})".format(out.disk_dir(), opts.output.format))
                targets = copy(overlays, targets, events)
            with timer.stage("finalize"):
                result = out.finalize(plan, targets)
        except BaseException:
            out.abort()
            raise
    result = replace(result, guest=guest, fixes=report, timings=tuple(timer.stages))
    if opts.verify_boot:
        with timer.stage("verify"):
            boot = verify.verify(result, accel.accel, events, timeout=opts.boot_timeout)
        result = replace(result, boot=boot, timings=tuple(timer.stages))
    return result


@contextmanager
def _virtio_win(opts: Optional[ConvertOptions]) -> Iterator[Optional[str]]:
    """The virtio-win tree as a directory (an ISO is extracted for the run), or None when not given."""
    path = opts.virtio_win if opts else None
    if not path or os.path.isdir(path):
        yield path or None
        return
    from hv_drivers.virtio_win import open_virtio_win
    with open_virtio_win(path) as tree:
        yield tree


def default_name(paths: Sequence[str]) -> str:
    """The guest's name when --name is not given: the first disk's file name without extensions."""
    base = os.path.basename(paths[0]) if paths else "guest"
    return base.split(".", 1)[0] or "guest"


__all__ = ["ConvertOptions", "convert", "inspect_only", "V2VError"]
