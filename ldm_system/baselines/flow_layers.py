"""Glow's invertible layers (Kingma & Dhariwal 2018), each exact in both directions.

Every flow layer maps (B, C, H, W) → (B, C', H', W') and returns `(y, logdet)` with logdet the
(B,) log|det ∂y/∂x| of the whole per-sample map; `inverse(y)` undoes it exactly.

    ActNorm          y = (x + b) ⊙ exp(logs)            logdet = h·w·Σ_c logs_c          (§3.1)
    InvConv1x1       y = W x at every pixel             logdet = h·w·log|det W|          (§3.2)
                     LU option: W = P L (U + diag(sign(s) exp(log_s)))  →  h·w·Σ log_s
    AffineCoupling   x = [x_a, x_b]; (t, r) = NN(x_a); y_b = (x_b + t) ⊙ σ(r + 2)/σ(2)   (§3.3)
                     logdet = Σ log σ(r + 2) − log σ(2)
    squeeze2d        (C, H, W) → (4C, H/2, W/2), a permutation: logdet 0
    Split2d          keep z_1 = x[:, :C/2], factor out z_2 = x[:, C/2:] ~ N(μ(z_1), σ(z_1)²)

Departure from the official code, on purpose: the official coupling scale is σ(r + 2), which is
σ(2) ≈ 0.881 (not 1) when the zero-initialised last conv outputs r = 0. Dividing by σ(2) makes a
fresh coupling exactly the identity (logdet 0), so a fresh model's logdet comes from ActNorm alone
(the orthogonal 1×1 convs have |det W| = 1). The scale stays bounded above, by 1/σ(2) ≈ 1.135,
which is what the sigmoid is there for (stability).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2.0 * math.pi)
LOGSIGMOID_2 = math.log(1.0 / (1.0 + math.exp(-2.0)))  # log σ(2), the coupling's scale offset


def _per_sample(logdet: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A scalar logdet shared by every sample → (B,)."""
    return logdet.expand(x.shape[0]).to(x.dtype)


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor, logs: torch.Tensor) -> torch.Tensor:
    """(B,) Σ log N(z; mean, exp(logs)²) = −½ Σ [log 2π + 2 logs + (z − mean)² exp(−2 logs)]."""
    return -0.5 * (LOG_2PI + 2.0 * logs + (z - mean).pow(2) * torch.exp(-2.0 * logs)).flatten(1).sum(1)


