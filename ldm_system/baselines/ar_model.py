"""An Image-GPT-style decoder-only transformer over the 8-bit values of an image's pixels.

Chen et al. 2020 ("Generative Pretraining from Pixels") without the k-means palette: every channel
value is one of 256 tokens. An image (C, H, W) is read in raster order, row by row, the C values
of a pixel next to each other, so the sequence has N = H·W·C tokens (1024 for 32×32×1):

    t[(h·W + w)·C + c] = round((x[c, h, w] + 1) · 127.5)          x in [-1, 1]  →  t in 0..255

The model factorises the discrete likelihood exactly (no dequantisation, no bins to integrate):

    log P(t) = Σ_i log P(t_i | t_<i, y)       bits/dim = −log P(t) / (N ln 2)

so bits/dim is the mean cross-entropy over the 256 values divided by ln 2: the same quantity as
the flow's discretised bits/dim of the 8-bit data. The input at position i is the embedding of
t_{i−1} (position 0 gets the start token, which is the class embedding y, or a null class for
unconditional models), plus a positional embedding of i; causal self-attention guarantees that the
logits at i see only t_<i.

Sampling is ancestral with a KV cache: each step feeds one token, appends its keys/values to the
cache and attends over it, so an image costs N one-token forward steps, not N full passes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from kernels import attention

VOCAB = 256  # one token per 8-bit value


@dataclass(frozen=True)
class ARModelConfig:
    channels: int = 1
    image_size: int = 32  # square images; the sequence has channels · image_size² tokens
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    pos_embed: Literal["learned", "2d"] = "learned"  # one vector per position, or row + column + channel
    num_classes: int = 0  # 0 = unconditional; otherwise the start token is the class embedding
    tie_weights: bool = False  # output layer = token embedding matrix (its transpose)
    vocab: int = VOCAB  # tokens per position: 256 8-bit values, or a VQ codebook's size (vq_ar.py)

    def __post_init__(self) -> None:
        for name in ("channels", "image_size", "width", "depth", "heads", "vocab"):
            if getattr(self, name) < 1:
                raise ValueError(f"ARModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ValueError(f"ARModelConfig.width={self.width} is not divisible by heads={self.heads}")
        if self.num_classes < 0:
            raise ValueError(f"ARModelConfig.num_classes must be >= 0, got {self.num_classes}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    @property
    def seq_len(self) -> int:
        return self.channels * self.image_size * self.image_size


# ---- tokens ---------------------------------------------------------------------------------
def images_to_tokens(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] → (B, H·W·C) int64 in 0..255, raster order, channels interleaved."""
    u = torch.round((images.detach().float().clamp(-1, 1) + 1) * 127.5).long()
    return u.permute(0, 2, 3, 1).reshape(images.shape[0], -1)


def tokens_to_images(tokens: torch.Tensor, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of `images_to_tokens`: (B, N) → (B, C, H, W) float32 u / 127.5 − 1 (the data's mapping)."""
    c, h, w = image_shape
    return tokens.reshape(tokens.shape[0], h, w, c).permute(0, 3, 1, 2).float() / 127.5 - 1


# ---- KV cache -------------------------------------------------------------------------------
class KVCache:
    """Keys and values of every layer for the positions fed so far: (depth, B, H, N, D) each."""

    def __init__(self, depth: int, batch: int, heads: int, seq_len: int, head_dim: int, like: torch.Tensor) -> None:
        shape = (depth, batch, heads, seq_len, head_dim)
        self.k = torch.zeros(shape, dtype=like.dtype, device=like.device)
        self.v = torch.zeros(shape, dtype=like.dtype, device=like.device)


# ---- the network ----------------------------------------------------------------------------
class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None, pos: int = 0) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 × (B, H, n, D)
        if cache is None:
            out = attention(q, k, v, causal=True)
        else:
            ck, cv = cache  # (B, H, N, D) views into the KVCache of this layer
            ck[:, :, pos : pos + n] = k
            cv[:, :, pos : pos + n] = v
            if n == 1:  # one new query sees every cached key, itself included: no mask.
                # (causal=True would be wrong here: the dispatcher's mask is top-left aligned.)
                out = attention(q, ck[:, :, : pos + 1], cv[:, :, : pos + 1], causal=False)
            elif pos == 0:  # prefill from the start: the ordinary causal pass
                out = attention(q, k, v, causal=True)
            else:
                raise ValueError("the KV cache takes a prefill at position 0 or one token at a time")
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, cache=None, pos: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache, pos)
        return x + self.mlp(self.ln2(x))


