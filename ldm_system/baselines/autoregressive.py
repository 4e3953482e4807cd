"""The autoregressive baseline ("ar") as a task of the one engine: run config, task, run and load.

The model (`ar_model.py`) is an Image-GPT-style causal transformer over the 8-bit values of the
pixels. Training minimises the cross-entropy of every token given the ones before it, which is
the exact negative log-likelihood of the 8-bit image:

    loss = (1/N) Σ_i −log P(t_i | t_<i, y)   [nats/dim]        bits/dim = loss / ln 2

    ldm train-baseline ar --config configs/baselines/ar-fmnist.yaml
    model = load_ar("outputs/baselines/ar")       # → ImageTransformer, a LikelihoodModel
    model.sample(16, seed=0); model.bits_per_dim(images)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ldm_system.baselines.ar_model import VOCAB, ARModelConfig, ImageTransformer, images_to_tokens, param_groups
from ldm_system.baselines.common import check_image_data, full_parameters, load_module, train_baseline
from ldm_system.data.stream import StreamConfig
from ldm_system.train.engine_config import EngineConfig

FAMILY = "ar"
MODULE = "ar"  # the task's one module name (optimizer, EMA and weight files use it)


@dataclass(frozen=True)
class AROptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.01  # on Linear weight matrices only (see ar_model.param_groups)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    cond_drop_prob: float = 0.1  # class models: share of labels replaced by the null class (unconditional start)


@dataclass(frozen=True)
class ARPreviewConfig:
    # Each preview image is N one-token steps (1024 for 32×32×1): keep it small on CPU.
    num_images: int = 4
    temperature: float = 1.0
    top_k: int = 0  # 0 = all 256 values
    seed: int = 0


@dataclass(frozen=True)
class ARRunConfig:
    data: StreamConfig
    model: ARModelConfig = field(default_factory=ARModelConfig)
    optim: AROptimConfig = field(default_factory=AROptimConfig)
    preview: ARPreviewConfig = field(default_factory=ARPreviewConfig)
    train: EngineConfig = field(default_factory=EngineConfig)


class ARTask:
    """One module ("ar"), one AdamW optimizer, loss = mean token cross-entropy (nats/dim)."""

    def __init__(self, model: ARModelConfig, optim: AROptimConfig = AROptimConfig(),
                 preview: ARPreviewConfig = ARPreviewConfig(), info: dict[str, Any] | None = None) -> None:
        if not 0.0 <= optim.cond_drop_prob <= 1.0:
            raise ValueError(f"optim.cond_drop_prob must be in [0, 1], got {optim.cond_drop_prob}")
        self.model_cfg, self.optim_cfg, self.preview_cfg = model, optim, preview
        self.info = dict(info or {})
        self.net: ImageTransformer | None = None  # raw module (sampling uses its KV-cache path, unwrapped)
        self._metrics: dict[str, float] = {}

    # ---- engine protocol -------------------------------------------------------------------
    def build(self) -> dict[str, nn.Module]:
        self.net = ImageTransformer(self.model_cfg)
        return {MODULE: self.net}

    def optimizers(self, modules: Mapping[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        o = self.optim_cfg
        groups = param_groups(modules[MODULE], o.weight_decay)
        return {MODULE: torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps)}

    def labels(self, batch: Any) -> torch.Tensor | None:
        """Start-token classes: None (null start) for unconditional models; for class models the
        labels, with unlabelled (−1) and a random `cond_drop_prob` share set to the null class K."""
        k = self.model_cfg.num_classes
        if k == 0:
            return None
        labels = batch.labels.long()
        if (labels >= k).any():
            raise ValueError(f"label {int(labels.max())} out of range for model.num_classes={k}")
        drop = torch.rand(labels.shape, device=labels.device) < self.optim_cfg.cond_drop_prob
        return torch.where((labels < 0) | drop, torch.full_like(labels, k), labels)

    def losses(self, modules: Mapping[str, nn.Module], batch: Any, step: int) -> Iterator[tuple[str, torch.Tensor]]:
        images = batch.images
        if tuple(images.shape[1:]) != self.model_cfg.image_shape:
            raise ValueError(f"batch images are {tuple(images.shape[1:])}, the model takes {self.model_cfg.image_shape}")
        tokens = images_to_tokens(images)  # (B, N) int64
        logits = modules[MODULE](tokens, self.labels(batch))  # (B, N, 256)
        loss = F.cross_entropy(logits.float().reshape(-1, VOCAB), tokens.reshape(-1))  # nats/dim
        self._metrics = {"bits_per_dim": float(loss.detach()) / math.log(2.0)}
        yield MODULE, loss

    def metrics(self) -> dict[str, float]:
        return dict(self._metrics)

    @torch.no_grad()
    def preview(self, modules: Mapping[str, nn.Module], batch: Any) -> torch.Tensor:
        """A few KV-cached samples from a fixed seed; class models cycle through the classes."""
        p, net = self.preview_cfg, self.net
        was_training = net.training
        net.eval()
        with full_parameters(net):  # KV-cached steps, not the (ZeRO-3-gathered) forward
            images = net.sample(p.num_images, seed=p.seed, temperature=p.temperature, top_k=p.top_k)
        net.train(was_training)
        return images

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {"family": FAMILY, "image_shape": list(self.model_cfg.image_shape), **self.info}


# ---- run and load ---------------------------------------------------------------------------
def run_ar(cfg: ARRunConfig, resume: str | None = None) -> Path:
    """Train (or continue with resume="latest"), then write OUT/model/ (EMA weights if kept). Returns it."""
    m = cfg.model
    info = check_image_data(cfg.data, FAMILY, m.channels, m.image_size, m.num_classes)
    return train_baseline(ARTask(cfg.model, cfg.optim, cfg.preview, info), cfg, FAMILY, MODULE, info, resume)


def load_ar(path: str | Path, device: str | torch.device = "cpu") -> ImageTransformer:
    """The trained model (eval mode) from a model folder or its run folder."""
    model, meta = load_module(path, FAMILY, ARModelConfig, ImageTransformer, device)
    model.classes = list(meta.get("classes", []))
    return model


__all__ = ["ARModelConfig", "AROptimConfig", "ARPreviewConfig", "ARRunConfig", "ARTask", "ImageTransformer",
           "load_ar", "run_ar"]
