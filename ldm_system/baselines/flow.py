"""The normalizing-flow baseline ("flow"): a multi-scale Glow (Kingma & Dhariwal 2018) as a task of
the one engine: model, run config, task, run and load.

Architecture (L levels, K steps per level; layers in `flow_layers.py`):

    x̃ (C, H, W) → for each level: squeeze → K × [ActNorm → 1×1 conv → affine coupling]
                                   → (not the last level) split: half the channels leave as z_i
                                     under N(μ(rest), σ(rest)²), the rest go on
                 → the last level's output z_L under the top prior (learned per position, or N(0, I))

`forward(x̃) -> (z_list, logdet)` and `inverse(z_list) -> x̃` are exact;
log p(x̃) = Σ_i log p(z_i | ·) + logdet.

From 8-bit images to the flow's input, and bits/dim (the equation the loss and eval use):

    k ∈ {0, …, 255}^D      the image (the data stream gives k/127.5 − 1 in [-1, 1])
    x  = (k + u)/256,      u ~ U[0, 1)^D          uniform dequantisation, x ∈ [0, 1)^D
    x̃  = s·(x − c)         c = ½ (`center`) or 0, s = `input_scale`;   |∂x̃/∂x| = s^D

    P(k) = ∫ p_x((k + u)/256) 256^{−D} du  ≥  exp(E_u[log p_x(x)]) · 256^{−D}           (Jensen)
    p_x(x) = p_x̃(x̃) · s^D

    ⇒ bpd = E_u[ −log p_x̃(x̃) − D log s + D log 256 ] / (D ln 2)  ≥  −log₂ P(k) / D

The shift c contributes nothing; the scale s contributes −D log s (0 for the default s = 1, where
bpd = NLL(x̃)/(D ln 2) + 8). It is an upper bound on the discrete NLL, the number flow papers report.
Training minimises one noise draw of it per image; `Glow.bits_per_dim` (eval) averages `draws`
fixed, seeded noise draws, so the same images always give the same number.

    ldm train-baseline flow --config configs/baselines/flow-fmnist.yaml
    model = load_flow("outputs/baselines/flow")        # → Glow, a LikelihoodModel
    model.sample(16, seed=0)                           # temperature model.sample_temperature (0.7)
    model.bits_per_dim(images)
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from ldm_system.baselines.common import check_image_data, full_parameters, load_module, train_baseline
from ldm_system.baselines.flow_layers import FlowStep, Split2d, TopPrior, squeeze2d, unsqueeze2d
from ldm_system.data.stream import StreamConfig, make_loader
from ldm_system.train.engine_config import EngineConfig

FAMILY = "flow"
MODULE = "flow"  # the task's one module name (optimizer, EMA and weight files use it)
LOG_256 = math.log(256.0)


@dataclass(frozen=True)
class FlowModelConfig:
    channels: int = 1
    image_size: int = 32
    levels: int = 3  # L: each squeezes (H/2, 4C); all but the last split half the channels off
    steps: int = 8  # K flow steps per level
    hidden: int = 128  # width of the coupling nets
    lu: bool = True  # LU-decomposed 1×1 convs (Glow §3.2); False = plain W with slogdet
    learn_top: bool = True  # learned top prior (per position); False = N(0, I)
    center: bool = True  # x̃ ∈ [-0.5, 0.5) rather than [0, 1)
    input_scale: float = 1.0  # s in x̃ = s·(x − c); enters bits/dim as −D log s
    sample_temperature: float = 0.7  # what `sample` uses unless told otherwise

    def __post_init__(self) -> None:
        for name in ("channels", "image_size", "levels", "steps", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size % (2**self.levels):
            raise ValueError(f"model.image_size={self.image_size} must be divisible by 2^levels = {2**self.levels}")
        if self.input_scale <= 0:
            raise ValueError(f"model.input_scale must be > 0, got {self.input_scale}")
        if self.sample_temperature < 0:
            raise ValueError(f"model.sample_temperature must be >= 0, got {self.sample_temperature}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)


def bits_per_dim_from_log_prob(log_p: torch.Tensor, num_dims: int, input_scale: float = 1.0) -> torch.Tensor:
    """bpd = (−log p_x̃(x̃) − D log s + D log 256) / (D ln 2) for 8-bit data (see the module doc)."""
    return (-log_p - num_dims * math.log(input_scale) + num_dims * LOG_256) / (num_dims * math.log(2.0))


class Glow(nn.Module):
    """The multi-scale flow. `image_shape`, `sample` and `bits_per_dim` make it a LikelihoodModel."""

    def __init__(self, cfg: FlowModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_shape = cfg.image_shape
        self.num_dims = math.prod(cfg.image_shape)
        self.sample_temperature = cfg.sample_temperature
        self.classes: list[str] = []
        self.last_diverged = 0  # images of the last `sample` call whose inverse overflowed (see `sample`)
        c, h = cfg.channels, cfg.image_size
        self.levels = nn.ModuleList()
        self.splits = nn.ModuleList()
        self.latent_shapes: list[tuple[int, int, int]] = []  # (C, H, W) of each z_i
        for i in range(cfg.levels):
            c, h = 4 * c, h // 2
            self.levels.append(nn.ModuleList(FlowStep(c, cfg.hidden, cfg.lu) for _ in range(cfg.steps)))
            if i < cfg.levels - 1:
                self.splits.append(Split2d(c))
                self.latent_shapes.append((c - c // 2, h, h))
                c = c // 2
        self.latent_shapes.append((c, h, h))
        self.top = TopPrior((c, h, h), cfg.learn_top)

    # ---- the bijection -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """x̃ (B, C, H, W) → (z_list, logdet (B,), log p(z_list) (B,)), z_i of `latent_shapes`."""
        logdet = x.new_zeros(x.shape[0])
        log_pz = x.new_zeros(x.shape[0])
        zs: list[torch.Tensor] = []
        h = x
        for i, steps in enumerate(self.levels):
            h = squeeze2d(h)
            for step in steps:
                h, ld = step(h)
                logdet = logdet + ld
            if i < len(self.splits):
                h, z, lp = self.splits[i](h)
                zs.append(z)
                log_pz = log_pz + lp
        zs.append(h)
        return zs, logdet, log_pz + self.top.log_prob(h)

    def forward(self, x: torch.Tensor, with_prior: bool = False):
        """x̃ → (z_list, logdet); with_prior=True also returns log p(z_list), so a training step
        runs everything with parameters inside one (DDP-wrapped) forward call."""
        zs, logdet, log_pz = self.encode(x)
        return (zs, logdet, log_pz) if with_prior else (zs, logdet)

    def decode(self, zs: list[torch.Tensor | None] | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None, num: int | None = None) -> torch.Tensor:
        """z_list → x̃. A None entry (or zs=None: all of them) is drawn from its prior at
        `temperature` (z = μ + T·σ·ε; T = 0 gives the prior means), top level first, since each
        split's prior is conditioned on what the levels above decoded."""
        zs = list(zs) if zs is not None else [None] * len(self.latent_shapes)
        if len(zs) != len(self.latent_shapes):
            raise ValueError(f"expected {len(self.latent_shapes)} latents, got {len(zs)}")
        like = next(self.parameters())
        if zs[-1] is None:
            if num is None:
                num = next((z.shape[0] for z in zs if z is not None), None)
            if num is None:
                raise ValueError("decode: give num when no latent is given")
            h = self.top.sample(num, like, temperature, generator)
        else:
            h = zs[-1]
        for i in reversed(range(len(self.levels))):
            if i < len(self.splits):
                h = self.splits[i].inverse(h, zs[i], temperature, generator)
            for step in reversed(self.levels[i]):
                h = step.inverse(h)
            h = unsqueeze2d(h)
        return h

    def inverse(self, zs: list[torch.Tensor]) -> torch.Tensor:
        return self.decode(zs)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) log p(x̃) in nats (a continuous density on the flow's input space)."""
        _, logdet, log_pz = self.encode(x)
        return log_pz + logdet

    # ---- 8-bit images ↔ flow space -------------------------------------------------------
    def dequantize(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [-1, 1] (8-bit grid) → x̃ = s·((k + u)/256 − c); u ~ U[0, 1) unless given."""
        k = ((images.float() + 1.0) * 127.5).round().clamp(0, 255)
        u = torch.rand_like(k) if noise is None else noise.to(k)
        return self.cfg.input_scale * ((k + u) / 256.0 - (0.5 if self.cfg.center else 0.0))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """x̃ → the 8-bit image whose dequantisation bin holds it, k = ⌊256 x⌋, as k/127.5 − 1."""
        xx = x / self.cfg.input_scale + (0.5 if self.cfg.center else 0.0)
        k = torch.floor(xx * 256.0).clamp(0, 255)
        return k / 127.5 - 1.0

    def nll_bits(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) bits/dim of one dequantisation draw (differentiable)."""
        return bits_per_dim_from_log_prob(self.log_prob(self.dequantize(images, noise)), self.num_dims,
                                          self.cfg.input_scale)

    @torch.no_grad()
    def bits_per_dim(self, images: torch.Tensor, draws: int = 1, seed: int = 0,
                     noise: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) bits/dim of 8-bit images in [-1, 1], averaged over `draws` dequantisation draws
        u ~ U[0, 1)^D from a CPU generator seeded with seed, seed + 1, … (or the given `noise`)."""
        if noise is not None:
            return self.nll_bits(images, noise)
        total = torch.zeros(images.shape[0], dtype=torch.float64, device=images.device)
        for d in range(draws):
            u = torch.rand(images.shape, generator=torch.Generator().manual_seed(seed + d)).to(images.device)
            total += self.nll_bits(images, u).double()
        return (total / draws).float()

    @torch.no_grad()
    def sample(self, num: int, seed: int = 0, temperature: float | None = None) -> torch.Tensor:
        """(num, C, H, W) 8-bit images in [-1, 1]; T = `sample_temperature` (0.7) unless given.

        The inverse is exact but not bounded: a coupling's inverse divides by its scale, and a latent
        far in the prior's tail can drive a coupling net to a tiny scale, then the next steps
        overflow (with the fmnist run: ~1 in 2,000 samples at T = 0.7, ~5 % at T = 1). Such entries
        are saturated (±inf → 0 or 255, NaN → x̃ = 0) so the image is still an 8-bit image, and the
        count of affected images is kept in `last_diverged` for the caller to report.
        """
        t = self.sample_temperature if temperature is None else temperature
        gen = torch.Generator().manual_seed(seed)
        x = self.decode(None, t, gen, num=num)
        bad = ~torch.isfinite(x.flatten(1)).all(dim=1)
        self.last_diverged = int(bad.sum())
        return self.quantize(torch.nan_to_num(x, nan=0.0, posinf=1e6, neginf=-1e6))

    @torch.no_grad()
    def data_init(self, images: torch.Tensor, seed: int = 0) -> None:
        """Data-dependent ActNorm init: one forward over these images (dequantised with seeded noise).
        Layers already initialised (e.g. loaded) keep their values."""
        u = torch.rand(images.shape, generator=torch.Generator().manual_seed(seed)).to(images.device)
        self.encode(self.dequantize(images, u))


# ---- the task ----------------------------------------------------------------------------
@dataclass(frozen=True)
class FlowOptimConfig:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0


@dataclass(frozen=True)
class FlowPreviewConfig:
    num_images: int = 16
    temperature: float = 0.7
    seed: int = 0


@dataclass(frozen=True)
class FlowRunConfig:
    data: StreamConfig
    model: FlowModelConfig = field(default_factory=FlowModelConfig)
    optim: FlowOptimConfig = field(default_factory=FlowOptimConfig)
    preview: FlowPreviewConfig = field(default_factory=FlowPreviewConfig)
    train: EngineConfig = field(default_factory=EngineConfig)
    # Batches of the data read (as rank 0 of 1, so every rank gets the same) for ActNorm's
    # data-dependent init before training; 0 = lazily on each rank's first training batch.
    init_batches: int = 1


class FlowTask:
    """One module ("flow"), one Adam optimizer, loss = mean bits/dim of one dequantisation draw."""

    def __init__(self, model: FlowModelConfig, optim: FlowOptimConfig = FlowOptimConfig(),
                 preview: FlowPreviewConfig = FlowPreviewConfig(), init_images: torch.Tensor | None = None,
                 info: dict[str, Any] | None = None, seed: int = 0) -> None:
        self.model_cfg, self.optim_cfg, self.preview_cfg = model, optim, preview
        self.init_images = init_images
        self.seed = seed  # of the initial weights and buffers, the same on every rank
        self.info = dict(info or {})
        self.net: Glow | None = None  # the raw module (dequantise, sample)
        self._metrics: dict[str, float] = {}

    def build(self) -> dict[str, nn.Module]:
        # Every rank draws the same Glow: the LU 1×1 convs keep their permutation and signs as *buffers*,
        # and DeepSpeed (ZeRO) broadcasts only parameters from rank 0 (DDP broadcasts buffers too).
        # Per-rank buffers would pair rank 1's P with rank 0's L, U: a different, untrained flow.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = Glow(self.model_cfg)
        if self.init_images is not None:
            # Before `prepare` and the EMA copy: DDP broadcasts these values and the EMA starts
            # from them. A resumed run then loads the checkpoint over them (`initialized` = 1).
            self.net.data_init(self.init_images)
        return {MODULE: self.net}

    def optimizers(self, modules: Mapping[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        o = self.optim_cfg
        return {MODULE: torch.optim.Adam(modules[MODULE].parameters(), lr=o.lr, betas=o.betas, eps=o.eps,
                                         weight_decay=o.weight_decay)}

    def losses(self, modules: Mapping[str, nn.Module], batch: Any, step: int) -> Iterator[tuple[str, torch.Tensor]]:
        images = batch.images
        if tuple(images.shape[1:]) != self.model_cfg.image_shape:
            raise ValueError(f"batch images are {tuple(images.shape[1:])}, "
                             f"the model takes {self.model_cfg.image_shape}")
        x = self.net.dequantize(images)  # fresh u per step
        _, logdet, log_pz = modules[MODULE](x, with_prior=True)
        d = self.net.num_dims
        bpd = bits_per_dim_from_log_prob(log_pz.float() + logdet.float(), d, self.model_cfg.input_scale)
        loss = bpd.mean()
        self._metrics = {"bits_per_dim": float(loss.detach()),
                         "logdet_per_dim": float(logdet.detach().float().mean()) / d}
        yield MODULE, loss

    def metrics(self) -> dict[str, float]:
        return dict(self._metrics)

    @torch.no_grad()
    def preview(self, modules: Mapping[str, nn.Module], batch: Any) -> torch.Tensor:
        p = self.preview_cfg
        with full_parameters(self.net):  # sampling runs the inverse, not the (ZeRO-3-gathered) forward
            return self.net.sample(p.num_images, seed=p.seed, temperature=p.temperature)

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {"family": FAMILY, "image_shape": list(self.model_cfg.image_shape), **self.info}


# ---- run and load ---------------------------------------------------------------------------
def init_images(cfg: FlowRunConfig) -> torch.Tensor | None:
    """The first `init_batches` batches of the data, read as rank 0 of 1 (the same on every rank)."""
    if cfg.init_batches <= 0:
        return None
    probe = dataclasses.replace(cfg.data, num_workers=0, infinite=False)
    out = []
    for batch in make_loader(probe):
        out.append(batch.images)
        if len(out) == cfg.init_batches:
            break
    return torch.cat(out) if out else None


def run_flow(cfg: FlowRunConfig, resume: str | None = None) -> Path:
    """Train (or continue with resume="latest"), then write OUT/model/ (EMA weights if kept). Returns it."""
    info = check_image_data(cfg.data, FAMILY, cfg.model.channels, cfg.model.image_size)
    task = FlowTask(cfg.model, cfg.optim, cfg.preview, init_images(cfg), info, seed=cfg.train.seed)
    return train_baseline(task, cfg, FAMILY, MODULE, info, resume)


def load_flow(path: str | Path, device: str | torch.device = "cpu") -> Glow:
    """The trained model (eval mode) from a model folder or its run folder."""
    model, meta = load_module(path, FAMILY, FlowModelConfig, Glow, device)
    model.classes = list(meta.get("classes", []))
    return model


__all__ = ["FlowModelConfig", "FlowOptimConfig", "FlowPreviewConfig", "FlowRunConfig", "FlowTask", "Glow",
           "bits_per_dim_from_log_prob", "init_images", "load_flow", "run_flow"]