class ImageTransformer(nn.Module):
    """The model; also the loaded `Generator`/`LikelihoodModel` (`image_shape`, `sample`, `bits_per_dim`)."""

    def __init__(self, cfg: ARModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_shape = cfg.image_shape
        self.seq_len, self.null_class = cfg.seq_len, cfg.num_classes
        w = cfg.width
        self.tok_emb = nn.Embedding(cfg.vocab, w)
        self.start = nn.Embedding(cfg.num_classes + 1, w)  # row K = null class = the unconditional start
        if cfg.pos_embed == "learned":
            self.pos_emb = nn.Parameter(torch.zeros(cfg.seq_len, w))
        else:  # position i = ((h·W + w)·C + c): one embedding per row, column and channel, summed
            self.row_emb = nn.Parameter(torch.zeros(cfg.image_size, w))
            self.col_emb = nn.Parameter(torch.zeros(cfg.image_size, w))
            self.chan_emb = nn.Parameter(torch.zeros(cfg.channels, w))
        self.blocks = nn.ModuleList(Block(w, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.ln_f = nn.LayerNorm(w)
        # Tied: logits = h · tok_embᵀ, no second copy (safetensors refuses tensors that share memory).
        self.head = None if cfg.tie_weights else nn.Linear(w, cfg.vocab)
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2 init: N(0, 0.02), residual output projections scaled by 1/sqrt(2·depth); the output
        layer starts at zero so a fresh model is exactly uniform (8 bits/dim)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        for blk in self.blocks:
            nn.init.normal_(blk.attn.proj.weight, std=0.02 / math.sqrt(2 * self.cfg.depth))
            nn.init.normal_(blk.mlp[2].weight, std=0.02 / math.sqrt(2 * self.cfg.depth))
        for name in ("pos_emb", "row_emb", "col_emb", "chan_emb"):
            if hasattr(self, name):
                nn.init.normal_(getattr(self, name), std=0.02)
        if self.head is not None:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    # ---- embeddings ------------------------------------------------------------------------
    def positions(self, start: int, n: int) -> torch.Tensor:
        """(n, width) positional embeddings of positions start..start+n−1."""
        if self.cfg.pos_embed == "learned":
            return self.pos_emb[start : start + n]
        i = torch.arange(start, start + n, device=self.row_emb.device)
        c, s = self.cfg.channels, self.cfg.image_size
        pixel, chan = i // c, i % c
        return self.row_emb[pixel // s] + self.col_emb[pixel % s] + self.chan_emb[chan]

    def _labels(self, labels: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        if labels is None:
            return torch.full((batch,), self.null_class, dtype=torch.long, device=device)
        labels = labels.to(device=device, dtype=torch.long)
        if ((labels < 0) | (labels > self.null_class)).any():
            raise ValueError(f"labels must be in 0..{self.null_class} ({self.null_class} = null class), got {labels.tolist()}")
        return labels

    # ---- full pass (training, likelihood) --------------------------------------------------
    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """tokens (B, L ≤ N) int64 → logits (B, L, 256); logits[:, i] predicts tokens[:, i] from tokens[:, :i].

        The last token is never read (it is only ever predicted). With `cache`, also fills it (prefill).
        """
        b, n = tokens.shape
        if n > self.seq_len:
            raise ValueError(f"sequence of {n} tokens; the model takes at most {self.seq_len}")
        start = self.start(self._labels(labels, b, tokens.device))[:, None]  # (B, 1, width)
        h = torch.cat([start, self.tok_emb(tokens[:, : n - 1])], dim=1) + self.positions(0, n)  # (B, L, width)
        for i, blk in enumerate(self.blocks):
            h = blk(h, None if cache is None else (cache.k[i], cache.v[i]), 0)
        return self.logits(h)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(..., width) hidden states → (..., 256) logits."""
        h = self.ln_f(h)
        return self.head(h) if self.head is not None else F.linear(h, self.tok_emb.weight)

    def nll(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) −log P(image | label) in nats, summed over the N token positions."""
        tokens = images_to_tokens(images).to(self.tok_emb.weight.device)
        logits = self(tokens, labels).float()
        ce = F.cross_entropy(logits.reshape(-1, self.cfg.vocab), tokens.reshape(-1), reduction="none")
        return ce.view(tokens.shape).sum(dim=1)

    @torch.no_grad()
    def bits_per_dim(self, images: torch.Tensor, labels: torch.Tensor | None = None, batch_size: int = 64) -> torch.Tensor:
        """(B,) bits/dim of the 8-bit images (given in [-1, 1]): −log₂ P(t) / N.

        Unconditional models: P(t) from the null start. Class models without labels: the marginal
        of the uniform class mixture the sampler draws from, P(t) = (1/K) Σ_y P(t | y).
        """
        out = []
        for i in range(0, images.shape[0], batch_size):
            x = images[i : i + batch_size]
            if labels is not None or self.cfg.num_classes == 0:
                nll = self.nll(x, None if labels is None else labels[i : i + batch_size])
            else:
                k = self.cfg.num_classes
                per_class = torch.stack([self.nll(x, torch.full((x.shape[0],), y)) for y in range(k)])  # (K, b)
                nll = -(torch.logsumexp(-per_class.double(), dim=0) - math.log(k))
            out.append(nll.double().cpu() / (self.seq_len * math.log(2.0)))
        return torch.cat(out)

    # ---- one token at a time (sampling) ----------------------------------------------------
    def new_cache(self, batch: int) -> KVCache:
        return KVCache(self.cfg.depth, batch, self.cfg.heads, self.seq_len, self.cfg.width // self.cfg.heads,
                       like=self.tok_emb.weight)

    def step(self, prev: torch.Tensor | None, pos: int, cache: KVCache, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, 256) for token `pos`, feeding its input (the start token at pos 0, else t_{pos−1}
        given as `prev` (B,)) and attending over the cache, which this call extends by one position."""
        if pos == 0:
            b = cache.k.shape[1]
            e = self.start(self._labels(labels, b, cache.k.device))
        else:
            e = self.tok_emb(prev)
        h = (e + self.positions(pos, 1))[:, None]  # (B, 1, width)
        for i, blk in enumerate(self.blocks):
            h = blk(h, (cache.k[i], cache.v[i]), pos)
        return self.logits(h)[:, 0]

    @torch.no_grad()
    def sample_tokens(self, uniforms: torch.Tensor, labels: torch.Tensor | None = None, temperature: float = 1.0,
                      top_k: int = 0, use_cache: bool = True) -> torch.Tensor:
        """Ancestral sampling. `uniforms` (B, N) in [0, 1) are the only randomness: token i of image b
        is the inverse CDF of its (tempered, top-k) distribution at uniforms[b, i]. Returns (B, N) int64.

        use_cache=False re-runs the full pass on the prefix at every step (O(N²)); for tests.
        """
        b, n = uniforms.shape
        device = self.tok_emb.weight.device
        tokens = torch.zeros(b, n, dtype=torch.long, device=device)
        cache = self.new_cache(b) if use_cache else None
        for i in range(n):
            if use_cache:
                logits = self.step(tokens[:, i - 1] if i else None, i, cache, labels)
            else:
                logits = self(tokens[:, : i + 1], labels)[:, i]  # tokens[:, i] is a placeholder, never read
            tokens[:, i] = pick(logits, uniforms[:, i].to(device), temperature, top_k)
        return tokens

    @torch.no_grad()
    def sample(self, num: int, seed: int = 0, labels: torch.Tensor | None = None, temperature: float = 1.0,
               top_k: int = 0, batch_size: int = 64) -> torch.Tensor:
        """(num, C, H, W) in [-1, 1]. Image j depends only on (seed, j, label): the uniforms are drawn
        as one (num, N) block. Class models without labels cycle through the classes (j mod K)."""
        gen = torch.Generator().manual_seed(seed)
        uniforms = torch.rand(num, self.seq_len, generator=gen, dtype=torch.float64)
        if labels is None and self.cfg.num_classes > 0:
            labels = torch.arange(num) % self.cfg.num_classes
        out = []
        for i in range(0, num, batch_size):
            lab = None if labels is None else labels[i : i + batch_size]
            out.append(self.sample_tokens(uniforms[i : i + batch_size], lab, temperature, top_k).cpu())
        return tokens_to_images(torch.cat(out), self.image_shape)


def pick(logits: torch.Tensor, u: torch.Tensor, temperature: float = 1.0, top_k: int = 0) -> torch.Tensor:
    """Inverse-CDF draw from softmax(logits / T) restricted to the top k (k = 0: all 256). (B,)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = logits.double() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    cdf = torch.softmax(logits, dim=-1).cumsum(dim=-1)  # (B, 256)
    target = (u.double() * cdf[:, -1])[:, None]  # u · total mass < total: never past the last token
    # token j such that cdf[j−1] <= target < cdf[j]; zero-probability tokens are never picked
    return torch.searchsorted(cdf, target, right=True)[:, 0].clamp_max(logits.shape[-1] - 1)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on the Linear weight matrices only; biases, LayerNorm gains and the
    embeddings (token, start/class, position; the tied output matrix is the token embedding) are
    not decayed (GPT-2/minGPT split)."""
    decay_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if id(p) in decay_ids else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
