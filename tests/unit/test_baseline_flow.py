"""The flow baseline's math: every layer's exact inverse and its logdet against the brute-force
log|det J| (autograd Jacobian), ActNorm's data-dependent init (once, also after a load), bits/dim
in closed form for an identity flow, zero-initialised couplings, seeded and temperature-0 sampling."""
from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from ldm_system.baselines.common import save_model_folder
from ldm_system.baselines.flow import (
    FlowModelConfig,
    FlowTask,
    Glow,
    bits_per_dim_from_log_prob,
    load_flow,
)
from ldm_system.baselines.flow_layers import (
    ActNorm,
    AffineCoupling,
    FlowStep,
    InvConv1x1,
    Split2d,
    Squeeze,
    ZeroConv2d,
    squeeze2d,
    unsqueeze2d,
)
from ldm_system.data.stream_worker import Batch
from ldm_system.eval.metrics import bits_per_dim as metrics_bits_per_dim

TINY = FlowModelConfig(channels=1, image_size=4, levels=2, steps=2, hidden=8)  # D = 16


def _brute_logdet(f, x: torch.Tensor) -> torch.Tensor:
    """log|det ∂f(x)/∂x| of one sample (x: (1, C, H, W)), from the full (D, D) Jacobian."""
    jac = jacobian(lambda v: f(v.view_as(x)).flatten(), x.flatten())
    assert jac.shape[0] == jac.shape[1] == x.numel()
    return torch.linalg.slogdet(jac)[1]


