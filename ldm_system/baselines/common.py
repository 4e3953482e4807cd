"""What every baseline family shares: the trained-model folder, training and loading.

A baseline is one more task of the engine (`ldm_system/train`). After training, rank 0 writes the
model folder that evaluation and `ldm report` read:

    OUT/model/baseline.json        {"family": "gan", "model": {<the family's model config>}, ...}
    OUT/model/model.safetensors    the weights (the EMA weights when the run kept an EMA)

Loading checks the family, so a flow folder handed to the GAN loader is a clear error, never
silently wrong weights. What evaluation reads from a loaded model is `eval/protocols.py`.
"""
from __future__ import annotations

import json
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ldm_system.config import from_dict, to_dict
from ldm_system.data.manifest import read_manifest
from ldm_system.data.stream import StreamConfig
from ldm_system.train.engine import Trainer

MODEL_JSON = "baseline.json"
WEIGHTS = "model.safetensors"
C = TypeVar("C")


def save_model_folder(out: str | Path, family: str, model_cfg: Any, module: nn.Module, **extra: Any) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(out / WEIGHTS))
    meta = {"family": family, "model": to_dict(model_cfg), **extra}
    (out / MODEL_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def load_model_folder(path: str | Path, family: str, cfg_cls: type[C]) -> tuple[C, dict[str, torch.Tensor], dict]:
    """(model config, weights, metadata) of a folder written by `save_model_folder`.

    `path` may be the model folder or the run folder holding `model/`.
    """
    path = Path(path)
    if not (path / MODEL_JSON).exists() and (path / "model" / MODEL_JSON).exists():
        path = path / "model"
    if not (path / MODEL_JSON).exists():
        raise FileNotFoundError(f"{path} is not a baseline model folder (no {MODEL_JSON})")
    meta = json.loads((path / MODEL_JSON).read_text())
    if meta.get("family") != family:
        raise ValueError(f"{path} holds a {meta.get('family')!r} model, not a {family!r} one")
    cfg = from_dict(cfg_cls, meta["model"], source=str(path / MODEL_JSON))
    return cfg, load_file(str(path / WEIGHTS)), meta


def train_baseline(task: Any, cfg: Any, family: str, module_name: str, info: dict, resume: str | None = None,
                   before_write: Callable[[Trainer], None] | None = None) -> Path:
    """The one run pattern of every family: train its task with the engine on `cfg.data` / `cfg.train`
    (or continue with resume="latest"), let rank 0 finish the trained module (`before_write`, e.g. the
    GAN's standing BatchNorm statistics), then write OUT/model/ (`write_trained_model`). Returns it."""
    from ldm_system.train.runs import stream_factory

    trainer = Trainer(task, stream_factory(cfg.data), cfg.train, run_config=cfg, micro_batch=cfg.data.batch_size,
                      resume=resume)
    trainer.fit()
    if before_write is not None and trainer.accelerator.is_main_process:
        before_write(trainer)
    return write_trained_model(trainer, module_name, family, cfg.model, **info)


def load_module(path: str | Path, family: str, cfg_cls: type[C], build: Callable[[C], nn.Module],
                device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """(module in eval mode on `device`, metadata) from a family's model folder (or its run folder)."""
    cfg, weights, meta = load_model_folder(path, family, cfg_cls)
    module = build(cfg)
    module.load_state_dict(weights)
    return module.to(device).eval(), meta


@contextmanager
def full_parameters(module: nn.Module) -> Iterator[nn.Module]:
    """`module` with all its parameters present, for code that calls more than its `forward` (a flow's
    inverse, an AR's KV-cached sampling, `state_dict`). Under ZeRO-3 each rank holds a shard of every
    parameter and DeepSpeed gathers them only around `forward` calls, so this gathers them (read-only)
    for the block: a collective, every rank must enter it. Anywhere else it does nothing."""
    sharded = [p for p in module.parameters() if hasattr(p, "ds_tensor")]
    if not sharded:
        yield module
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(sharded, modifier_rank=None):
        yield module


def write_trained_model(trainer: Trainer, module_name: str, family: str, model_cfg: Any, **extra: Any) -> Path:
    """After `fit`: rank 0 writes OUT/model/ with the EMA weights when there are any (gathered from
    ZeRO-3 shards on every rank), then every rank leaves the process group (`Trainer.close`)."""
    out = Path(trainer.cfg.out_dir) / "model"
    module = trainer.raw[module_name]
    use_ema = trainer.ema is not None and trainer.cfg.ema.module == module_name
    with trainer.ema.swap() if use_ema else nullcontext(), full_parameters(module):
        if trainer.accelerator.is_main_process:
            save_model_folder(out, family, model_cfg, module, ema=use_ema, step=trainer.step, **extra)
    trainer.close()
    return out


def check_image_data(data: StreamConfig, family: str, channels: int, image_size: int, num_classes: int = 0) -> dict:
    """Check a baseline's model config against the shard manifest before any training, and return
    the class names for the model folder. Shard patterns without a manifest pass (the first batch
    is checked by the task)."""
    try:
        manifest = read_manifest(data.shards)
    except (FileNotFoundError, ValueError):
        return {}
    problems = []
    have_channels = data.channels or manifest.channels
    size = data.image_size or manifest.image_size
    if manifest.kind != "images":
        problems.append(f"the shards hold {manifest.kind!r}; baselines train on 8-bit images")
    if have_channels != channels:
        problems.append(f"model.channels={channels} but the data has {have_channels} channels")
    if size != image_size:
        problems.append(f"model.image_size={image_size} but the data is {size}x{size}")
    if num_classes and len(manifest.classes) != num_classes:
        problems.append(f"model.num_classes={num_classes} but the data has {len(manifest.classes)} classes")
    if problems:
        raise ValueError(f"the {family} model does not fit {data.shards}: " + "; ".join(problems))
    return {"classes": list(manifest.classes)}
