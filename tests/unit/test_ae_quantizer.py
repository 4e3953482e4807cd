"""Vector quantizer: nearest-code lookup, losses, straight-through gradient, EMA, dead-code restart."""
import pytest
import torch

from autoencoders.config import AutoencoderConfig, QuantizerConfig
from autoencoders.losses import reconstruction_loss
from autoencoders.quantizer import VectorQuantizer
from autoencoders.vq import VQAutoencoder


def as_map(points: torch.Tensor) -> torch.Tensor:
    """(N, D) points -> (1, D, 1, N) feature map, so flattening gives the points back in order."""
    return points.t()[None, :, None, :]


def test_nearest_code_matches_brute_force_and_codes_are_used():
    vq = VectorQuantizer(QuantizerConfig(codebook_size=16), dim=4)
    z = torch.randn(2, 4, 5, 5)
    out = vq(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    brute = torch.cdist(flat, vq.codebook.detach()).argmin(dim=1)
    assert torch.equal(out["indices"].flatten(), brute)
    assert torch.allclose(out["quantized"].permute(0, 2, 3, 1).reshape(-1, 4), vq.codebook[brute], atol=1e-6)
    used = out["indices"].unique().numel()
    assert used > 1
    assert out["usage"].item() == pytest.approx(used / 16)
    assert 1.0 <= out["perplexity"].item() <= used + 1e-4


def test_straight_through_gradient_is_identity():
    vq = VectorQuantizer(QuantizerConfig(codebook_size=8), dim=3)
    z = torch.randn(1, 3, 4, 4, requires_grad=True)
    vq(z)["quantized"].mul(torch.arange(48.0).view(1, 3, 4, 4)).sum().backward()
    assert torch.equal(z.grad, torch.arange(48.0).view(1, 3, 4, 4))


def test_loss_terms_signs_and_gradient_routes():
    cfg = QuantizerConfig(codebook_size=8, beta=0.25)
    vq = VectorQuantizer(cfg, dim=3)
    z = torch.randn(1, 3, 4, 4, requires_grad=True)
    out = vq(z)
    assert out["codebook_loss"].item() > 0 and out["commit_loss"].item() > 0
    assert out["loss"].item() == pytest.approx(out["codebook_loss"].item() + 0.25 * out["commit_loss"].item())
    # The commitment term trains only the encoder output, the codebook term only the codebook.
    g_z, g_e = torch.autograd.grad(out["commit_loss"], [z, vq.codebook], retain_graph=True, allow_unused=True)
    assert g_z is not None and g_z.abs().sum() > 0 and g_e is None
    g_z, g_e = torch.autograd.grad(out["codebook_loss"], [z, vq.codebook], allow_unused=True)
    assert g_z is None and g_e.abs().sum() > 0
    # A gradient step on the codebook term moves the used codes toward their assigned vectors.
    before = out["codebook_loss"].item()
    with torch.no_grad():
        vq.codebook -= 0.5 * g_e
    assert vq(z)["codebook_loss"].item() < before


def test_straight_through_reaches_the_encoder():
    cfg = AutoencoderConfig(kind="vq", channels=(8, 16, 16), f=4, latent_channels=3, layers_per_block=1,
                            norm_groups=8, quantizer=QuantizerConfig(codebook_size=16))
    ae = VQAutoencoder(cfg)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = ae(x)
    reconstruction_loss(out["recon"], x).backward()  # no VQ term: only the straight-through path
    assert ae.encoder.conv_in.weight.grad.abs().sum() > 0
    assert ae.quant_conv.weight.grad.abs().sum() > 0


def test_ema_moves_code_toward_assigned_vectors():
    cfg = QuantizerConfig(codebook_size=4, ema=True, ema_decay=0.5)
    vq = VectorQuantizer(cfg, dim=2)
    assert "codebook" not in dict(vq.named_parameters())  # EMA codebook is a buffer
    target = vq.codebook[1] + torch.tensor([0.3, -0.2])
    points = target.expand(6, 2) + 0.01 * torch.randn(6, 2)
    k = vq(as_map(points))["indices"].flatten()
    assert (k == 1).all()
    before = (vq.codebook[1] - points.mean(0)).norm()
    out = vq(as_map(points), update=True)
    after = (vq.codebook[1] - points.mean(0)).norm()
    assert after < 0.75 * before
    assert out["codebook_loss"].item() == 0.0
    unused = [0, 2, 3]
    # Unused codes decay in count but keep (almost) their position: e_k = m_k / N_k.
    assert vq.ema_count[unused].max() < 1.0


def test_update_false_leaves_state_untouched():
    vq = VectorQuantizer(QuantizerConfig(codebook_size=8, ema=True, restart_after=1), dim=2)
    state = {k: v.clone() for k, v in vq.state_dict().items()}
    vq(torch.randn(1, 2, 3, 3))
    assert all(torch.equal(state[k], v) for k, v in vq.state_dict().items())


@pytest.mark.parametrize("ema", [False, True])
def test_dead_code_restart_revives_unused_codes(ema):
    cfg = QuantizerConfig(codebook_size=8, ema=ema, restart_after=2)
    vq = VectorQuantizer(cfg, dim=2)
    with torch.no_grad():
        vq.codebook[4:] = 100.0  # far from the data: never chosen
        if ema:
            vq.ema_sum[4:] = 100.0  # EMA codebook = ema_sum / ema_count
    data = lambda: as_map(torch.randn(64, 2))  # noqa: E731
    vq(data(), update=True)
    vq(data(), update=True)
    assert vq.dead_codes() >= 4
    out = vq(data(), update=True)  # restart happens at the start of this forward
    assert vq.codebook[4:].abs().max() < 10.0  # now drawn from recent encoder outputs
    assert vq.dead_codes() == 0 or vq.age.max() < 2
    used = set(out["indices"].flatten().tolist())
    assert used & {4, 5, 6, 7}, "revived codes should be chosen by nearby inputs"


def test_restart_is_reproducible_from_buffers():
    """Two replicas with equal buffers restart identically (what keeps DDP ranks in sync)."""
    cfg = QuantizerConfig(codebook_size=8, restart_after=1)
    a = VectorQuantizer(cfg, dim=2)
    with torch.no_grad():
        a.codebook[4:] = 100.0
    a(as_map(torch.randn(32, 2)), update=True)
    b = VectorQuantizer(cfg, dim=2)
    b.load_state_dict(a.state_dict())
    z = as_map(torch.randn(32, 2))
    a(z, update=True)
    b(z, update=True)
    assert torch.equal(a.codebook, b.codebook)


def test_l2_normalised_codes():
    vq = VectorQuantizer(QuantizerConfig(codebook_size=8, l2_normalize=True, ema=True), dim=3)
    out = vq(5.0 * torch.randn(2, 3, 4, 4), update=True)
    assert torch.allclose(vq.codebook.norm(dim=1), torch.ones(8), atol=1e-5)
    assert torch.allclose(out["quantized"].norm(dim=1), torch.ones(2, 4, 4), atol=1e-5)


def test_wrong_dim_is_a_clear_error():
    vq = VectorQuantizer(QuantizerConfig(codebook_size=8), dim=3)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        vq(torch.randn(1, 4, 2, 2))