# ---- ActNorm -------------------------------------------------------------------------------------
class ActNorm(nn.Module):
    """Per-channel affine y = (x + b) ⊙ exp(logs), initialised from data (Glow §3.1).

    The first forward call sets b = −mean and logs = −log(std) per channel over (B, H, W) of that
    batch, so the output has zero mean and unit variance there. The `initialized` buffer is part of
    the state dict: a loaded or resumed model never initialises again. A channel with no variance
    on the init batch (e.g. a dead ReLU inside a coupling net) keeps scale 1 instead of 1/eps.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
        self.bias.copy_(-mean)
        self.logs.copy_(torch.where(std > 1e-5, -torch.log(std + self.eps), torch.zeros_like(std)))
        self.initialized.fill_(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not bool(self.initialized):
            self.initialize(x)
        h, w = x.shape[2:]
        y = (x + self.bias) * torch.exp(self.logs)
        return y, _per_sample(h * w * self.logs.sum(), x)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self.logs) - self.bias


# ---- invertible 1×1 convolution ---------------------------------------------------------------
class InvConv1x1(nn.Module):
    """y_{:,i,j} = W x_{:,i,j}, W (C, C) initialised to a random rotation (Glow §3.2).

    `lu=False` learns W itself: log|det W| by slogdet (O(C³), fine for C ≤ 64 here).
    `lu=True` learns W = P L (U + diag(sign(s) ⊙ exp(log_s))) with P and sign(s) fixed, L unit
    lower-triangular, U strictly upper-triangular: log|det W| = Σ log_s, O(C).
    """

    def __init__(self, channels: int, lu: bool = True) -> None:
        super().__init__()
        self.lu = lu
        w = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))[0]  # orthogonal: |det| = 1
        if lu:
            p, lower, upper = torch.linalg.lu(w)
            s = upper.diagonal()
            self.register_buffer("perm", p.float())
            self.register_buffer("sign_s", torch.sign(s).float())
            self.lower = nn.Parameter(torch.tril(lower, -1).float())
            self.upper = nn.Parameter(torch.triu(upper, 1).float())
            self.log_s = nn.Parameter(torch.log(s.abs()).float())
        else:
            self.weight = nn.Parameter(w.float())

    def weight_matrix(self) -> torch.Tensor:
        """(C, C) W."""
        if not self.lu:
            return self.weight
        eye = torch.eye(self.log_s.numel(), dtype=self.log_s.dtype, device=self.log_s.device)
        lower = torch.tril(self.lower, -1) + eye  # the masks keep the triangles exact under any update
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    def log_abs_det(self) -> torch.Tensor:
        """log|det W| (scalar)."""
        if self.lu:
            return self.log_s.sum()
        return torch.linalg.slogdet(self.weight.double())[1].to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[2:]
        y = F.conv2d(x, self.weight_matrix()[:, :, None, None])
        return y, _per_sample(h * w * self.log_abs_det(), x)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        w = self.weight_matrix()
        w_inv = torch.linalg.inv(w.double()).to(w.dtype)  # in float64: the round trip stays at 1e-6
        return F.conv2d(y, w_inv[:, :, None, None])


# ---- affine coupling ------------------------------------------------------------------------
class ZeroConv2d(nn.Module):
    """Conv with zero weight and bias, output ⊙ exp(3·logs) per channel (the official Conv2dZeros):
    it starts at exactly 0, and the learned log-scale lets the output grow fast once useful."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, logscale_factor: float = 3.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(1, cout, 1, 1))
        self.logscale_factor = logscale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * torch.exp(self.logs * self.logscale_factor)


class CouplingNet(nn.Module):
    """NN(x_a) of the coupling: conv3×3 → ActNorm → ReLU → conv1×1 → ActNorm → ReLU → ZeroConv3×3."""

    def __init__(self, cin: int, cout: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, hidden, 3, padding=1, bias=False)
        self.norm1 = ActNorm(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 1, bias=False)
        self.norm2 = ActNorm(hidden)
        self.out = ZeroConv2d(hidden, cout)
        for conv in (self.conv1, self.conv2):
            nn.init.normal_(conv.weight, 0.0, 0.05)  # as in the official code; ActNorm sets the scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x))[0])
        h = F.relu(self.norm2(self.conv2(h))[0])
        return self.out(h)


