"""The server's progress board: states, the in-flight rule, and forgetting finished requests."""
import time

import pytest

from ldm_system.serving.progress import ProgressBoard, RequestIdInUse


def test_a_request_goes_from_queued_to_done():
    board = ProgressBoard()
    assert board.get("a") == {"state": "unknown", "step": 0, "total": 0}
    board.open("a", total=50)
    assert board.get("a") == {"state": "queued", "step": 0, "total": 50}
    board.update("a", state="running", step=3)
    assert board.get("a") == {"state": "running", "step": 3, "total": 50}
    with pytest.raises(RequestIdInUse, match="'a' names a request that is still in flight"):
        board.open("a")
    board.close("a", "done")
    board.close("a", "failed")  # a second close keeps the first state
    assert board.get("a") == {"state": "done", "step": 3, "total": 50}
    board.open("a")  # a finished id may be used again
    assert board.get("a")["state"] == "queued"
    with pytest.raises(ValueError, match="not 'running'"):
        board.close("a", "running")


def test_finished_entries_are_bounded_in_count_and_time():
    board = ProgressBoard(keep=3, keep_s=0.2)
    for i in range(5):
        board.open(str(i))
        board.close(str(i), "cancelled")
    assert [board.get(str(i))["state"] for i in range(5)] == ["unknown", "unknown", "cancelled", "cancelled", "cancelled"]
    board.open("live")
    time.sleep(0.3)
    assert board.get("4")["state"] == "unknown" and board.get("live")["state"] == "queued"
    assert board.counts() == {"in_flight": 1, "finished_kept": 0}
