"""Typed, frozen configs for stage 1 (autoencoder + losses + discriminator + optimisers).

Each component receives only its own dataclass:

    AutoencoderConfig   -> KLAutoencoder / VQAutoencoder   (QuantizerConfig -> VectorQuantizer)
    LossConfig          -> the stage-1 loss terms in Stage1Task
    DiscriminatorConfig -> PatchDiscriminator
    Stage1OptimConfig   -> Stage1Task.optimizers

`Stage1Config` bundles the four; in YAML they are the top-level sections `model:`, `loss:`,
`disc:` and `optim:` (the engine adds its own `data:` and `train:` sections next to them).
Presets are a plain dict, `PRESETS`, mirrored one-to-one by configs/autoencoder/*.yaml.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

AUTOENCODER_KINDS = ("kl", "vq")
REC_LOSSES = ("l1", "l2")
PERCEPTUAL_NETS = ("effnet-lite0", "lpips-vgg", "none")
GAN_LOSSES = ("hinge", "non-saturating")
DISC_REGS = ("none", "r1", "lecam")
DISC_NORMS = ("group", "batch", "none")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _as_tuple(obj, name: str) -> None:
    """YAML gives lists; frozen configs keep tuples (hashable, immutable)."""
    value = getattr(obj, name)
    if isinstance(value, list):
        object.__setattr__(obj, name, tuple(value))


@dataclass(frozen=True)
class QuantizerConfig:
    """Vector quantizer (VQ-VAE, van den Oord et al. 2017), used when `AutoencoderConfig.kind == "vq"`.

    loss = ||sg[z_e] - e||^2 + beta * ||z_e - sg[e]||^2   (the first term is dropped when `ema`)
    """

    codebook_size: int = 8192
    beta: float = 0.25  # commitment weight
    ema: bool = False  # codebook follows EMA of assigned encoder outputs instead of gradients
    ema_decay: float = 0.99
    ema_eps: float = 1e-5  # Laplace smoothing of the EMA cluster sizes
    l2_normalize: bool = False  # cosine-similarity lookup on unit-norm codes and encoder outputs
    restart_after: int = 0  # re-initialise codes unused for this many training steps (0 = never)

    def __post_init__(self) -> None:
        if self.codebook_size < 2:
            raise ValueError(f"quantizer.codebook_size must be >= 2, got {self.codebook_size}")
        if self.beta < 0:
            raise ValueError(f"quantizer.beta must be >= 0, got {self.beta}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"quantizer.ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.ema_eps <= 0:
            raise ValueError(f"quantizer.ema_eps must be > 0, got {self.ema_eps}")
        if self.restart_after < 0:
            raise ValueError(f"quantizer.restart_after must be >= 0, got {self.restart_after}")


@dataclass(frozen=True)
class AutoencoderConfig:
    """Encoder/decoder body (diffusers' VAE Encoder/Decoder blocks).

    `channels[i]` is the width of resolution level i; every level but the last halves the
    resolution, so the downsampling factor is f = 2 ** (len(channels) - 1). `f` is written out
    explicitly so configs read clearly, and is checked against `channels`.
    """

    kind: str = "kl"
    in_channels: int = 3
    channels: tuple[int, ...] = (128, 256, 512)
    f: int = 4
    latent_channels: int = 3
    layers_per_block: int = 2
    norm_groups: int = 32
    mid_attention: bool = True
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)

    def __post_init__(self) -> None:
        _as_tuple(self, "channels")
        if isinstance(self.quantizer, dict):
            object.__setattr__(self, "quantizer", QuantizerConfig(**self.quantizer))
        _choice("model.kind", self.kind, AUTOENCODER_KINDS)
        if self.in_channels not in (1, 3):
            raise ValueError(f"model.in_channels must be 1 or 3, got {self.in_channels}")
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ValueError(f"model.channels must be a non-empty list of positive ints, got {self.channels}")
        expected_f = 2 ** (len(self.channels) - 1)
        if self.f != expected_f:
            raise ValueError(
                f"model.f={self.f} does not match model.channels={list(self.channels)}: "
                f"{len(self.channels)} levels give f = 2**{len(self.channels) - 1} = {expected_f}"
            )
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise ValueError(f"model.norm_groups={self.norm_groups} must divide every channel count, not {bad}")
        if self.latent_channels < 1:
            raise ValueError(f"model.latent_channels must be >= 1, got {self.latent_channels}")
        if self.layers_per_block < 1:
            raise ValueError(f"model.layers_per_block must be >= 1, got {self.layers_per_block}")

    # The shape checks both model kinds run on their inputs; they live with the numbers they check.
    def check_images(self, x) -> None:
        """Refuse images the model cannot take: (B, in_channels, H, W) with H and W divisible by f."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % self.f or x.shape[3] % self.f:
            raise ValueError(f"image size {tuple(x.shape[2:])} must be divisible by the downsampling factor f={self.f}")

    def check_latents(self, z) -> None:
        """Refuse latents the decoder cannot take: (B, latent_channels, h, w)."""
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"expected latents (B, {self.latent_channels}, h, w), got {tuple(z.shape)}")


