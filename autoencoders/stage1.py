"""The stage-1 training task: autoencoder + perceptual + PatchGAN losses, two optimisers.

It satisfies the engine's `Task` protocol (ldm_system/train/task.py) by duck typing; nothing here
imports `ldm_system`. One engine step:

    out   = ae(x)                                   prepared (DDP) autoencoder
    L_ae  = L_nll + L_kl|vq [+ disc_weight * lambda * L_G(D_raw(x_hat))]     -> yield ("ae", L_ae)
    L_D   = L_D(D(x), D(sg[x_hat])) [+ reg]          prepared discriminator  -> yield ("disc", L_D)

The bracketed generator term and the whole discriminator step start at `loss.disc_start`.

DDP notes. The generator's adversarial term goes through the *raw* discriminator with its
parameters' requires_grad switched off for that forward only: autograd records no edges to them,
so no gradient reaches the discriminator and its DDP reducer is not involved. The discriminator
loss runs through the prepared module on one concatenated batch [x; sg[x_hat]] (one forward, one
backward). The adaptive weight's `autograd.grad` calls target only the decoder's last weight and
do not run the gradient-accumulation hooks DDP relies on. Under DeepSpeed ZeRO-3 that weight is
partitioned: set `loss.adaptive_weight: false` there (a fixed `disc_weight` is then used).
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from autoencoders import adversarial as adv
from autoencoders.config import Stage1Config
from autoencoders.discriminator import PatchDiscriminator
from autoencoders.factory import build_autoencoder
from autoencoders.losses import kl_loss, reconstruction_loss
from autoencoders.perceptual import build_perceptual


def batch_images(batch: Any, in_channels: int) -> torch.Tensor:
    """`batch.images` (B, C, H, W), checked. The engine hands the data stream's `Batch`; any object
    with `.images` will do (duck typing: this package never imports `ldm_system`)."""
    images = getattr(batch, "images", None)
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"stage-1 batches must start with images (B, C, H, W) in [-1, 1], got {got}")
    if images.shape[1] != in_channels:
        raise ValueError(
            f"model.in_channels={in_channels} but the batch has {images.shape[1]} channels "
            f"(images {tuple(images.shape)}); set model.in_channels to match the data"
        )
    return images


class Stage1Task:
    def __init__(self, cfg: Stage1Config):
        self.cfg = cfg
        self.perceptual: nn.Module | None = None
        self._raw: dict[str, nn.Module] = {}
        self._stats: dict[str, torch.Tensor] = {}

    # ---- engine hooks ------------------------------------------------------------------
    def to_device(self, device: torch.device | str) -> None:
        """Place the frozen perceptual network (not a trained module, so not prepared)."""
        self._perceptual_net(torch.device(device))

    def build(self) -> dict[str, nn.Module]:
        ae = build_autoencoder(self.cfg.model)
        disc = PatchDiscriminator(self.cfg.disc, self.cfg.model.in_channels)
        self._raw = {"ae": ae, "disc": disc}
        return dict(self._raw)

    def optimizers(self, modules: Mapping[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        o = self.cfg.optim

        def adam(module: nn.Module, lr: float) -> torch.optim.Optimizer:
            params = [p for p in module.parameters() if p.requires_grad]
            return torch.optim.Adam(params, lr=lr, betas=tuple(o.betas), weight_decay=o.weight_decay)

        return {"ae": adam(modules["ae"], o.ae_lr), "disc": adam(modules["disc"], o.disc_lr)}

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {"stage": 1, "kind": self.cfg.model.kind, "model": asdict(self.cfg.model)}

    def metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._stats.items()}

    # ---- losses ------------------------------------------------------------------------
    def _perceptual_net(self, device: torch.device) -> nn.Module | None:
        lc = self.cfg.loss
        if self.perceptual is None and lc.perceptual != "none" and lc.perceptual_weight > 0:
            self.perceptual = build_perceptual(self.cfg.loss.perceptual)
        if self.perceptual is not None and next(self.perceptual.parameters()).device != device:
            self.perceptual.to(device)
        return self.perceptual

    def _raw_modules(self) -> tuple[nn.Module, nn.Module]:
        if not self._raw:
            raise RuntimeError("Stage1Task.build() must be called before losses()/preview()")
        return self._raw["ae"], self._raw["disc"]

    def disc_active(self, step: int) -> bool:
        return step >= self.cfg.loss.disc_start

    def losses(
        self, modules: Mapping[str, nn.Module], batch: Any, step: int
    ) -> Iterator[tuple[str, torch.Tensor]]:
        lc = self.cfg.loss
        raw_ae, raw_disc = self._raw_modules()
        images = batch_images(batch, self.cfg.model.in_channels)
        stats: dict[str, torch.Tensor] = {}

        out = modules["ae"](images)
        recon = out["recon"]
        rec = reconstruction_loss(recon, images, lc.rec)
        nll = lc.rec_weight * rec
        stats["ae/rec"] = rec.detach()
        net = self._perceptual_net(images.device)
        if net is not None and lc.perceptual_weight > 0:
            perc = net(recon, images).mean()
            nll = nll + lc.perceptual_weight * perc
            stats["ae/perceptual"] = perc.detach()
        stats["ae/nll"] = nll.detach()

        if self.cfg.model.kind == "kl":
            kl = kl_loss(out["mean"], out["logvar"], images[0].numel())
            loss = nll + lc.kl_weight * kl
            stats["ae/kl"] = kl.detach()
        else:
            loss = nll + lc.codebook_weight * out["vq_loss"]
            stats["ae/vq"] = out["vq_loss"].detach()
            stats["ae/commit"] = out["commit_loss"].detach()
            stats["vq/usage"] = out["usage"]
            stats["vq/perplexity"] = out["perplexity"]
            stats["vq/dead_codes"] = torch.tensor(float(raw_ae.quantizer.dead_codes()))

        active = self.disc_active(step)
        if active and lc.disc_weight > 0:
            with adv.frozen(raw_disc):
                g_loss = adv.generator_loss(raw_disc(recon), lc.gan)
            if lc.adaptive_weight:
                lam = adv.adaptive_weight(nll, g_loss, raw_ae.last_layer_weight, lc.max_adaptive_weight)
            else:
                lam = torch.ones((), device=images.device)
            loss = loss + lc.disc_weight * lam * g_loss
            stats["ae/g_adv"] = g_loss.detach()
            stats["ae/adaptive_weight"] = lam.detach()
        stats["ae/total"] = loss.detach()
        self._stats = stats
        yield "ae", loss

        if not active:
            return
        yield "disc", self._disc_loss(modules["disc"], raw_disc, images, recon.detach())

    def _disc_loss(
        self, disc: nn.Module, raw_disc: PatchDiscriminator, real: torch.Tensor, fake: torch.Tensor
    ) -> torch.Tensor:
        lc = self.cfg.loss
        real = real.detach()
        if lc.reg == "r1":
            real = real.clone().requires_grad_(True)
        logits = disc(torch.cat([real, fake]))  # (2B, 1, h, w): one forward through the prepared module
        real_logits, fake_logits = logits.split(real.shape[0])
        loss = adv.discriminator_loss(real_logits, fake_logits, lc.gan)
        self._stats["disc/loss"] = loss.detach()
        if lc.reg == "r1":
            reg = adv.r1_penalty(real_logits, real)
        elif lc.reg == "lecam":
            reg = adv.lecam_penalty(real_logits, fake_logits, raw_disc.lecam_real, raw_disc.lecam_fake)
            adv.update_lecam_anchors(real_logits, fake_logits, raw_disc.lecam_real, raw_disc.lecam_fake, lc.lecam_decay)
        else:
            reg = None
        if reg is not None:
            loss = loss + lc.reg_weight * reg
            self._stats["disc/reg"] = reg.detach()
        self._stats["disc/logits_real"] = real_logits.detach().mean()
        self._stats["disc/logits_fake"] = fake_logits.detach().mean()
        return loss

    # ---- preview -----------------------------------------------------------------------
    @torch.no_grad()
    def preview(self, modules: Mapping[str, nn.Module], batch: Any, max_images: int = 8) -> torch.Tensor:
        """(2n, C, H, W) in [-1, 1]: input_0, recon_0, input_1, recon_1, ... (n <= max_images).
        Uses the posterior mode; no quantizer state changes (grad is disabled)."""
        images = batch_images(batch, self.cfg.model.in_channels)[:max_images]
        recon = modules["ae"](images, sample_posterior=False)["recon"].clamp(-1.0, 1.0)
        return torch.stack([images.to(recon.dtype), recon], dim=1).flatten(0, 1)
