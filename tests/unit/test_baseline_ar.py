"""The autoregressive baseline's math: causality, tokens, the uniform 8 bits/dim, the KV cache,
cached == uncached sampling, the attention dispatcher (Triton interpreter vs SDPA), optimizer groups."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import kernels
import kernels.autograd_fn as autograd_fn
from ldm_system.baselines import ar_model
from ldm_system.baselines.ar_model import (
    ARModelConfig,
    ImageTransformer,
    images_to_tokens,
    param_groups,
    pick,
    tokens_to_images,
)
from ldm_system.baselines.autoregressive import ARTask, AROptimConfig, load_ar
from ldm_system.baselines.common import save_model_folder
from ldm_system.data.stream_worker import Batch

TINY = ARModelConfig(channels=2, image_size=4, width=32, depth=2, heads=4, num_classes=3)  # N = 32


@pytest.fixture(autouse=True)
def _sdpa_backend():
    """conftest sets TRITON_INTERPRET=1, under which "auto" runs the (slow) interpreter: force SDPA,
    except where a test asks for Triton itself."""
    previous = kernels.set_backend("sdpa")
    yield
    kernels.set_backend(previous)


def _random_model(cfg: ARModelConfig = TINY, seed: int = 0) -> ImageTransformer:
    """A model whose output layer is not zero (the default init makes every logit 0)."""
    torch.manual_seed(seed)
    model = ImageTransformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def _tokens(b: int, n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (b, n), generator=torch.Generator().manual_seed(seed))


# ---- causality --------------------------------------------------------------------------------
@pytest.mark.parametrize("pos_embed", ["learned", "2d"])
def test_logits_at_i_ignore_tokens_at_i_and_later_and_see_earlier_ones(pos_embed):
    cfg = ARModelConfig(channels=2, image_size=4, width=32, depth=2, heads=4, pos_embed=pos_embed, num_classes=3)
    model = _random_model(cfg)
    n = cfg.seq_len
    tokens, labels = _tokens(2, n), torch.tensor([0, 2])
    with torch.no_grad():
        base = model(tokens, labels)  # (2, N, 256)
        for i in range(n):
            changed = tokens.clone()
            changed[:, i:] = (changed[:, i:] + 1 + torch.arange(n - i)) % 256  # every token at >= i differs
            out = model(changed, labels)
            assert torch.equal(out[:, : i + 1], base[:, : i + 1]), f"logits at <= {i} saw tokens >= {i}"
            if i > 0:
                earlier = tokens.clone()
                earlier[:, i - 1] = (earlier[:, i - 1] + 128) % 256
                diff = (model(earlier, labels)[:, i] - base[:, i]).abs().max()
                assert diff > 1e-4, f"logits at {i} do not depend on token {i - 1}"
        first = tokens.clone()
        first[:, 0] = (first[:, 0] + 128) % 256
        assert (model(first, labels)[:, -1] - base[:, -1]).abs().max() > 1e-4  # the whole prefix is seen
        other_class = model(tokens, torch.tensor([1, 0]))
        assert (other_class[:, 0] - base[:, 0]).abs().max() > 1e-4  # position 0 reads the start (class) token


# ---- tokens -----------------------------------------------------------------------------------
def test_tokens_round_trip_exactly_and_follow_raster_order_with_interleaved_channels():
    u = torch.randint(0, 256, (3, 3, 5, 7), generator=torch.Generator().manual_seed(0))
    u[0, 0, 0, 0], u[0, 0, 0, 1] = 0, 255
    x = u.float() / 127.5 - 1  # the data stream's mapping of 8-bit pixels
    tokens = images_to_tokens(x)
    assert tokens.shape == (3, 5 * 7 * 3) and tokens.dtype == torch.int64
    b, c, h, w = 1, 2, 3, 4
    assert tokens[b, (h * 7 + w) * 3 + c] == u[b, c, h, w]
    assert torch.equal(tokens.view(3, 5, 7, 3).permute(0, 3, 1, 2), u)
    assert torch.equal(tokens_to_images(tokens, (3, 5, 7)), x)  # bit-exact images
    assert images_to_tokens(torch.tensor([-1.5, 1.5]).view(1, 1, 1, 2)).tolist() == [[0, 255]]  # clamped


# ---- likelihood -------------------------------------------------------------------------------
def test_fresh_model_is_uniform_eight_bits_per_dim():
    cfg = ARModelConfig(channels=1, image_size=8, width=32, depth=1, heads=2)
    model = ImageTransformer(cfg).eval()
    assert not model.head.weight.any() and not model.head.bias.any()  # the init zeroes the output layer
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    bpd = model.bits_per_dim(images)
    assert bpd.shape == (3,)
    assert torch.allclose(bpd, torch.full((3,), 8.0, dtype=torch.float64), atol=1e-6, rtol=0)
    # class model without labels: the uniform class mixture of K uniform models is still uniform
    cond = ImageTransformer(ARModelConfig(channels=1, image_size=8, width=32, depth=1, heads=2, num_classes=4)).eval()
    assert torch.allclose(cond.bits_per_dim(images), torch.full((3,), 8.0, dtype=torch.float64), atol=1e-6, rtol=0)


def test_bits_per_dim_is_the_mean_token_cross_entropy_and_the_class_mixture():
    model = _random_model()
    images = tokens_to_images(_tokens(4, TINY.seq_len), TINY.image_shape)
    tokens = images_to_tokens(images)
    labels = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        ce = F.cross_entropy(model(tokens, labels).permute(0, 2, 1), tokens, reduction="none").mean(1)
        per_class = torch.stack([model.nll(images, torch.full((4,), y)) for y in range(3)]).double()
    assert torch.allclose(model.bits_per_dim(images, labels), ce.double() / math.log(2), atol=1e-6)
    # no labels: −log2((1/K) Σ_y P(t|y)) / N, computed here without logsumexp tricks in float64
    mixture = -torch.log((torch.exp(-(per_class - per_class.min(0).values)).mean(0))) + per_class.min(0).values
    assert torch.allclose(model.bits_per_dim(images, batch_size=3), mixture / (TINY.seq_len * math.log(2)), atol=1e-6)


# ---- KV cache -----------------------------------------------------------------------------------
@pytest.mark.parametrize("pos_embed,tie", [("learned", False), ("2d", True)])
def test_kv_cache_steps_equal_the_full_pass_position_by_position(pos_embed, tie):
    cfg = ARModelConfig(channels=2, image_size=4, width=32, depth=2, heads=4, pos_embed=pos_embed,
                        num_classes=3, tie_weights=tie)
    model = _random_model(cfg)
    tokens, labels = _tokens(3, cfg.seq_len), torch.tensor([2, 0, 3])  # 3 = the null class
    with torch.no_grad():
        full = model(tokens, labels)
        cache = model.new_cache(3)
        for i in range(cfg.seq_len):
            step = model.step(tokens[:, i - 1] if i else None, i, cache, labels)
            assert torch.allclose(step, full[:, i], atol=1e-5, rtol=0), f"position {i}"
        # prefill the first m positions with one causal pass, then continue one token at a time
        m, cache = 11, model.new_cache(3)
        assert torch.allclose(model(tokens[:, :m], labels, cache=cache), full[:, :m], atol=1e-5, rtol=0)
        for i in range(m, cfg.seq_len):
            assert torch.allclose(model.step(tokens[:, i - 1], i, cache, labels), full[:, i], atol=1e-5, rtol=0)


def test_cached_sampling_draws_the_same_tokens_as_full_re_forward_sampling():
    model = _random_model()
    u = torch.rand(4, TINY.seq_len, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3])
    for temperature, top_k in ((1.0, 0), (0.7, 5)):
        cached = model.sample_tokens(u, labels, temperature, top_k, use_cache=True)
        full = model.sample_tokens(u, labels, temperature, top_k, use_cache=False)
        assert torch.equal(cached, full)
        assert len(cached.unique()) > 5  # a real draw, not a constant
    assert not torch.equal(model.sample_tokens(u, labels), model.sample_tokens(torch.rand_like(u), labels))


def test_sample_is_deterministic_per_seed_and_per_image():
    model = _random_model()
    a = model.sample(5, seed=7, batch_size=2)
    assert a.shape == (5, *TINY.image_shape) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, model.sample(5, seed=7, batch_size=5))  # batching does not change images
    assert torch.equal(a[:3], model.sample(3, seed=7))  # image j depends on (seed, j) only
    assert not torch.equal(a, model.sample(5, seed=8))
    grid = (a + 1) * 127.5
    assert torch.allclose(grid, grid.round(), atol=1e-4, rtol=0)  # on the 8-bit grid


def test_pick_is_the_inverse_cdf_with_temperature_and_top_k():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.125]])).repeat(5, 1)
    u = torch.tensor([0.0, 0.49, 0.51, 0.74, 0.99])
    assert pick(logits, u).tolist() == [0, 0, 1, 1, 3]
    assert pick(logits, u, top_k=2).tolist() == [0, 0, 0, 1, 1]  # renormalised over {0: 2/3, 1: 1/3}
    assert pick(logits, u, temperature=1e-3).tolist() == [0] * 5  # T → 0: argmax
    with pytest.raises(ValueError, match="temperature"):
        pick(logits, u, temperature=0.0)


# ---- the attention dispatcher -------------------------------------------------------------------
def test_attention_goes_through_the_kernels_dispatcher(monkeypatch):
    calls = []
    real = ar_model.attention
    monkeypatch.setattr(ar_model, "attention", lambda *a, **k: calls.append(k["causal"]) or real(*a, **k))
    model = _random_model()
    with torch.no_grad():
        model(_tokens(1, TINY.seq_len))
        model.step(None, 0, model.new_cache(1))
    assert calls == [True, True, False, False]  # one causal call per layer; single-token steps need no mask


def test_triton_interpreter_backend_matches_sdpa(monkeypatch):
    """The same loss, gradients and cached step whether the dispatcher picks the Triton kernels
    (interpreted on CPU) or SDPA. Tiny: the interpreter is slow."""
    triton = []
    real = autograd_fn.flash_attention
    monkeypatch.setattr(autograd_fn, "flash_attention", lambda *a: triton.append(a[0].shape) or real(*a))
    cfg = ARModelConfig(channels=1, image_size=4, width=16, depth=1, heads=2, num_classes=2)  # N = 16
    model = _random_model(cfg)
    model.train()
    tokens, labels = _tokens(2, cfg.seq_len), torch.tensor([1, 2])

    def run(backend):
        kernels.set_backend(backend)
        model.zero_grad()
        loss = F.cross_entropy(model(tokens, labels).reshape(-1, 256), tokens.reshape(-1))
        loss.backward()
        with torch.no_grad():
            cache = model.new_cache(2)
            steps = torch.stack([model.step(tokens[:, i - 1] if i else None, i, cache, labels) for i in range(4)])
        return loss.detach(), model.blocks[0].attn.qkv.weight.grad.clone(), steps

    loss_s, grad_s, steps_s = run("sdpa")
    assert triton == []
    loss_t, grad_t, steps_t = run("triton")
    assert len(triton) == 1 + 4  # the full pass and the four single-token steps ran the Triton kernel
    assert abs(loss_t - loss_s) < 1e-5
    assert torch.allclose(grad_t, grad_s, atol=1e-5, rtol=1e-4)
    assert torch.allclose(steps_t, steps_s, atol=1e-5, rtol=0)


# ---- training pieces ----------------------------------------------------------------------------
def test_weight_decay_only_on_linear_matrices():
    for tie in (False, True):
        model = ImageTransformer(ARModelConfig(channels=1, image_size=4, width=16, depth=2, heads=2, tie_weights=tie))
        decay, no_decay = param_groups(model, 0.1)
        assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
        linear = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
        assert {id(p) for p in decay["params"]} == {id(p) for p in linear}
        assert all(p.ndim == 2 for p in decay["params"])
        assert id(model.tok_emb.weight) in {id(p) for p in no_decay["params"]}
        assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
        assert len(decay["params"]) == 4 * 2 + (0 if tie else 1)  # qkv, proj, 2 MLP per block (+ head)


def test_task_loss_starts_at_ln_256_and_drops_class_labels_to_null():
    cfg = ARModelConfig(channels=1, image_size=4, width=16, depth=1, heads=2, num_classes=3)
    task = ARTask(cfg, AROptimConfig(cond_drop_prob=0.5))
    modules = task.build()
    images = tokens_to_images(_tokens(64, cfg.seq_len), cfg.image_shape)
    labels = torch.tensor([0, 1, 2, -1] * 16)
    batch = Batch(images, labels, [""] * 64, [""] * 64)
    (name, loss), = list(task.losses(modules, batch, 0))
    assert name == "ar" and abs(float(loss.detach()) - math.log(256)) < 1e-5
    assert abs(task.metrics()["bits_per_dim"] - 8.0) < 1e-5
    dropped = task.labels(batch)
    assert (dropped[3::4] == 3).all()  # unlabelled → null
    kept = dropped[labels >= 0]
    assert 0 < (kept == 3).sum() < len(kept) and (kept[kept != 3] == labels[labels >= 0][kept != 3]).all()
    with pytest.raises(ValueError, match="out of range"):
        task.labels(Batch(images[:1], torch.tensor([3]), [""], [""]))
    with pytest.raises(ValueError, match="the model takes"):
        list(task.losses(modules, Batch(torch.zeros(1, 1, 8, 8), torch.zeros(1), [""], [""]), 0))


def test_a_few_hundred_steps_learn_two_patterns_and_sample_them():
    """End-to-end sanity of loss, likelihood and sampling: two 4×4 images, one per class."""
    cfg = ARModelConfig(channels=1, image_size=4, width=32, depth=2, heads=2, num_classes=2)
    torch.manual_seed(0)
    model = ImageTransformer(cfg)
    pats = torch.stack([torch.arange(16) * 16, 255 - torch.arange(16) * 16]).view(2, 1, 4, 4)
    images, labels = pats.float() / 127.5 - 1, torch.tensor([0, 1])
    opt = torch.optim.AdamW(param_groups(model, 0.0), lr=3e-3)
    for _ in range(150):
        loss = model.nll(images, labels).mean() / cfg.seq_len
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert model.bits_per_dim(images, labels).max() < 0.1
    assert abs(model.bits_per_dim(images).mean() - 1 / cfg.seq_len) < 0.1  # mixture: 1 bit for the class
    samples = model.sample(4, seed=0, temperature=0.05)  # classes 0, 1, 0, 1; near-argmax
    assert torch.equal(samples, images.repeat(2, 1, 1, 1))


def test_tied_model_saves_and_loads(tmp_path):
    cfg = ARModelConfig(channels=1, image_size=4, width=16, depth=1, heads=2, tie_weights=True)
    model = _random_model(cfg)
    save_model_folder(tmp_path / "model", "ar", cfg, model)
    loaded = load_ar(tmp_path)
    assert loaded.head is None and loaded.cfg == cfg and not loaded.training
    x = tokens_to_images(_tokens(2, 16), cfg.image_shape)
    assert torch.equal(loaded.bits_per_dim(x), model.bits_per_dim(x))


def test_config_errors():
    with pytest.raises(ValueError, match="divisible"):
        ARModelConfig(width=30, heads=4)
    model = ImageTransformer(ARModelConfig(channels=1, image_size=4, width=16, depth=1, heads=2))
    with pytest.raises(ValueError, match="at most 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="null class"):
        model(torch.zeros(1, 4, dtype=torch.long), torch.tensor([1]))  # unconditional: only label 0 (null)
