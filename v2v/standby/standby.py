"""A standby (DESIGN section 7): a directory holding a chain of generations that are never modified in
place, the capture's staging manifest, and the state; plus a libvirt domain booting the current one.

    replica.gN.qcow2   backing replica.g(N-1): the source's blocks as of refresh N (g1 holds all)
    fixed.gN.qcow2     backing replica.gN: the fixups; the domain boots this
    staging/           the capture's manifest of verified chunks (its raw images are emptied after a
                       generation is built: a refresh writes only the chunks the agent sends again)
    standby.sqlite     settings, generations, per-generation chunk manifests, runs

Every image is written under a temporary name and renamed when complete; the domain is redefined only
after the new layers are complete, so a failure at any point leaves the current generation serving.
"""
import fcntl
import os
import re
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple

from diskfmt import image

from ..domain import DomainSpec, NicSpec
from ..errors import OutputError, V2VError
from ..events import Emitter
from ..sources import host
from ..types import NetworkPlan, Overlay, Plan, SourceDisk
from . import switch
from .state import Chunk, Generation, Run, State

DEFAULT_PARENT = "/var/lib/v2v/standby"
DEFAULT_KEEP = 7
INITRAMFS_CACHE = "initramfs"   # initramfs files the fixups rebuilt, reused while their inputs are unchanged
MERGE_GAP = 0          # adjacent changed chunks are written in one qemu-img call


@dataclass(frozen=True)
class StandbyOptions:
    name: str
    directory: str
    uri: str = "qemu:///system"
    network: str = "default"       # libvirt network for the NIC; "none": no NIC
    bridge: str = ""
    memory_mib: Optional[int] = None
    vcpus: Optional[int] = None
    mac: Optional[str] = None
    fixups: bool = True            # False: the fixed layer is left empty (a source without an OS: tests)
    keep: int = DEFAULT_KEEP       # generations kept for rollback; older ones are merged into their successor
    bandwidth: Optional[int] = None  # this run's wire limit (bytes/s), instead of the one given at create
    tracker: bool = True           # a resident write tracker on the source between refreshes


@dataclass(frozen=True)
class RefreshReport:
    name: str
    generation: int                # the generation the domain boots afterwards
    changed: bool
    changed_bytes: int             # bytes of chunks written into the new replica
    wire_bytes: int                # bytes read from ssh
    used_bytes: int                # used bytes of the source's disks as the agent planned them
    seconds: float
    capture_seconds: float
    fix_lines: Tuple[str, ...] = ()
    tracker: str = ""              # what the resident write tracker did for this run, one line
    read_bytes: Optional[int] = None   # bytes the tracker told the agent to read (None: every used chunk)


def default_dir(name: str) -> str:
    return os.path.join(DEFAULT_PARENT, name)


def _image_name(kind: str, gen: int, disk: int, count: int) -> str:
    return "{}.g{}.qcow2".format(kind, gen) if count == 1 else "{}.g{}.d{}.qcow2".format(kind, gen, disk)


def _part(path: str) -> str:
    return os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".part")


@contextmanager
def _locked(directory: str) -> Iterator[None]:
    """One create/refresh/rollback of a standby at a time (flock on DIR/lock, released by the kernel on
    any exit, also SIGKILL)."""
    fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError("another refresh of the standby in {} is running (it holds {}); try again when "
                              "it ends".format(directory, os.path.join(directory, "lock"))) from None
        yield
    finally:
        os.close(fd)


def _staging_manifest(staging: str) -> FrozenSet[Chunk]:
    db = sqlite3.connect(os.path.join(staging, host.MANIFEST))
    try:
        return frozenset((d, o, n, bytes(s)) for d, o, n, s in db.execute(
            "SELECT disk, offset, length, sha256 FROM chunks"))
    finally:
        db.close()


def changed_ranges(new: FrozenSet[Chunk], old: FrozenSet[Chunk]) -> Dict[int, List[Tuple[int, int]]]:
    """Per disk, the byte ranges of chunks that are new or whose digest changed, adjacent ones merged."""
    out: Dict[int, List[Tuple[int, int]]] = {}
    for d, o, n, _ in sorted(new - old):
        ranges = out.setdefault(d, [])
        if ranges and o <= ranges[-1][0] + ranges[-1][1] + MERGE_GAP:
            start = ranges[-1][0]
            ranges[-1] = (start, max(ranges[-1][0] + ranges[-1][1], o + n) - start)
        else:
            ranges.append((o, n))
    return out


