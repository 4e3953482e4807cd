"""The contract between the training engine and a model family ("task").

The engine owns the loop, distribution, checkpoints and logging. A task owns its models and its
losses. Tasks live anywhere (stage 1 lives in `autoencoders/`, which must not import
`ldm_system`), so the contract is a structural Protocol: a task never subclasses anything.

One engine step, for each batch:

    for opt_name, loss in task.losses(modules, batch, step):
        backward(loss); clip; optimizers[opt_name].step()   # (with accumulation, only on sync steps)

`losses` is a generator, so a GAN-style task can yield the generator loss, let the engine step
the generator's optimizer, and only then compute the discriminator loss on fresh weights.
"""
from __future__ import annotations

import copy
from typing import Any, Iterator, Mapping, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Task(Protocol):
    def build(self) -> dict[str, nn.Module]:
        """Create every trainable module, keyed by name (e.g. {"unet": ...} or {"ae": ..., "disc": ...}).

        The engine wraps them (DDP / DeepSpeed) with `accelerator.prepare`; the wrapped module shares
        parameters with the object returned here, so a task may keep raw references for unwrapped use.
        """
        ...

    def optimizers(self, modules: Mapping[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        """One optimizer per independently stepped group, keyed by the name `losses` yields."""
        ...

    def losses(
        self, modules: Mapping[str, nn.Module], batch: Any, step: int
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (optimizer name, scalar loss) pairs, in order. `modules` are the prepared ones."""
        ...

    def metrics(self) -> dict[str, float]:
        """Scalars from the last step, for logging (detached floats)."""
        ...

    def preview(self, modules: Mapping[str, nn.Module], batch: Any) -> torch.Tensor:
        """Images in [-1, 1], (B, C, H, W), to save as a grid. Called on every rank (ZeRO-3 needs
        all ranks in a forward); only rank 0 writes the file."""
        ...


class TaskHooks(Protocol):
    """Optional hooks: a task defines the ones it needs; `call_hook` supplies the defaults below.

    - `to_device(device)`: move frozen helpers (an autoencoder, a text encoder) that are not trainable
      modules and so are never wrapped by the engine. Default: nothing to move.
    - `checkpoint_metadata() -> dict`: JSON-able facts stored in every checkpoint's `trainer.json`
      (e.g. the class names, the latent scale's source). Default: none.
    """

    def to_device(self, device: torch.device) -> None: ...

    def checkpoint_metadata(self) -> dict[str, Any]: ...


HOOK_DEFAULTS: dict[str, Any] = {"to_device": None, "checkpoint_metadata": {}}


def call_hook(task: Any, name: str, *args: Any) -> Any:
    """The task's optional hook `name` (one of TaskHooks), or its default when the task has none."""
    if name not in HOOK_DEFAULTS:
        raise KeyError(f"{name!r} is not an optional task hook; known: {sorted(HOOK_DEFAULTS)}")
    hook = getattr(task, name, None)
    return hook(*args) if hook is not None else copy.copy(HOOK_DEFAULTS[name])

