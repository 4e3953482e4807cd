"""A diffusers `UNet2DModel` / `UNet2DConditionModel` folder as our `UNetConfig` + weights.

The architecture comes from the folder's own config.json, never from YAML. The mapping is checked
exactly: the constructor arguments we would pass (`models/unet.py: diffusers_unet_kwargs`) on top of
the class's defaults must reproduce every key of the folder's config, so the UNet we rebuild (and
later export) computes what the folder's model computes. SD-1.x keeps a head *count* in
`attention_head_dim`; it becomes `num_attention_heads` and is never re-derived from a width.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from torch import nn

from autoencoders.diffusers_io import NotRepresentableError, built_config
from autoencoders.weights import read_weights, weight_file
from ldm_system.models.unet import UNetConfig, build_unet, diffusers_unet_kwargs

UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")
_IGNORED = {"_class_name", "_diffusers_version", "_name_or_path"}
# Architecture fields a YAML `unet:` section may not contradict (attention backend and dropout it may set).
ARCH_FIELDS = ("sample_size", "in_channels", "block_out_channels", "attention_levels", "layers_per_block",
               "norm_num_groups", "conditioning", "num_classes", "cross_attention_dim")


def _class(name: str):
    import diffusers

    return {"UNet2DModel": diffusers.UNet2DModel, "UNet2DConditionModel": diffusers.UNet2DConditionModel}[name]


def _norm(v):
    return [_norm(x) for x in v] if isinstance(v, (list, tuple)) else v


def _heads(raw: dict, levels: int) -> tuple[int, ...]:
    h = raw.get("num_attention_heads") or raw.get("attention_head_dim") or 8
    return tuple(h) if isinstance(h, (list, tuple)) else (int(h),) * levels


def unet_config_from_diffusers(raw: dict, where: str) -> UNetConfig:
    name = raw.get("_class_name")
    if name not in UNET_CLASSES:
        raise NotRepresentableError(f"{where}: a {name!r} model; the denoiser must be one of {', '.join(UNET_CLASSES)}")
    text = name == "UNet2DConditionModel"
    down = list(raw.get("down_block_types", ()))
    attn_block = "CrossAttnDownBlock2D" if text else "AttnDownBlock2D"
    odd = [b for b in down if b not in (attn_block, "DownBlock2D")]
    if odd:
        raise NotRepresentableError(f"{where}: down blocks {odd} are not ones we build ({attn_block}, DownBlock2D)")
    levels = len(down)
    ahd = raw.get("attention_head_dim", 8)
    if not text and not isinstance(ahd, int):
        raise NotRepresentableError(f"{where}: attention_head_dim={ahd!r}; a UNet2DModel needs one per-head width")
    num_class = raw.get("num_class_embeds")
    try:
        cfg = UNetConfig(
            sample_size=int(raw.get("sample_size") or 0), in_channels=int(raw.get("in_channels", 4)),
            block_out_channels=tuple(raw.get("block_out_channels", ())), attention_levels=tuple(b == attn_block for b in down),
            layers_per_block=int(raw.get("layers_per_block", 2)), norm_num_groups=int(raw.get("norm_num_groups", 32)),
            attention_head_dim=int(ahd) if not text else 8,
            conditioning="text" if text else ("class" if num_class else "none"),
            num_classes=int(num_class) - 1 if (num_class and not text) else 0,  # the last row is the null class
            cross_attention_dim=int(raw.get("cross_attention_dim") or 0) if text else 0,
            dropout=float(raw.get("dropout", 0.0)), num_attention_heads=_heads(raw, levels) if text else ())
    except (ValueError, TypeError) as e:
        raise NotRepresentableError(f"{where}: {e}") from e
    diff = config_differences(raw, cfg)
    if diff:
        raise NotRepresentableError(f"{where}: this {name} differs from the UNets we build, so we cannot reproduce it "
                                    "exactly:\n  " + "\n  ".join(diff))
    return cfg


def config_differences(raw: dict, cfg: UNetConfig) -> list[str]:
    """Keys of the folder's config that the UNet built for `cfg` would not reproduce."""
    name, kwargs = diffusers_unet_kwargs(cfg)
    if name != raw.get("_class_name"):
        return [f"_class_name: folder {raw.get('_class_name')!r}, we build {name!r}"]
    expected = built_config(_class(name), kwargs)
    out = []
    for key, value in raw.items():
        if key in _IGNORED or key not in expected:
            continue
        want = expected[key]
        if key == "attention_head_dim" and cfg.num_attention_heads:
            value = _heads(raw, len(cfg.block_out_channels))  # an int means that many heads at every level
        if key == "num_attention_heads" and value is not None:
            continue  # folded into attention_head_dim above
        if _norm(value) != _norm(want):
            out.append(f"{key}: folder {value!r}, we build {want!r}")
    return out


def check_against_yaml(folder_cfg: UNetConfig, yaml_cfg: UNetConfig, where: str) -> UNetConfig:
    """The run's UNet config for a folder: its architecture, plus the YAML's attention backend and
    dropout. An architecture value left at its default takes the folder's; one set to something else
    must agree with the folder, or it is an error naming both."""
    default = UNetConfig()
    diff = [f"unet.{k}: the config says {getattr(yaml_cfg, k)!r}, {where} has {getattr(folder_cfg, k)!r}"
            for k in ARCH_FIELDS if _norm(getattr(yaml_cfg, k)) != _norm(getattr(default, k))
            and _norm(getattr(yaml_cfg, k)) != _norm(getattr(folder_cfg, k))]
    if diff:
        raise ValueError("the UNet in the config contradicts the one being imported (remove unet: from the config "
                         "or make it match):\n  " + "\n  ".join(diff))
    return dataclasses.replace(folder_cfg, attention=yaml_cfg.attention, dropout=yaml_cfg.dropout)


def read_unet_folder(folder: Path) -> tuple[UNetConfig, dict]:
    """(config, fp32 state dict) of a diffusers UNet folder."""
    raw = json.loads((folder / "config.json").read_text())
    cfg = unet_config_from_diffusers(raw, str(folder))
    return cfg, read_weights(weight_file(folder))


def load_unet_folder(folder: Path) -> tuple[UNetConfig, nn.Module]:
    cfg, state = read_unet_folder(folder)
    unet = build_unet(cfg)
    unet.load_state_dict(state, strict=True)
    return cfg, unet


__all__ = ["UNET_CLASSES", "unet_config_from_diffusers", "config_differences", "check_against_yaml",
           "read_unet_folder", "load_unet_folder"]