def _empty_staging_images(staging: str) -> None:
    """The replica holds the data now; the manifest is what the next capture needs."""
    for name in os.listdir(staging):
        if name.startswith("disk") and name.endswith(".raw"):
            os.unlink(os.path.join(staging, name))


def _capture(st: State, events: Emitter, o: StandbyOptions) -> host.CaptureReport:
    target = host.parse_target(st.get("target"))
    saved = st.get("capture")
    copts = host.CaptureOptions(**dict(saved, disks=tuple(saved.get("disks", ())),
                                       staging=os.path.join(o.directory, "staging")))
    if o.bandwidth is not None:
        copts = replace(copts, bandwidth=o.bandwidth)
    if st.get("tracker_id"):
        copts = replace(copts, resident={"id": st.get("tracker_id"), "since": st.get("tracker_epoch")})
    return host.capture(target, copts, events)


def _tracker_result(st: State, report: host.CaptureReport) -> Tuple[str, Optional[int]]:
    """Remember this capture's epoch for the next refresh (call it once the run's result is kept);
    (one line on what the tracker did, bytes it limited the reads to)."""
    res = report.agent.get("resident")
    if not st.get("tracker_id"):
        return "", None
    if not res:
        st.put("tracker_epoch", None)
        return "no resident tracker (the agent did not report one)", None
    st.put("tracker_epoch", res.get("epoch"))
    return res.get("message", ""), res.get("tracked_bytes")


def _fixed_layers(o: StandbyOptions, st: State, replicas: Sequence[str], fixed: Sequence[str],
                  events: Emitter) -> Tuple[Optional[Plan], Tuple[str, ...]]:
    """fixed.gN over each replica.gN, written under temporary names, with the fixups run in them."""
    temps = [_part(p) for p in fixed]
    try:
        overlays = []
        for i, (r, t) in enumerate(zip(replicas, temps)):
            image.create_overlay(r, "qcow2", t)
            size = int(image.info(r, "qcow2")["virtual-size"])
            overlays.append(Overlay(path=t, source=SourceDisk(i, r, "qcow2", size, os.path.getsize(r))))
        plan = None
        lines: Tuple[str, ...] = ()
        if o.fixups:
            from ..outputs import OutputOptions
            from ..pipeline import ConvertOptions, fix_overlays
            mac = st.get("mac") or o.mac
            copts = ConvertOptions(output=OutputOptions(kind="libvirt", name=o.name, uri=o.uri),
                                   memory_mib=o.memory_mib, vcpus=o.vcpus, mac=mac,
                                   initramfs_cache=os.path.join(o.directory, INITRAMFS_CACHE))
            _, plan, report = fix_overlays(overlays, copts, events)
            lines = tuple("{}: {}".format(ln.name, ln.message) for ln in report.lines)
        for t, p in zip(temps, fixed):
            os.replace(t, p)
        return plan, lines
    finally:
        for t in temps:
            if os.path.exists(t):
                os.unlink(t)


def _domain_spec(o: StandbyOptions, st: State, plan: Optional[Plan], fixed: Sequence[str], domain_type: str
                 ) -> DomainSpec:
    """The standby's domain: kept in the state from the first generation; a later plan changes only what the
    fixups decided (firmware, bus, OS)."""
    data = st.get("domain")
    if data is None:
        from ..pipeline import DEFAULT_MEMORY_MIB, DEFAULT_VCPUS, random_mac
        p = plan or Plan(name=o.name, disk_bus="virtio", firmware="bios", machine="q35",
                         memory_mib=o.memory_mib or DEFAULT_MEMORY_MIB, vcpus=o.vcpus or DEFAULT_VCPUS,
                         osinfo_id="", network=NetworkPlan(mac=(o.mac or random_mac())))
        nics = () if o.network == "none" and not o.bridge else (NicSpec(
            mac=p.network.mac, model=p.network.model, network="" if o.bridge else o.network, bridge=o.bridge),)
        spec = DomainSpec(name=o.name, memory_mib=p.memory_mib, vcpus=p.vcpus, disks=(), nics=nics,
                          domain_type=domain_type, machine=p.machine, firmware=p.firmware, osinfo_id=p.osinfo_id,
                          nvram=os.path.join(os.path.abspath(o.directory), "VARS.fd") if p.firmware == "uefi"
                          else None, os_type=p.os_type, secure_boot=p.secure_boot,
                          description="v2v standby of {}".format(st.get("target")))
        st.put("mac", p.network.mac)
        st.put("bus", p.disk_bus)
        data = switch.spec_to_data(spec)
    return switch.spec_from_data(data, [os.path.abspath(f) for f in fixed], st.get("bus", "virtio"))


