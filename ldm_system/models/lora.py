"""LoRA adapters on the diffusion UNet, through `peft` (the adapter implementation diffusers itself uses).

    W x  →  W x + (alpha / rank) · B A x        A: (rank, in), B: (out, rank), B = 0 at the start

With `lora.rank > 0` the UNet's own weights are frozen and only A, B train (the optimizer and the EMA
see only parameters that require grad, so the EMA averages the adapters). Checkpoints hold the whole
state dict (frozen base + adapters), so resume needs nothing special. Export merges the adapters into
the UNet (stock pipelines and `ldm sample` need no peft) and also writes them alone, in diffusers'
LoRA format, for `pipe.load_lora_weights(OUT/lora)` on the base model.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

LORA_DIR = "lora"


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 0  # 0: no adapters, full fine-tuning
    alpha: float = 0.0  # 0: alpha = rank (scale 1)
    # module-name suffixes to adapt; the defaults are the attention projections (self- and cross-attention)
    targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")

    def __post_init__(self) -> None:
        if isinstance(self.targets, list):
            object.__setattr__(self, "targets", tuple(self.targets))
        if self.rank < 0:
            raise ValueError(f"lora.rank must be >= 0, got {self.rank}")
        if self.alpha < 0:
            raise ValueError(f"lora.alpha must be >= 0, got {self.alpha}")
        if self.rank and not self.targets:
            raise ValueError("lora.targets is empty: name at least one module to adapt (e.g. to_q)")

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha or self.rank, target_modules=list(self.targets),
                          init_lora_weights=True)  # B = 0: the adapted UNet starts as the base one


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def add_lora(unet: nn.Module, cfg: LoRAConfig) -> nn.Module:
    """Freeze `unet` and inject adapters on the modules named by `cfg.targets`; a target that matches no
    module is an error listing the adaptable names."""
    from peft import inject_adapter_in_model

    names = [n for n, m in unet.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    unmatched = [t for t in cfg.targets if not any(_matches(n, t) for n in names)]
    if unmatched:
        leaves = sorted({n.rsplit(".", 1)[-1] if not n.endswith(".0") else n.rsplit(".", 2)[-2] + ".0" for n in names})
        raise ValueError(f"lora.targets {unmatched} match no Linear/Conv2d module of this UNet; module names end in "
                         f"{', '.join(leaves[:30])}")
    unet.requires_grad_(False)
    return inject_adapter_in_model(cfg.peft_config(), unet)


def merge_lora(unet: nn.Module) -> nn.Module:
    """Fold every adapter into its base layer (W ← W + s·B A) and put the plain layer back."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(unet.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(unet.get_submodule(parent_name) if parent_name else unet, child, module.get_base_layer())
    return unet


def save_lora(unet: nn.Module, cfg: LoRAConfig, out: Path) -> Path:
    """OUT/lora/pytorch_lora_weights.safetensors in diffusers' format (UNet2DConditionModel only: stock
    `load_lora_weights` lives on the Stable Diffusion pipelines)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    meta = {"r": cfg.rank, "lora_alpha": cfg.alpha or cfg.rank, "target_modules": list(cfg.targets)}
    StableDiffusionPipeline.save_lora_weights(str(out / LORA_DIR), unet_lora_layers=state, safe_serialization=True,
                                              unet_lora_adapter_metadata=meta)
    return out / LORA_DIR


def trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["LORA_DIR", "LoRAConfig", "add_lora", "merge_lora", "save_lora", "trainable_parameters"]
