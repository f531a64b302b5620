import io
import json

from v2v.events import Emitter


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_json_events_are_one_object_per_line_with_stable_fields():
    out = io.StringIO()
    ev = Emitter(json_mode=True, stream=out)
    with ev.busy("fix", "converting"):
        ev.progress("copy", 5, 10)
    ev.warning("careful")
    ev.result({"name": "web1"})
    lines = [json.loads(ln) for ln in out.getvalue().splitlines()]
    assert lines == [
        {"event": "stage", "stage": "fix", "message": "converting"},
        {"event": "progress", "stage": "copy", "done": 5, "total": 10, "unit": "bytes"},
        {"event": "warning", "message": "careful"},
        {"event": "result", "name": "web1"},
    ]
    assert ev.warnings == ["careful"]


def test_busy_stage_shows_a_spinner_on_a_terminal_and_clears_it():
    import time
    out = _Tty()
    ev = Emitter(stream=out)
    with ev.busy("fix", "converting the guest"):
        time.sleep(0.6)
    text = out.getvalue()
    assert "converting the guest" in text
    assert "\r  | fix (0s)" in text or "\r  / fix (0s)" in text
    assert text.endswith("\r\x1b[K")


def test_plain_stream_gets_no_control_sequences():
    out = io.StringIO()
    ev = Emitter(stream=out)
    with ev.busy("fix", "converting the guest"):
        ev.progress("copy", 1, 2)
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()


def test_json_progress_carries_rate_and_eta_once_measurable():
    import time
    out = io.StringIO()
    ev = Emitter(json_mode=True, stream=out)
    ev.progress("capture", 0, 1000)
    time.sleep(0.6)
    ev.progress("capture", 300, 1000)
    first, second = [json.loads(ln) for ln in out.getvalue().splitlines()]
    assert "rate" not in first and "eta" not in first
    assert 300 / 1.5 < second["rate"] < 300 / 0.55
    assert abs(second["eta"] - 700 / second["rate"]) < 0.2
