"""The weight files of a diffusers model folder, found and read without pickle.

diffusers saves `diffusion_pytorch_model[.fp16].safetensors` (`model[.fp16].safetensors` for
transformers); older folders hold only `.bin` files. We read, in this order of preference:

    NAME.safetensors  >  NAME.fp16.safetensors  >  NAME.bin  >  NAME.fp16.bin

fp16 variants are upcast to fp32 (training and our samplers run in fp32; a cast is exact).
`.bin` files are read with `torch.load(weights_only=True)`: a file that needs pickle beyond tensors
and plain containers is refused with the unpickler's reason, never loaded with full pickle.

Why here, in `autoencoders`: stage 1 reads diffusers `AutoencoderKL`/`VQModel` folders itself (so every
caller of `load_autoencoder` takes them) and may not import `ldm_system`; the artifact layer
(`ldm_system/artifacts`) re-exports these functions for the UNet and text parts.
"""
from __future__ import annotations

from pathlib import Path

import torch

STEMS = ("diffusion_pytorch_model", "model")
SUFFIXES = (".safetensors", ".fp16.safetensors", ".bin", ".fp16.bin")


class UnsafeWeightsError(ValueError):
    """A `.bin` file that only full pickle could read."""


def weight_file(folder: Path) -> Path:
    """The one weight file of a model folder (see the order above), or an error listing the names tried."""
    tried = []
    for suffix in SUFFIXES:
        for stem in STEMS:
            p = folder / f"{stem}{suffix}"
            tried.append(p.name)
            if p.is_file():
                return p
    if any(folder.glob("*.index.json")):
        raise ValueError(f"{folder}: sharded weights (*.index.json) are not supported; save the model unsharded")
    raise FileNotFoundError(f"{folder}: no weights; looked for {', '.join(tried)}")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from `path`, fp32 for floating tensors."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # the restricted unpickler raises UnpicklingError/RuntimeError
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UnsafeWeightsError(
                f"{path}: refused, the file needs pickle beyond tensors to load ({reason}); convert it to "
                "safetensors with a tool you trust") from e
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UnsafeWeightsError(f"{path}: not a flat state dict of tensors")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def load_into(model: torch.nn.Module, folder: Path, rename: dict[str, str] | None = None) -> None:
    """Load `folder`'s weights into `model` strictly; mismatching keys and shapes are listed."""
    path = weight_file(folder)
    state = read_weights(path)
    if rename:
        state = {rename.get(k, k): v for k, v in state.items()}
    own = model.state_dict()
    problems = [f"missing: {k}" for k in sorted(set(own) - set(state))][:10]
    problems += [f"unexpected: {k}" for k in sorted(set(state) - set(own))][:10]
    problems += [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                 for k, v in own.items() if k in state and state[k].shape != v.shape][:10]
    if problems:
        raise ValueError(f"{path} does not fit the model its config.json describes:\n  " + "\n  ".join(problems))
    model.load_state_dict(state, strict=True)


__all__ = ["STEMS", "SUFFIXES", "UnsafeWeightsError", "weight_file", "read_weights", "load_into"]
