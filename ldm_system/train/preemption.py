"""Preemption: a signal asks the run to checkpoint and leave at the next step boundary.

Cluster schedulers warn a job before they kill it: SLURM sends SIGTERM (or the signal given with
`--signal=USR1@90`), then SIGKILL after a grace period. The handler only sets a flag; the training
loop asks every rank at each step boundary (one all-reduce of one number, `agreed`), so all ranks
stop at the same step even when the signal reached only some of them, write one complete
checkpoint together and exit with `EXIT_PREEMPTED`.

A worker's exit code does not survive `accelerate launch` / torchrun (it comes out as 1), so a
batch script that must tell "preempted, requeue me" from "failed" reads the status file instead:
when `LDM_EXIT_STATUS_FILE` is set, rank 0 writes `{"status": "preempted" | "completed", "step": N}`
there before exiting (launch/slurm/train.sbatch uses it).
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from types import FrameType

import torch

EXIT_PREEMPTED = 75  # EX_TEMPFAIL (sysexits.h): "try again later", the requeue convention
STATUS_ENV = "LDM_EXIT_STATUS_FILE"


class Preempted(SystemExit):
    """Raised by the trainer after the preemption checkpoint is written; exits with EXIT_PREEMPTED."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(EXIT_PREEMPTED)
        self.step, self.checkpoint = step, checkpoint

    def __str__(self) -> str:
        return f"preempted at step {self.step}; checkpoint {self.checkpoint}"


def parse_signal(name: str) -> signal.Signals:
    """'SIGUSR1', 'USR1' or '10' → signal.SIGUSR1, with an error that lists the valid names."""
    text = name.strip().upper()
    if text.isdigit():
        return signal.Signals(int(text))
    text = text if text.startswith("SIG") else "SIG" + text
    try:
        return signal.Signals[text]
    except KeyError:
        valid = ", ".join(s.name for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT))
        raise ValueError(f"unknown preemption signal {name!r} (e.g. {valid})") from None


class PreemptionFlag:
    """Installs handlers for `names` in the main thread; `close()` puts the old handlers back."""

    def __init__(self, names: tuple[str, ...] | list[str]) -> None:
        self.signals = [parse_signal(n) for n in names]
        self.received: signal.Signals | None = None
        self._old: dict[signal.Signals, object] = {}
        for sig in self.signals:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook worker): no preemption handling
                break

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum)

    def agreed(self, device: torch.device, reduce_max) -> bool:
        """True on every rank when any rank got a signal. `reduce_max(tensor) → tensor` is the
        collective (accelerate's `reduce(..., "max")`); every rank must call this at the same step."""
        flag = torch.tensor([1.0 if self.received is not None else 0.0], device=device)
        return bool(reduce_max(flag).item() > 0)

    def close(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


def write_status(status: str, step: int, path: str | None = None) -> None:
    """Rank 0: record how the run ended where the launcher script can read it (atomic)."""
    target = path or os.environ.get(STATUS_ENV)
    if not target:
        return
    target_path = Path(target)
    tmp = target_path.with_name(target_path.name + ".tmp")
    tmp.write_text(json.dumps({"status": status, "step": step}) + "\n")
    os.replace(tmp, target_path)
