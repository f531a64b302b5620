"""The command line: thin. The library returns values and raises V2VError, caught once here."""
import json
import logging
import signal
import sys
from typing import Any, Callable, Dict, Optional, Sequence

import click

from . import __version__
from .errors import V2VError
from .events import Emitter
from .types import Result, to_json

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def _emitter(json_mode: bool) -> Emitter:
    return Emitter(json_mode=json_mode)


def _fail(events: Emitter, e: V2VError) -> None:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    events.error(msg, type(e).__name__)
    click.echo("v2v: error: " + msg, err=True)
    sys.exit(1)


def _on_signal(signum: int, _frame: object) -> None:
    from .errors import Interrupted
    signal.signal(signum, signal.SIG_DFL)     # a second signal stops us at once
    raise Interrupted("interrupted by {}; nothing was left behind".format(signal.Signals(signum).name))


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="v2v")
@click.option("-v", "--verbose", is_flag=True, help="Log every external command.")
def main(verbose: bool) -> None:
    """Convert Linux guests on disk images (and, later, live hosts) into KVM guests that boot.

    \b
    Examples:
      v2v doctor
      v2v inspect web1.vmdk --json
      v2v convert disk web1.vmdk --to libvirt --name web1 --verify-boot
      v2v convert disk a.qcow2 b.qcow2 --to local --out ./web1 --format raw
    """
    # SIGTERM (kill, timeouts, systemd) unwinds like Ctrl-C, so temporary files and overlays are removed
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(name)s: %(message)s")


@main.command(context_settings=CONTEXT)
@click.option("--json", "json_mode", is_flag=True, help="One JSON object on stdout.")
@click.option("--connect", "uri", default="qemu:///system", show_default=True, help="libvirt URI to check.")
def doctor(json_mode: bool, uri: str) -> None:
    """What this host can and cannot do for conversions, and how to fix it.

    \b
    Example:
      v2v doctor
      V2V_ACCEL=tcg v2v doctor --json
    """
    from .doctor import run_doctor
    checks = run_doctor(uri)
    required_failed = [c for c in checks if not c.ok and c.name != "kvm"]
    if json_mode:
        click.echo(json.dumps({"event": "result", "ok": not required_failed,
                               "checks": [to_json(c) for c in checks]}, sort_keys=True))
    else:
        for c in checks:
            mark = "ok  " if c.ok else ("warn" if c.name == "kvm" else "FAIL")
            click.echo("[{}] {:<14} {}".format(mark, c.name, c.detail))
            if not c.ok and c.fix:
                click.echo("       {:<14} fix: {}".format("", c.fix))
    sys.exit(1 if required_failed else 0)


def domain_options(f: Callable) -> Callable:
    """Where the converted guest is defined and how it is shaped, shared by convert disk and convert host."""
    opts = [
        click.option("--connect", "uri", default="qemu:///system", show_default=True,
                     help="--to libvirt: libvirt URI."),
        click.option("--network", default="default", show_default=True, help="libvirt network for the NIC."),
        click.option("--bridge", default="", help="Host bridge for the NIC instead of a libvirt network."),
        click.option("--memory", "memory_mib", type=click.IntRange(128, 4 << 20),
                     help="Memory in MiB (default 2048)."),
        click.option("--vcpus", type=click.IntRange(1, 1024), help="Virtual CPUs (default 2)."),
        click.option("--mac", help="MAC address of the NIC (default: a random 52:54:00 address)."),
        click.option("--overwrite", is_flag=True, help="Replace an existing domain or files of the same name."),
        click.option("--verify-boot", is_flag=True, help="Boot a throwaway overlay of the result and report."),
    ]
    for opt in reversed(opts):   # click applies the last decorator first: keep the listed order in --help
        f = opt(f)
    return f


def capture_options(f: Callable) -> Callable:
    """How the agent reaches and reads the source, shared by convert host and standby create."""
    opts = [
        click.option("--compress", type=click.Choice(["auto", "none", "zlib", "lzma"]), default="auto",
                     show_default=True,
                     help="Compression of the chunks on the wire: auto is zlib while the link is slower than "
                          "compressing, raw otherwise (incompressible data always goes raw)."),
        click.option("--max-freeze", type=click.FloatRange(0.1, 60), default=2.0, show_default=True,
                     help="Longest time in seconds a filesystem of the source stays frozen."),
        click.option("--tracing", type=click.Choice(["auto", "off"]), default="auto", show_default=True,
                     help="Find writes with tracefs block_rq_complete (auto) or with digest passes only (off)."),
        click.option("--ssh-key", type=click.Path(exists=True, dir_okay=False), help="ssh private key for the login."),
        click.option("--ssh-port", type=click.IntRange(1, 65535), help="ssh port (overrides :PORT)."),
        click.option("--ssh-accept-new", is_flag=True, help="Trust the host key of a host seen for the first time."),
        click.option("--ssh-known-hosts", type=click.Path(dir_okay=False),
                     help="known_hosts file to check the host key in."),
        click.option("--remote-python", default="python3", show_default=True, help="Python 3.6+ on the source."),
    ]
    for opt in reversed(opts):   # click applies the last decorator first: keep the listed order in --help
        f = opt(f)
    return f


