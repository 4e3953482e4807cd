"""The interfaces evaluation (`ldm report`) reads every model family through.

Families implement them by duck typing: the GAN's sampler, the flow and the autoregressive model
(`ldm_system/baselines/`), and the exported LDM (`eval/ldm_generator.py`). Evaluation owns them, so a
family never imports evaluation, and the names say what evaluation needs rather than what a family
is (the GAN keeps `Generator` for its network).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class GenerativeModel(Protocol):
    """A trained image model as evaluation sees it (every family, the LDM included)."""

    image_shape: tuple[int, int, int]  # (C, H, W) of the images it makes

    def sample(self, num: int, seed: int = 0) -> torch.Tensor:
        """(num, C, H, W) images in [-1, 1]; the same seed gives the same images."""
        ...


@runtime_checkable
class LikelihoodModel(GenerativeModel, Protocol):
    """Families with an exact (flow) or exactly computable (autoregressive) likelihood."""

    def bits_per_dim(self, images: torch.Tensor) -> torch.Tensor:
        """(B,) negative log-likelihood of 8-bit images (given in [-1, 1]) in bits per dimension."""
        ...


@runtime_checkable
class ClassConditionalModel(GenerativeModel, Protocol):
    """Families drawn for a class: `sample(num, seed)` draws image i for class i % num_classes
    (num_classes 0: the model takes no class). Conditional accuracy reads the labels that way."""

    num_classes: int
