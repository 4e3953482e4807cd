"""The stage-1 task against the engine contract, driven by a small manual loop that mimics the
engine (backward -> optimizer step -> zero_grad for each yielded loss)."""
import dataclasses
import socket

import pytest
import torch

from autoencoders.config import preset
from autoencoders.stage1 import Stage1Task


def make_task(name="kl-f4-debug", **loss_overrides) -> Stage1Task:
    cfg = preset(name)
    loss = dataclasses.replace(cfg.loss, perceptual="none", disc_start=3, **loss_overrides)
    return Stage1Task(dataclasses.replace(cfg, loss=loss))


class Batch:  # what Stage1Task reads of the data stream's batch (duck typing: no ldm_system import)
    def __init__(self, images, labels=None, captions=None):
        self.images, self.labels, self.captions = images, labels, captions


def batch(n=2, c=3, size=16):
    return Batch(torch.rand(n, c, size, size) * 2 - 1, torch.zeros(n, dtype=torch.long), ["a"] * n)


def run_steps(task, modules, steps, start=0):
    opts = task.optimizers(modules)
    yielded = []
    for step in range(start, start + steps):
        names = []
        for name, loss in task.losses(modules, batch(), step):
            assert loss.ndim == 0 and torch.isfinite(loss)
            loss.backward()
            if name == "ae":
                # The generator step must not leave gradients on the discriminator.
                assert all(p.grad is None for p in modules["disc"].parameters())
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
            names.append(name)
        yielded.append(names)
    return yielded


def params_of(module):
    return [p.detach().clone() for p in module.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("name", ["kl-f4-debug", "vq-f4-debug"])
def test_discriminator_trains_only_from_disc_start(name):
    task = make_task(name)
    modules = task.build()
    disc0, ae0 = params_of(modules["disc"]), params_of(modules["ae"])
    assert run_steps(task, modules, 3) == [["ae"]] * 3
    assert same(disc0, params_of(modules["disc"])), "discriminator changed before disc_start"
    assert not same(ae0, params_of(modules["ae"])), "autoencoder did not train"
    assert "ae/g_adv" not in task.metrics()
    assert run_steps(task, modules, 2, start=3) == [["ae", "disc"]] * 2
    assert not same(disc0, params_of(modules["disc"])), "discriminator did not train after disc_start"
    m = task.metrics()
    assert {"ae/g_adv", "ae/adaptive_weight", "disc/loss", "disc/logits_real", "disc/logits_fake"} <= set(m)
    assert 0.0 <= m["ae/adaptive_weight"] <= 1e4


def test_metrics_are_floats_per_kind():
    kl = make_task("kl-f4-debug")
    run_steps(kl, kl.build(), 1)
    assert {"ae/rec", "ae/kl", "ae/nll", "ae/total"} <= set(kl.metrics())
    vq = make_task("vq-f4-debug")
    run_steps(vq, vq.build(), 1)
    m = vq.metrics()
    assert {"ae/vq", "vq/usage", "vq/perplexity", "vq/dead_codes"} <= set(m)
    assert all(isinstance(v, float) for v in m.values())
    assert 0.0 < m["vq/usage"] <= 1.0 and m["vq/perplexity"] >= 1.0


def test_perceptual_term_is_used_when_configured():
    cfg = preset("kl-f4-debug")
    task = Stage1Task(cfg)  # default perceptual: effnet-lite0
    run_steps(task, task.build(), 1)
    assert task.metrics()["ae/perceptual"] > 0


def test_fixed_weight_when_adaptive_disabled():
    task = make_task(adaptive_weight=False)
    run_steps(task, task.build(), 1, start=3)
    assert task.metrics()["ae/adaptive_weight"] == 1.0


@pytest.mark.parametrize("reg", ["r1", "lecam"])
def test_discriminator_regularisers(reg):
    task = make_task(reg=reg, reg_weight=0.1, gan="non-saturating")
    modules = task.build()
    run_steps(task, modules, 2, start=3)
    assert task.metrics()["disc/reg"] >= 0.0
    if reg == "lecam":
        assert modules["disc"].lecam_real.item() != 0.0 or modules["disc"].lecam_fake.item() != 0.0


def test_preview_interleaves_inputs_and_reconstructions():
    task = make_task("vq-f4-debug")
    modules = task.build()
    state = {k: v.clone() for k, v in modules["ae"].state_dict().items()}
    images = batch(n=3).images
    grid = task.preview(modules, Batch(images))
    assert grid.shape == (6, 3, 16, 16)
    assert torch.equal(grid[0::2], images)
    assert grid.min() >= -1 and grid.max() <= 1
    assert all(torch.equal(state[k], v) for k, v in modules["ae"].state_dict().items()), "preview changed state"


def test_reads_only_the_images_of_a_batch():
    task = make_task()
    modules = task.build()
    names = [name for name, _ in task.losses(modules, Batch(batch().images), 0)]
    assert names == ["ae"]
    assert task.preview(modules, Batch(batch().images)).shape == (4, 3, 16, 16)


def test_bad_batches_and_order_errors():
    task = make_task()
    with pytest.raises(RuntimeError, match="build"):
        next(task.losses({}, batch(), 0))
    modules = task.build()
    with pytest.raises(ValueError, match="in_channels=3"):
        next(task.losses(modules, batch(c=1), 0))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        next(task.losses(modules, Batch(torch.zeros(3, 16, 16)), 0))


def test_optimizers_have_separate_learning_rates_and_betas():
    cfg = preset("kl-f4-debug")
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, ae_lr=1e-4, disc_lr=3e-4))
    task = Stage1Task(cfg)
    opts = task.optimizers(task.build())
    assert opts["ae"].param_groups[0]["lr"] == 1e-4 and opts["disc"].param_groups[0]["lr"] == 3e-4
    assert opts["ae"].param_groups[0]["betas"] == (0.5, 0.9)
    assert task.checkpoint_metadata()["kind"] == "kl"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_runs_through_ddp_wrapped_modules():
    """Single-process gloo DDP: the prepared-module path (raw disc for the generator term, DDP disc
    for the discriminator loss, adaptive weight via autograd.grad) works with DDP's reducer."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    if dist.is_initialized():
        pytest.skip("a process group already exists in this test process")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        task = make_task("vq-f4-debug")
        raw = task.build()
        wrapped = {k: DDP(v) for k, v in raw.items()}
        disc0 = params_of(raw["disc"])
        assert run_steps(task, wrapped, 2, start=3) == [["ae", "disc"]] * 2
        assert not same(disc0, params_of(raw["disc"]))
        assert task.preview(wrapped, batch()).shape == (4, 3, 16, 16)
    finally:
        dist.destroy_process_group()
