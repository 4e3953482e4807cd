"""The server's one model worker: a bounded queue, dynamic batching of sample requests, cancellation.

A single thread owns the model. Requests wait in a queue of at most `max_queue` jobs (a full queue
is refused at once: the server answers 503 with Retry-After). The worker takes the oldest job; when
it is a sample request it waits up to `window_ms` for more sample requests with the same
`merge_key` and runs them as one UNet batch of at most `max_images` images (`batch_sample.py`).
Other verbs (invert, edit, interpolate) run one at a time.

Every step of every loop calls back here: the job's progress is updated, and a job that was
cancelled (its client went away, the server is stopping) or is past its deadline stops at that
step. A merged batch stops when all of its jobs are cancelled; a cancelled member of a batch that
goes on is dropped when the batch ends.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from ldm_system.diffusion.loop import StepCallback
from ldm_system.serving.batch_sample import merge_key, prepare, sample_merged
from ldm_system.serving.progress import ProgressBoard
from ldm_system.serving.requests import SampleRequest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingConfig:
    window_ms: float = 15.0  # how long the oldest sample request waits for partners
    max_images: int = 32  # images in one merged UNet batch (1: one request at a time)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.window_ms) and self.window_ms >= 0):
            raise ValueError(f"batch window must be a finite number of milliseconds >= 0, got {self.window_ms}")
        if self.max_images < 1:
            raise ValueError(f"batch images must be at least 1, got {self.max_images}")


class QueueFull(RuntimeError):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Stopped(RuntimeError):
    """The job was cancelled or ran out of time; `reason` says which."""

    def __init__(self, reason: str, step: int, total: int) -> None:
        super().__init__(f"{reason} at step {step}/{total}")
        self.reason, self.step, self.total = reason, step, total


TIMED_OUT = "timed out"


@dataclass(eq=False)
class Job:
    """One request's work: a sample request (mergeable) or any other call taking a step callback."""

    request_id: str
    total: int  # steps the progress counts
    deadline: float  # time.monotonic() after which the job stops
    sample: SampleRequest | None = None
    call: Callable[[StepCallback], Any] | None = None
    post: Callable[[Any], Any] | None = None  # applied to the result on the worker (PNG encoding)
    future: Future = field(default_factory=Future)
    step: int = 0
    cancel_reason: str | None = None
    batch_requests: int = 1  # requests in the batch that ran it
    started: float = 0.0  # time.perf_counter() when its batch began
    seconds: float = 0.0  # how long its batch ran

    @property
    def images(self) -> int:
        return self.sample.num if self.sample is not None else 0

    @property
    def key(self) -> Hashable | None:
        return None if self.sample is None else merge_key(self.sample)

    def cancel(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason

    def stop_reason(self, now: float) -> str | None:
        return self.cancel_reason or (TIMED_OUT if now > self.deadline else None)


class Scheduler:
    def __init__(self, pipe, config: BatchingConfig, board: ProgressBoard, max_queue: int = 64) -> None:
        self.pipe, self.config, self.board, self.max_queue = pipe, config, board, max_queue
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._running: list[Job] = []
        self._batch_seconds = 1.0  # moving average, for Retry-After
        self.batches_run = self.requests_run = 0  # batches that ran, and the requests in them
        self._thread = threading.Thread(target=self._work, name="ldm-model-worker", daemon=True)
        self._thread.start()

    # ---- the event loop's side ------------------------------------------------------------------
    def submit(self, job: Job) -> Future:
        with self._cond:
            if self._closing:
                raise QueueFull("the server is shutting down", retry_after=5)
            if len(self._queue) >= self.max_queue:
                wait = max(1, math.ceil(self._batch_seconds))
                raise QueueFull(f"the server is busy: {len(self._queue)} requests are waiting (server limit "
                                f"max_queue={self.max_queue}); retry in {wait} s", retry_after=wait)
            self._queue.append(job)
            self._cond.notify_all()
        return job.future

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"queued": len(self._queue), "running": len(self._running), "batches_run": self.batches_run,
                    "requests_run": self.requests_run}

    def close(self, grace_s: float) -> None:
        """Refuse new jobs, cancel the queued ones, give the running batch `grace_s` seconds to end
        (then cancel it at its next step) and stop the worker."""
        with self._cond:
            self._closing = True
            queued, self._queue = list(self._queue), deque()
            self._cond.notify_all()
        for job in queued:
            job.cancel("server shutting down")
            logger.info("request %s cancelled (server shutting down) before it started", job.request_id)
            self._finish(job, exc=Stopped("server shutting down", 0, job.total))
        self._thread.join(timeout=grace_s)
        with self._cond:
            for job in self._running:
                job.cancel("server shutting down")  # stops at its next step
        self._thread.join(timeout=max(5.0, grace_s))

    # ---- the worker thread ------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            t0 = time.perf_counter()
            try:
                self._run(batch)
            except BaseException as e:  # never let the worker die: the jobs answer 500, the next one runs
                logger.exception("model worker: unexpected error")
                for job in batch:
                    self._finish(job, exc=e)
            seconds = time.perf_counter() - t0
            with self._cond:
                self._running = []
                self.batches_run += 1
                self.requests_run += len(batch)
                self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * seconds

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while True:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._closing and not self._queue:
                    return None
                first = self._queue.popleft()
                reason = first.stop_reason(time.monotonic())
                if reason is None:
                    break
                logger.info("request %s %s before it started", first.request_id,
                            "timed out" if reason == TIMED_OUT else f"cancelled ({reason})")
                self._finish(first, exc=Stopped(reason, 0, first.total))
            batch = [first]
            if first.sample is not None and first.images < self.config.max_images:
                deadline = time.monotonic() + self.config.window_ms / 1000
                while True:
                    self._take_partners(batch)
                    left = deadline - time.monotonic()
                    if sum(j.images for j in batch) >= self.config.max_images or left <= 0 or self._closing:
                        break
                    self._cond.wait(left)
            self._running = batch
            return batch

    def _take_partners(self, batch: list[Job]) -> None:
        """Move queued jobs with the batch's merge key into it, oldest first, while they fit."""
        key, room = batch[0].key, self.config.max_images - sum(j.images for j in batch)
        for job in list(self._queue):
            if job.key == key and job.images <= room and job.stop_reason(time.monotonic()) is None:
                self._queue.remove(job)
                batch.append(job)
                room -= job.images

    def _run(self, batch: list[Job]) -> None:
        if batch[0].sample is not None:  # a request whose classes or size are wrong fails alone
            parts = {}
            for job in batch:
                try:
                    parts[job] = prepare(self.pipe, job.sample)
                except ValueError as e:
                    self._finish(job, exc=e)
            batch = [job for job in batch if job in parts]
            if not batch:
                return
        t0 = time.perf_counter()
        for job in batch:
            job.batch_requests, job.started = len(batch), t0
            self.board.update(job.request_id, state="running")

        def callback(i, t, x, x0) -> None:
            now = time.monotonic()
            for job in batch:
                job.step += 1
                self.board.update(job.request_id, step=job.step)
            reasons = [job.stop_reason(now) for job in batch]
            if all(reasons):
                raise Stopped(reasons[0], batch[0].step, batch[0].total)

        try:
            if batch[0].sample is not None:
                results = sample_merged(self.pipe, [parts[j] for j in batch], callback=callback)
            else:
                results = [batch[0].call(callback)]
        except Stopped:
            for job in batch:
                self._stopped(job)
            return
        except ValueError as e:  # the pipeline's own checks of the request (answered 422)
            for job in batch:
                self._finish(job, exc=e)
            return
        for job, result in zip(batch, results):
            if job.cancel_reason is not None:
                self._stopped(job)  # cancelled while its batch went on: its images are dropped
            else:
                self._finish(job, result=result if job.post is None else job.post(result))

    def _stopped(self, job: Job) -> None:
        reason = job.stop_reason(time.monotonic()) or TIMED_OUT
        logger.info("request %s %s at step %d/%d", job.request_id,
                    "timed out" if reason == TIMED_OUT else f"cancelled ({reason})", job.step, job.total)
        self._finish(job, exc=Stopped(reason, job.step, job.total))

    def _finish(self, job: Job, result: Any = None, exc: BaseException | None = None) -> None:
        if job.started:
            job.seconds = time.perf_counter() - job.started
        state = "done" if exc is None else "cancelled" if isinstance(exc, Stopped) else "failed"
        self.board.close(job.request_id, state)
        if job.future.done():
            return
        if exc is None:
            job.future.set_result(result)
        else:
            job.future.set_exception(exc)


__all__ = ["BatchingConfig", "Job", "QueueFull", "Scheduler", "Stopped", "TIMED_OUT"]
