"""The adversarial game shared by stage 1 (PatchGAN on reconstructions) and the GAN baseline
(`ldm_system/baselines/gan.py`, which imports it downward): one implementation of each piece.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Temporarily set requires_grad=False on all parameters (restoring the previous flags).

    Why: the generator's loss runs through the raw discriminator inside this block, so autograd
    records no edge to D's parameters, no gradient lands on them, and D's DDP reducer is not involved.
    """
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
