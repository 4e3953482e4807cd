"""GAN baseline: lazy R1, spectral norm, that one task step trains D and G as it should, shapes
(the losses and R1 themselves: test_adversarial.py)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ldm_system.baselines.gan import GANLossConfig, GANOptimConfig, GANTask
from ldm_system.baselines.gan_models import (
    Discriminator,
    GANModelConfig,
    Generator,
    recalibrate_batchnorm,
    sample_inputs,
)
from ldm_system.data.stream_worker import Batch

TINY = dict(z_dim=8, class_embed_dim=4, gen_channels=8, disc_channels=8)


def _batch(images: torch.Tensor, labels: torch.Tensor | None = None) -> Batch:
    n = images.shape[0]
    labels = torch.full((n,), -1, dtype=torch.long) if labels is None else labels
    return Batch(images, labels, [""] * n, [str(i) for i in range(n)])


# ---- lazy R1 ----------------------------------------------------------------------------------
def test_lazy_r1_only_on_every_kth_step_and_scaled_by_k():
    cfg = GANModelConfig(**TINY)
    task = GANTask(cfg, GANLossConfig(kind="hinge", r1_gamma=2.0, r1_every=4))
    modules = task.build()
    modules["disc"].eval()  # no power iteration between the two calls: the same D both times
    x = _batch(torch.rand(4, 1, 32, 32) * 2 - 1)
    torch.manual_seed(1)
    with_r1 = next(task.losses(modules, x, step=8))[1]
    stats = task.metrics()
    torch.manual_seed(1)
    without = next(task.losses(modules, x, step=9))[1]
    assert "disc/r1" in stats and "disc/r1" not in task.metrics()
    # same z, same D: the difference is exactly k · γ · (½ E||∇D||²), the logged R1 term
    assert (with_r1 - without).item() == pytest.approx(4 * 2.0 * stats["disc/r1"], rel=1e-4)


# ---- one engine-free step ------------------------------------------------------------------------
def _params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before: list[torch.Tensor], module: nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


@pytest.mark.parametrize("kind,num_classes", [("hinge", 10), ("non_saturating", 0)])
def test_one_task_step_trains_d_then_g(kind, num_classes):
    """The engine's protocol by hand: backward, step the named optimizer, zero its grads."""
    cfg = GANModelConfig(num_classes=num_classes, **TINY)
    task = GANTask(cfg, GANLossConfig(kind=kind), GANOptimConfig(gen_lr=1e-3, disc_lr=1e-3))
    modules = task.build()
    gen, disc = modules["gen"], modules["disc"]
    opts = task.optimizers(modules)
    batch = _batch(torch.rand(8, 1, 32, 32) * 2 - 1, torch.arange(8) % 10)
    steps = task.losses(modules, batch, step=0)

    name, d_loss = next(steps)
    assert name == "disc"
    g0, d0 = _params(gen), _params(disc)
    d_loss.backward()
    assert all(p.grad is None for p in gen.parameters())  # the fake batch was detached for D
    opts["disc"].step()
    opts["disc"].zero_grad(set_to_none=True)
    assert _changed(d0, disc) and not _changed(g0, gen)

    name, g_loss = next(steps)
    assert name == "gen"
    d1 = _params(disc)
    g_loss.backward()
    grads = [p.grad for p in gen.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0  # G's gradient reaches G
    assert all(p.grad is None for p in disc.parameters())  # ... and none lands on D (frozen for the G loss)
    assert all(p.requires_grad for p in disc.parameters())  # flags restored after the G forward
    opts["gen"].step()
    assert _changed(g0, gen) and not _changed(d1, disc)
    with pytest.raises(StopIteration):
        next(steps)
    assert set(task.metrics()) >= {"disc/loss", "disc/logits_real", "disc/logits_fake", "gen/loss"}


def test_batch_that_does_not_fit_the_model_is_a_clear_error():
    task = GANTask(GANModelConfig(num_classes=10, **TINY))
    modules = task.build()
    with pytest.raises(ValueError, match="model.channels"):
        next(task.losses(modules, _batch(torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long)), 0))
    with pytest.raises(ValueError, match="unlabelled"):
        next(task.losses(modules, _batch(torch.zeros(2, 1, 32, 32)), 0))


# ---- spectral norm -----------------------------------------------------------------------------
def test_spectral_norm_makes_the_largest_singular_value_one():
    torch.manual_seed(0)
    disc = Discriminator(GANModelConfig(num_classes=10, **TINY)).train()
    layers = [*disc.blocks, disc.linear, disc.embed]
    x, y = torch.randn(4, 1, 32, 32), torch.arange(4)
    with torch.no_grad():
        for layer in layers:
            layer.parametrizations.weight.original.mul_(5.0)  # raw σ far from 1, and far from its estimate
        for _ in range(30):  # one power iteration per training forward
            disc(x, y)
    for layer in layers:
        raw = layer.parametrizations.weight.original
        assert torch.linalg.matrix_norm(raw.flatten(1), ord=2) > 2.0
        sigma = torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2).item()  # W / σ̂(W)
        assert sigma == pytest.approx(1.0, abs=0.02), layer


# ---- shapes and sampling -----------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_shapes(channels, num_classes):
    cfg = GANModelConfig(channels=channels, num_classes=num_classes, **TINY)
    gen, disc = Generator(cfg), Discriminator(cfg)
    z, y = sample_inputs(cfg, 6, seed=0)
    assert (y is None) == (num_classes == 0)
    images = gen(z, y)
    assert images.shape == (6, channels, 32, 32) and images.abs().max() <= 1.0
    assert disc(images, y).shape == (6,)


def test_other_image_size():
    cfg = GANModelConfig(image_size=16, channels=3, **TINY)
    images = Generator(cfg)(torch.randn(2, cfg.z_dim))
    assert images.shape == (2, 3, 16, 16) and Discriminator(cfg)(images).shape == (2,)
    with pytest.raises(ValueError, match="power of two"):
        GANModelConfig(image_size=24)


def test_sample_inputs_seeded_and_labels_cycle():
    cfg = GANModelConfig(num_classes=3, **TINY)
    z1, y1 = sample_inputs(cfg, 7, seed=5)
    z2, _ = sample_inputs(cfg, 7, seed=5)
    assert torch.equal(z1, z2) and not torch.equal(z1, sample_inputs(cfg, 7, seed=6)[0])
    assert y1.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert sample_inputs(cfg, 3, seed=0, classes=2)[1].tolist() == [2, 2, 2]
    with pytest.raises(ValueError):
        sample_inputs(cfg, 2, seed=0, classes=[0, 3])
    with pytest.raises(ValueError, match="unconditional"):
        sample_inputs(GANModelConfig(**TINY), 2, seed=0, classes=[0, 1])


def test_batchnorm_recalibration_gives_exact_batch_statistics():
    cfg = GANModelConfig(**TINY)
    gen = Generator(cfg).eval()
    recalibrate_batchnorm(gen, cfg, batches=1, batch_size=32, seed=3)
    assert not gen.training and gen.bn0.momentum == 0.1
    z, _ = sample_inputs(cfg, 32, seed=3)
    h = gen.fc(z).view(32, -1, 4, 4)  # bn0's input for that one batch
    assert torch.allclose(gen.bn0.running_mean, h.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(gen.bn0.running_var, h.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-6)