def _switch(o: StandbyOptions, st: State, spec: DomainSpec) -> None:
    switch.point_at(o.uri, spec)
    st.put("domain", switch.spec_to_data(spec))


def create(target_text: str, capture: host.CaptureOptions, o: StandbyOptions, events: Emitter) -> RefreshReport:
    """First full capture, replica.g1 and fixed.g1, and the domain defined (not started)."""
    t0 = time.monotonic()
    directory = o.directory
    if os.path.exists(os.path.join(directory, "standby.sqlite")):
        st = State(directory)
        if st.latest() is not None:
            st.close()
            raise OutputError("{} already holds the standby {}; refresh it with `v2v standby refresh {}`".format(
                directory, st.get("name"), st.get("name")))
        st.close()
    target = host.parse_target(target_text)
    if switch.disk_paths(o.uri, o.name) is not None:
        raise OutputError("a domain named {} already exists in {}; choose another --name".format(o.name, o.uri))
    os.makedirs(directory, exist_ok=True)
    os.chmod(directory, 0o755)    # qemu runs as another user (libvirt-qemu) and must reach the images
    with _locked(directory):
        st = State(directory, create=True)
        try:
            st.put("name", o.name)
            st.put("target", str(target))
            st.put("uri", o.uri)
            st.put("fixups", o.fixups)
            st.put("keep", o.keep)
            if o.tracker:
                st.put("tracker_id", "sb-" + os.urandom(6).hex())
            st.put("capture", {k: v for k, v in capture.__dict__.items() if k not in ("staging", "dry_run")})
            return _new_generation(o, st, "create", events, t0)
        finally:
            st.close()


def options_of(name: str, directory: Optional[str] = None) -> StandbyOptions:
    d = directory or default_dir(name)
    st = State(d)
    try:
        if st.get("name") != name:
            raise OutputError("{} holds the standby {!r}, not {!r}".format(d, st.get("name"), name))
        return StandbyOptions(name=name, directory=d, uri=st.get("uri"), fixups=bool(st.get("fixups", True)),
                              keep=int(st.get("keep", DEFAULT_KEEP)))
    finally:
        st.close()


def refresh(o: StandbyOptions, events: Emitter) -> RefreshReport:
    """Send what changed since the latest generation, build the next one, switch the domain to it."""
    t0 = time.monotonic()
    with _locked(o.directory):
        st = State(o.directory)
        try:
            if st.latest() is None:
                raise OutputError("the standby in {} has no generation yet; run `v2v standby create` "
                                  "again".format(o.directory))
            if switch.is_running(o.uri, o.name):
                raise OutputError("the standby domain {} is running; a refresh would change the disks under it "
                                  "(shut it down first, or it is in use: activated)".format(o.name))
            return _new_generation(o, st, "refresh", events, t0)
        finally:
            st.close()


def _tidy(o: StandbyOptions, st: State, events: Emitter) -> None:
    """What a killed run left: its run row, temporary images, and the domain if it was switched to a
    generation that was never recorded (it goes back to the current one)."""
    for r in st.mark_killed():
        events.warning("the {} started at {} did not finish (killed); this run resumes from the chunks it "
                       "verified".format(r.kind, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.started))))
    for n in os.listdir(o.directory):
        if n.startswith(".") and n.endswith(".part"):
            os.unlink(os.path.join(o.directory, n))
    g = st.generation(st.current())
    disks = switch.disk_paths(o.uri, o.name)
    if g is not None and disks is not None and [os.path.basename(p or "") for p in disks] != list(g.fixed):
        events.warning("the domain {} was left on {}, which no generation records; it boots generation {} "
                       "again".format(o.name, ", ".join(p or "" for p in disks), g.number))
        _switch(o, st, switch.spec_from_data(st.get("domain"), [os.path.join(os.path.abspath(o.directory), f)
                                                                 for f in g.fixed], st.get("bus", "virtio")))
    # images of a generation newer than the latest recorded: a killed run built them, nothing backs onto
    # them, and the domain is not on them (switched back above); older unrecorded files may be the base
    # of a merge that was cut short, so they stay
    latest = st.latest()
    for n in os.listdir(o.directory):
        m = _IMAGE.match(n)
        if m and int(m.group(2)) > (latest.number if latest else 0):
            os.unlink(os.path.join(o.directory, n))
            events.info("removed {}, left by a run that did not finish".format(n))


