"""Resume and preemption in one process: damaged checkpoints, weights-only resumes, launcher
precedence, and a signal that checkpoints at the next step and leaves with exit code 75."""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from torch import nn

from ldm_system.config import ConfigError, load_config
from ldm_system.train import checkpoint as ckpt
from ldm_system.train import launch_settings
from ldm_system.train.engine import Trainer
from ldm_system.train.engine_config import EngineConfig, LRConfig
from ldm_system.train.preemption import EXIT_PREEMPTED, Preempted, parse_signal
from engine_toys import ToyStream, ToyTask, toy_cfg as _cfg


def _step_dir(tmp_path, step):
    return tmp_path / "run" / "checkpoints" / f"step_{step:08d}"


def _weights(tr):
    return [p.detach().clone() for p in tr.raw["net"].parameters()]


# ---- manifests and damaged files --------------------------------------------------------------
def test_every_checkpoint_has_a_manifest_that_verifies(tmp_path):
    Trainer(ToyTask(), ToyStream(), _cfg(tmp_path, steps=4)).fit()
    folder = _step_dir(tmp_path, 4)
    files = json.loads((folder / ckpt.MANIFEST).read_text())["files"]
    assert "trainer.json" in files and "random_states_0.pkl" in files and "weights/net.safetensors" in files
    ckpt.verify(folder)  # does not raise


@pytest.mark.parametrize("damage", ["empty", "flip", "delete"])
def test_damaged_rng_state_is_an_error_naming_the_file(tmp_path, damage):
    Trainer(ToyTask(), ToyStream(), _cfg(tmp_path, steps=4)).fit()
    f = _step_dir(tmp_path, 4) / "random_states_0.pkl"
    if damage == "empty":
        f.write_bytes(b"")
    elif damage == "flip":
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    else:
        f.unlink()
    with pytest.raises(ckpt.CheckpointError, match="random_states_0.pkl"):
        Trainer(ToyTask(), ToyStream(), _cfg(tmp_path, steps=8), resume=str(_step_dir(tmp_path, 4)))


def test_latest_skips_a_damaged_checkpoint_and_says_so(tmp_path, capsys):
    Trainer(ToyTask(), ToyStream(), _cfg(tmp_path, steps=8)).fit()  # checkpoints at 4 and 8
    (_step_dir(tmp_path, 8) / "random_states_0.pkl").write_bytes(b"")
    tr = Trainer(ToyTask(), ToyStream(), _cfg(tmp_path, steps=12), resume="latest")
    assert tr.step == 4
    out = capsys.readouterr().out
    assert "skipping checkpoint step_00000008" in out and "random_states_0.pkl" in out


def test_weights_only_resume_ignores_damaged_pickles_and_keeps_the_weights(tmp_path, capsys):
    first = Trainer(ToyTask(), ToyStream(), _cfg(tmp_path, steps=4))
    first.fit()
    (_step_dir(tmp_path, 4) / "random_states_0.pkl").write_bytes(b"")
    tr = Trainer(ToyTask(), ToyStream(), _cfg(tmp_path, steps=8), resume="latest", resume_weights_only=True)
    assert tr.step == 4
    for a, b in zip(_weights(first), _weights(tr)):
        assert torch.equal(a, b)
    for a, b in zip(first.ema.shadow, tr.ema.shadow):
        assert torch.equal(a, b)
    assert tr.ema.num_updates == first.ema.num_updates
    assert "resumed weights only" in capsys.readouterr().out
    tr.fit()
    assert tr.step == 8


def test_resume_latest_without_checkpoint_says_so(tmp_path, capsys):
    tr = Trainer(ToyTask(), ToyStream(), _cfg(tmp_path, steps=2), resume="latest")
    assert tr.step == 0
    assert f"no checkpoint in {tmp_path / 'run' / 'checkpoints'}, starting from step 0" in capsys.readouterr().out


