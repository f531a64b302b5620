"""The one libguestfs wrapper: one appliance session per conversion, for inspection and every fixup.

Only this module imports the guestfs binding; fixups receive an Appliance.
"""
import logging
import os
import shlex
import signal
import threading
import time
from typing import List, Optional, Sequence, Tuple

from v2v.errors import FixupError, InspectionError

try:
    import guestfs
except ImportError:  # reported by `v2v doctor`; the error below says what to install
    guestfs = None


log = logging.getLogger("v2v")


class _LaunchWatchdog:
    """Kills the qemu children of this process that started after it, when `timeout` seconds pass."""

    def __init__(self, timeout: float) -> None:
        self.fired = False
        self._before = set(_qemu_children())
        self._timer = threading.Timer(timeout, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        for pid in set(_qemu_children()) - self._before:
            self.fired = True
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def cancel(self) -> None:
        self._timer.cancel()


def _qemu_children() -> List[int]:
    me = str(os.getpid())
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/{}/stat".format(entry)) as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        if comm.startswith("qemu-system") and stat[stat.rindex(")") + 2:].split()[1] == me:
            out.append(int(entry))
    return out


class Appliance:
    """A launched libguestfs appliance over writable overlays (never the source)."""

    def __init__(self, drives: Sequence[Tuple[str, str]], accel: str = "tcg", memsize: int = 1024,
                 smp: int = 2, readonly: bool = False, trace: bool = False) -> None:
        if guestfs is None:
            raise InspectionError("the libguestfs Python binding is missing: apt-get install python3-guestfs "
                                  "(and use a venv made with --system-site-packages)")
        self._settings = (list(drives), accel, memsize, smp, readonly, trace)
        self.g = self._handle()
        self.launch_seconds = 0.0
        self.mounted: List[str] = []

    def _handle(self):
        drives, accel, memsize, smp, readonly, trace = self._settings
        g = guestfs.GuestFS(python_return_dict=True)
        os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
        if accel == "tcg":
            g.set_backend_settings(["force_tcg"])
        g.set_memsize(memsize)
        g.set_smp(smp)
        g.set_network(False)
        if trace or os.environ.get("V2V_TRACE_GUESTFS"):
            g.set_trace(1)
        for path, fmt in drives:
            g.add_drive_opts(path, format=fmt, readonly=readonly, cachemode="unsafe", discard="besteffort")
        return g

    def launch(self) -> None:
        """Start the appliance. One that has not come up within V2V_LAUNCH_TIMEOUT seconds (default 300
        under TCG, 120 with KVM: a launch takes 20-30 s) is killed and started once more, since an
        emulated appliance on a loaded host now and then hangs while its kernel boots."""
        timeout = float(os.environ.get("V2V_LAUNCH_TIMEOUT") or (300 if self._settings[1] == "tcg" else 120))
        t0 = time.monotonic()
        for attempt in (1, 2):
            watchdog = _LaunchWatchdog(timeout)
            try:
                self.g.launch()
                break
            except RuntimeError as e:
                if watchdog.fired and attempt == 1:
                    log.warning("the libguestfs appliance did not come up within %.0fs; starting it again",
                                timeout)
                    self.g.close()
                    self.g = self._handle()
                    continue
                why = "it did not come up within {:.0f}s, twice".format(timeout) if watchdog.fired \
                    else _one_line(e)
                raise InspectionError("the libguestfs appliance did not start: {} (run `v2v doctor`, "
                                      "or libguestfs-test-tool for details)".format(why)) from None
            finally:
                watchdog.cancel()
        self.launch_seconds = time.monotonic() - t0

    def mount_guest(self, mountpoints: Sequence[Tuple[str, str]], readonly: bool = False) -> None:
        """Mount the guest's filesystems (mountpoint, device), shortest mountpoint first."""
        for mp, dev in sorted(mountpoints, key=lambda m: len(m[0])):
            try:
                if readonly:
                    self.g.mount_ro(dev, mp)
                else:
                    self.g.mount(dev, mp)
                self.mounted.append(mp)
            except RuntimeError as e:
                if mp == "/":
                    raise InspectionError("cannot mount the root filesystem {}: {}".format(
                        dev, _one_line(e))) from None
                # a broken non-root filesystem (e.g. a stale fstab entry) must not stop the conversion

    def command(self, argv: Sequence[str], what: str) -> str:
        """Run argv inside the guest (chroot with /dev /proc /sys); FixupError with output on failure."""
        script = " ".join(shlex.quote(a) for a in argv) + " 2>&1"
        try:
            # through sh so the failing command's own output (stdout+stderr) reaches the error
            return self.g.sh(script)
        except RuntimeError as e:
            raise FixupError("{} failed inside the guest: {}".format(what, _one_line(e, 300))) from None

    def commands_concurrently(self, jobs: Sequence[Tuple[Sequence[str], str]]) -> List[Tuple[str, float]]:
        """Run several commands inside the guest at once; (output, seconds) of each, in order.

        The appliance has more than one vCPU and update-initramfs and update-grub are each single-threaded,
        so running them side by side saves the shorter one's time. FixupError names the first that failed.
        """
        if len(jobs) == 1:
            t0 = time.monotonic()
            out = self.command(jobs[0][0], jobs[0][1])
            return [(out, time.monotonic() - t0)]
        d = "/tmp/v2v-jobs-{}".format(os.getpid())
        self.g.mkdir_p(d)
        parts = []
        for i, (argv, _what) in enumerate(jobs):
            cmd = " ".join(shlex.quote(a) for a in argv)
            parts.append('( s=$(date +%s%N); {cmd} >{d}/{i}.log 2>&1 </dev/null; '
                         'echo "$? $s $(date +%s%N)" >{d}/{i}.rc ) &'.format(cmd=cmd, d=d, i=i))
        try:
            self.g.sh("\n".join(parts + ["wait"]))
            results = []
            failed = None
            for i, (_argv, what) in enumerate(jobs):
                log = self.read_text("{}/{}.log".format(d, i))
                rc, start, end = (int(x) for x in self.read_text("{}/{}.rc".format(d, i)).split())
                if rc != 0 and failed is None:
                    failed = "{} failed inside the guest (exit {}): {}".format(what, rc, _one_line(log, 300))
                results.append((log, (end - start) / 1e9))
        except RuntimeError as e:
            raise FixupError("running {} inside the guest failed: {}".format(
                " and ".join(w for _a, w in jobs), _one_line(e, 300))) from None
        finally:
            try:
                self.g.rm_rf(d)
            except RuntimeError:
                pass
        if failed:
            raise FixupError(failed)
        return results

    def exists(self, path: str) -> bool:
        return bool(self.g.exists(path))

    def is_file(self, path: str) -> bool:
        return bool(self.g.is_file(path))

    def read_text(self, path: str) -> str:
        return self.g.read_file(path).decode("utf-8", "surrogateescape")

    def download_bytes(self, path: str) -> bytes:
        """A guest file's whole content (through a temporary file: the protocol caps read_file)."""
        import tempfile
        with tempfile.TemporaryDirectory(prefix="v2v-dl-") as d:
            local = os.path.join(d, "file")
            self.g.download(path, local)
            with open(local, "rb") as f:
                return f.read()

    def write_text(self, path: str, text: str) -> None:
        """Write a guest file, keeping the mode and owner of the file it replaces."""
        mode = owner = None
        if self.g.exists(path):
            st = self.g.statns(path)
            mode, owner = st["st_mode"] & 0o7777, (st["st_uid"], st["st_gid"])
        self.g.write(path, text.encode("utf-8", "surrogateescape"))
        if mode is not None and owner is not None:
            self.g.chmod(mode, path)
            self.g.chown(owner[0], owner[1], path)

    def fstrim_all(self) -> None:
        """Discard free space of every mounted filesystem so the copy skips it."""
        for mp in self.mounted:
            try:
                self.g.fstrim(mp)
            except RuntimeError:
                pass  # not every filesystem supports discard; the copy is just larger

    def close(self) -> None:
        """Unmount, sync and shut the appliance down (writes reach the overlays)."""
        if self.g is None:
            return
        try:
            try:
                self.g.umount_all()
            except RuntimeError:
                pass
            self.g.shutdown()
        except RuntimeError as e:
            raise FixupError("the appliance did not shut down cleanly: " + _one_line(e)) from None
        finally:
            self.g.close()
            self.g = None

    def __enter__(self) -> "Appliance":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.g is not None:
            try:
                self.close()
            except FixupError:
                if exc[0] is None:
                    raise


def _one_line(e: BaseException, limit: int = 400) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else "..." + text[-limit:]


def guestfs_available() -> Optional[str]:
    """None when the binding is importable, else what to install."""
    return None if guestfs is not None else "apt-get install python3-guestfs"
