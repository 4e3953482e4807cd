"""The GAN baseline's networks: a DCGAN-style generator and a spectrally normalised discriminator.

    G:  z (B, z_dim) [⊕ e(y) (B, class_embed_dim)] → linear → BN → ReLU → (B, 2^(n-1)·g, 4, 4)
        → (n-1) × [nearest ×2 → conv3×3 → BN → ReLU]   (channels halve; (B, g, S/2, S/2) after)
        → nearest ×2 → conv3×3 → tanh → (B, C, S, S) in [-1, 1],          n = log2(S / 4)

    D:  x (B, C, S, S) → n × [conv4×4 stride 2 → LeakyReLU(0.2)]   (d, 2d, ... channels; DCGAN's D)
        → φ(x) = Σ_{h,w} (B, 2^(n-1)·d)  → ψ(φ) = w·φ + b   [+ ⟨V e_y, φ⟩]  → logits (B,)

Every D layer (the class embedding V included) is spectrally normalised (Miyato et al. 2018):
W_SN = W / σ(W), with σ(W), the largest singular value of W reshaped to (out, in·k·k), estimated
by one power iteration per training forward (`torch.nn.utils.parametrizations.spectral_norm`).

Conditioning (optional, `num_classes > 0`):
- G concatenates a learned class embedding to z (the simplest form that is still exact: the
  first linear layer then sees [z; e(y)]);
- D is a projection discriminator (Miyato & Koyama 2018): f(x, y) = ψ(φ(x)) + ⟨V e_y, φ(x)⟩,
  the inner product of the pooled features with the class's embedding row.

Models know nothing of training or distribution; `sample_inputs` gives the seeded (z, y) used by
previews and by the loaded sampler.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


@dataclass(frozen=True)
class GANModelConfig:
    image_size: int = 32  # S; a power of two >= 8 (G starts at 4x4)
    channels: int = 1  # C of the images (1 for Fashion-MNIST, 3 for RGB)
    z_dim: int = 128
    num_classes: int = 0  # 0 = unconditional; K > 0 = labels 0..K-1 condition G and D
    class_embed_dim: int = 32  # width of G's class embedding (concatenated to z)
    gen_channels: int = 32  # g: G width at S/2 x S/2, doubling towards 4x4 (2^(n-1)·g there)
    disc_channels: int = 32  # d: D width at S/2 x S/2 (its first layer), doubling per downsampling

    def __post_init__(self) -> None:
        n = math.log2(self.image_size / 4) if self.image_size > 0 else -1
        if self.image_size < 8 or n != int(n):
            raise ValueError(f"GANModelConfig.image_size must be a power of two >= 8, got {self.image_size}")
        for name in ("channels", "z_dim", "class_embed_dim", "gen_channels", "disc_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"GANModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_classes < 0:
            raise ValueError(f"GANModelConfig.num_classes must be >= 0 (0 = unconditional), got {self.num_classes}")

    @property
    def num_levels(self) -> int:
        """n = log2(S / 4): upsampling blocks in G, downsampling blocks in D."""
        return int(math.log2(self.image_size // 4))

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0


def check_labels(labels: torch.Tensor | None, num_classes: int) -> torch.Tensor | None:
    """Conditional models need labels in 0..K-1 (the stream marks unlabelled samples with -1)."""
    if num_classes == 0:
        return None
    if labels is None:
        raise ValueError(f"the model is class-conditional (num_classes={num_classes}) but no labels were given")
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must be in 0..{num_classes - 1} for a conditional GAN, got range "
            f"[{int(labels.min())}, {int(labels.max())}] (-1 = unlabelled data: set model.num_classes: 0)"
        )
    return labels


class Generator(nn.Module):
    def __init__(self, cfg: GANModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n = cfg.num_levels
        widths = [cfg.gen_channels * 2 ** (n - 1 - i) for i in range(n)]  # at 4x4 ... S/2 x S/2
        self.embed = nn.Embedding(cfg.num_classes, cfg.class_embed_dim) if cfg.conditional else None
        in_dim = cfg.z_dim + (cfg.class_embed_dim if cfg.conditional else 0)
        self.fc = nn.Linear(in_dim, widths[0] * 16, bias=False)  # BN follows: a bias would be cancelled
        self.bn0 = nn.BatchNorm2d(widths[0])
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"),  # up + conv: no transposed-conv checkerboard
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            )
            for c_in, c_out in zip(widths[:-1], widths[1:])
        )
        # As DCGAN, the last upsampling goes straight to the image channels: no wide full-resolution
        # feature map, which would cost as much as all the other layers together.
        self.out = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                 nn.Conv2d(widths[-1], cfg.channels, 3, padding=1))

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, z_dim), labels (B,) for conditional models → images (B, C, S, S) in [-1, 1]."""
        labels = check_labels(labels, self.cfg.num_classes)
        h = z if self.embed is None else torch.cat([z, self.embed(labels)], dim=1)  # (B, z_dim [+ e])
        h = self.fc(h).view(z.shape[0], -1, 4, 4)  # (B, 2^(n-1)·g, 4, 4)
        h = torch.relu(self.bn0(h))
        for block in self.blocks:
            h = block(h)  # (B, c/2, 2h, 2w)
        return torch.tanh(self.out(h))  # (B, C, S, S)


