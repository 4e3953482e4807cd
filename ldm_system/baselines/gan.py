"""The GAN baseline as a task of the one engine, plus its run function and loader.

One engine step (`GANTask.losses`), with x real images, y their labels (conditional models only):

    x̃ = G(z, y)                              one G forward, z ~ N(0, I); fake labels = real labels
    L_D = L_D(D(x, y), D(sg[x̃], y)) [+ R1]   → yield ("disc", L_D)   the engine steps D's optimizer
    L_G = L_G(D(x̃, y)), D frozen             → yield ("gen",  L_G)   the engine steps G's optimizer

Why D first, then G: this is the order of Goodfellow et al. 2014 (Alg. 1) and of SNGAN/BigGAN
(n_dis D updates, then one G update), so G always climbs the discriminator that was just trained
on this batch. It also lets both steps share the one G forward: G's weights do not change during
the D step, so x̃'s graph is still the graph of the current G when L_G is backpropagated. The G
loss runs through the *raw* D with its parameters' requires_grad off (as autoencoders/stage1.py
does): autograd records no edge to D, so no gradient lands on D (the engine zeroes only the
stepped optimizer's grads, so a stray D gradient would leak into the next D step) and D's DDP
reducer is not involved.

Losses (`loss.kind`: hinge or non_saturating) and R1 are stage 1's, from `autoencoders/adversarial.py`
(one implementation, one documented R1 convention). R1 (Mescheder et al. 2018, eq. 9) adds
(γ/2) E_x ||∇_x D(x)||², lazily (StyleGAN2, Karras et al. 2020, §3.1): only on steps with
step % k == 0, multiplied by k so its average strength is unchanged.

Sampling uses G in eval mode, so BatchNorm uses running statistics; these are recomputed for the
weights actually used (EMA ones when `train.ema.module: gen`) before previews and before writing
the model ("standing statistics", see gan_models.recalibrate_batchnorm).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

import torch
from torch import nn

from autoencoders.adversarial import discriminator_loss, frozen, generator_loss, r1_penalty
from ldm_system.baselines.common import check_image_data, load_module, train_baseline
from ldm_system.baselines.gan_models import (
    Discriminator,
    GANModelConfig,
    Generator,
    check_labels,
    recalibrate_batchnorm,
    sample_inputs,
)
from ldm_system.config import to_dict
from ldm_system.data.stream import StreamConfig
from ldm_system.train.engine import Trainer
from ldm_system.train.engine_config import EngineConfig

FAMILY = "gan"
MODULE = "gen"  # the module written to the model folder
GANLossKind = Literal["hinge", "non_saturating"]


# ---- configs -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GANLossConfig:
    kind: GANLossKind = "hinge"
    r1_gamma: float = 0.0  # γ of the R1 penalty on real data; 0 disables it
    r1_every: int = 16  # lazy regularisation interval k (1 = every step)

    def __post_init__(self) -> None:
        if self.r1_gamma < 0 or self.r1_every < 1:
            raise ValueError(f"GANLossConfig: need r1_gamma >= 0 and r1_every >= 1, "
                             f"got {self.r1_gamma}, {self.r1_every}")


@dataclass(frozen=True)
class GANOptimConfig:
    gen_lr: float = 2e-4
    disc_lr: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.99)  # (0.0, 0.99) as SNGAN/StyleGAN2, or DCGAN's (0.5, 0.999)
    eps: float = 1e-8


@dataclass(frozen=True)
class GANPreviewConfig:
    num_images: int = 64  # an 8x8 grid; conditional models cycle their classes along it
    seed: int = 0  # fixed z: successive previews show the same latent points
    bn_batches: int = 8  # batches of 64 used to recompute G's BatchNorm statistics before a preview


@dataclass(frozen=True)
class GANRunConfig:
    data: StreamConfig
    model: GANModelConfig = field(default_factory=GANModelConfig)
    loss: GANLossConfig = field(default_factory=GANLossConfig)
    optim: GANOptimConfig = field(default_factory=GANOptimConfig)
    preview: GANPreviewConfig = field(default_factory=GANPreviewConfig)
    train: EngineConfig = field(default_factory=EngineConfig)
    bn_batches: int = 32  # batches of 64 for G's standing BatchNorm statistics in the written model


# ---- the task ------------------------------------------------------------------------------------
class GANTask:
    def __init__(self, model: GANModelConfig, loss: GANLossConfig = GANLossConfig(),
                 optim: GANOptimConfig = GANOptimConfig(), preview: GANPreviewConfig = GANPreviewConfig(),
                 info: dict[str, Any] | None = None) -> None:
        self.model_cfg, self.loss_cfg, self.optim_cfg, self.preview_cfg = model, loss, optim, preview
        self.info = dict(info or {})  # provenance for checkpoints (class names of the data)
        self._raw: dict[str, nn.Module] = {}
        self._stats: dict[str, torch.Tensor] = {}

    def build(self) -> dict[str, nn.Module]:
        self._raw = {"gen": Generator(self.model_cfg), "disc": Discriminator(self.model_cfg)}
        return dict(self._raw)

    def optimizers(self, modules: Mapping[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        o = self.optim_cfg

        def adam(module: nn.Module, lr: float) -> torch.optim.Optimizer:
            return torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr,
                                    betas=tuple(o.betas), eps=o.eps)

        # Names match the modules', so the engine's gradient clipping picks each one's own parameters.
        return {"gen": adam(modules["gen"], o.gen_lr), "disc": adam(modules["disc"], o.disc_lr)}

    def metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._stats.items()}

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {"family": FAMILY, "model": to_dict(self.model_cfg), **self.info}

    def real_batch(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`batch.images`, `batch.labels` → (images (B, C, S, S), labels (B,) or None), checked."""
        images, labels = batch.images, batch.labels
        m = self.model_cfg
        want = (m.channels, m.image_size, m.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise ValueError(f"the GAN makes (C, H, W) = {want} images (model.channels / model.image_size) but "
                             f"the batch holds {tuple(images.shape)}; make the model config match the data")
        return images, check_labels(labels, m.num_classes)

    def losses(self, modules: Mapping[str, nn.Module], batch: Any, step: int) -> Iterator[tuple[str, torch.Tensor]]:
        if not self._raw:
            raise RuntimeError("GANTask.build() must be called before losses()")
        lc = self.loss_cfg
        real, labels = self.real_batch(batch)
        b = real.shape[0]
        z = torch.randn(b, self.model_cfg.z_dim, device=real.device)  # engine-seeded global RNG (per rank)
        fake = modules["gen"](z, labels)  # (B, C, S, S), graph kept for the G step

        # ---- D step: one forward over [x; sg[x̃]] through the prepared D
        r1 = lc.r1_gamma > 0 and step % lc.r1_every == 0
        real = real.detach().requires_grad_(r1)
        y2 = None if labels is None else torch.cat([labels, labels])
        real_logits, fake_logits = modules["disc"](torch.cat([real, fake.detach()]), y2).split(b)
        d_loss = discriminator_loss(real_logits, fake_logits, lc.kind)
        stats = {"disc/loss": d_loss.detach(), "disc/logits_real": real_logits.detach().mean(),
                 "disc/logits_fake": fake_logits.detach().mean()}
        if r1:
            penalty = r1_penalty(real_logits, real)  # ½ E||∇D||²
            d_loss = d_loss + lc.r1_gamma * lc.r1_every * penalty  # lazy: k · (γ/2) E||∇D||²
            stats["disc/r1"] = penalty.detach()
        self._stats = stats
        yield "disc", d_loss

        # ---- G step: through the raw, frozen D (updated just now), no gradient reaches D
        with frozen(self._raw["disc"]) as disc:
            g_loss = generator_loss(disc(fake, labels), lc.kind)
        self._stats["gen/loss"] = g_loss.detach()
        yield "gen", g_loss

    @torch.no_grad()
    def preview(self, modules: Mapping[str, nn.Module], batch: Any) -> torch.Tensor:
        """(num_images, C, S, S) from fixed z (`preview.seed`): the same latent points every time, with
        the engine's EMA weights swapped in; BatchNorm statistics recomputed for those weights."""
        p, gen = self.preview_cfg, modules["gen"]
        device = next(gen.parameters()).device
        recalibrate_batchnorm(gen, self.model_cfg, batches=p.bn_batches, seed=10_000 + p.seed)
        was_training = gen.training
        gen.eval()
        z, y = sample_inputs(self.model_cfg, p.num_images, p.seed)
        images = gen(z.to(device), None if y is None else y.to(device))
        gen.train(was_training)
        return images.float().clamp(-1, 1)


# ---- run and load --------------------------------------------------------------------------------
def run_gan(cfg: GANRunConfig, resume: str | None = None) -> Path:
    """Train (or continue with resume="latest"), then write OUT/model/ (EMA generator when
    `train.ema.module: gen`), with G's BatchNorm statistics recomputed for the weights written."""
    m = cfg.model
    info = check_image_data(cfg.data, FAMILY, m.channels, m.image_size, m.num_classes)
    info = info if m.num_classes else {**info, "classes": []}
    task = GANTask(cfg.model, cfg.loss, cfg.optim, cfg.preview, info=info)

    def standing_statistics(trainer: Trainer) -> None:
        use_ema = trainer.ema is not None and cfg.train.ema.module == MODULE
        with trainer.ema.swap() if use_ema else nullcontext():  # buffers are not swapped: they keep the new stats
            recalibrate_batchnorm(trainer.raw[MODULE], cfg.model, batches=cfg.bn_batches, seed=20_000)

    return train_baseline(task, cfg, FAMILY, MODULE, info, resume, before_write=standing_statistics)


class GANSampler:
    """A trained generator as evaluation's `GenerativeModel`: `sample(num, seed)` → (num, C, S, S) in [-1, 1]."""

    def __init__(self, gen: Generator, meta: dict[str, Any] | None = None) -> None:
        self.gen = gen.eval()
        self.cfg: GANModelConfig = gen.cfg
        self.image_shape = (self.cfg.channels, self.cfg.image_size, self.cfg.image_size)
        self.num_classes = self.cfg.num_classes
        self.classes: list[str] = list((meta or {}).get("classes", []))

    @torch.no_grad()
    def sample(self, num: int, seed: int = 0, classes: Any = None, batch_size: int = 256) -> torch.Tensor:
        """Deterministic per seed (z from a seeded CPU generator, G in eval mode). Conditional models
        cycle labels 0..K-1 over the images unless `classes` gives one class or one per image."""
        z, y = sample_inputs(self.cfg, num, seed, classes)
        device = next(self.gen.parameters()).device
        out = [self.gen(zc.to(device), None if y is None else y[i:i + len(zc)].to(device))
               for i, zc in zip(range(0, num, batch_size), z.split(batch_size))]
        return torch.cat(out).float().cpu().clamp(-1, 1) if out else torch.empty(0, *self.image_shape)


def load_gan(path: str | Path, device: str = "cpu") -> GANSampler:
    """A `gan` model folder (or the run folder holding `model/`) → GANSampler; other families refused."""
    gen, meta = load_module(path, FAMILY, GANModelConfig, Generator, device)
    return GANSampler(gen, meta)


__all__ = ["GANLossConfig", "GANOptimConfig", "GANPreviewConfig", "GANRunConfig", "GANTask", "GANSampler",
           "run_gan", "load_gan"]
