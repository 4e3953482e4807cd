"""Exponential moving average of weights, correct under ZeRO-3 partitioning.

Under ZeRO-3 each rank holds only a flat shard of every parameter (`param.ds_tensor`) and
`param.data` is an empty placeholder outside a gather. Gathering every step to update a full EMA
would undo ZeRO-3's memory saving, so the EMA keeps one shadow per *local view*:

- plain / DDP / ZeRO-1/2: the local view is `param.data` (the full tensor, same on every rank);
- ZeRO-3: the local view is `param.ds_tensor` (this rank's shard, fp32 master not needed because
  the shard already holds the training dtype on CPU; on GPU with fp16 it is the fp16 shard).

Every rank updates its own shards with the same decay, so the union of the shadows is exactly the
EMA of the full parameters. To evaluate or export, `swap()` exchanges shadow and live shards in
place; the normal ZeRO-3 gather then sees EMA weights. The model itself knows nothing of this.

Decay with warmup (as in many LDM codebases): decay_t = min(decay, (1 + t) / (10 + t)).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


def _local_view(p: torch.nn.Parameter) -> torch.Tensor:
    shard = getattr(p, "ds_tensor", None)  # set by DeepSpeed ZeRO-3 on partitioned params
    return shard if shard is not None else p.data


def _local_slice(full: torch.Tensor, p: torch.nn.Parameter, n: int) -> torch.Tensor:
    """This rank's piece of a full tensor as ZeRO-3 lays it out: the flattened tensor cut into
    equal shards of `n` elements, the last one zero-padded."""
    if getattr(p, "ds_tensor", None) is None:
        return full.float()
    import torch.distributed as dist

    rank = dist.get_rank(group=getattr(p, "ds_process_group", None)) if dist.is_initialized() else 0
    piece = full.float().flatten()[rank * n:(rank + 1) * n]
    return torch.cat([piece, piece.new_zeros(n - piece.numel())])


def _valid_length(p: torch.nn.Parameter) -> int | None:
    """Elements of this rank's ZeRO-3 shard that belong to the parameter (the rest is padding)."""
    shard = getattr(p, "ds_tensor", None)
    if shard is None:
        return None
    import torch.distributed as dist

    rank = dist.get_rank(group=getattr(p, "ds_process_group", None)) if dist.is_initialized() else 0
    n = shard.numel()
    return max(0, min(n, int(p.ds_numel) - rank * n))


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._valid = [_valid_length(p) for p in self._params]
        self.shadow = [_local_view(p).detach().clone().float() for p in self._params]
        self._zero_padding()

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        t = self.num_updates
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self) -> None:
        d = self.current_decay()
        for s, p in zip(self.shadow, self._params):
            s.lerp_(_local_view(p).float(), 1.0 - d)  # s ← d·s + (1−d)·θ
        self._zero_padding()
        self.num_updates += 1

    def _zero_padding(self) -> None:
        """ZeRO-3 pads the last rank's shards; DeepSpeed leaves whatever was in memory there. Keep the
        shadow's padding at zero so EMA shards are reproducible (and compare bit for bit on resume)."""
        for s, valid in zip(self.shadow, self._valid):
            if valid is not None and valid < s.numel():
                s.view(-1)[valid:] = 0

    @torch.no_grad()
    def _exchange(self) -> None:
        for s, p in zip(self.shadow, self._params):
            live = _local_view(p)
            tmp = live.detach().clone()
            live.copy_(s.to(live.dtype))
            s.copy_(tmp.float())

    @contextmanager
    def swap(self) -> Iterator[None]:
        """Temporarily put EMA weights into the model (on every rank's local shards)."""
        self._exchange()
        try:
            yield
        finally:
            self._exchange()

    @torch.no_grad()
    def load_full(self, model: nn.Module, state: dict[str, torch.Tensor], num_updates: int) -> None:
        """Shadows from full (consolidated) tensors keyed by parameter name, cut to this rank's ZeRO-3
        shard where the parameters are partitioned: resuming on another number of ranks."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        missing = [n for n, _ in named if n not in state]
        if missing:
            raise ValueError(f"EMA weights lack {len(missing)} parameters, e.g. {missing[0]!r}")
        for s, (n, p) in zip(self.shadow, named):
            s.copy_(_local_slice(state[n], p, s.numel()).view_as(s))
        self.num_updates = num_updates

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"shadow.{i}": s.contiguous() for i, s in enumerate(self.shadow)}
        out["num_updates"] = torch.tensor(self.num_updates, dtype=torch.int64)
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        n = sum(1 for k in state if k.startswith("shadow."))
        if n != len(self.shadow):
            raise ValueError(f"EMA state has {n} tensors, the model has {len(self.shadow)} trainable parameters")
        for i, s in enumerate(self.shadow):
            src = state[f"shadow.{i}"]
            if src.shape != s.shape:
                raise ValueError(
                    f"EMA tensor {i} has shape {tuple(src.shape)}, expected {tuple(s.shape)} "
                    "(ZeRO-3 EMA shards must be resumed with the same number of processes)"
                )
            s.copy_(src)
        self.num_updates = int(state["num_updates"])
