"""The baselines (GAN, flow, pixel AR, VQ-token AR) on the distributed engine: `ldm train-baseline` under
`accelerate launch --config_file launch/accelerate/single_node.yaml --num_processes 2` (DDP over gloo)
on real Fashion-MNIST shards, with each family's debug config.

For each family, 4 steps in one launch against 2 steps then `--resume latest` to 4 in a second one:
- the step-4 checkpoint's weights of every module (raw and EMA) and the optimizer states agree bit
  for bit, and so do the written model folders and the logged curve (metrics.jsonl, less timings);
- the two ranks read disjoint images: each rank's stream, rebuilt from its saved state, covers
  its own half of the shards;
- `registry.lookup(family).load(run)` gives a model whose samples are finite images in [-1, 1].

The flow under ZeRO-2 and ZeRO-3 (zero2.yaml, zero3.yaml) resumes exactly too; under ZeRO-3, where
each rank holds half of every parameter, its preview and model folder use the gathered weights. The
GAN (two modules, two optimizers) is refused under ZeRO in one line before anything trains.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from launch_utils import BIN, ROOT, accelerate, env, free_port

pytestmark = pytest.mark.distributed

CONFIGS = ROOT / "configs" / "baselines"
DDP = "launch/accelerate/single_node.yaml"
ZERO2 = "launch/accelerate/zero2.yaml"
ZERO3 = "launch/accelerate/zero3.yaml"
STEPS = 4


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from ldm_system.data.pack import pack

    out = tmp_path_factory.mktemp("baselines-ddp") / "images"
    pack("builtin:fashion-mnist", out, image_size=32, split="test", limit=128, shard_size=32)  # 2 shards a rank
    return out


@pytest.fixture(scope="module")
def vq_autoencoder(tmp_path_factory):
    """An untrained VQ-f4 autoencoder (8x8 codes of 32 entries): what the vq-ar family tokenizes with."""
    from autoencoders.config import AutoencoderConfig, QuantizerConfig
    from autoencoders.factory import build_autoencoder
    from autoencoders.io import save_autoencoder

    cfg = AutoencoderConfig(kind="vq", in_channels=1, channels=(8, 16, 16), f=4, latent_channels=3, layers_per_block=1,
                            norm_groups=8, quantizer=QuantizerConfig(codebook_size=32))
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("baselines-ddp-vq") / "vq"
    save_autoencoder(build_autoencoder(cfg), cfg, 1.0, out)
    return out


def _args(family: str, shards: Path, out: Path, steps: int, extra: Sequence[str]) -> list[str]:
    return ["-m", "ldm_system.cli", "train-baseline", family, "--config", str(CONFIGS / f"{family}-debug.yaml"),
            "--set", f"data.shards={shards}", "--set", f"train.out_dir={out}", "--set", f"train.steps={steps}",
            "--set", "train.checkpoint.every=2", "--set", "train.checkpoint.keep_last=0",
            "--set", "train.log.every=1", "--set", "train.log.progress=false", *extra]


def _train_both_ways(family: str, shards: Path, tmp_path: Path, launch_file: str,
                     extra: Sequence[str] = ()) -> tuple[Path, Path]:
    """(uninterrupted run, run resumed at STEPS // 2), both trained to STEPS."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    mode = f"file:{launch_file}"
    accelerate(_args(family, shards, full, STEPS, extra), mode=mode)
    accelerate(_args(family, shards, cut, STEPS // 2, extra), mode=mode)
    accelerate([*_args(family, shards, cut, STEPS, extra), "--resume", "latest"], mode=mode)
    return full, cut


def _step_dir(run: Path, step: int = STEPS) -> Path:
    return run / "checkpoints" / f"step_{step:08d}"


def _assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert set(a) == set(b), what
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k}"


def _tensors(obj, path: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested optimizer state (torch's, or DeepSpeed's ZeRO partitions), by path."""
    if isinstance(obj, torch.Tensor):
        return {path: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return {k: v for key, value in items for k, v in _tensors(value, f"{path}/{key}").items()}


def optimizer_files(step_dir: Path) -> list[Path]:
    """accelerate's optimizer.bin, optimizer_1.bin, ... (DDP), or DeepSpeed's per-rank ZeRO partitions."""
    return sorted(step_dir.glob("optimizer*.bin")) + sorted(step_dir.glob("pytorch_model/*optim_states.pt"))


def _curve(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in lines]  # timings differ


def assert_resumed_exactly(full: Path, cut: Path, modules: set[str]) -> None:
    weights = sorted(p.name for p in (_step_dir(full) / "weights").iterdir())
    assert {w.split(".")[0] for w in weights} == modules
    assert any(".ema." in w for w in weights), "the debug configs keep an EMA"
    for name in weights:
        _assert_same_tensors(load_file(str(_step_dir(full) / "weights" / name)),
                             load_file(str(_step_dir(cut) / "weights" / name)), name)
    for file in optimizer_files(_step_dir(full)):
        name = file.relative_to(_step_dir(full))
        state = _tensors(torch.load(file, map_location="cpu", weights_only=False))
        assert any("exp_avg_sq" in k for k in state), name  # Adam's moments are in there
        _assert_same_tensors(state, _tensors(torch.load(_step_dir(cut) / name, map_location="cpu",
                                                        weights_only=False)), str(name))
    _assert_same_tensors(load_file(str(full / "model" / "model.safetensors")),
                         load_file(str(cut / "model" / "model.safetensors")), "model folder")
    curve = _curve(full)
    assert [r["step"] for r in curve] == list(range(1, STEPS + 1))
    assert curve == _curve(cut)
    meta = json.loads((_step_dir(cut) / "trainer.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == STEPS and meta["ema_updates"] == STEPS
    first = load_file(str(_step_dir(full, 2) / "weights" / sorted(weights)[0]))
    last = load_file(str(_step_dir(full) / "weights" / sorted(weights)[0]))
    assert any(not torch.equal(first[k], last[k]) for k in first), "steps 3-4 changed no weight"


def assert_ranks_read_disjoint_images(family: str, run: Path) -> None:
    """Each rank's stream, rebuilt from the run's data config and the rank / world size in its saved
    loader state, read `samples_consumed` images; the two ranks' images share no key."""
    from ldm_system.baselines.registry import lookup
    from ldm_system.config import load_config
    from ldm_system.data.stream import make_loader

    data = dataclasses.replace(load_config(lookup(family).config, run / "config.yaml").data, num_workers=0,
                               infinite=False)
    keys = []
    for r in (0, 1):
        state = json.loads((_step_dir(run) / f"loader_rank{r}.json").read_text())
        assert (state["rank"], state["world_size"]) == (r, 2)
        assert state["samples_consumed"] == STEPS * data.batch_size
        seen: list[str] = []
        for batch in make_loader(data, rank=r, world_size=2):
            seen += batch.keys
            if len(seen) >= state["samples_consumed"]:
                break
        keys.append(set(seen[:state["samples_consumed"]]))
    assert len(keys[0]) == len(keys[1]) == STEPS * data.batch_size
    assert not keys[0] & keys[1], "both ranks trained on the same images"


def assert_model_samples(family: str, run: Path) -> None:
    import kernels
    from ldm_system.baselines.registry import lookup

    model = lookup(family).load(run)
    previous = kernels.set_backend("sdpa")  # conftest's TRITON_INTERPRET=1 would interpret 1,024 AR steps
    try:
        images = model.sample(2, seed=0)
    finally:
        kernels.set_backend(previous)
    assert images.shape == (2, 1, 32, 32)
    assert torch.isfinite(images).all() and images.abs().max() <= 1.0


@pytest.mark.slow  # 3 launches of 2 processes: 30-70 s on 2 shared cores
@pytest.mark.parametrize("family, modules", [("gan", {"gen", "disc"}), ("flow", {"flow"}), ("ar", {"ar"}),
                                             ("vq-ar", {"ar"})])
def test_baseline_ddp_two_processes_resumes_exactly(family, modules, shards, vq_autoencoder, tmp_path):
    extra = ["--set", f"autoencoder={vq_autoencoder}"] if family == "vq-ar" else []
    full, cut = _train_both_ways(family, shards, tmp_path, DDP, extra)
    assert len(optimizer_files(_step_dir(full))) == len(modules)  # one optimizer per module
    assert_resumed_exactly(full, cut, modules)
    assert_ranks_read_disjoint_images(family, full)
    assert (full / "previews").is_dir() and any((full / "previews").iterdir())
    assert_model_samples(family, full)


@pytest.mark.slow
@pytest.mark.parametrize("launch_file, stage", [(ZERO2, 2), (ZERO3, 3)])
def test_flow_under_zero_resumes_exactly_and_writes_gathered_weights(launch_file, stage, shards, tmp_path):
    full, cut = _train_both_ways("flow", shards, tmp_path, launch_file)
    assert json.loads((_step_dir(full) / "trainer.json").read_text())["zero_stage"] == stage
    assert len(optimizer_files(_step_dir(full))) == 2  # one ZeRO partition per rank
    assert_resumed_exactly(full, cut, {"flow"})
    # Under ZeRO-3 a rank holds shards only: the model folder must still hold the full EMA weights
    # (what the checkpoint gathered), and the preview is drawn from gathered parameters.
    _assert_same_tensors(load_file(str(full / "model" / "model.safetensors")),
                         load_file(str(_step_dir(full) / "weights" / "flow.ema.safetensors")), "model folder")
    preview = np.asarray(Image.open(full / "previews" / f"preview_{STEPS:08d}.png"))
    assert preview.std() > 0
    assert_model_samples("flow", full)


def test_gan_under_zero_is_refused_in_one_line(shards, tmp_path):
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", ZERO2, "--num_processes", "2",
           "--main_process_port", str(free_port()), *_args("gan", shards, tmp_path / "run", STEPS, [])]
    out = subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("ldm train-baseline: error:")]
    assert errors, out.stderr[-3000:]
    assert set(errors) == {"ldm train-baseline: error: DeepSpeed trains exactly one model per run; this task has "
                           "['disc', 'gen']. Launch it with DDP (accelerate launch --multi_gpu) instead."}
    assert "ldm_system/" not in out.stderr  # no frame of ours in a traceback (the launcher prints its own)
    assert not (tmp_path / "run" / "checkpoints").exists()
