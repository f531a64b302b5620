"""The resident tracker's epoch bookkeeping (linux_capture/resident.py), pure: what a refresh is told."""
from diskfmt.extents import ExtentList
from linux_capture.resident import MAX_EPOCHS, Epochs, address

import pytest

DEV = "/dev/sda"


def _written(*ranges):
    return {DEV: ExtentList(ranges)}


def test_the_first_rotate_opens_an_epoch_and_has_nothing_to_answer():
    e = Epochs([DEV], "abc")
    r = e.rotate(None)
    assert r["epoch"] == "abc:1" and "ranges" not in r and "first capture" in r["reason"]


def test_writes_since_an_epoch_are_answered_including_those_after_later_epochs_opened():
    e = Epochs([DEV], "abc")
    e1 = e.rotate(None)["epoch"]
    e.record(_written((0, 4096)))
    e2 = e.rotate(None)["epoch"]           # a refresh that failed: the converter still holds epoch 1
    e.record(_written((1 << 20, (1 << 20) + 512)))
    r = e.rotate(e1)
    assert ExtentList.from_compact(r["ranges"][DEV]) == ExtentList([(0, 4096), (1 << 20, (1 << 20) + 512)])
    # epoch 2 saw only the second write
    r2 = e.rotate(e2)
    assert ExtentList.from_compact(r2["ranges"][DEV]) == ExtentList([(1 << 20, (1 << 20) + 512)])


def test_epochs_before_the_one_asked_for_are_dropped():
    e = Epochs([DEV], "abc")
    e1 = e.rotate(None)["epoch"]
    e2 = e.rotate(e1)["epoch"]
    e.rotate(e2)
    r = e.rotate(e1)
    assert "ranges" not in r and "no longer held" in r["reason"]


def test_lost_events_spoil_every_epoch_held_but_not_later_ones():
    e = Epochs([DEV], "abc")
    e1 = e.rotate(None)["epoch"]
    e.record(None)                          # ring buffer overrun
    e2 = e.rotate(None)["epoch"]
    e.record(_written((8192, 12288)))
    r1 = e.rotate(e1)
    assert "ranges" not in r1 and "lost" in r1["reason"]
    r2 = e.rotate(e2)
    assert ExtentList.from_compact(r2["ranges"][DEV]) == ExtentList([(8192, 12288)])


def test_an_epoch_of_another_tracker_instance_is_refused():
    e = Epochs([DEV], "new")
    e.rotate(None)
    r = e.rotate("old:1")
    assert "ranges" not in r and "gone" in r["reason"], r
    assert "ranges" not in e.rotate("garbage")


def test_epochs_held_are_bounded():
    e = Epochs([DEV], "abc")
    first = e.rotate(None)["epoch"]
    for _ in range(MAX_EPOCHS + 3):
        e.rotate(None)
    assert len(e.held) == MAX_EPOCHS
    assert "ranges" not in e.rotate(first)


@pytest.mark.parametrize("bad", ["", "a/b", "x" * 65, "a b"])
def test_tracker_ids_are_restricted(bad):
    with pytest.raises(ValueError):
        address(bad)
