"""The engine with a toy task: steps, checkpoints, exact resume, NaN handling, LR schedule."""
from __future__ import annotations

import json

import pytest
import torch

from ldm_system.train import checkpoint as ckpt
from ldm_system.train.engine import NonFiniteLossError, Trainer
from ldm_system.train.prepare import warmup_cosine
from ldm_system.train.task import Task
from engine_toys import ToyStream, ToyTask, toy_cfg as _cfg


def test_toy_task_satisfies_protocol():
    assert isinstance(ToyTask(), Task)


def test_optional_hooks_have_defaults():
    from ldm_system.train.task import call_hook

    assert call_hook(ToyTask(), "checkpoint_metadata") == {}
    assert call_hook(ToyTask(), "to_device", torch.device("cpu")) is None

    class WithMeta(ToyTask):
        def checkpoint_metadata(self):
            return {"classes": ["a"]}

    assert call_hook(WithMeta(), "checkpoint_metadata") == {"classes": ["a"]}
    with pytest.raises(KeyError, match="not an optional task hook"):
        call_hook(ToyTask(), "to_devices")


def test_trains_and_writes_run_folder(tmp_path):
    tr = Trainer(ToyTask(), ToyStream(), _cfg(tmp_path, steps=40, ckpt_every=0), run_config=_cfg(tmp_path))
    first = None
    tr.fit()
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, last = lines[0]["loss/net"], lines[-1]["loss/net"]
    assert last < 0.5 * first
    assert (tmp_path / "run" / "config.yaml").exists()
    assert (tmp_path / "run" / "previews").is_dir()
    assert ckpt.resolve("latest", tmp_path / "run").name == "step_00000040"


def test_retention_keeps_last_k(tmp_path):
    Trainer(ToyTask(), ToyStream(), _cfg(tmp_path)).fit()
    names = [p.name for p in ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")]
    assert names == ["step_00000008", "step_00000012"]


def test_resume_continues_same_trajectory(tmp_path):
    full = Trainer(ToyTask(), ToyStream(), _cfg(tmp_path / "a"))
    full.fit()
    # interrupted run: stop after 8 steps, then a fresh process-like Trainer resumes
    part = Trainer(ToyTask(), ToyStream(), _cfg(tmp_path / "b", steps=8))
    part.fit()
    torch.manual_seed(1234)  # a fresh process would have other RNG state: resume must restore it
    resumed = Trainer(ToyTask(), ToyStream(), _cfg(tmp_path / "b"), resume="latest")
    resumed.fit()
    assert resumed.step == 12
    for a, b in zip(full.raw["net"].parameters(), resumed.raw["net"].parameters()):
        assert torch.equal(a, b)
    for a, b in zip(full.ema.shadow, resumed.ema.shadow):
        assert torch.equal(a, b)


def test_resume_rejects_other_task(tmp_path):
    Trainer(ToyTask(), ToyStream(), _cfg(tmp_path, steps=4)).fit()

    class OtherTask(ToyTask):
        pass

    with pytest.raises(ValueError, match="written by task 'ToyTask'"):
        Trainer(OtherTask(), ToyStream(), _cfg(tmp_path, steps=8), resume="latest")


def test_nan_loss_skips_step_then_stops_after_saving(tmp_path):
    tr = Trainer(ToyTask(), ToyStream(nan_at={2}), _cfg(tmp_path, steps=6, ema_module=""))
    tr.fit()
    assert tr.nan_steps_total == 1 and tr.step == 6
    tr = Trainer(ToyTask(), ToyStream(nan_at=set(range(3, 100))), _cfg(tmp_path / "n", steps=20, max_nan_steps=3))
    with pytest.raises(NonFiniteLossError, match="3 consecutive non-finite"):
        tr.fit()
    assert ckpt.resolve("latest", tmp_path / "n" / "run") is not None


def test_crash_mid_write_keeps_latest(tmp_path):
    Trainer(ToyTask(), ToyStream(), _cfg(tmp_path, steps=4)).fit()
    root = tmp_path / "run" / "checkpoints"
    (root / "step_00000008.tmp").mkdir()  # a half-written checkpoint from a killed process
    assert ckpt.resolve("latest", tmp_path / "run").name == "step_00000004"


def test_warmup_cosine_values():
    f = warmup_cosine(warmup=10, total=110, min_ratio=0.1, schedule="cosine")
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert f(110) == pytest.approx(0.1)


def test_batch_len_counts_samples_of_every_batch_kind():
    """images/s counts samples: the stream's Batch by its keys (it is not a tuple), tensors by rows."""
    from ldm_system.data.stream_worker import Batch
    from ldm_system.train.engine import _batch_len

    b = Batch(torch.zeros(3, 1, 8, 8), torch.zeros(3, dtype=torch.long), ["", "", ""], ["a", "b", "c"])
    assert _batch_len(b) == 3
    assert not hasattr(b, "__iter__")
    assert _batch_len(torch.zeros(5, 2)) == 5
    assert _batch_len((torch.zeros(4, 2), torch.zeros(4))) == 4


def test_cpu_budget_clock_ignores_time_the_process_is_not_computing(tmp_path):
    """`train.budget_clock: cpu` counts this process's CPU time: time spent off the CPU (here a sleep
    in every step, as when other work holds the cores) does not use up the budget; the wall clock does."""
    import time

    from ldm_system.train.engine import budget_clock

    class Descheduled(ToyTask):
        def losses(self, *a, **kw):
            time.sleep(0.05)
            return super().losses(*a, **kw)

    wall0, cpu0 = budget_clock("wall"), budget_clock("cpu")
    time.sleep(0.2)
    assert budget_clock("wall") - wall0 >= 0.2 and budget_clock("cpu") - cpu0 < 0.05
    # 0.6 s: a step's own CPU time (a few ms, more when a busy suite leaves threads in this process)
    # stays far below it over 40 steps, while 40 sleeps take 2 s of wall time
    budget = dict(max_minutes=0.01, ckpt_every=0, steps=40)
    wall = Trainer(Descheduled(), ToyStream(), _cfg(tmp_path / "wall", **budget))
    wall.fit()
    cpu = Trainer(Descheduled(), ToyStream(), _cfg(tmp_path / "cpu", budget_clock="cpu", **budget))
    cpu.fit()
    assert wall.step <= 14 and cpu.step == 40
    assert ckpt.resolve("latest", tmp_path / "wall" / "run").name == f"step_{wall.step:08d}"  # stopped cleanly
