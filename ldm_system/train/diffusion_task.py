"""Stage 2 as an engine task: train a diffusion UNet on (latent) tensors.

Inputs come in two forms, declared by the data manifest (see `ldm_system/data/encode.py`):

- "latent": pre-encoded, already scaled latents (B, c, h, w). For KL autoencoders the shards also
            hold the scaled posterior (mean, logvar) and the stream can draw a fresh z per epoch
            (`data.sample_posterior`), which is what LDM trains on;
- "image":  images in [-1, 1]; encoded online by the frozen autoencoder (fp32, no grad, posterior
            sample), or used directly for pixel-space diffusion when there is no autoencoder.

The latent scale always comes from the autoencoder/manifest metadata, never a literal.
Text models get a frozen `TextEncoder` (models/text.py): captions → (B, L, D) encoder states. With
`cached_null` (shards from `ldm data encode --text-encoder`, data/text_cache.py) a step reads the
states from the batch (`batch.text`) and never runs the encoder, which then stays on the CPU and
encodes preview prompts only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Literal, Mapping

import torch
from torch import nn

from ldm_system.diffusion.config import DiffusionConfig
from ldm_system.diffusion.guidance import drop_condition
from ldm_system.diffusion.targets import diffusion_loss, offset_noise, sample_timesteps
from ldm_system.models.conditioning import Conditioning
from ldm_system.models.latent import LatentCodec
from ldm_system.models.lora import LoRAConfig, add_lora
from ldm_system.models.text import TextEncoder, check_cross_attention_dim, drop_captions, drop_states
from ldm_system.models.unet import Denoiser, UNetConfig
from ldm_system.train.diffusion_preview import draw_preview, preview_buckets
from ldm_system.train.latent_check import LatentStdCheck
from ldm_system.train.preview_grid import LabelledGrid


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


@dataclass(frozen=True)
class PreviewConfig:
    num_images: int = 16  # budget: rows = max(1, num_images // columns) (diffusion_preview.py)
    steps: int = 20
    guidance: float = 2.0
    seed: int = 0
    # What the grid's labelled columns show: class names or ids (class models) or prompts (text models).
    # Empty: the classes 0..K-1, or the class names / the batch's captions as prompts.
    classes: tuple[int | str, ...] = ()
    prompts: tuple[str, ...] = ()


class DiffusionTask:
    def __init__(
        self,
        unet: UNetConfig,
        diffusion: DiffusionConfig,
        optim: OptimConfig,
        codec: LatentCodec,
        input_kind: Literal["latent", "image"],
        preview: PreviewConfig = PreviewConfig(),
        init_unet: nn.Module | None = None,
        info: dict[str, Any] | None = None,
        text: TextEncoder | None = None,
        lora: LoRAConfig | None = None,
        cached_null: torch.Tensor | None = None,  # (1, L, D): train from batch.text (see the module docstring)
    ) -> None:
        self.unet_cfg, self.diff_cfg, self.optim_cfg, self.preview_cfg = unet, diffusion, optim, preview
        self.codec, self.input_kind = codec, input_kind
        self.schedule = diffusion.schedule()
        self.init_unet = init_unet
        self.info = dict(info or {})  # provenance recorded in checkpoints (classes, autoencoder path)
        self.text = text  # frozen, never wrapped or prepared: not one of build()'s modules
        self.lora = lora if lora is not None and lora.enabled else None  # adapters only: the UNet stays frozen
        if unet.conditioning == "text":
            if text is None:
                raise ValueError("unet.conditioning is 'text' but no text encoder was given (set text.path)")
            check_cross_attention_dim(unet.cross_attention_dim, text)
            self.info["text_encoder"] = text.describe()
        elif cached_null is not None:
            raise ValueError(f"cached text states given but unet.conditioning is {unet.conditioning!r}, not 'text'")
        self.cached_null = cached_null
        if preview.classes or preview.prompts:  # before training: a class the data lacks stops the run now
            self._columns(())
        self._metrics: dict[str, float] = {}
        self.scale_check = None if codec.is_identity and input_kind == "image" else LatentStdCheck(
            f"latent scale {codec.scale:.5g} on {'posterior samples' if codec.sample_posterior else 'the posterior mode'}")
        self.device = torch.device("cpu")

    # ---- engine protocol -------------------------------------------------------------------
    def to_device(self, device: torch.device) -> None:
        self.device = device
        self.codec.to(device)
        if self.cached_null is not None:
            self.cached_null = self.cached_null.to(device)
            self.text.serve_from_cpu(device)  # previews only: no accelerator memory, no per-step forward
        elif self.text is not None:
            self.text.to(device)

    def build(self) -> dict[str, nn.Module]:
        net = Denoiser(self.unet_cfg, self.init_unet)
        if self.lora is not None:  # before the engine loads a checkpoint: resume sees the same keys
            add_lora(net.unet, self.lora)
        return {"unet": net}

    def optimizers(self, modules: Mapping[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        o = self.optim_cfg
        params = [p for p in modules["unet"].parameters() if p.requires_grad]
        return {"unet": torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)}

    def latents(self, batch: Any) -> torch.Tensor:
        """Scaled latents x₀ (B, c, h, w) for this batch."""
        x = batch.images.float()
        return self.codec.from_stored(x) if self.input_kind == "latent" else self.codec.encode(x)

    def condition(self, batch: Any) -> torch.Tensor | None:
        kind = self.unet_cfg.conditioning
        if kind == "none":
            return None
        if kind == "class":
            labels = batch.labels.long()
            if (labels >= self.unet_cfg.num_classes).any():
                raise ValueError(f"label {int(labels.max())} out of range for num_classes={self.unet_cfg.num_classes}")
            labels = torch.where(labels < 0, torch.full_like(labels, self.unet_cfg.num_classes), labels)  # unlabelled → null
            return drop_condition(labels, self.unet_cfg.num_classes, self.diff_cfg.cond_drop_prob)
        p = self.diff_cfg.cond_drop_prob
        if self.cached_null is not None:  # the same dropout draws as below, on the cached states
            if batch.text is None:
                raise ValueError("training from cached text states, but a batch came without them (batch.text)")
            return drop_states(batch.text, self.cached_null, p)  # (B, L, D)
        # dropped captions become "", whose states are the null condition
        return self.text.encode(drop_captions(batch.captions, p))  # (B, L, D)

    def losses(self, modules: Mapping[str, nn.Module], batch: Any, step: int) -> Iterator[tuple[str, torch.Tensor]]:
        x0 = self.latents(batch)
        cond = self.condition(batch)
        noise = offset_noise(x0, self.diff_cfg.offset_noise)
        t = sample_timesteps(x0.shape[0], self.schedule, device=x0.device)
        x_t = self.schedule.add_noise(x0, noise, t)
        # DeepSpeed bf16/fp16 holds the weights in low precision and does not autocast: feed its dtype.
        dtype = next(modules["unet"].parameters()).dtype
        if cond is not None and cond.is_floating_point():
            cond = cond.to(dtype)
        out = modules["unet"](x_t.to(dtype), t, cond)
        d = self.diff_cfg
        loss = diffusion_loss(out, x0, noise, t, self.schedule, d.prediction_type, d.loss_weighting, d.min_snr_gamma).mean()
        self._metrics = {"latent_std": float(x0.std())}
        if self.scale_check is not None:
            self.scale_check.update(x0)
        yield "unet", loss

    def metrics(self) -> dict[str, float]:
        return dict(self._metrics)

    @torch.no_grad()
    def preview(self, modules: Mapping[str, nn.Module], batch: Any) -> LabelledGrid:
        """A short DDIM loop from fixed noise as a labelled grid (diffusion_preview.py): one column per
        preview class or prompt, one section per bucket size for a model trained on buckets."""
        p, net = self.preview_cfg, modules["unet"]
        x0 = self.latents(batch)
        shapes = preview_buckets(self.info.get("buckets", ()), x0.shape[1]) or [tuple(x0.shape[1:])]
        names = self.info.get("classes") or list(batch.captions)
        return draw_preview(net, next(net.parameters()).dtype, self._conditioning(x0.device), self._columns(names),
                            shapes, p.num_images, p.steps, p.guidance, p.seed, self.schedule,
                            self.diff_cfg.prediction_type, self.codec.decode, x0.device)

    def _conditioning(self, device: torch.device | str = "cpu") -> Conditioning:
        return Conditioning.of(self.unet_cfg, self.info.get("classes", ()), text=self.text, device=device)

    def _columns(self, default_prompts) -> tuple[list, list[str]]:
        """(conditions, labels) of the preview's columns; a class name the data does not have is an error."""
        p = self.preview_cfg
        return self._conditioning().columns(p.num_images, p.classes, p.prompts, default_prompts)

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {"latent_scale": self.codec.scale, "input_kind": self.input_kind, **self.info}