class AffineCoupling(nn.Module):
    """y_a = x_a, y_b = (x_b + t) ⊙ s with (t, r) = NN(x_a) and s = σ(r + 2)/σ(2) (see module doc)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"a coupling needs at least 2 channels, got {channels}")
        self.ca = channels // 2
        self.net = CouplingNet(self.ca, 2 * (channels - self.ca), hidden)

    def _shift_logscale(self, xa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(xa)
        shift, raw = h[:, 0::2], h[:, 1::2]  # interleaved, as the official "cross" split
        return shift, F.logsigmoid(raw + 2.0) - LOGSIGMOID_2

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xa, xb = x[:, : self.ca], x[:, self.ca :]
        shift, log_scale = self._shift_logscale(xa)
        yb = (xb + shift) * torch.exp(log_scale)
        return torch.cat([xa, yb], dim=1), log_scale.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        ya, yb = y[:, : self.ca], y[:, self.ca :]
        shift, log_scale = self._shift_logscale(ya)
        return torch.cat([ya, yb * torch.exp(-log_scale) - shift], dim=1)


class FlowStep(nn.Module):
    """One step of flow: ActNorm → invertible 1×1 conv → affine coupling (Glow Fig. 2a)."""

    def __init__(self, channels: int, hidden: int, lu: bool = True) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.invconv = InvConv1x1(channels, lu)
        self.coupling = AffineCoupling(channels, hidden)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, ld0 = self.actnorm(x)
        x, ld1 = self.invconv(x)
        x, ld2 = self.coupling(x)
        return x, ld0 + ld1 + ld2

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self.actnorm.inverse(self.invconv.inverse(self.coupling.inverse(y)))


# ---- squeeze and split --------------------------------------------------------------------
def squeeze2d(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, 4C, H/2, W/2); output channel 4c + 2i + j holds x[:, c, 2y + i, 2x + j]."""
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"squeeze2d needs even height and width, got {h}x{w}")
    x = x.reshape(b, c, h // 2, 2, w // 2, 2)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze2d(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `squeeze2d`: (B, 4C, H, W) → (B, C, 2H, 2W)."""
    b, c4, h, w = x.shape
    c = c4 // 4
    x = x.reshape(b, c, 2, 2, h, w)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(b, c, 2 * h, 2 * w)


class Squeeze(nn.Module):
    """`squeeze2d` as a flow layer (a permutation of the entries: logdet 0)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return squeeze2d(x), x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return unsqueeze2d(y)


class Split2d(nn.Module):
    """Glow's split2d: factor out half the channels under a Gaussian conditioned on the other half.

    forward: x (B, C, H, W) → z_1 = x[:, :C/2] (goes on), z_2 = x[:, C/2:] (a latent), and
    log p(z_2 | z_1) = log N(z_2; μ, exp(logs)²) with (μ, logs) = ZeroConv3×3(z_1) (0 at init).
    The split is a projection, not a bijection on its own: the pair (z_1, z_2) is all of x, so it
    adds nothing to the logdet; its prior term is what enters log p(x).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.keep = channels // 2
        self.prior = ZeroConv2d(self.keep, 2 * (channels - self.keep))

    def prior_params(self, z1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.prior(z1)
        return h[:, 0::2], h[:, 1::2]  # mean, logs: (B, C − C/2, H, W) each

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z1, z2 = x[:, : self.keep], x[:, self.keep :]
        mean, logs = self.prior_params(z1)
        return z1, z2, gaussian_log_prob(z2, mean, logs)

    def inverse(self, z1: torch.Tensor, z2: torch.Tensor | None = None, temperature: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """[z_1, z_2]; with z_2=None, z_2 = μ + T·exp(logs)·ε is drawn from the prior (T = temperature)."""
        if z2 is None:
            mean, logs = self.prior_params(z1)
            z2 = mean + temperature * torch.exp(logs) * _normal(mean.shape, generator, mean)
        return torch.cat([z1, z2], dim=1)


class TopPrior(nn.Module):
    """The last level's prior N(μ, exp(logs)²) over (C, H, W): learned per position (zero init, so
    it starts standard normal; Glow's `learntop`) or fixed standard normal."""

    def __init__(self, shape: tuple[int, int, int], learn: bool = True) -> None:
        super().__init__()
        self.shape = tuple(shape)
        c, h, w = shape
        self.params = nn.Parameter(torch.zeros(1, 2 * c, h, w)) if learn else None

    def prior_params(self, num: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.params is None:
            zero = like.new_zeros((num, *self.shape))
            return zero, zero
        p = self.params.to(like.dtype).expand(num, -1, -1, -1)
        return p[:, 0::2], p[:, 1::2]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        mean, logs = self.prior_params(z.shape[0], z)
        return gaussian_log_prob(z, mean, logs)

    def sample(self, num: int, like: torch.Tensor, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        mean, logs = self.prior_params(num, like)
        return mean + temperature * torch.exp(logs) * _normal(mean.shape, generator, mean)


def _normal(shape: torch.Size, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """ε ~ N(0, I) drawn on the CPU (same numbers on every device for a seed), moved to `like`."""
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=like.device, dtype=like.dtype)


__all__ = ["ActNorm", "AffineCoupling", "CouplingNet", "FlowStep", "InvConv1x1", "Split2d", "Squeeze", "TopPrior",
           "ZeroConv2d", "gaussian_log_prob", "squeeze2d", "unsqueeze2d"]
