"""The standby's pure parts: which chunks a refresh writes, the state across reopen, the units' text."""
import pytest

from v2v.errors import OutputError
from v2v.standby.standby import changed_ranges
from v2v.standby.state import Generation, State
from v2v.standby.timer import service_text, timer_text

MiB = 1 << 20
A, B = b"a" * 32, b"b" * 32


def test_only_new_or_changed_chunks_are_written_and_adjacent_ones_merge():
    old = frozenset({(0, 0, MiB, A), (0, MiB, MiB, A), (0, 2 * MiB, MiB, A), (1, 0, MiB, A)})
    new = frozenset({(0, 0, MiB, A), (0, MiB, MiB, B), (0, 2 * MiB, MiB, B), (0, 5 * MiB, 4096, B),
                     (1, 0, MiB, A)})
    assert changed_ranges(new, old) == {0: [(MiB, 2 * MiB), (5 * MiB, 4096)]}


def test_no_change_gives_no_range():
    same = frozenset({(0, 0, MiB, A)})
    assert changed_ranges(same, same) == {}


def test_a_chunk_with_other_bounds_counts_as_changed():
    assert changed_ranges(frozenset({(0, 0, 2 * MiB, A)}), frozenset({(0, 0, MiB, A)})) == {0: [(0, 2 * MiB)]}


def test_state_keeps_generations_manifests_and_current_across_reopen(tmp_path):
    st = State(str(tmp_path), create=True)
    st.add_generation(Generation(1, 1.0, ("replica.g1.qcow2",), ("fixed.g1.qcow2",), 10, 20, 1.5),
                      frozenset({(0, 0, MiB, A)}))
    st.add_generation(Generation(2, 2.0, ("replica.g2.qcow2",), ("fixed.g2.qcow2",), 1, 2, 0.5),
                      frozenset({(0, 0, MiB, B)}))
    run_id = st.start_run("refresh", 2)
    st.close()
    st = State(str(tmp_path))
    assert [g.number for g in st.generations()] == [1, 2] and st.current() == 2
    assert st.manifest(1) == frozenset({(0, 0, MiB, A)})
    assert [r.status for r in st.mark_killed()] == ["running"]
    assert st.runs()[-1].status == "killed"
    st.finish_run(run_id, "ok", 2, 0, 0, "")
    st.drop_generation(1)
    assert [g.number for g in st.generations()] == [2] and st.manifest(1) == frozenset()
    st.close()


def test_a_directory_without_state_is_not_a_standby(tmp_path):
    with pytest.raises(OutputError, match="is not a standby"):
        State(str(tmp_path))


def test_units_run_one_refresh_on_the_calendar():
    svc = service_text("db1", ["/usr/bin/python3", "-m", "v2v", "standby", "refresh", "db1", "--dir", "/srv/a b"])
    assert "Type=oneshot" in svc and "ExecStart=/usr/bin/python3 -m v2v standby refresh db1 --dir '/srv/a b'" in svc
    tmr = timer_text("db1", "*-*-* 02:00")
    assert "OnCalendar=*-*-* 02:00" in tmr and "Persistent=true" in tmr and "WantedBy=timers.target" in tmr
