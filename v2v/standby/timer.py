"""`v2v standby timer`: a systemd service that runs one refresh, and a timer that starts it."""
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from typing import Optional, Sequence

from ..command import run
from ..errors import CommandError, OutputError


@dataclass(frozen=True)
class TimerUnits:
    service: str     # paths written
    timer: str
    verified: bool   # systemd-analyze verify accepted them
    enabled: bool


def unit_name(name: str) -> str:
    return "v2v-standby-{}".format(name)


def service_text(name: str, argv: Sequence[str]) -> str:
    return "\n".join([
        "[Unit]",
        "Description=v2v standby refresh of {}".format(name),
        "Wants=network-online.target",
        "After=network-online.target libvirtd.service",
        "",
        "[Service]",
        "Type=oneshot",
        "ExecStart={}".format(" ".join(shlex.quote(a) for a in argv)),
        # the refresh idles on the wire most of the time: keep it out of the way of the host's own work
        "Nice=10",
        "IOSchedulingClass=idle",
        "",
    ])


def timer_text(name: str, on_calendar: str) -> str:
    return "\n".join([
        "[Unit]",
        "Description=Nightly v2v standby refresh of {}".format(name),
        "",
        "[Timer]",
        "OnCalendar={}".format(on_calendar),
        "Persistent=true",
        "RandomizedDelaySec=300",
        "",
        "[Install]",
        "WantedBy=timers.target",
        "",
    ])


def check_calendar(on_calendar: str) -> None:
    """Refuse a calendar expression systemd would not accept (when systemd-analyze is here)."""
    if shutil.which("systemd-analyze") is None:
        return
    try:
        run(["systemd-analyze", "calendar", on_calendar], what="systemd-analyze calendar")
    except CommandError as e:
        raise OutputError("--on-calendar {!r} is not a systemd calendar expression: {}".format(
            on_calendar, e.stderr.strip().splitlines()[-1] if e.stderr.strip() else e)) from None


def write_units(name: str, directory: str, on_calendar: str, unit_dir: str, enable: bool = False,
                python: Optional[str] = None) -> TimerUnits:
    """Write NAME's .service and .timer into unit_dir (temporary names, renamed), verify, optionally enable."""
    check_calendar(on_calendar)
    argv = [python or sys.executable, "-m", "v2v", "standby", "refresh", name, "--dir", os.path.abspath(directory)]
    base = unit_name(name)
    os.makedirs(unit_dir, exist_ok=True)
    paths = []
    for ext, text in ((".service", service_text(name, argv)), (".timer", timer_text(name, on_calendar))):
        path = os.path.join(unit_dir, base + ext)
        tmp = os.path.join(unit_dir, "." + base + ext + ".part")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        paths.append(path)
    verified = False
    if shutil.which("systemd-analyze") is not None:
        cp = run(["systemd-analyze", "verify"] + paths, check=False, what="systemd-analyze verify")
        problems = [ln for ln in (cp.stderr + cp.stdout).decode("utf-8", "replace").splitlines()
                    if base in ln]
        if cp.returncode != 0 or problems:
            raise OutputError("systemd-analyze verify rejected the units in {}: {}".format(
                unit_dir, "; ".join(problems[-3:]) or "exit {}".format(cp.returncode)))
        verified = True
    if enable:
        run(["systemctl", "daemon-reload"], what="systemctl daemon-reload")
        run(["systemctl", "enable", "--now", base + ".timer"], what="enabling " + base + ".timer")
    return TimerUnits(paths[0], paths[1], verified, enable)
