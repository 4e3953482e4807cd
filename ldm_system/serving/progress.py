"""Step progress of `LDMPipeline` verbs: a tqdm bar for the CLI, a bounded board for the HTTP server.

Every verb passes `callback(i, t, x, x̂₀)` down to the diffusion loops (`diffusion/loop.py`,
inversion, null-condition inversion), which call it once per step, so one bar counts sampling,
inversion, editing and interpolation alike. A guided step counts once (cond and null share one
batched call); fixed-point refinements and null-embedding fits count as the step they refine.

The server's `ProgressBoard` answers `GET /progress/{request_id}` with
`{"state": "queued" | "running" | "done" | "failed" | "cancelled" | "unknown", "step": int, "total": int}`.
Requests in flight are bounded by the server's queue; finished entries are kept for `keep_s`
seconds, at most `keep` of them, then forgotten ("unknown").
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from ldm_system.diffusion.loop import StepCallback


@contextmanager
def step_progress(total: int, desc: str, enabled: bool = True) -> Iterator[StepCallback | None]:
    """Yield a step callback that advances a bar of `total` steps (None when disabled)."""
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)
    try:
        yield lambda i, t, x, x0: bar.update(1)
        bar.refresh()  # tqdm throttles redraws: show the final count before the bar is cleared
    finally:
        bar.close()


def invert_steps(steps: int, null_optimization: bool = False) -> int:
    """Steps `LDMPipeline.invert` reports: inversion, the null fits (if any), reconstruction."""
    return steps * (3 if null_optimization else 2)


FINISHED = ("done", "failed", "cancelled")


@dataclass
class _Entry:
    state: str
    step: int
    total: int
    finished_at: float = 0.0


class RequestIdInUse(ValueError):
    """A request id that names a request still in flight."""


class ProgressBoard:
    """Thread-safe states of the server's requests: the worker thread writes, the event loop reads.
    The lock guards only dictionary updates, never model work, so a read never waits on the model."""

    def __init__(self, keep: int = 1000, keep_s: float = 600.0) -> None:
        self.keep, self.keep_s = keep, keep_s
        self._active: dict[str, _Entry] = {}
        self._finished: OrderedDict[str, _Entry] = OrderedDict()  # oldest first
        self._lock = threading.Lock()

    def open(self, request_id: str, total: int = 0) -> None:
        """A new request: "queued" (raises RequestIdInUse if the id is in flight)."""
        with self._lock:
            if request_id in self._active:
                raise RequestIdInUse(f"X-Request-Id {request_id!r} names a request that is still in flight")
            self._finished.pop(request_id, None)
            self._active[request_id] = _Entry("queued", 0, total)

    def update(self, request_id: str, state: str | None = None, step: int | None = None,
               total: int | None = None) -> None:
        with self._lock:
            e = self._active.get(request_id)
            if e is None:
                return
            e.state = e.state if state is None else state
            e.step = e.step if step is None else step
            e.total = e.total if total is None else total

    def close(self, request_id: str, state: str) -> None:
        """Finish a request ("done" | "failed" | "cancelled"); a second close keeps the first state."""
        if state not in FINISHED:
            raise ValueError(f"a request finishes as one of {FINISHED}, not {state!r}")
        with self._lock:
            e = self._active.pop(request_id, None)
            if e is None:
                return
            e.state, e.finished_at = state, time.monotonic()
            self._finished[request_id] = e
            self._forget()

    def get(self, request_id: str) -> dict:
        with self._lock:
            self._forget()
            e = self._active.get(request_id) or self._finished.get(request_id)
            if e is None:
                return {"state": "unknown", "step": 0, "total": 0}
            return {"state": e.state, "step": e.step, "total": e.total}

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"in_flight": len(self._active), "finished_kept": len(self._finished)}

    def _forget(self) -> None:
        horizon = time.monotonic() - self.keep_s
        while self._finished:
            rid, e = next(iter(self._finished.items()))
            if len(self._finished) <= self.keep and e.finished_at >= horizon:
                break
            del self._finished[rid]


__all__ = ["FINISHED", "ProgressBoard", "RequestIdInUse", "invert_steps", "step_progress"]
