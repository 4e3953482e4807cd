"""Image and distribution metrics, in pure torch.

- psnr(x, y):      10 log10(range^2 / MSE) per image.
- ssim(x, y):      Wang et al. 2004, Gaussian window (11 x 11, sigma 1.5), K1 = 0.01, K2 = 0.03,
                   per channel on [0, 1] images, "valid" windows only, mean over channels and pixels.
- frechet_distance: d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}) (Dowson & Landau 1982).
- precision_recall: k-NN manifold estimate (Kynkaenniemi et al. 2019).
- kernel_inception_distance: unbiased MMD^2 with the cubic polynomial kernel, mean and std over
                   random subsets (Binkowski et al. 2018); named for Inception, computed here on
                   whatever features it is given.
- bits_per_dim:    negative log-likelihood in nats -> bits per dimension.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check_pair(x: torch.Tensor, y: torch.Tensor, name: str) -> None:
    if x.shape != y.shape:
        raise ValueError(f"{name}: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.ndim != 4:
        raise ValueError(f"{name}: expected images (B, C, H, W), got {tuple(x.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, eps: float = 1e-12) -> torch.Tensor:
    """(B,) PSNR in dB. Identical images give 10 log10(range^2 / eps) (large, finite)."""
    _check_pair(x, y, "psnr")
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(dim=1)
    return (10.0 * torch.log10(data_range**2 / (mse + eps))).float()


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D Gaussian, (size,), float64."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    window: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """(B,) mean SSIM. Inputs (B, C, H, W) in [0, data_range], H and W >= window.

    SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)),
    C1 = (k1 L)^2, C2 = (k2 L)^2, with local moments under the Gaussian window.
    """
    _check_pair(x, y, "ssim")
    b, c, h, w = x.shape
    if h < window or w < window:
        raise ValueError(f"ssim: images {h}x{w} are smaller than the {window}x{window} window")
    g = gaussian_window(window, sigma).to(x.device)
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window)  # separable 2-D window, per channel
    x, y = x.double(), y.double()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=c)  # "valid": no padding

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(dim=1).float()


def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) -> mean (D,), unbiased covariance (D, D), both float64."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"feature_stats needs (N >= 2, D) features, got {tuple(features.shape)}")
    f = features.double()
    mu = f.mean(dim=0)
    centered = f - mu
    return mu, centered.t() @ centered / (f.shape[0] - 1)


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    """Symmetric PSD square root via eigh (negative round-off eigenvalues clamped to 0)."""
    vals, vecs = torch.linalg.eigh((m + m.t()) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.t()


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Squared Fréchet distance between N(mu1, S1) and N(mu2, S2).

    Tr (S1 S2)^{1/2} = Tr (S1^{1/2} S2 S1^{1/2})^{1/2}: the inner matrix is symmetric PSD, so both
    roots come from `eigh`, which is stable where a general sqrtm of S1 S2 is not.
    """
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(
            f"frechet_distance: inconsistent shapes mu {tuple(mu1.shape)}/{tuple(mu2.shape)}, "
            f"sigma {tuple(sigma1.shape)}/{tuple(sigma2.shape)}"
        )
    mu1, mu2, s1, s2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    root1 = _sqrt_psd(s1)
    inner = root1 @ s2 @ root1
    tr_sqrt = torch.linalg.eigvalsh((inner + inner.t()) / 2).clamp_min(0).sqrt().sum()
    d2 = (mu1 - mu2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2.0 * tr_sqrt
    return float(d2.clamp_min(0))


def frechet_distance_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets (N, D) and (M, D).

    With few samples (N, M <= D) it avoids D x D matrices: for centred A (N, D), B (M, D),
    S1 = A^T A / (N-1), S2 = B^T B / (M-1), the nonzero eigenvalues of S1 S2 are the squared
    singular values of A B^T / sqrt((N-1)(M-1)), so Tr (S1 S2)^{1/2} = ||A B^T||_* / sqrt((N-1)(M-1)).
    """
    for name, f in (("real", real), ("fake", fake)):
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"frechet_distance_from_features: {name} needs (N >= 2, D) features, got {tuple(f.shape)}")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dims differ: {real.shape[1]} vs {fake.shape[1]}")
    n, m, d = real.shape[0], fake.shape[0], real.shape[1]
    if max(n, m) > d:
        return frechet_distance(*feature_stats(real), *feature_stats(fake))
    a, b = real.double(), fake.double()
    mu_a, mu_b = a.mean(dim=0), b.mean(dim=0)
    a, b = a - mu_a, b - mu_b
    tr_sqrt = torch.linalg.svdvals(a @ b.t()).sum() / math.sqrt((n - 1) * (m - 1))
    tr_a, tr_b = a.pow(2).sum() / (n - 1), b.pow(2).sum() / (m - 1)
    d2 = (mu_a - mu_b).pow(2).sum() + tr_a + tr_b - 2.0 * tr_sqrt
    return float(d2.clamp_min(0))


def _kth_neighbour_radius(feats: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """(N,) distance from each point to its k-th nearest other point in the same set."""
    radii = []
    for block in feats.split(chunk):
        d = torch.cdist(block, feats)  # (n, N); includes the point itself at distance 0
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _covered(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    """(M,) bool: query lies inside at least one ball B(support_j, radii_j)."""
    out = []
    for block in queries.split(chunk):
        out.append((torch.cdist(block, support) <= radii[None, :]).any(dim=1))
    return torch.cat(out)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, chunk: int = 1024) -> dict[str, float]:
    """Improved precision/recall (Kynkaenniemi et al. 2019).

    precision = fraction of fake samples inside the real manifold (union of k-NN balls of reals),
    recall    = fraction of real samples inside the fake manifold.
    """
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"precision_recall needs (N, D) and (M, D) features, got {tuple(real.shape)}, {tuple(fake.shape)}")
    if min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(f"precision_recall needs more than k={k} samples per set, got {real.shape[0]} and {fake.shape[0]}")
    real, fake = real.double(), fake.double()
    r_real = _kth_neighbour_radius(real, k, chunk)
    r_fake = _kth_neighbour_radius(fake, k, chunk)
    precision = _covered(fake, real, r_real, chunk).double().mean().item()
    recall = _covered(real, fake, r_fake, chunk).double().mean().item()
    return {"precision": precision, "recall": recall}


def _mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 between (m, D) and (n, D) with k(a, b) = (a.b / D + 1)^3."""
    d = x.shape[1]
    kxx, kyy, kxy = ((a @ b.t() / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    m, n = x.shape[0], y.shape[0]
    sum_xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))  # off-diagonal: the unbiased estimate
    sum_yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return sum_xx + sum_yy - 2.0 * kxy.mean()


def kernel_inception_distance(real: torch.Tensor, fake: torch.Tensor, subsets: int = 50, subset_size: int = 1000,
                              seed: int = 0) -> dict[str, float]:
    """KID: unbiased MMD^2 (cubic polynomial kernel) over `subsets` random subsets of each set.

    Returns {"kid": mean, "kid_std": std over subsets, "subset_size": m}; m is capped at the smaller
    set. Unlike FD it has no bias from the sample count, so small evaluations compare fairly (its
    mean can be slightly negative when the sets are alike).
    """
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"kernel_inception_distance needs (N, D) and (M, D) features, got {tuple(real.shape)}, "
                         f"{tuple(fake.shape)}")
    m = min(subset_size, real.shape[0], fake.shape[0])
    if m < 2 or subsets < 1:
        raise ValueError(f"kernel_inception_distance needs >= 2 samples per set and >= 1 subset, got m={m}, "
                         f"subsets={subsets}")
    gen = torch.Generator().manual_seed(seed)
    real, fake = real.double(), fake.double()
    values = torch.stack([_mmd2_unbiased(real[torch.randperm(real.shape[0], generator=gen)[:m]],
                                         fake[torch.randperm(fake.shape[0], generator=gen)[:m]])
                          for _ in range(subsets)])
    std = float(values.std()) if subsets > 1 else 0.0
    return {"kid": float(values.mean()), "kid_std": std, "subset_size": m}


def bits_per_dim(nll_nats: torch.Tensor | float, num_dims: int, dequant_scale: float = 1.0) -> torch.Tensor:
    """bits/dim = (NLL + D ln s) / (D ln 2).

    `nll_nats` is the per-sample negative log-likelihood in nats of a continuous density over D
    dimensions. For 8-bit images mapped to [-1, 1] (bin width 2/255), pass dequant_scale=127.5 to
    get the discrete data's bits/dim: -log P(u) ~= -log p(x) + D ln 127.5.
    """
    if num_dims <= 0:
        raise ValueError(f"num_dims must be > 0, got {num_dims}")
    if dequant_scale <= 0:
        raise ValueError(f"dequant_scale must be > 0, got {dequant_scale}")
    nll = torch.as_tensor(nll_nats, dtype=torch.float64)
    return (nll + num_dims * math.log(dequant_scale)) / (num_dims * math.log(2.0))
