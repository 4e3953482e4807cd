"""The autoregressive model that shares stage 1 ("vq-ar"): a transformer over VQ codebook indices.

As in VQGAN (Esser et al. 2021), the images go through a trained VQ autoencoder first; the
transformer (`ar_model.ImageTransformer`, the pixel AR's network with `vocab` = the codebook size)
models the grid of code indices in raster order, and a sample is decoded by the autoencoder:

    tokens = argmin_k ||E(x)[h, w] − e_k||     (h·w of them: 64 for 32×32 images at f = 4)
    loss   = (1/N) Σ_i −log P(t_i | t_<i, y)    [nats per token]
    sample: t ~ P (KV-cached, N one-token steps) → codes e_t → decoder → image

Against the pixel AR (1,024 tokens of 256 values for a 32×32×1 image) the sequence is 16× shorter,
so sampling is 16× fewer steps. Its likelihood is of the codes, not of the pixels, so it is logged
as bits per token and the model is not a `LikelihoodModel` (no bits/dim column in the report).

    ldm train-baseline vq-ar --config configs/baselines/vq-ar-debug.yaml --set autoencoder=RUN/autoencoder
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from autoencoders.io import load_autoencoder
from ldm_system.baselines.ar_model import ARModelConfig, ImageTransformer
from ldm_system.baselines.autoregressive import AROptimConfig, ARPreviewConfig, ARTask
from ldm_system.baselines.common import check_image_data, full_parameters, load_module, train_baseline
from ldm_system.data.stream import StreamConfig
from ldm_system.train.engine_config import EngineConfig

FAMILY = "vq-ar"
MODULE = "ar"


@dataclass(frozen=True)
class VQARRunConfig:
    data: StreamConfig  # image shards (the autoencoder's input size)
    autoencoder: str = ""  # a stage-1 VQ folder (`ldm train-ae` with model.kind: vq)
    model: ARModelConfig = field(default_factory=ARModelConfig)  # channels, image_size, vocab: from the autoencoder
    optim: AROptimConfig = field(default_factory=AROptimConfig)
    preview: ARPreviewConfig = field(default_factory=ARPreviewConfig)
    train: EngineConfig = field(default_factory=EngineConfig)


class VQCodes:
    """A frozen VQ autoencoder seen as a tokenizer: images ↔ (B, h·w) code indices."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        ae, meta = load_autoencoder(path, device=device)
        if meta.kind != "vq":
            raise ValueError(f"{path}: the vq-ar family needs a VQ autoencoder (model.kind: vq), this one is "
                             f"{meta.kind!r}; the pixel AR is `ldm train-baseline ar`")
        self.ae, self.cfg, self.path = ae.eval().requires_grad_(False), meta.config, str(Path(path).resolve())

    @property
    def vocab(self) -> int:
        return self.cfg.quantizer.codebook_size

    def to(self, device: torch.device) -> "VQCodes":
        self.ae.to(device)
        return self

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        h = self.ae.encode_latents(images)
        return self.ae.quantizer(h)["indices"].reshape(images.shape[0], -1)  # raster order

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, side: int) -> torch.Tensor:
        codes = self.ae.quantizer.lookup(tokens.reshape(-1, side, side))  # (B, h, w, D)
        return self.ae.decode(codes.permute(0, 3, 1, 2).float(), quantize=False).clamp(-1, 1)

    def model_config(self, model: ARModelConfig, image_size: int) -> ARModelConfig:
        """The transformer's token grid and vocabulary, from the autoencoder; a set value that
        contradicts it is an error naming both."""
        side, want = image_size // self.cfg.f, {"channels": 1, "vocab": self.vocab}
        want["image_size"] = side
        default = ARModelConfig()
        bad = [f"model.{k}={getattr(model, k)} but the autoencoder gives {v}" for k, v in want.items()
               if getattr(model, k) not in (v, getattr(default, k))]
        if bad:
            raise ValueError("the vq-ar model does not fit its autoencoder: " + "; ".join(bad))
        return replace(model, **want)


