"""Metric golden values: PSNR, SSIM, Fréchet distance, precision/recall, bits/dim."""
import math

import pytest
import torch

from ldm_system.eval.metrics import (
    bits_per_dim,
    feature_stats,
    frechet_distance,
    frechet_distance_from_features,
    gaussian_window,
    precision_recall,
    psnr,
    ssim,
)


def test_psnr_constant_error_golden_values():
    x = torch.full((2, 3, 8, 8), 0.5)
    assert torch.allclose(psnr(x + 0.1, x), torch.full((2,), 20.0), atol=1e-4)  # 10 log10(1 / 0.01)
    assert torch.allclose(psnr(x + 0.01, x), torch.full((2,), 40.0), atol=1e-3)
    assert psnr(x * 255 + 2.55, x * 255, data_range=255.0)[0].item() == pytest.approx(40.0, abs=1e-3)
    assert psnr(x, x)[0].item() > 100  # identical: large and finite


def test_ssim_identical_is_one():
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)


def test_ssim_constant_images_closed_form():
    # Zero variance everywhere: SSIM = (2ab + C1) / (a^2 + b^2 + C1) (the C2 factor cancels).
    a, b, c1 = 0.2, 0.6, 0.01**2
    x, y = torch.full((1, 1, 12, 12), a), torch.full((1, 1, 12, 12), b)
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim(x, y).item() == pytest.approx(expected, rel=1e-5)


def test_ssim_hand_computed_single_window():
    # 11x11 image = one valid window: compute the weighted moments by hand.
    torch.manual_seed(1)
    x, y = torch.rand(1, 1, 11, 11, dtype=torch.float64), torch.rand(1, 1, 11, 11, dtype=torch.float64)
    g = gaussian_window()
    w = (g[:, None] * g[None, :])
    mx, my = (w * x[0, 0]).sum(), (w * y[0, 0]).sum()
    vx, vy = (w * x[0, 0] ** 2).sum() - mx**2, (w * y[0, 0] ** 2).sum() - my**2
    cxy = (w * x[0, 0] * y[0, 0]).sum() - mx * my
    c1, c2 = 0.01**2, 0.03**2
    expected = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert ssim(x, y).item() == pytest.approx(expected.item(), rel=1e-5)


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    x = torch.rand(1, 3, 24, 20, dtype=torch.float64)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    ref = metrics.structural_similarity(
        x[0].numpy(), y[0].numpy(), gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=1.0, channel_axis=0,
    )
    assert ssim(x, y).item() == pytest.approx(ref, abs=1e-6)


def test_image_metric_errors():
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 7))
    with pytest.raises(ValueError, match="smaller than"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_frechet_identical_is_zero():
    feats = torch.randn(200, 16)
    assert frechet_distance_from_features(feats, feats) == pytest.approx(0.0, abs=1e-8)


def test_frechet_closed_form_diagonal():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    v1, v2 = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 1.0])
    # ||mu1 - mu2||^2 + sum (sqrt v1 - sqrt v2)^2 = 5 + (1 + 1 + 4)
    assert frechet_distance(mu1, torch.diag(v1), mu2, torch.diag(v2)) == pytest.approx(11.0, abs=1e-9)


def test_frechet_matches_scipy_sqrtm_for_full_covariances():
    linalg = pytest.importorskip("scipy.linalg")
    torch.manual_seed(3)
    a, b = torch.randn(6, 6, dtype=torch.float64), torch.randn(6, 6, dtype=torch.float64)
    s1, s2 = a @ a.t() + 0.1 * torch.eye(6), b @ b.t() + 0.1 * torch.eye(6)
    mu1, mu2 = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    covmean = linalg.sqrtm((s1 @ s2).numpy()).real
    ref = ((mu1 - mu2) ** 2).sum().item() + torch.trace(s1 + s2).item() - 2 * covmean.trace()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)


def test_frechet_of_sampled_gaussians_approaches_closed_form():
    torch.manual_seed(0)
    n = 20000
    a = torch.randn(n, 2)
    b = torch.randn(n, 2) * torch.tensor([2.0, 1.0]) + torch.tensor([3.0, 0.0])
    # means differ by 3 -> 9; variances (1, 1) vs (4, 1) -> (1 - 2)^2 = 1
    assert frechet_distance_from_features(a, b) == pytest.approx(10.0, rel=0.03)


def test_frechet_singular_covariances_stay_finite():
    feats = torch.randn(5, 32)  # N < D: rank-deficient covariance
    other = torch.randn(5, 32)
    d = frechet_distance_from_features(feats, other)
    assert math.isfinite(d) and d > 0