def _perturb(module: torch.nn.Module, std: float = 0.05, seed: int = 1) -> None:
    """Move every parameter off its init (zero convs, identity couplings, zero priors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype))


def _images(b: int, c: int, h: int, seed: int = 0) -> torch.Tensor:
    k = torch.randint(0, 256, (b, c, h, h), generator=torch.Generator().manual_seed(seed))
    return k.float() / 127.5 - 1.0


def _random_glow(cfg: FlowModelConfig = TINY, seed: int = 0) -> Glow:
    torch.manual_seed(seed)
    model = Glow(cfg)
    model.data_init(_images(8, cfg.channels, cfg.image_size, seed=seed + 10))
    _perturb(model, 0.05, seed + 1)
    return model


# ---- each layer: exact inverse (fp32) and logdet = brute-force log|det J| (fp64) ---------
def _layers() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "actnorm": ActNorm(4),
        "invconv_lu": InvConv1x1(4, lu=True),
        "invconv_plain": InvConv1x1(4, lu=False),
        "coupling": AffineCoupling(4, hidden=8),
        "flowstep": FlowStep(4, hidden=8, lu=True),
        "squeeze": Squeeze(),
    }


def _ready(layer: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    layer(x)  # data-dependent init of any ActNorm (then `initialized` = 1)
    _perturb(layer)  # so couplings are not the identity and ActNorm not exactly the init
    return layer


@pytest.mark.parametrize("name", list(_layers()))
def test_layer_inverse_is_exact(name):
    layer = _layers()[name]
    x = torch.randn(4, 4, 8, 8)
    layer = _ready(layer, x)
    with torch.no_grad():
        y, logdet = layer(x)
        assert logdet.shape == (4,)
        assert torch.allclose(layer.inverse(y), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(_layers()))
def test_layer_logdet_matches_jacobian(name):
    layer = _layers()[name]
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    layer = _ready(layer.double(), torch.randn(4, 4, 2, 2, dtype=torch.float64))
    _, logdet = layer(x)
    brute = _brute_logdet(lambda v: layer(v)[0], x)
    if name == "squeeze":
        assert float(logdet) == 0.0
    assert float(logdet.detach()) == pytest.approx(float(brute), abs=1e-8)


def test_invconv_logdet_scales_with_pixels():
    conv = InvConv1x1(3, lu=False)
    with torch.no_grad():
        conv.weight.copy_(torch.diag(torch.tensor([2.0, 0.5, 3.0])))
    _, logdet = conv(torch.randn(2, 3, 5, 7))
    assert torch.allclose(logdet, torch.full((2,), 35 * math.log(3.0)), atol=1e-5)


def test_lu_weight_is_exact_decomposition():
    conv = InvConv1x1(6, lu=True)
    _perturb(conv)
    w = conv.weight_matrix().detach().double()
    assert float(conv.log_abs_det().detach()) == pytest.approx(float(torch.linalg.slogdet(w)[1]), abs=1e-5)


def test_squeeze_round_trip_and_layout():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    y = squeeze2d(x)
    assert y.shape == (2, 12, 2, 3)
    assert torch.equal(unsqueeze2d(y), x)
    assert torch.equal(y[:, 4 * 1 + 2 * 1 + 0], x[:, 1, 1::2, 0::2])  # channel 4c + 2i + j
    with pytest.raises(ValueError, match="even"):
        squeeze2d(torch.zeros(1, 1, 3, 4))


def test_split_round_trip_and_prior():
    split = Split2d(4)
    _perturb(split)
    x = torch.randn(3, 4, 5, 5)
    z1, z2, logp = split(x)
    assert z1.shape == z2.shape == (3, 2, 5, 5)
    assert torch.equal(split.inverse(z1, z2), x)
    mean, logs = split.prior_params(z1)
    expected = torch.distributions.Normal(mean, logs.exp()).log_prob(z2).flatten(1).sum(1)
    assert torch.allclose(logp, expected, atol=1e-4)


def test_whole_model_inverse_and_logdet():
    model = _random_glow()
    x = model.dequantize(_images(4, 1, 4, seed=3))
    with torch.no_grad():
        zs, logdet = model(x)
        assert [tuple(z.shape[1:]) for z in zs] == model.latent_shapes == [(2, 2, 2), (8, 1, 1)]
        assert torch.allclose(model.inverse(zs), x, atol=1e-5, rtol=0)
    m64 = model.double()
    x1 = x[:1].double()
    _, ld = m64(x1)
    brute = _brute_logdet(lambda v: torch.cat([z.flatten(1) for z in m64(v)[0]], dim=1), x1)
    assert float(ld.detach()) == pytest.approx(float(brute), abs=1e-7)


def test_whole_model_plain_invconv_and_standard_top():
    cfg = FlowModelConfig(channels=2, image_size=4, levels=2, steps=1, hidden=8, lu=False, learn_top=False)
    model = _random_glow(cfg).double()
    x = model.dequantize(_images(1, 2, 4)).double()
    zs, ld = model(x)
    assert torch.allclose(model.inverse(zs), x, atol=1e-10)
    brute = _brute_logdet(lambda v: torch.cat([z.flatten(1) for z in model(v)[0]], dim=1), x)
    assert float(ld.detach()) == pytest.approx(float(brute), abs=1e-7)


# ---- ActNorm's data-dependent init ----------------------------------------------------------
def test_actnorm_init_normalises_the_first_batch_only():
    an = ActNorm(3)
    std, mean = torch.tensor([0.5, 2.0, 7.0]).view(1, 3, 1, 1), torch.tensor([1.0, -3.0, 0.2]).view(1, 3, 1, 1)
    x = torch.randn(16, 3, 4, 4) * std + mean
    y, _ = an(x)
    assert int(an.initialized) == 1
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.var(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    state = {k: v.clone() for k, v in an.state_dict().items()}
    an(torch.randn(16, 3, 4, 4) * 10)  # a second, different batch: no re-init
    for k, v in an.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_actnorm_dead_channel_keeps_unit_scale():
    an = ActNorm(2)
    x = torch.randn(8, 2, 3, 3)
    x[:, 1] = 0.0  # e.g. a ReLU channel that never fires on the init batch
    an(x)
    logs = an.logs.detach()
    assert float(logs[0, 1]) == 0.0 and math.isfinite(float(logs[0, 0]))


def test_actnorm_init_survives_state_dict_load():
    a = _random_glow()
    b = Glow(TINY)
    assert all(int(m.initialized) == 0 for m in b.modules() if isinstance(m, ActNorm))
    b.load_state_dict(a.state_dict())
    b.data_init(_images(8, 1, 4, seed=99))  # would re-initialise every ActNorm if the flag were lost
    for k, v in b.state_dict().items():
        assert torch.equal(v, a.state_dict()[k]), k


# ---- bits/dim ------------------------------------------------------------------------------
def _identity_flow(cfg: FlowModelConfig) -> Glow:
    """An exactly-identity flow (up to squeeze) with the N(0, I) prior: fresh ActNorm (b = 0,
    logs = 0, marked initialised), W = I, zero couplings."""
    model = Glow(cfg)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ActNorm):
                m.initialized.fill_(1)
            if isinstance(m, InvConv1x1):
                m.perm.copy_(torch.eye(m.perm.shape[0]))
                m.sign_s.fill_(1.0)
                m.lower.zero_(), m.upper.zero_(), m.log_s.zero_()
    return model


@pytest.mark.parametrize("center,scale", [(True, 1.0), (False, 2.0)])
def test_bits_per_dim_closed_form_identity_flow(center, scale):
    cfg = FlowModelConfig(channels=1, image_size=8, levels=1, steps=1, hidden=4, learn_top=False, center=center,
                          input_scale=scale)
    model = _identity_flow(cfg)
    k = 200
    images = torch.full((2, 1, 8, 8), k / 127.5 - 1.0)
    bpd = model.bits_per_dim(images, noise=torch.full_like(images, 0.5))  # bin centres
    # By hand: x̃ = s((k + ½)/256 − c) in every dimension; −log p per dim = ½ x̃² + ½ log 2π;
    # bpd = (½ x̃² + ½ log 2π − log s + log 256) / ln 2.
    xt = scale * ((k + 0.5) / 256 - (0.5 if center else 0.0))
    expected = (0.5 * xt**2 + 0.5 * math.log(2 * math.pi) - math.log(scale) + math.log(256)) / math.log(2)
    assert torch.allclose(bpd, torch.full((2,), expected), atol=1e-5)
    if center and scale == 1.0:
        assert expected == pytest.approx(8.0 + (0.5 * xt**2 + 0.5 * math.log(2 * math.pi)) / math.log(2))


def test_bits_per_dim_draws_are_seeded_and_average_to_the_expectation():
    # s = 256 and k = 128 with centring: x̃ = 256((128 + u)/256 − ½) = u ~ U[0, 1), so E_u[x̃²] = 1/3
    # and the −D log s cancels the + D log 256: bpd = (1/6 + ½ log 2π) / ln 2.
    cfg = FlowModelConfig(channels=1, image_size=8, levels=1, steps=1, hidden=4, learn_top=False, input_scale=256.0)
    model = _identity_flow(cfg)
    images = torch.full((1, 1, 8, 8), 128 / 127.5 - 1.0)
    a = model.bits_per_dim(images, draws=3, seed=5)
    assert torch.equal(a, model.bits_per_dim(images, draws=3, seed=5))
    assert not torch.equal(a, model.bits_per_dim(images, draws=3, seed=6))
    expected = (1 / 6 + 0.5 * math.log(2 * math.pi)) / math.log(2)
    # Monte-Carlo std over 400 draws x 64 dims: 0.5 * sqrt(1/5 - 1/9) / sqrt(25600) / ln 2 = 1.3e-3
    # (the bin-centre value below is 0.06 lower).
    assert float(model.bits_per_dim(images, draws=400, seed=0)) == pytest.approx(expected, abs=6e-3)
    assert float(model.bits_per_dim(images, noise=torch.full_like(images, 0.5))) == pytest.approx(
        (0.125 + 0.5 * math.log(2 * math.pi)) / math.log(2), abs=1e-5)  # bin centres: x̃ = ½


def test_bits_per_dim_agrees_with_the_shared_metric():
    log_p = torch.tensor([-1234.5, 80.0], dtype=torch.float64)
    ours = bits_per_dim_from_log_prob(log_p, 1024, input_scale=2.0)
    assert torch.allclose(ours, metrics_bits_per_dim(-log_p, 1024, dequant_scale=256 / 2.0))


def test_dequantize_quantize_round_trip():
    model = Glow(FlowModelConfig(channels=3, image_size=4, levels=1, steps=1, hidden=4, input_scale=3.0))
    images = _images(5, 3, 4)
    noise = torch.rand(images.shape) * 0.999
    x = model.dequantize(images, noise)
    assert torch.equal(model.quantize(x), images)


# ---- zero-initialised couplings ----------------------------------------------------------
def test_fresh_model_logdet_comes_from_actnorm_only():
    torch.manual_seed(0)
    model = Glow(FlowModelConfig(channels=1, image_size=8, levels=2, steps=3, hidden=8))
    images = _images(6, 1, 8)
    model.data_init(images)
    x = model.dequantize(images, torch.rand(images.shape, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        zs, logdet = model(x)
        assert torch.allclose(model.inverse(zs), x, atol=1e-5)
        actnorm = 0.0
        h = x
        for i, steps in enumerate(model.levels):
            h = squeeze2d(h)
            for step in steps:
                a, ld_a = step.actnorm(h)
                b, ld_w = step.invconv(a)
                c, ld_c = step.coupling(b)
                assert torch.equal(c, b) and torch.equal(ld_c, torch.zeros(6))  # coupling = identity
                assert torch.allclose(ld_w, torch.zeros(6), atol=1e-4)  # rotation: |det W| = 1
                actnorm += float(step.actnorm.logs.sum()) * h.shape[2] * h.shape[3]
                h = c
            if i < len(model.splits):
                h = h[:, : model.splits[i].keep]
    assert torch.allclose(logdet, torch.full((6,), actnorm), rtol=1e-5, atol=1e-3)


def test_zero_conv_starts_at_zero():
    conv = ZeroConv2d(3, 4)
    assert torch.equal(conv(torch.randn(2, 3, 5, 5)), torch.zeros(2, 4, 5, 5))


# ---- sampling --------------------------------------------------------------------------
def test_sampling_is_seeded_and_on_the_8bit_grid():
    model = _random_glow()
    a = model.sample(3, seed=7)
    assert a.shape == (3, 1, 4, 4) and torch.equal(a, model.sample(3, seed=7))
    assert not torch.equal(a, model.sample(3, seed=8))
    k = (a + 1) * 127.5
    assert float(a.min()) >= -1 and float(a.max()) <= 1 and torch.allclose(k, k.round(), atol=1e-4)
    assert not torch.equal(model.sample(3, seed=7, temperature=1.0), a)  # default is 0.7, not 1


def test_diverged_samples_are_saturated_and_counted():
    model = _random_glow()
    with torch.no_grad():  # a latent far out in the tail: the couplings' inverses overflow
        model.top.params[:, 0::2] = 1e30
    a = model.sample(2, seed=0)
    assert torch.isfinite(a).all() and float(a.abs().max()) <= 1.0 and model.last_diverged == 2
    with torch.no_grad():
        model.top.params.zero_()
    model.sample(2, seed=0)
    assert model.last_diverged == 0


def test_temperature_zero_gives_the_prior_mean_image():
    model = _random_glow()
    with torch.no_grad():
        x0 = model.decode(None, temperature=0.0, generator=torch.Generator().manual_seed(1), num=2)
        assert torch.equal(x0, model.decode(None, 0.0, torch.Generator().manual_seed(2), num=2))
        # The mean image built by hand: every latent at its prior mean, top level first.
        like = next(model.parameters())
        h = model.top.prior_params(2, like)[0]
        for i in reversed(range(len(model.levels))):
            if i < len(model.splits):
                h = torch.cat([h, model.splits[i].prior_params(h)[0]], dim=1)
            for step in reversed(model.levels[i]):
                h = step.inverse(h)
            h = unsqueeze2d(h)
        assert torch.allclose(x0, h, atol=1e-6)
        assert torch.equal(model.sample(2, seed=0, temperature=0.0), model.quantize(x0))
        # and its top latent is the top prior's mean
        zs, _ = model(x0)
        assert torch.allclose(zs[-1], model.top.prior_params(2, like)[0], atol=1e-4)


def test_fresh_model_mean_image_is_the_inverse_of_zero_latents():
    model = Glow(TINY)
    model.data_init(_images(8, 1, 4))
    with torch.no_grad():
        zeros = [torch.zeros(2, *s) for s in model.latent_shapes]
        assert torch.allclose(model.decode(None, 0.0, num=2), model.inverse(zeros), atol=1e-6)


# ---- task, config, folder ------------------------------------------------------------------
def test_task_loss_is_bits_per_dim_and_falls():
    torch.manual_seed(0)
    task = FlowTask(TINY, init_images=_images(16, 1, 4))
    modules = task.build()
    # data-dependent init happened in build(), before the engine copies weights into DDP / the EMA
    assert all(int(m.initialized) == 1 for m in modules["flow"].modules() if isinstance(m, ActNorm))
    opt = task.optimizers(modules)["flow"]
    batch = Batch(_images(16, 1, 4, seed=1), torch.zeros(16, dtype=torch.long), [""] * 16, [str(i) for i in range(16)])
    losses = []
    for step in range(30):
        (name, loss), = list(task.losses(modules, batch, step))
        assert name == "flow" and loss.ndim == 0
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert task.metrics()["bits_per_dim"] == pytest.approx(losses[-1])
    assert losses[-1] < losses[0] - 0.3
    assert task.preview(modules, batch).shape == (16, 1, 4, 4)


def test_task_builds_the_same_flow_on_every_rank():
    """The engine seeds each rank differently before `build`; the flow, LU buffers included (which
    DeepSpeed does not broadcast), must not depend on that, only on the task's seed."""
    states = []
    for rank_seed, seed in ((10, 0), (11, 0), (10, 1)):
        torch.manual_seed(rank_seed)
        states.append(FlowTask(TINY, seed=seed).build()["flow"].state_dict())
    assert any(k.endswith("perm") for k in states[0])
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    assert any(not torch.equal(states[0][k], states[2][k]) for k in states[0] if k.endswith("perm"))


def test_config_checks():
    with pytest.raises(ValueError, match="divisible"):
        FlowModelConfig(image_size=28, levels=3)
    with pytest.raises(ValueError, match="input_scale"):
        FlowModelConfig(input_scale=0.0)


def test_model_folder_round_trip(tmp_path):
    model = _random_glow()
    save_model_folder(tmp_path / "model", "flow", TINY, model)
    loaded = load_flow(tmp_path)
    images = _images(4, 1, 4, seed=5)
    assert torch.equal(loaded.bits_per_dim(images), model.bits_per_dim(images))
    assert torch.equal(loaded.sample(2, seed=3), model.sample(2, seed=3))
    save_model_folder(tmp_path / "ar", "ar", TINY, model)
    with pytest.raises(ValueError, match="'ar' model, not a 'flow'"):
        load_flow(tmp_path / "ar")