class VQARTask(ARTask):
    """The pixel AR's task with tokens from the frozen VQ encoder instead of pixel values."""

    def __init__(self, codes: VQCodes, model: ARModelConfig, optim: AROptimConfig = AROptimConfig(),
                 preview: ARPreviewConfig = ARPreviewConfig(), info: dict[str, Any] | None = None) -> None:
        super().__init__(model, optim, preview, info)
        self.codes = codes

    def to_device(self, device: torch.device) -> None:
        self.codes.to(device)

    def losses(self, modules: Mapping[str, nn.Module], batch: Any, step: int) -> Iterator[tuple[str, torch.Tensor]]:
        tokens = self.codes.encode(batch.images)  # (B, N) int64
        if tokens.shape[1] != self.model_cfg.seq_len:
            raise ValueError(f"the autoencoder gives {tokens.shape[1]} codes per image, the model takes "
                             f"{self.model_cfg.seq_len}")
        logits = modules[MODULE](tokens, self.labels(batch))  # (B, N, K)
        loss = F.cross_entropy(logits.float().reshape(-1, self.model_cfg.vocab), tokens.reshape(-1))
        self._metrics = {"bits_per_token": float(loss.detach()) / math.log(2.0)}
        yield MODULE, loss

    @torch.no_grad()
    def preview(self, modules: Mapping[str, nn.Module], batch: Any) -> torch.Tensor:
        p, net = self.preview_cfg, self.net
        was_training = net.training
        net.eval()
        with full_parameters(net):
            images = VQTokenSampler(net, self.codes).sample(p.num_images, seed=p.seed, temperature=p.temperature,
                                                            top_k=p.top_k)
        net.train(was_training)
        return images


class VQTokenSampler:
    """A trained vq-ar model as evaluation's `GenerativeModel` (class models: image j is drawn for class
    j % K, like every family)."""

    def __init__(self, net: ImageTransformer, codes: VQCodes) -> None:
        self.net, self.codes = net, codes
        self.side = net.cfg.image_size
        self.image_shape = (codes.cfg.in_channels, self.side * codes.cfg.f, self.side * codes.cfg.f)
        self.num_classes = net.cfg.num_classes
        self.classes: list[str] = []

    @torch.no_grad()
    def sample(self, num: int, seed: int = 0, temperature: float = 1.0, top_k: int = 0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        uniforms = torch.rand(num, self.net.seq_len, generator=gen, dtype=torch.float64)
        labels = torch.arange(num) % self.num_classes if self.num_classes else None
        tokens = self.net.sample_tokens(uniforms, labels, temperature, top_k)
        return self.codes.decode(tokens, self.side).cpu()


def run_vq_ar(cfg: VQARRunConfig, resume: str | None = None) -> Path:
    if not cfg.autoencoder:
        raise ValueError("vq-ar needs `autoencoder:` (a stage-1 VQ folder) to turn images into codes")
    codes = VQCodes(cfg.autoencoder)
    size = cfg.data.image_size or _data_size(cfg.data)
    model = codes.model_config(cfg.model, size)
    info = check_image_data(cfg.data, FAMILY, codes.cfg.in_channels, size, model.num_classes)
    info["autoencoder"] = codes.path
    cfg = replace(cfg, model=model)
    return train_baseline(VQARTask(codes, model, cfg.optim, cfg.preview, info), cfg, FAMILY, MODULE, info, resume)


def _data_size(data: StreamConfig) -> int:
    from ldm_system.data.manifest import read_manifest

    size = read_manifest(data.shards).image_size
    if not size:
        raise ValueError(f"{data.shards}: the manifest names no image size; set data.image_size")
    return size


def load_vq_ar(path: str | Path, device: str | torch.device = "cpu") -> VQTokenSampler:
    """A vq-ar model folder (or its run folder) with the autoencoder it was trained on."""
    net, meta = load_module(path, FAMILY, ARModelConfig, ImageTransformer, device)
    ae_path = meta.get("autoencoder")
    if not ae_path or not Path(ae_path).exists():
        raise FileNotFoundError(f"{path}: the VQ autoencoder it was trained on ({ae_path}) is gone; a vq-ar model "
                                "decodes through it")
    sampler = VQTokenSampler(net, VQCodes(ae_path, device))
    sampler.classes = list(meta.get("classes", []))
    return sampler


__all__ = ["VQARRunConfig", "VQARTask", "VQCodes", "VQTokenSampler", "load_vq_ar", "run_vq_ar"]