def push_options(f: Callable) -> Callable:
    """Push mode of convert host: the agent connects out to the converter with mutual TLS."""
    opts = [
        click.option("--listen", metavar="HOST:PORT",
                     help="Push mode (target push:NAME): wait on this address for the agent to connect "
                          "(:PORT for every address)."),
        click.option("--tls-dir", type=click.Path(file_okay=False),
                     help="Push mode: the CA and converter certificate made by `v2v agent certs DIR`."),
        click.option("--accept-timeout", type=click.FloatRange(1, 7 * 86400), default=600.0, show_default=True,
                     metavar="SECONDS",
                     help="Push mode: seconds to wait for the agent to connect."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def windows_options(f: Callable) -> Callable:
    """--virtio-win, --allow-no-virtio and --disk-bus, shared by inspect and convert."""
    f = click.option("--disk-bus", type=click.Choice(["virtio", "scsi"]), default="virtio", show_default=True,
                     help="Windows: boot from virtio-blk (viostor) or virtio-scsi (vioscsi).")(f)
    f = click.option("--allow-no-virtio", is_flag=True,
                     help="Windows without virtio drivers: convert with SATA disks and an e1000e NIC.")(f)
    f = click.option("--virtio-win", type=click.Path(exists=True),
                     help="Windows: virtio-win drivers, a directory or an ISO (e.g. /usr/share/virtio-win).")(f)
    return f


@main.command(context_settings=CONTEXT)
@click.argument("disks", nargs=-1, required=True, type=click.Path(dir_okay=True))
@click.option("--input-format", type=click.Choice(["raw", "qcow2", "vmdk", "vpc", "vhdx"]),
              help="Input format (default: detected from the content, not the file name).")
@windows_options
@click.option("--json", "json_mode", is_flag=True, help="Print the report as one JSON object.")
def inspect(disks: Sequence[str], input_format: Optional[str], virtio_win: Optional[str], allow_no_virtio: bool,
            disk_bus: str, json_mode: bool) -> None:
    """Inspect the guest on DISKS and say what a conversion would do. Writes nothing.

    \b
    Example:
      v2v inspect web1.vmdk
      v2v inspect web1-disk1.vmdk web1-disk2.vmdk --json
      v2v inspect win2019.vmdk --virtio-win /usr/share/virtio-win
    """
    from .outputs import OutputOptions
    from .pipeline import ConvertOptions, inspect_only
    events = _emitter(json_mode)
    opts = ConvertOptions(output=OutputOptions(kind="local", name="inspect"), virtio_win=virtio_win,
                          allow_no_virtio=allow_no_virtio, disk_bus=disk_bus)
    try:
        report = inspect_only(disks, input_format, events, opts)
    except V2VError as e:
        _fail(events, e)
        return
    guest, plan = report["guest"], report["plan"]
    payload: Dict[str, Any] = {"guest": to_json(guest), "plan": to_json(plan) if plan else None,
                               "convertible": plan is not None, "refusal": report["refusal"],
                               "changes": to_json(report["would"])}
    if json_mode:
        events.result(payload)
        return
    click.echo("{}  ({} {}.{}, {}, {})".format(guest.product_name, guest.distro, guest.major, guest.minor,
                                               guest.arch, guest.firmware.upper()))
    click.echo("  hostname     {}".format(guest.hostname))
    click.echo("  root         {}".format(guest.root))
    for mp, dev in guest.mountpoints:
        click.echo("  mount        {:<12} {}".format(mp, dev))
    if guest.type == "windows":
        click.echo("  systemroot   {}  ({}, build {})".format(guest.windows_systemroot, guest.product_variant,
                                                            guest.build or "unknown"))
    else:
        click.echo("  kernels      {}".format(", ".join(guest.kernels) or "none"))
    if plan is not None:
        click.echo("  would get    {} disks on {}, {} machine, {} MiB, {} vCPUs, {} NIC {}{}".format(
            len(guest.disks), plan.disk_bus, plan.machine, plan.memory_mib, plan.vcpus, plan.network.model,
            plan.network.mac, " named " + plan.network.guest_name if plan.network.guest_name else ""))
        for n in plan.notes:
            click.echo("  note         " + n)
        for ln in report["would"]:
            click.echo("  {:<12} {:<18} {}".format(ln.status, ln.name, ln.message))
    else:
        click.echo("  cannot convert: " + report["refusal"])
        sys.exit(1)


@main.group(context_settings=CONTEXT)
def convert() -> None:
    """Convert a guest into a KVM guest.

    \b
    Examples:
      v2v convert disk web1.vmdk --to libvirt --name web1 --verify-boot
      v2v convert disk a.qcow2 b.qcow2 --to local --out ./web1 --format raw
    """


@convert.command("disk", context_settings=CONTEXT)
@click.argument("disks", nargs=-1, required=True, type=click.Path(dir_okay=True))
@click.option("--to", "to", type=click.Choice(["libvirt", "local"]), required=True, help="Where the result goes.")
@click.option("--name", help="Name of the converted guest (default: the first disk's file name).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="--to local: directory for disks and XML.")
@click.option("--storage", type=click.Path(file_okay=False),
              help="--to libvirt: directory for the disks (default: the 'default' pool's directory).")
@click.option("--format", "out_format", type=click.Choice(["qcow2", "raw"]), default="qcow2", show_default=True,
              help="Format of the converted disks.")
@click.option("--input-format", type=click.Choice(["raw", "qcow2", "vmdk", "vpc", "vhdx"]),
              help="Input format (default: detected from the content, not the file name).")
@domain_options
@click.option("--boot-timeout", type=float, help="Seconds to wait for the boot marker (default 240 KVM, 900 TCG).")
@click.option("--workdir", type=click.Path(file_okay=False), help="Directory for temporary overlays.")
@windows_options
@click.option("--json", "json_mode", is_flag=True, help="JSON lines on stdout: stages, progress, result.")
def convert_disk(disks: Sequence[str], to: str, name: Optional[str], out_dir: Optional[str],
                 storage: Optional[str], out_format: str, input_format: Optional[str], uri: str, network: str,
                 bridge: str, memory_mib: Optional[int], vcpus: Optional[int], mac: Optional[str], overwrite: bool,
                 verify_boot: bool, boot_timeout: Optional[float], workdir: Optional[str],
                 virtio_win: Optional[str], allow_no_virtio: bool, disk_bus: str, json_mode: bool) -> None:
    """Convert the guest on DISKS (raw, qcow2, VMDK, VHD, VHDX; the OS disk first).

    \b
    Examples:
      v2v convert disk web1.vmdk --to libvirt --name web1 --verify-boot
      v2v convert disk web1.vhdx --to libvirt --storage /srv/vms --name web1
      v2v convert disk a.qcow2 b.qcow2 --to local --out ./web1 --format raw --json
      v2v convert disk win2019.vmdk --to libvirt --virtio-win /usr/share/virtio-win
    """
    from .outputs import OutputOptions
    from .pipeline import ConvertOptions, convert as run_convert, default_name
    events = _emitter(json_mode)
    if to == "local" and not out_dir:
        raise click.UsageError("--to local needs --out DIR")
    if mac is not None and not _valid_mac(mac):
        raise click.BadParameter("not a unicast MAC address like 52:54:00:12:34:56", param_hint="--mac")
    opts = ConvertOptions(
        output=OutputOptions(kind=to, name=name or default_name(disks), format=out_format, out_dir=out_dir,
                             storage=storage, uri=uri, network=network, bridge=bridge, overwrite=overwrite),
        input_format=input_format, memory_mib=memory_mib, vcpus=vcpus, mac=mac.lower() if mac else None,
        verify_boot=verify_boot, boot_timeout=boot_timeout, workdir=workdir, virtio_win=virtio_win,
        allow_no_virtio=allow_no_virtio, disk_bus=disk_bus)
    try:
        result = run_convert(disks, opts, events)
    except V2VError as e:
        _fail(events, e)
        return
    events.result(to_json(result))
    if not json_mode:
        _print_result(result)
    if result.boot is not None and not result.boot.ok:
        if not json_mode:
            click.echo("v2v: error: the converted guest did not boot: " + result.boot.reason, err=True)
        sys.exit(1)


def _valid_mac(mac: str) -> bool:
    import re
    return bool(re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}", mac)) and int(mac[:2], 16) & 1 == 0


def _print_result(r: Result) -> None:
    click.echo("")
    click.echo("Converted {} -> {}".format(r.name, "libvirt domain {} on {}".format(r.name, r.libvirt_uri)
                                           if r.output == "libvirt" else r.domain_xml))
    for d in r.disks:
        click.echo("  disk {}  {} ({}) sha256 {}".format(d.target_dev, d.path, d.format, d.sha256[:16]))
    if r.fixes:
        for ln in r.fixes.lines:
            click.echo("  {:<8} {:<18} {:>4.0f}s  {}".format(ln.status, ln.name, ln.seconds, ln.message))
    if r.timings:
        click.echo("  time     " + ", ".join("{} {:.0f}s".format(k, v) for k, v in r.timings))
    if r.boot is not None:
        b = r.boot
        if b.ok:
            click.echo("  BOOT OK  in {:.0f}s on virtio ({}): {}".format(b.seconds, b.accel.upper(), " ".join(b.details)))
        else:
            click.echo("  BOOT FAILED after {:.0f}s ({}): {}".format(b.seconds, b.accel.upper(), b.reason))
            for ln in b.console_tail[-10:]:
                click.echo("    | " + ln)



def _bandwidth(text: Optional[str]) -> int:
    """'40M' -> bytes per second (K, M, G are powers of 1024); None or '0' -> unlimited."""
    import re
    if not text:
        return 0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGkmg]?)(?:i?B)?(?:/s)?", text.strip())
    if not m:
        raise click.BadParameter("not a rate like 40M (bytes per second)", param_hint="--bandwidth")
    return int(float(m.group(1)) * 1024 ** " KMG".index(m.group(2).upper() or " "))


@convert.command("host", context_settings=CONTEXT)
@click.argument("target", metavar="USER@HOST[:PORT] | push:NAME")
@click.option("--to", "to", type=click.Choice(["libvirt", "local"]), help="Where the result goes.")
@click.option("--name", help="Name of the converted guest (default: the source's host name).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="--to local: directory for disks and XML (with --capture-only: for the raw images).")
@click.option("--storage", type=click.Path(file_okay=False), help="--to libvirt: directory for the disks.")
@click.option("--format", "out_format", type=click.Choice(["qcow2", "raw"]), default="qcow2", show_default=True,
              help="Format of the converted disks.")
@domain_options
@click.option("--boot-timeout", type=float, help="Seconds to wait for the boot marker.")
@click.option("--workdir", type=click.Path(file_okay=False),
              help="Directory for the staging images (kept for a resume) and the overlays.")
@click.option("--disk", "disks", multiple=True, metavar="DEV",
              help="Capture only this whole-disk device of the source (repeatable; default: every disk).")
@click.option("--bandwidth", help="Limit the wire to this many bytes per second, e.g. 40M.")
@capture_options
@push_options
@click.option("--capture-only", is_flag=True, help="Stop after the capture: raw images and manifest in --out.")
@click.option("--dry-run", is_flag=True, help="Say what would be copied and how, then stop. Copies nothing.")
@click.option("--json", "json_mode", is_flag=True, help="JSON lines on stdout: stages, progress, result.")
def convert_host(target: str, to: Optional[str], name: Optional[str], out_dir: Optional[str],
                 storage: Optional[str], out_format: str, uri: str, network: str, bridge: str,
                 memory_mib: Optional[int], vcpus: Optional[int], mac: Optional[str], overwrite: bool,
                 verify_boot: bool, boot_timeout: Optional[float], workdir: Optional[str], disks: Sequence[str],
                 bandwidth: Optional[str], compress: str, max_freeze: float, tracing: str, ssh_key: Optional[str],
                 ssh_port: Optional[int], ssh_accept_new: bool, ssh_known_hosts: Optional[str],
                 remote_python: str, listen: Optional[str], tls_dir: Optional[str], accept_timeout: float,
                 capture_only: bool, dry_run: bool, json_mode: bool) -> None:
    """Capture the running Linux host USER@HOST over ssh, block by block, and convert it to KVM.

    Runs v2v-agent.pyz on the host (Python 3.6+, nothing installed, host key checking on), copies the
    used blocks of its disks consistently (filesystems frozen for at most --max-freeze seconds) into
    staging images, then converts them like `convert disk`. Rerun the same command after a dropped
    connection: verified chunks are not sent again.

    Push mode, for a host the converter cannot reach (behind NAT): name it push:NAME, where NAME is the
    CN of its client certificate (`v2v agent certs DIR --source NAME`), and give --listen and --tls-dir.
    The converter waits for one agent to connect with TLS and that certificate; others are refused
    (with a warning) and the wait goes on until --accept-timeout. After a drop, run both sides again.

    \b
    Examples:
      v2v convert host root@db1.example --to libvirt --name db1 --verify-boot
      v2v convert host root@db1.example --to local --out ./db1 --bandwidth 40M --ssh-key ~/.ssh/id_ed25519
      v2v convert host root@10.0.0.5:2222 --dry-run
      v2v convert host root@db1.example --disk /dev/sdb --capture-only --out ./db1-raw
      v2v convert host push:db1 --listen :8443 --tls-dir /etc/v2v/tls --to libvirt --name db1
        (on db1: python3 v2v-agent.pyz --connect conv.example:8443 --ca ca.pem --cert db1.pem --key db1.key)
    """
    from .outputs import OutputOptions
    from .pipeline import ConvertOptions
    from .sources import host, push
    events = _emitter(json_mode)
    if not dry_run and not capture_only and to is None:
        raise click.UsageError("--to libvirt|local is needed (or --dry-run, or --capture-only --out DIR)")
    if (to == "local" or capture_only) and not out_dir and not dry_run:
        raise click.UsageError("--to local and --capture-only need --out DIR")
    if mac is not None and not _valid_mac(mac):
        raise click.BadParameter("not a unicast MAC address like 52:54:00:12:34:56", param_hint="--mac")
    rate = _bandwidth(bandwidth)
    is_push = target.startswith("push:")
    if is_push and not (listen and tls_dir):
        raise click.UsageError("push:NAME needs --listen HOST:PORT and --tls-dir DIR")
    if not is_push and (listen or tls_dir):
        raise click.UsageError("--listen and --tls-dir are for push mode: name the source push:NAME "
                               "(the CN of its client certificate)")
    try:
        t = push.parse_push_target(target, listen or "", tls_dir or "", accept_timeout) if is_push else \
            host.parse_target(target, ssh_port)
        copts = host.CaptureOptions(disks=tuple(disks), compress=compress, bandwidth=rate, max_freeze=max_freeze,
                                    tracing=tracing, ssh_key=ssh_key, ssh_accept_new=ssh_accept_new,
                                    ssh_known_hosts=ssh_known_hosts, remote_python=remote_python,
                                    dry_run=dry_run, staging=out_dir if capture_only else None)
        if dry_run or capture_only:
            report = host.capture(t, copts, events, workdir)
            events.result({"capture": to_json(report)})
            if not json_mode:
                _print_capture(report)
            return
        opts = ConvertOptions(
            output=OutputOptions(kind=to or "local", name=name or "", format=out_format, out_dir=out_dir,
                                 storage=storage, uri=uri, network=network, bridge=bridge, overwrite=overwrite),
            memory_mib=memory_mib, vcpus=vcpus, mac=mac.lower() if mac else None, verify_boot=verify_boot,
            boot_timeout=boot_timeout, workdir=workdir)
        report, result = host.convert_host(t, copts, opts, events)
    except V2VError as e:
        _fail(events, e)
        return
    events.result(dict(to_json(result), capture=to_json(report)))
    if not json_mode:
        _print_capture(report)
        _print_result(result)
    if result.boot is not None and not result.boot.ok:
        if not json_mode:
            click.echo("v2v: error: the converted guest did not boot: " + result.boot.reason, err=True)
        sys.exit(1)


def _print_capture(r: Any) -> None:
    for p in r.plans:
        click.echo("disk {}  {}  {} of {} bytes to send  {}".format(p["device"], p["mode"], p["used_bytes"],
                                                                   p["size"], p["reason"]))
    for d in r.disks:
        click.echo("  consistency {} ({}), freeze {:.3f}s on {}, rounds {}".format(
            d["mode"], d["tracking"], d["freeze_seconds"], ", ".join(d["frozen"]) or "nothing",
            ", ".join(str(x) for x in d["rounds"])))
    for img in r.images:
        click.echo("  image {}".format(img))
    if r.images:
        click.echo("  received {} bytes ({} on the wire), {} re-sent, {} skipped as verified earlier, {:.1f}s".format(
            r.received_bytes, r.wire_bytes, r.resent_bytes, r.skipped_bytes, r.seconds))


@main.group(context_settings=CONTEXT)
def agent() -> None:
    """The source-side agent, v2v-agent.pyz (one file, Python 3.6+ standard library)."""


@agent.command("build", context_settings=CONTEXT)
@click.option("-o", "--output", "output", default="v2v-agent.pyz", show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the agent.")
def agent_build(output: str) -> None:
    """Write v2v-agent.pyz, for hosts the converter cannot reach by ssh.

    \b
    Example:
      v2v agent build -o /srv/v2v-agent.pyz
      scp /srv/v2v-agent.pyz root@db1:/root/ && ssh root@db1 python3 /root/v2v-agent.pyz --plan
      python3 v2v-agent.pyz --connect conv.example:8443 --ca ca.pem --cert db1.pem --key db1.key   # push mode
    """
    from .agent_bundle import build_agent
    try:
        path = build_agent(output)
    except OSError as e:
        _fail(_emitter(False), _write_error(output, e))
        return
    click.echo(path)


@agent.command("certs", context_settings=CONTEXT)
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--source", "sources", multiple=True, metavar="NAME",
              help="Make a client certificate NAME.pem/NAME.key for this source (its CN; repeatable).")
@click.option("--server-name", "server_names", multiple=True, metavar="NAME|IP",
              help="Also name this host or address in the converter's certificate (when it is made), for "
                   "agents run with --server-name NAME|IP; v2v-converter is always in it.")
@click.option("--backend", type=click.Choice(["auto", "cryptography", "openssl"]), default="auto",
              show_default=True, help="The cryptography package when installed (auto), else the openssl command.")
@click.option("--json", "json_mode", is_flag=True, help="One JSON object on stdout.")
def agent_certs(directory: str, sources: Sequence[str], server_names: Sequence[str], backend: str,
                json_mode: bool) -> None:
    """Make the certificates of push mode in DIRECTORY: a CA, the converter's certificate, and one client
    certificate per --source. Existing files are kept (a second run adds sources); every file is 0600.

    Copy ca.pem, NAME.pem and NAME.key to the source NAME; ca.key stays here.

    \b
    Examples:
      v2v agent certs /etc/v2v/tls --source db1
      v2v agent certs /etc/v2v/tls --source web1 --source web2
      scp /etc/v2v/tls/{ca.pem,db1.pem,db1.key} v2v-agent.pyz db1:/root/
    """
    from .agent_certs import make_certs
    events = _emitter(json_mode)
    try:
        r = make_certs(directory, sources, server_names, backend)
    except V2VError as e:
        _fail(events, e)
        return
    if json_mode:
        events.result({"certs": to_json(r)})
        return
    for path in r.created:
        click.echo("created {}".format(path))
    for path in r.kept:
        click.echo("kept    {}".format(path))
    for name in r.sources:
        click.echo("source {}: copy {}/ca.pem, {}.pem and {}.key to it; there run python3 v2v-agent.pyz "
                   "--connect CONVERTER:PORT --ca ca.pem --cert {}.pem --key {}.key".format(
                       name, r.directory, name, name, name, name))


def _write_error(path: str, e: OSError) -> V2VError:
    from .errors import OutputError
    return OutputError("cannot write {}: {}".format(path, e.strerror or e))


@main.group(context_settings=CONTEXT)
def standby() -> None:
    """Keep a KVM copy of a running Linux host current: nightly refreshes send only the changed blocks.

    \b
    Examples:
      v2v standby create root@db1.example --name db1-standby
      v2v standby refresh db1-standby
      v2v standby status db1-standby --json
      v2v standby rollback db1-standby --to 3
      v2v standby timer db1-standby --on-calendar "*-*-* 02:00" --enable
      v2v standby activate db1-standby
    """


def _standby_dir(f: Callable) -> Callable:
    return click.option("--dir", "directory", type=click.Path(file_okay=False),
                        help="The standby's directory (default /var/lib/v2v/standby/NAME).")(f)


def _standby_call(json_mode: bool, fn: Callable[[Emitter], Any]) -> Any:
    events = _emitter(json_mode)
    try:
        return events, fn(events)
    except V2VError as e:
        _fail(events, e)
        raise AssertionError("unreachable")


def _print_refresh(r: Any) -> None:
    if r.tracker:
        click.echo("{}: {}".format(r.name, r.tracker))
    if r.changed:
        click.echo("{}: generation {} serving; {} bytes changed, {} bytes on the wire (source uses {}), "
                   "{:.1f}s".format(r.name, r.generation, r.changed_bytes, r.wire_bytes, r.used_bytes, r.seconds))
    else:
        click.echo("{}: no change; generation {} still serving; {} bytes on the wire, {:.1f}s".format(
            r.name, r.generation, r.wire_bytes, r.seconds))


@standby.command("create", context_settings=CONTEXT)
@click.argument("target", metavar="USER@HOST[:PORT]")
@click.option("--name", required=True, help="Name of the standby and of its libvirt domain.")
@_standby_dir
@click.option("--disk", "disks", multiple=True, metavar="DEV",
              help="Capture only this whole-disk device of the source (repeatable; default: every disk).")
@click.option("--connect", "uri", default="qemu:///system", show_default=True, help="libvirt URI.")
@click.option("--network", default="default", show_default=True,
              help="libvirt network for the NIC ('none': no NIC).")
@click.option("--bridge", default="", help="Host bridge for the NIC instead of a libvirt network.")
@click.option("--memory", "memory_mib", type=click.IntRange(128, 4 << 20), help="Memory in MiB (default 2048).")
@click.option("--vcpus", type=click.IntRange(1, 1024), help="Virtual CPUs (default 2).")
@click.option("--mac", help="MAC address of the NIC (default: a random 52:54:00 address, kept for every refresh).")
@click.option("--bandwidth", help="Limit the wire to this many bytes per second, e.g. 40M (every refresh).")
@capture_options
@click.option("--no-fixups", is_flag=True, help="Keep the fixed layers empty (a data disk without an OS).")
@click.option("--keep", type=click.IntRange(1), default=7, show_default=True,
              help="Generations kept for rollback; older ones are merged into their successor.")
@click.option("--no-tracker", is_flag=True,
              help="No resident write tracker on the source: every refresh reads all used blocks.")
@click.option("--json", "json_mode", is_flag=True, help="JSON lines on stdout: stages, progress, result.")
def standby_create(target: str, name: str, directory: Optional[str], disks: Sequence[str], uri: str, network: str,
                   bridge: str, memory_mib: Optional[int], vcpus: Optional[int], mac: Optional[str],
                   bandwidth: Optional[str], compress: str, max_freeze: float, tracing: str, ssh_key: Optional[str],
                   ssh_port: Optional[int], ssh_accept_new: bool, ssh_known_hosts: Optional[str], remote_python: str,
                   no_fixups: bool, keep: int, no_tracker: bool, json_mode: bool) -> None:
    """Create the standby NAME of the running host USER@HOST: a full capture, the fixups, the domain
    defined (not started). The ssh and capture options are kept for every refresh.

    Unless --no-tracker, the agent leaves a write tracker running on the source (a process named
    v2v-tracker: tracefs events, held in memory, nothing written to disk; it ends by itself after 8 days
    without a refresh, or with `pkill v2v-tracker`). A refresh then reads only the blocks written since
    the last one; after a reboot of the source it reads every used block once.

    \b
    Examples:
      v2v standby create root@db1.example --name db1-standby
      v2v standby create root@10.0.0.5:2222 --name web1-sb --disk /dev/sda --bandwidth 40M --ssh-key ~/.ssh/id_ed25519
    """
    import os
    from . import standby as sb
    from .sources import host
    if mac is not None and not _valid_mac(mac):
        raise click.BadParameter("not a unicast MAC address like 52:54:00:12:34:56", param_hint="--mac")
    rate = _bandwidth(bandwidth)

    def go(events: Emitter) -> Any:
        t = host.parse_target(target, ssh_port)
        copts = host.CaptureOptions(disks=tuple(disks), compress=compress, bandwidth=rate, max_freeze=max_freeze,
                                    tracing=tracing, remote_python=remote_python, ssh_accept_new=ssh_accept_new,
                                    ssh_key=os.path.abspath(ssh_key) if ssh_key else None,
                                    ssh_known_hosts=os.path.abspath(ssh_known_hosts) if ssh_known_hosts else None)
        o = sb.StandbyOptions(name=name, directory=os.path.abspath(directory or sb.default_dir(name)), uri=uri,
                              network=network, bridge=bridge, memory_mib=memory_mib, vcpus=vcpus,
                              mac=mac.lower() if mac else None, fixups=not no_fixups, keep=keep,
                              tracker=not no_tracker)
        return sb.create(str(t), copts, o, events)
    events, r = _standby_call(json_mode, go)
    events.result({"standby": to_json(r)})
    if not json_mode:
        _print_refresh(r)


@standby.command("refresh", context_settings=CONTEXT)
@click.argument("name")
@_standby_dir
@click.option("--keep", type=click.IntRange(1), help="Generations kept from now on (default: as at create, 7).")
@click.option("--bandwidth", help="Limit the wire to this many bytes per second for this run, e.g. 40M.")
@click.option("--json", "json_mode", is_flag=True, help="JSON lines on stdout: stages, progress, result.")
def standby_refresh(name: str, directory: Optional[str], keep: Optional[int], bandwidth: Optional[str],
                    json_mode: bool) -> None:
    """Send the chunks that changed on the source since the latest generation, write them into a new
    generation, re-run the fixups, and switch the domain to it. Refused while the domain runs.

    The initramfs the fixups rebuilt last is kept in DIR/initramfs and reused while what it is made
    from (the source's own initramfs and kernel, its modules and initramfs configuration) is unchanged.

    \b
    Examples:
      v2v standby refresh db1-standby
      v2v standby refresh db1-standby --dir /srv/standby/db1 --json
      v2v standby refresh db1-standby --keep 3 --bandwidth 20M
    """
    from dataclasses import replace
    from . import standby as sb
    rate = _bandwidth(bandwidth) if bandwidth else None

    def go(events: Emitter) -> Any:
        o = sb.options_of(name, directory)
        return sb.refresh(replace(o, keep=keep or o.keep, bandwidth=rate), events)
    events, r = _standby_call(json_mode, go)
    events.result({"standby": to_json(r)})
    if not json_mode:
        _print_refresh(r)


@standby.command("status", context_settings=CONTEXT)
@click.argument("name")
@_standby_dir
@click.option("--json", "json_mode", is_flag=True, help="One JSON object on stdout.")
def standby_status(name: str, directory: Optional[str], json_mode: bool) -> None:
    """Generations, the one the domain boots, the last runs with their bytes, and the RPO.

    \b
    Examples:
      v2v standby status db1-standby
      v2v standby status db1-standby --json
    """
    from . import standby as sb
    _, s = _standby_call(False, lambda ev: sb.status(sb.options_of(name, directory)))
    if json_mode:
        click.echo(json.dumps(s, sort_keys=True, default=str))
        return
    click.echo("{} ({}): domain {} {}, boots generation {}; RPO {}".format(
        s["name"], s["target"], s["domain"]["uri"], "running" if s["domain"]["running"] else "shut off",
        s["domain"]["generation"], "{:.0f}s".format(s["rpo_seconds"]) if s["rpo_seconds"] is not None else "-"))
    for g in s["generations"]:
        click.echo("  {} g{}  {} changed  {} on the wire  {}".format(
            "*" if g["current"] else " ", g["number"], g["changed_bytes"], g["wire_bytes"], " ".join(g["fixed"])))
    for r in s["runs"][-5:]:
        click.echo("  run {} {} g{} {}".format(r["kind"], r["status"], r["generation"], r["message"]))


@standby.command("rollback", context_settings=CONTEXT)
@click.argument("name")
@_standby_dir
@click.option("--to", "to", type=click.IntRange(1), help="Generation to boot (default: the one before the current).")
def standby_rollback(name: str, directory: Optional[str], to: Optional[int]) -> None:
    """Point the standby's domain back at an earlier generation's fixed layer. Refused while it runs.

    \b
    Examples:
      v2v standby rollback db1-standby
      v2v standby rollback db1-standby --to 3
    """
    from . import standby as sb
    _, g = _standby_call(False, lambda ev: sb.rollback(sb.options_of(name, directory), to, ev))
    click.echo("{}: the domain boots generation {}".format(name, g))


@standby.command("activate", context_settings=CONTEXT)
@click.argument("name")
@_standby_dir
def standby_activate(name: str, directory: Optional[str]) -> None:
    """Start the standby's domain (the source is lost); refreshes are refused while it runs.

    \b
    Example:
      v2v standby activate db1-standby
    """
    from . import standby as sb
    _, g = _standby_call(False, lambda ev: sb.activate(sb.options_of(name, directory), ev))
    click.echo("{}: started on generation {}".format(name, g))


@standby.command("timer", context_settings=CONTEXT)
@click.argument("name")
@_standby_dir
@click.option("--on-calendar", required=True, help='systemd calendar expression, e.g. "*-*-* 02:00".')
@click.option("--unit-dir", default="/etc/systemd/system", show_default=True, type=click.Path(file_okay=False),
              help="Where the .service and .timer are written.")
@click.option("--enable", is_flag=True, help="systemctl daemon-reload and enable --now the timer.")
def standby_timer(name: str, directory: Optional[str], on_calendar: str, unit_dir: str, enable: bool) -> None:
    """Write v2v-standby-NAME.service (one refresh) and .timer, checked with systemd-analyze verify.

    \b
    Examples:
      v2v standby timer db1-standby --on-calendar "*-*-* 02:00" --enable
      v2v standby timer db1-standby --on-calendar daily --unit-dir ./units
    """
    from . import standby as sb
    from .standby.timer import write_units

    def go(_ev: Emitter) -> Any:
        o = sb.options_of(name, directory)
        return write_units(name, o.directory, on_calendar, unit_dir, enable)
    _, u = _standby_call(False, go)
    click.echo("{}\n{}{}{}".format(u.service, u.timer, "\n  verified by systemd-analyze" if u.verified else "",
                                   "\n  enabled" if u.enabled else ""))


if __name__ == "__main__":
    main()
