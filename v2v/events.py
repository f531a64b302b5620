"""The one event emitter: a progress bar and stage lines on a terminal, JSON lines with --json.

JSON events are one object per line on stdout with stable fields:
  {"event": "stage", "stage": "copy", "message": "..."}
  {"event": "progress", "stage": "copy", "done": 123, "total": 456, "unit": "bytes"}
        + "rate" (units per second since the stage's first progress event) and "eta" (seconds left at
          that rate), once there is a rate to tell
  {"event": "warning", "message": "..."}
  {"event": "info", "message": "..."}
  {"event": "result", ...}          the last line of a successful run
  {"event": "error", "message": "...", "kind": "SourceError"}   the last line of a failed run
"""
import io
import json
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, Optional, TextIO

try:
    from tqdm import tqdm
except ImportError:  # the bar is a nicety; JSON and plain lines work without it
    tqdm = None


class Emitter:
    """Events go here; rendering depends on the mode chosen once, at start-up."""

    def __init__(self, json_mode: bool = False, quiet: bool = False,
                 stream: Optional[TextIO] = None) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self.out = stream or (sys.stdout if json_mode else sys.stderr)
        self.tty = (not json_mode) and hasattr(self.out, "isatty") and self.out.isatty()
        self._bar: Any = None
        self._bar_stage = ""
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._progress_start = {}     # stage -> (monotonic time, done) of its first progress event
        self.warnings: list = []

    def _json(self, obj: dict) -> None:
        with self._lock:
            self.out.write(json.dumps(obj, sort_keys=True) + "\n")
            self.out.flush()

    def _line(self, text: str) -> None:
        if self.quiet:
            return
        with self._lock:
            self._close_bar()
            self.out.write("[{:6.1f}] {}\n".format(time.monotonic() - self._t0, text))
            self.out.flush()

    def stage(self, stage: str, message: str) -> None:
        if self.json_mode:
            self._json({"event": "stage", "stage": stage, "message": message})
        else:
            self._line(message)

    def info(self, message: str) -> None:
        if self.json_mode:
            self._json({"event": "info", "message": message})
        else:
            self._line(message)

    def warning(self, message: str) -> None:
        self.warnings.append(message)
        if self.json_mode:
            self._json({"event": "warning", "message": message})
        else:
            self._line("warning: " + message)

    def progress(self, stage: str, done: int, total: int, unit: str = "bytes") -> None:
        if self.json_mode:
            ev = {"event": "progress", "stage": stage, "done": done, "total": total, "unit": unit}
            ev.update(self._rate(stage, done, total))
            self._json(ev)
            return
        if self.quiet or not self.tty or tqdm is None:
            return
        with self._lock:
            if self._bar is None or self._bar_stage != stage:
                self._close_bar()
                scale = unit == "bytes"
                self._bar = tqdm(total=total, desc=stage, unit="B" if scale else unit,
                                 unit_scale=scale, unit_divisor=1024, file=self.out, leave=False)
                self._bar_stage = stage
            self._bar.update(max(0, done - self._bar.n))
            if done >= total:
                self._close_bar()

    def _rate(self, stage: str, done: int, total: int) -> dict:
        now = time.monotonic()
        t, first = self._progress_start.setdefault(stage, (now, done))
        if now - t < 0.5 or done <= first:
            return {}
        rate = (done - first) / (now - t)
        return {"rate": round(rate), "eta": round(max(0, total - done) / rate, 1)}

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @contextmanager
    def busy(self, stage: str, message: str) -> Iterator[None]:
        """A stage with no measurable progress: a spinner with elapsed seconds on a terminal."""
        self.stage(stage, message)
        if not self.tty or self.quiet:
            yield
            return
        stop = threading.Event()
        t0 = time.monotonic()

        def spin() -> None:
            frames = "|/-\\"
            i = 0
            while not stop.wait(0.25):
                with self._lock:
                    if self._bar is None:
                        self.out.write("\r  {} {} ({:.0f}s)\x1b[K".format(frames[i % 4], stage, time.monotonic() - t0))
                        self.out.flush()
                i += 1

        th = threading.Thread(target=spin, daemon=True)
        th.start()
        try:
            yield
        finally:
            stop.set()
            th.join()
            with self._lock:
                self.out.write("\r\x1b[K")
                self.out.flush()

    def result(self, payload: dict) -> None:
        if self.json_mode:
            self._json(dict(payload, event="result"))

    def error(self, message: str, kind: str) -> None:
        if self.json_mode:
            self._json({"event": "error", "message": message, "kind": kind})


def null() -> Emitter:
    """An emitter that shows nothing (library use, tests); it still records warnings."""
    return Emitter(quiet=True, stream=io.StringIO())