_IMAGE = re.compile(r"^(replica|fixed)\.g(\d+)(\.d\d+)?\.qcow2$")


def _new_generation(o: StandbyOptions, st: State, kind: str, events: Emitter, t0: float) -> RefreshReport:
    _tidy(o, st, events)
    prev = st.latest()
    number = prev.number + 1 if prev else 1
    run_id = st.start_run(kind, st.current())
    try:
        report = _capture(st, events, o)
        sizes = [p["size"] for p in report.plans]
        if st.get("sizes") is not None and st.get("sizes") != sizes:
            raise OutputError("the source's disks changed size ({} -> {} bytes); create a new standby".format(
                st.get("sizes"), sizes))
        used = sum(p["used_bytes"] for p in report.plans)
        manifest = _staging_manifest(report.staging)
        old = st.manifest(prev.number) if prev else frozenset()
        ranges = changed_ranges(manifest, old)
        changed = sum(n for rs in ranges.values() for _, n in rs)
        if prev is not None and not ranges:
            _empty_staging_images(report.staging)
            tracked, read = _tracker_result(st, report)
            st.finish_run(run_id, "no-change", prev.number, 0, report.wire_bytes,
                          "no chunk differs from generation {}".format(prev.number))
            events.info("no change since generation {}: {} on the wire".format(
                prev.number, host._human(report.wire_bytes)))
            return RefreshReport(o.name, st.current(), False, 0, report.wire_bytes, used,
                                 time.monotonic() - t0, report.seconds, (), tracked, read)
        count = len(report.images)
        replicas = [os.path.join(o.directory, _image_name("replica", number, i, count)) for i in range(count)]
        fixed = [os.path.join(o.directory, _image_name("fixed", number, i, count)) for i in range(count)]
        events.stage("generation", "writing generation {}: {} changed in {} range(s)".format(
            number, host._human(changed), sum(len(r) for r in ranges.values())))
        for i, (raw, dst) in enumerate(zip(report.images, replicas)):
            tmp = _part(dst)
            if prev is None:
                image.convert(raw, "raw", tmp, "qcow2")
            else:
                image.create_overlay(os.path.join(o.directory, prev.replica[i]), "qcow2", tmp)
                image.write_ranges(raw, tmp, ranges.get(i, []))
            os.replace(tmp, dst)
        plan, lines = _fixed_layers(o, st, replicas, fixed, events)
        from ..doctor import choose_accel
        accel = choose_accel(events)
        spec = _domain_spec(o, st, plan, fixed, "kvm" if accel.accel == "kvm" else "qemu")
        _switch(o, st, spec)
        st.put("sizes", sizes)
        gen = Generation(number, time.time(), tuple(os.path.basename(p) for p in replicas),
                         tuple(os.path.basename(p) for p in fixed), changed, report.wire_bytes,
                         round(time.monotonic() - t0, 1))
        st.add_generation(gen, manifest)
        tracked, read = _tracker_result(st, report)
        _empty_staging_images(report.staging)
        st.finish_run(run_id, "ok", number, changed, report.wire_bytes, "")
        st.put("keep", o.keep)
        _merge_old(o, st, events)
        events.info("generation {} serving: {} changed, {} on the wire".format(
            number, host._human(changed), host._human(report.wire_bytes)))
        return RefreshReport(o.name, number, True, changed, report.wire_bytes, used, time.monotonic() - t0,
                             report.seconds, lines, tracked, read)
    except (V2VError, KeyboardInterrupt) as e:
        try:
            st.finish_run(run_id, "failed", st.current(), 0, 0, str(e).split("\n")[0] or type(e).__name__)
        except sqlite3.Error:
            pass
        if prev is not None:
            events.warning("generation {} is still serving; the next refresh resumes from the chunks verified "
                           "so far".format(prev.number))
        raise


