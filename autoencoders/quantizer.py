"""Vector quantizer with straight-through gradients (van den Oord et al. 2017, "VQ-VAE").

    k*(i)  = argmin_k ||z_i - e_k||^2                   (z_i, e_k unit-normalised if l2_normalize)
    z_q    = z + sg[e_k* - z]                           straight-through: d z_q / d z = I
    L_vq   = ||sg[z] - e_k*||^2 + beta ||z - sg[e_k*]||^2   (codebook term dropped with EMA updates)

EMA codebook (VQ-VAE appendix A.1): with n_k = #assignments and s_k = sum of assigned z,
    N_k <- d N_k + (1 - d) n_k,   m_k <- d m_k + (1 - d) s_k,
    e_k  = m_k / N~_k,  N~_k = (N_k + eps) / (sum N + K eps) * sum N   (Laplace smoothing).

Dead-code restart: a code unused for `restart_after` training steps is re-initialised from a
random encoder output of a recent batch.

State updates (EMA, usage ages, restart pool) happen only when the caller passes `update=True`
(the autoencoder does so in a training-mode forward with grad enabled). Distribution: this module
holds no distributed code. Under DDP each rank computes its update from its local batch and DDP
(`broadcast_buffers=True`, the default) overwrites every rank's buffers with rank 0's at the start
of each forward, so in effect the EMA and usage statistics are rank 0's and all ranks stay equal.
The restart runs at the start of a forward from those freshly broadcast buffers (ages, pool, step),
with a generator seeded from the step counter, so every rank restarts the same codes with the same
vectors, which keeps a gradient-trained codebook parameter identical across ranks too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autoencoders.config import QuantizerConfig

_CHUNK = 8192  # rows of the (N, K) distance matrix computed at a time, to bound memory


class VectorQuantizer(nn.Module):
    def __init__(self, cfg: QuantizerConfig, dim: int):
        super().__init__()
        self.cfg = cfg
        self.dim = dim
        k = cfg.codebook_size
        init = torch.randn(k, dim)
        if cfg.l2_normalize:
            init = F.normalize(init, dim=1)
        if cfg.ema:
            # The codebook is state, not a trained parameter.
            self.register_buffer("codebook", init)
            self.register_buffer("ema_count", torch.ones(k))
            self.register_buffer("ema_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        self.register_buffer("age", torch.zeros(k, dtype=torch.long))  # training steps since last use
        self.register_buffer("pool", torch.zeros(k, dim))  # recent encoder outputs for restarts
        self.register_buffer("pool_size", torch.zeros((), dtype=torch.long))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @property
    def num_codes(self) -> int:
        return self.cfg.codebook_size

    def _normalized(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.cfg.l2_normalize else x

    @torch.no_grad()
    def nearest(self, z_flat: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N,) index of the nearest code; ||z||^2 is constant per row and omitted."""
        codes = self._normalized(self.codebook.detach().float())
        code_sq = codes.pow(2).sum(dim=1)  # (K,)
        out = []
        for chunk in z_flat.detach().float().split(_CHUNK):
            out.append((code_sq[None, :] - 2.0 * chunk @ codes.t()).argmin(dim=1))
        return torch.cat(out)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (...) -> code vectors (..., D) (unit-normalised if l2_normalize)."""
        return self._normalized(self.codebook)[indices]

    def forward(self, z: torch.Tensor, update: bool = False) -> dict[str, torch.Tensor]:
        """z: (B, D, H, W) encoder output. Returns the straight-through quantized (B, D, H, W),
        indices (B, H, W), the loss terms and batch usage statistics."""
        if z.ndim != 4 or z.shape[1] != self.dim:
            raise ValueError(f"quantizer expects (B, {self.dim}, H, W), got {tuple(z.shape)}")
        if update and self.cfg.restart_after > 0:
            self._restart_dead_codes()
        b, d, h, w = z.shape
        z_flat = self._normalized(z.permute(0, 2, 3, 1).reshape(-1, d))  # (N, D), N = B*H*W
        indices = self.nearest(z_flat)
        q = self.lookup(indices).to(z_flat.dtype)  # (N, D); differentiable w.r.t. a parameter codebook

        commit_loss = F.mse_loss(z_flat, q.detach())
        if self.cfg.ema:
            codebook_loss = torch.zeros((), device=z.device, dtype=commit_loss.dtype)
        else:
            codebook_loss = F.mse_loss(q, z_flat.detach())
        q_st = z_flat + (q - z_flat).detach()  # straight-through estimator

        counts = torch.bincount(indices, minlength=self.num_codes).float()  # (K,)
        probs = counts / counts.sum()
        perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-12))).sum())
        if update:
            self._update_state(z_flat.detach().float(), indices, counts)

        return {
            "quantized": q_st.reshape(b, h, w, d).permute(0, 3, 1, 2),
            "indices": indices.reshape(b, h, w),
            "loss": codebook_loss + self.cfg.beta * commit_loss,
            "codebook_loss": codebook_loss,
            "commit_loss": commit_loss,
            "perplexity": perplexity.detach(),
            "usage": (counts > 0).float().mean().detach(),  # fraction of codes used in this batch
            "counts": counts.detach(),
        }

    @torch.no_grad()
    def _update_state(self, z_flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        if self.cfg.ema:
            decay, eps = self.cfg.ema_decay, self.cfg.ema_eps
            sums = torch.zeros_like(self.ema_sum).index_add_(0, indices, z_flat)  # (K, D) s_k
            self.ema_count.mul_(decay).add_(counts, alpha=1 - decay)
            self.ema_sum.mul_(decay).add_(sums, alpha=1 - decay)
            total = self.ema_count.sum()
            smoothed = (self.ema_count + eps) / (total + self.num_codes * eps) * total
            self.codebook.copy_(self._normalized(self.ema_sum / smoothed[:, None]))
        self.age.add_(1)
        self.age[counts > 0] = 0
        # Keep a random subset of this batch's encoder outputs as restart candidates.
        m = min(z_flat.shape[0], self.num_codes)
        pick = torch.randperm(z_flat.shape[0], device=z_flat.device)[:m]
        self.pool[:m] = z_flat[pick]
        self.pool_size.fill_(m)
        self.step.add_(1)

    @torch.no_grad()
    def _restart_dead_codes(self) -> int:
        """Re-initialise codes with age >= restart_after from the pool; returns how many."""
        size = int(self.pool_size)
        if size == 0:
            return 0
        dead = (self.age >= self.cfg.restart_after).nonzero().flatten()
        if dead.numel() == 0:
            return 0
        gen = torch.Generator().manual_seed(int(self.step))  # identical choice on every rank
        pick = torch.randint(size, (dead.numel(),), generator=gen).to(self.pool.device)
        fresh = self._normalized(self.pool[pick])
        self.codebook.data[dead] = fresh.to(self.codebook.dtype)
        if self.cfg.ema:
            self.ema_sum[dead] = fresh
            self.ema_count[dead] = 1.0
        self.age[dead] = 0
        return int(dead.numel())

    def dead_codes(self) -> int:
        """Codes currently older than `restart_after` steps (0 when restarts are off)."""
        if self.cfg.restart_after == 0:
            return 0
        return int((self.age >= self.cfg.restart_after).sum())