class Discriminator(nn.Module):
    def __init__(self, cfg: GANModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n = cfg.num_levels
        widths = [cfg.channels] + [cfg.disc_channels * 2**i for i in range(n)]  # image, S/2 ... 4x4
        self.blocks = nn.ModuleList(
            spectral_norm(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1))
            for c_in, c_out in zip(widths[:-1], widths[1:])
        )
        self.linear = spectral_norm(nn.Linear(widths[-1], 1))  # ψ
        self.embed = spectral_norm(nn.Embedding(cfg.num_classes, widths[-1])) if cfg.conditional else None  # V

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x): (B, C, S, S) → (B, 2^(n-1)·d), global *sum* pooling over the final 4x4 (as SNGAN)."""
        h = x
        for conv in self.blocks:
            h = nn.functional.leaky_relu(conv(h), 0.2)  # (B, 2c, h/2, w/2)
        return h.sum(dim=(2, 3))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, C, S, S) [, labels (B,)] → logits (B,)."""
        labels = check_labels(labels, self.cfg.num_classes)
        phi = self.features(x)  # (B, F)
        logits = self.linear(phi).squeeze(1)  # ψ(φ(x)), (B,)
        if self.embed is not None:
            logits = logits + (self.embed(labels) * phi).sum(dim=1)  # projection term ⟨V e_y, φ(x)⟩
        return logits


def sample_inputs(cfg: GANModelConfig, num: int, seed: int,
                  classes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(z (num, z_dim), labels (num,) or None), drawn on the CPU from a generator seeded with `seed`
    so that the same seed gives the same images on any device. Conditional labels cycle 0..K-1
    (0, 1, ..., K-1, 0, 1, ...: class-balanced; a grid K images wide shows one class per column)
    unless `classes` gives them (one per image, or a single class for all)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    z = torch.randn(num, cfg.z_dim, generator=gen)
    if not cfg.conditional:
        if classes is not None:
            raise ValueError("classes= given, but the GAN is unconditional (num_classes=0)")
        return z, None
    if classes is None:
        labels = torch.arange(num) % cfg.num_classes
    else:
        labels = torch.as_tensor(classes, dtype=torch.long).flatten()
        if labels.numel() == 1:
            labels = labels.expand(num).clone()
        if labels.numel() != num:
            raise ValueError(f"classes= must give one class or one per image ({num}), got {labels.numel()}")
    return z, check_labels(labels, cfg.num_classes)


@torch.no_grad()
def recalibrate_batchnorm(gen: nn.Module, cfg: GANModelConfig, batches: int = 16, batch_size: int = 64,
                          seed: int = 0) -> None:
    """'Standing statistics' (as BigGAN, Brock et al. 2019, samples with): recompute G's BatchNorm running
    mean/var as the exact average over `batches` fresh batches of (z, y) for the *current* weights.

    Needed because sampling runs G in eval mode, and the running statistics were accumulated for the
    raw training weights, while we sample with their EMA (the engine's EMA averages parameters only,
    not buffers). Afterwards G is back in its previous mode with its usual BN momentum. `gen` may be
    the engine's wrapped generator (its forward is what runs).
    """
    bns = [m for m in gen.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        return
    was_training = gen.training
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: after N batches, the mean of the N batch stats
    gen.train()
    device = next(gen.parameters()).device
    for i in range(batches):
        z, y = sample_inputs(cfg, batch_size, seed=seed + i)
        gen(z.to(device), None if y is None else y.to(device))
    for bn, m in zip(bns, momenta):
        bn.momentum = m
    gen.train(was_training)