@dataclass(frozen=True)
class LossConfig:
    """Generator-side loss terms and the discriminator schedule.

    L_ae = rec_weight * L_rec + perceptual_weight * L_perc          (= L_nll)
           + kl_weight * L_kl            (kind "kl")
           + codebook_weight * L_vq      (kind "vq")
           + disc_weight * lambda * L_G  (only once step >= disc_start; lambda = adaptive weight or 1)
    L_disc = L_D + reg_weight * R        (R1: R = 1/2 E||grad_x D(x)||^2; LeCam: Tseng et al. 2021, eq. 3)
    """

    rec: str = "l1"
    rec_weight: float = 1.0
    kl_weight: float = 1e-6  # per image pixel, i.e. the LDM meaning of the weight
    codebook_weight: float = 1.0
    perceptual: str = "effnet-lite0"
    perceptual_weight: float = 1.0
    gan: str = "hinge"
    disc_weight: float = 0.5
    disc_start: int = 50001
    adaptive_weight: bool = True  # lambda = ||grad L_nll|| / (||grad L_G|| + 1e-4) at the decoder's last layer
    max_adaptive_weight: float = 1e4
    reg: str = "none"
    reg_weight: float = 0.0
    lecam_decay: float = 0.99

    def __post_init__(self) -> None:
        _choice("loss.rec", self.rec, REC_LOSSES)
        _choice("loss.perceptual", self.perceptual, PERCEPTUAL_NETS)
        _choice("loss.gan", self.gan, GAN_LOSSES)
        _choice("loss.reg", self.reg, DISC_REGS)
        for name in ("rec_weight", "kl_weight", "codebook_weight", "perceptual_weight", "disc_weight", "reg_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        if self.disc_start < 0:
            raise ValueError(f"loss.disc_start must be >= 0, got {self.disc_start}")
        if self.max_adaptive_weight <= 0:
            raise ValueError(f"loss.max_adaptive_weight must be > 0, got {self.max_adaptive_weight}")
        if self.reg != "none" and self.reg_weight <= 0:
            raise ValueError(f"loss.reg={self.reg!r} needs loss.reg_weight > 0, got {self.reg_weight}")
        if not 0.0 < self.lecam_decay < 1.0:
            raise ValueError(f"loss.lecam_decay must be in (0, 1), got {self.lecam_decay}")


@dataclass(frozen=True)
class DiscriminatorConfig:
    """PatchGAN (pix2pix N-layer) discriminator. GroupNorm or none suits DDP and small batches."""

    channels: int = 64
    n_layers: int = 3
    norm: str = "group"

    def __post_init__(self) -> None:
        _choice("disc.norm", self.norm, DISC_NORMS)
        if self.channels < 1:
            raise ValueError(f"disc.channels must be >= 1, got {self.channels}")
        if self.n_layers < 1:
            raise ValueError(f"disc.n_layers must be >= 1, got {self.n_layers}")


@dataclass(frozen=True)
class Stage1OptimConfig:
    """Separate Adam optimisers for the autoencoder and the discriminator."""

    ae_lr: float = 1e-4
    disc_lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _as_tuple(self, "betas")
        if self.ae_lr <= 0 or self.disc_lr <= 0:
            raise ValueError(f"optim.ae_lr and optim.disc_lr must be > 0, got {self.ae_lr}, {self.disc_lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")


@dataclass(frozen=True)
class Stage1Config:
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    disc: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    optim: Stage1OptimConfig = field(default_factory=Stage1OptimConfig)


# ---------------------------------------------------------------------------------------------
# Presets. Real sizes follow the LDM paper's first-stage models (ch 128, ch_mult 1-2-4(-4)).
# The real presets' lr is LDM's base rate 4.5e-6 scaled by an effective batch of 10.
# Debug sizes run a full training step at 32x32 in well under a second on one CPU core.


def kl_f4() -> Stage1Config:
    return Stage1Config(
        model=AutoencoderConfig(kind="kl", channels=(128, 256, 512), f=4, latent_channels=3),
        loss=LossConfig(kl_weight=1e-6, disc_weight=0.5, disc_start=50001),
        optim=Stage1OptimConfig(ae_lr=4.5e-5, disc_lr=4.5e-5),
    )


def kl_f8() -> Stage1Config:
    return Stage1Config(
        model=AutoencoderConfig(kind="kl", channels=(128, 256, 512, 512), f=8, latent_channels=4),
        loss=LossConfig(kl_weight=1e-6, disc_weight=0.5, disc_start=50001),
        optim=Stage1OptimConfig(ae_lr=4.5e-5, disc_lr=4.5e-5),
    )


def vq_f4() -> Stage1Config:
    return Stage1Config(
        model=AutoencoderConfig(
            kind="vq", channels=(128, 256, 512), f=4, latent_channels=3,
            quantizer=QuantizerConfig(codebook_size=8192, beta=0.25, restart_after=1000),
        ),
        loss=LossConfig(codebook_weight=1.0, disc_weight=0.75, disc_start=1),
        optim=Stage1OptimConfig(ae_lr=4.5e-5, disc_lr=4.5e-5),
    )


_DEBUG_LOSS = LossConfig(disc_start=2, disc_weight=0.5)
_DEBUG_DISC = DiscriminatorConfig(channels=16, n_layers=2, norm="group")
_DEBUG_OPTIM = Stage1OptimConfig(ae_lr=2e-4, disc_lr=2e-4)


def kl_f4_debug() -> Stage1Config:
    model = AutoencoderConfig(
        kind="kl", channels=(16, 32, 32), f=4, latent_channels=3, layers_per_block=1, norm_groups=8
    )
    return Stage1Config(model=model, loss=_DEBUG_LOSS, disc=_DEBUG_DISC, optim=_DEBUG_OPTIM)


def kl_f8_debug() -> Stage1Config:
    model = AutoencoderConfig(
        kind="kl", channels=(16, 32, 32, 32), f=8, latent_channels=4, layers_per_block=1, norm_groups=8
    )
    return Stage1Config(model=model, loss=_DEBUG_LOSS, disc=_DEBUG_DISC, optim=_DEBUG_OPTIM)


def vq_f4_debug() -> Stage1Config:
    model = AutoencoderConfig(
        kind="vq", channels=(16, 32, 32), f=4, latent_channels=3, layers_per_block=1, norm_groups=8,
        quantizer=QuantizerConfig(codebook_size=64, beta=0.25, restart_after=20),
    )
    return Stage1Config(model=model, loss=_DEBUG_LOSS, disc=_DEBUG_DISC, optim=_DEBUG_OPTIM)


PRESETS: dict[str, Callable[[], Stage1Config]] = {
    "kl-f4": kl_f4,
    "kl-f8": kl_f8,
    "vq-f4": vq_f4,
    "kl-f4-debug": kl_f4_debug,
    "kl-f8-debug": kl_f8_debug,
    "vq-f4-debug": vq_f4_debug,
}


def preset(name: str) -> Stage1Config:
    if name not in PRESETS:
        raise KeyError(f"unknown stage-1 preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]()