def test_frechet_few_sample_route_equals_covariance_route():
    torch.manual_seed(2)
    real, fake = torch.randn(7, 20), torch.randn(9, 20) * 1.5 + 0.3  # N, M <= D: Gram-matrix route
    via_cov = frechet_distance(*feature_stats(real), *feature_stats(fake))
    assert frechet_distance_from_features(real, fake) == pytest.approx(via_cov, rel=1e-7)


def test_feature_stats_and_shape_errors():
    mu, cov = feature_stats(torch.tensor([[0.0, 0.0], [2.0, 4.0]]))
    assert torch.allclose(mu, torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert torch.allclose(cov, torch.tensor([[2.0, 4.0], [4.0, 8.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="N >= 2"):
        feature_stats(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="inconsistent"):
        frechet_distance(torch.zeros(2), torch.eye(2), torch.zeros(3), torch.eye(3))
    with pytest.raises(ValueError, match="dims differ"):
        frechet_distance_from_features(torch.zeros(3, 2), torch.zeros(3, 4))


def test_precision_recall_extremes_and_hand_example():
    torch.manual_seed(0)
    real = torch.randn(50, 4)
    pr = precision_recall(real, real.clone(), k=3)
    assert pr == {"precision": 1.0, "recall": 1.0}
    assert precision_recall(real, real + 100.0, k=3) == {"precision": 0.0, "recall": 0.0}
    # 1-D, k=1: reals {0, 1, 2} have radius 1; fakes {0.5, 10}: only 0.5 is inside -> precision 1/2.
    # Fakes' radii are 9.5 each, so every real is covered -> recall 1.
    r = torch.tensor([[0.0], [1.0], [2.0]])
    f = torch.tensor([[0.5], [10.0]])
    assert precision_recall(r, f, k=1) == {"precision": 0.5, "recall": 1.0}
    with pytest.raises(ValueError, match="more than k"):
        precision_recall(r, f, k=3)


def test_bits_per_dim_golden():
    assert bits_per_dim(3 * math.log(2.0), 3).item() == pytest.approx(1.0)
    assert bits_per_dim(torch.tensor([0.0, 8 * math.log(2.0)]), 8).tolist() == pytest.approx([0.0, 1.0])
    # Discretisation: a uniform density on [-1, 1] (NLL = D ln 2) gives log2(255) ~= 8 bits/dim on 8-bit data.
    assert bits_per_dim(10 * math.log(2.0), 10, dequant_scale=127.5).item() == pytest.approx(
        1.0 + math.log2(127.5)
    )
    with pytest.raises(ValueError, match="num_dims"):
        bits_per_dim(1.0, 0)


def test_kid_equals_the_unbiased_mmd_written_out():
    from ldm_system.eval.metrics import kernel_inception_distance

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64) + 0.5
    k = lambda a, b: (float(a @ b) / 5 + 1.0) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(6) for j in range(6) if i != j) / 30
    yy = sum(k(y[i], y[j]) for i in range(6) for j in range(6) if i != j) / 30
    xy = sum(k(x[i], y[j]) for i in range(6) for j in range(6)) / 36
    out = kernel_inception_distance(x, y, subsets=1, subset_size=6)  # the one subset is each whole set
    assert out["kid"] == pytest.approx(xx + yy - 2 * xy, rel=1e-12) and out["kid_std"] == 0.0


def test_kid_is_unbiased_where_fd_is_not():
    """Two samples of one distribution: KID averages to ~0 at any sample count; FD stays well above 0."""
    from ldm_system.eval.metrics import kernel_inception_distance

    g = torch.Generator().manual_seed(1)
    kids, fds = [], []
    for _ in range(20):
        a, b = torch.randn(40, 16, generator=g), torch.randn(40, 16, generator=g)
        kids.append(kernel_inception_distance(a, b, subsets=5, subset_size=40)["kid"])
        fds.append(frechet_distance_from_features(a, b))
    kids = torch.tensor(kids)
    assert abs(float(kids.mean())) < 3 * float(kids.std()) / math.sqrt(len(kids))
    assert min(fds) > 1.0  # FD's small-sample bias: every estimate far above the true 0
    shifted = kernel_inception_distance(torch.randn(200, 16, generator=g), torch.randn(200, 16, generator=g) + 1.0,
                                        subsets=10, subset_size=100)
    assert shifted["kid"] > 10 * shifted["kid_std"] > 0 and shifted["subset_size"] == 100
    with pytest.raises(ValueError, match="needs >= 2 samples"):
        kernel_inception_distance(torch.randn(1, 4), torch.randn(5, 4))