def test_resume_from_missing_folder_is_an_error(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no such checkpoint folder"):
        Trainer(ToyTask(), ToyStream(), _cfg(tmp_path, steps=2), resume=str(tmp_path / "nope"))


def test_checkpoint_of_another_model_is_refused_naming_tensors(tmp_path):
    Trainer(ToyTask(), ToyStream(), _cfg(tmp_path, steps=4)).fit()

    class Wider(ToyTask):
        def build(self):
            return {"net": nn.Linear(3, 2)}

    Wider.__name__ = "ToyTask"  # same task name, other shapes: the tensors must tell
    with pytest.raises(ckpt.CheckpointError, match=r"another model.*weight: \(1, 3\) vs \(2, 3\)"):
        Trainer(Wider(), ToyStream(), _cfg(tmp_path, steps=8), resume="latest")


def test_changed_zero_stage_is_an_error(tmp_path):
    Trainer(ToyTask(), ToyStream(), _cfg(tmp_path, steps=4)).fit()
    folder = _step_dir(tmp_path, 4)
    meta = json.loads((folder / "trainer.json").read_text())
    meta["zero_stage"] = 3
    (folder / "trainer.json").write_text(json.dumps(meta))
    ckpt.write_manifest(folder)  # a consistent folder, just from a ZeRO-3 run
    with pytest.raises(ckpt.CheckpointError, match="ZeRO stage 3, this run uses stage 0"):
        Trainer(ToyTask(), ToyStream(), _cfg(tmp_path, steps=8), resume="latest")


def test_changed_world_size_resumes_weights_only_and_logs_it(tmp_path, capsys):
    first = Trainer(ToyTask(), ToyStream(), _cfg(tmp_path, steps=4))
    first.fit()
    folder = _step_dir(tmp_path, 4)
    meta = json.loads((folder / "trainer.json").read_text())
    meta["world_size"] = 2
    (folder / "trainer.json").write_text(json.dumps(meta))
    ckpt.write_manifest(folder)
    tr = Trainer(ToyTask(), ToyStream(), _cfg(tmp_path, steps=8), resume="latest")
    assert tr.step == 4 and all(torch.equal(a, b) for a, b in zip(_weights(first), _weights(tr)))
    err = capsys.readouterr().out
    assert "world size changed from 2 to 1" in err and "new optimizer state" in err


def test_weights_only_resume_continues_the_lr_schedule(tmp_path):
    from ldm_system.train.prepare import warmup_cosine

    kw = dict(steps=20, lr=LRConfig(schedule="cosine", warmup_steps=4), ckpt_every=5)
    Trainer(ToyTask(), ToyStream(), _cfg(tmp_path, **{**kw, "steps": 10})).fit()
    tr = Trainer(ToyTask(), ToyStream(), _cfg(tmp_path, **kw), resume="latest", resume_weights_only=True)
    want = 0.05 * warmup_cosine(4, 20, 0.1, "cosine")(10)  # ToyTask's base LR is 0.05
    assert tr.p.schedulers["net"].get_last_lr()[0] == pytest.approx(want)
    assert tr.p.optimizers["net"].param_groups[0]["lr"] == pytest.approx(want)


# ---- preemption -------------------------------------------------------------------------------
class SignalAt(ToyStream):
    """Sends this process `sig` while producing batch number `at` (i.e. mid-step)."""

    def __init__(self, at: int, sig: signal.Signals, **kw) -> None:
        super().__init__(**kw)
        self.at, self.sig = at, sig

    def __iter__(self):
        for batch in super().__iter__():
            if self.pos == self.at:
                os.kill(os.getpid(), self.sig)
            yield batch


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_checkpoints_at_the_next_step_and_exits_75(tmp_path, sig, monkeypatch):
    status = tmp_path / "status.json"
    monkeypatch.setenv("LDM_EXIT_STATUS_FILE", str(status))
    full = Trainer(ToyTask(), ToyStream(), _cfg(tmp_path / "a"))
    full.fit()
    assert json.loads(status.read_text()) == {"status": "completed", "step": 12}

    tr = Trainer(ToyTask(), SignalAt(6, sig), _cfg(tmp_path / "b"))
    with pytest.raises(Preempted) as info:
        tr.fit()
    assert info.value.code == EXIT_PREEMPTED and info.value.step == 6
    assert json.loads(status.read_text()) == {"status": "preempted", "step": 6}
    assert ckpt.resolve("latest", tmp_path / "b" / "run").name == "step_00000006"
    assert signal.getsignal(sig) is not None and signal.getsignal(sig) != tr.preempt._handle  # handlers restored

    torch.manual_seed(999)
    resumed = Trainer(ToyTask(), ToyStream(), _cfg(tmp_path / "b"), resume="latest")
    resumed.fit()
    for a, b in zip(_weights(full), _weights(resumed)):
        assert torch.equal(a, b)
    for a, b in zip(full.ema.shadow, resumed.ema.shadow):
        assert torch.equal(a, b)


def test_unknown_signal_name_is_a_clear_error():
    assert parse_signal("USR1") == signal.SIGUSR1 and parse_signal("SIGTERM") == signal.SIGTERM
    with pytest.raises(ValueError, match="unknown preemption signal 'SIGNOPE'"):
        parse_signal("SIGNOPE")


# ---- launcher vs YAML ---------------------------------------------------------------------------
@pytest.mark.parametrize("yaml_value, env_value, want", [
    (None, None, "no"), (None, "bf16", "bf16"), ("bf16", None, "bf16"), ("bf16", "no", "bf16"),
    ("bf16", "bf16", "bf16"), ("no", None, "no"),
])
def test_mixed_precision_launcher_first_unless_yaml_says(yaml_value, env_value, want):
    env = {} if env_value is None else {"ACCELERATE_MIXED_PRECISION": env_value}
    assert launch_settings.resolve(EngineConfig(mixed_precision=yaml_value), env).mixed_precision == want


def test_conflicting_precision_names_both_values():
    with pytest.raises(ConfigError, match="train.mixed_precision is 'fp16' in the config but the launcher says 'bf16'"):
        launch_settings.resolve(EngineConfig(mixed_precision="fp16"), {"ACCELERATE_MIXED_PRECISION": "bf16"})


def test_grad_accum_from_launcher_and_conflict():
    env = {"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"}
    assert launch_settings.resolve(EngineConfig(), env).grad_accum == 4
    assert launch_settings.resolve(EngineConfig(), {}).grad_accum == 1
    assert launch_settings.resolve(EngineConfig(grad_accum=4), env).grad_accum == 4
    with pytest.raises(ConfigError, match="train.grad_accum is 2 in the config but the launcher says 4"):
        launch_settings.resolve(EngineConfig(grad_accum=2), env)


def test_resolved_settings_are_written_to_the_run_config(tmp_path, monkeypatch):
    from ldm_system.train.runs import LDMRunConfig

    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "2")
    run_cfg = load_config(LDMRunConfig, None, [f"data.shards={tmp_path}", f"train.out_dir={tmp_path / 'run'}"])
    Trainer(ToyTask(), ToyStream(), run_cfg.train, run_config=run_cfg)
    text = (tmp_path / "run" / "config.yaml").read_text()
    assert "grad_accum: 2" in text and "mixed_precision: 'no'" in text


def test_one_batch_size_key():
    from ldm_system.train.runs import LDMRunConfig

    with pytest.raises(ConfigError, match="unknown key 'train.batch_size'"):
        load_config(LDMRunConfig, None, ["data.shards=x", "train.batch_size=8"])