def _merge_old(o: StandbyOptions, st: State, events: Emitter) -> None:
    """Keep o.keep generations: the oldest is merged into its successor (qemu-img commit of the successor's
    replica into the oldest's, which then takes the successor's name; the successor's fixed layer and every
    later replica see the same bytes through the same names). Generations the domain boots are kept."""
    while True:
        gens = st.generations()
        if len(gens) <= max(1, o.keep):
            return
        old, nxt = gens[0], gens[1]
        if old.number == st.current():
            events.warning("generation {} is kept beyond --keep {}: the domain boots it (rolled back)".format(
                old.number, o.keep))
            return
        # forget it first: a crash during the merge leaves a stray file, never a generation with wrong data
        st.drop_generation(old.number)
        for a, b in zip(old.replica, nxt.replica):
            pa, pb = os.path.join(o.directory, a), os.path.join(o.directory, b)
            image.commit(pb)                       # nxt's clusters into old's replica, which is the base
            os.replace(pa, pb)                     # the merged base is nxt's replica now: same bytes
        for f in old.fixed:
            p = os.path.join(o.directory, f)
            if os.path.exists(p):
                os.unlink(p)
        events.info("generation {} merged into {} (--keep {})".format(old.number, nxt.number, o.keep))


def rollback(o: StandbyOptions, to: Optional[int], events: Emitter) -> int:
    """Point the domain at an earlier generation's fixed layer (default: the one before the current)."""
    with _locked(o.directory):
        st = State(o.directory)
        try:
            current = st.current()
            numbers = [g.number for g in st.generations()]
            if to is None:
                older = [n for n in numbers if n < current]
                if not older:
                    raise OutputError("generation {} is the oldest kept; there is nothing to roll back to".format(
                        current))
                to = older[-1]
            g = st.generation(to)
            if g is None:
                raise OutputError("generation {} is not kept (kept: {})".format(
                    to, ", ".join(str(n) for n in numbers)))
            if switch.is_running(o.uri, o.name):
                raise OutputError("the standby domain {} is running; shut it down before a rollback".format(o.name))
            fixed = [os.path.join(o.directory, f) for f in g.fixed]
            spec = switch.spec_from_data(st.get("domain"), [os.path.abspath(f) for f in fixed], st.get("bus", "virtio"))
            started = time.time()
            _switch(o, st, spec)
            st.put("current", to)
            st.record_run(Run("rollback", started, time.time(), "ok", to, 0, 0,
                              "from generation {}".format(current)))
            events.info("the domain {} boots generation {} now (was {})".format(o.name, to, current))
            return to
        finally:
            st.close()


def activate(o: StandbyOptions, events: Emitter) -> int:
    """Start the standby's domain (the disaster case); refreshes are refused while it runs."""
    st = State(o.directory)
    try:
        current = st.current()
    finally:
        st.close()
    switch.start(o.uri, o.name)
    events.info("started {} on generation {}; refreshes are refused while it runs".format(o.name, current))
    return current


def status(o: StandbyOptions) -> Dict[str, Any]:
    st = State(o.directory)
    try:
        current = st.current()
        disks = switch.disk_paths(o.uri, o.name)
        gens = st.generations()
        booted = [g.number for g in gens
                  if disks and [os.path.basename(p or "") for p in disks] == list(g.fixed)]
        return dict(st.summary(), name=o.name, directory=os.path.abspath(o.directory), target=st.get("target"),
                    domain={"uri": o.uri, "defined": disks is not None,
                            "running": disks is not None and switch.is_running(o.uri, o.name),
                            "disks": list(disks or []), "generation": booted[0] if booted else None},
                    generations=[dict(g.__dict__, current=g.number == current,
                                      bytes=sum(os.path.getsize(os.path.join(o.directory, f))
                                                for f in g.replica + g.fixed
                                                if os.path.exists(os.path.join(o.directory, f))))
                                 for g in gens],
                    runs=[r.__dict__ for r in st.runs()])
    finally:
        st.close()

