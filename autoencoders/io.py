"""Autoencoder checkpoints: a folder with

    model.safetensors    the autoencoder's state dict (parameters and buffers)
    autoencoder.json     {"format": 1, "kind", "config": AutoencoderConfig fields, "latent_scale",
                          KL: "sample_latent_scale"}   (scales of the posterior mode and of samples)

The latent scale is part of the checkpoint, so nothing downstream hard-codes one. KL models also
export to the diffusers format (`AutoencoderKL.from_pretrained(dir)` loads it), with the measured
scale written as `scaling_factor`.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from autoencoders.config import AutoencoderConfig, QuantizerConfig
from autoencoders.factory import Autoencoder, build_autoencoder

WEIGHTS_FILE = "model.safetensors"
META_FILE = "autoencoder.json"
FORMAT_VERSION = 1


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model (different kind, config, keys or shapes)."""


@dataclass(frozen=True)
class AutoencoderMeta:
    config: AutoencoderConfig
    latent_scale: float  # 1/std of the latents `ldm data encode` stores (KL: the posterior mode)
    format: int = FORMAT_VERSION
    sample_latent_scale: float | None = None  # KL: 1/std of posterior samples (None: not measured)

    def scale_for(self, sample_posterior: bool) -> float:
        """The scale that gives unit std to what stage 2 trains on: posterior samples or the mode."""
        return self.sample_latent_scale if sample_posterior and self.sample_latent_scale else self.latent_scale

    @property
    def kind(self) -> str:
        return self.config.kind


def config_from_dict(data: dict) -> AutoencoderConfig:
    """Strict inverse of `dataclasses.asdict` for AutoencoderConfig (unknown keys are errors)."""

    def strict(cls, d: dict, where: str) -> dict:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CheckpointMismatchError(f"unknown {where} keys {unknown}; known: {sorted(known)}")
        return dict(d)

    d = strict(AutoencoderConfig, data, "model config")
    if "quantizer" in d:
        d["quantizer"] = QuantizerConfig(**strict(QuantizerConfig, d["quantizer"], "quantizer config"))
    return AutoencoderConfig(**d)


def _check_scale(latent_scale: float) -> float:
    scale = float(latent_scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"latent_scale must be a finite positive number, got {latent_scale!r}")
    return scale


def save_autoencoder(ae: Autoencoder, cfg: AutoencoderConfig, latent_scale: float, path: str | Path,
                     sample_latent_scale: float | None = None) -> Path:
    """Write `model.safetensors` + `autoencoder.json` into the folder `path` (created if needed).
    `latent_scale` is the posterior mode's scale, `sample_latent_scale` (KL) the samples' one."""
    if ae.cfg != cfg:
        raise CheckpointMismatchError("save_autoencoder: cfg differs from the config the model was built with")
    scale = _check_scale(latent_scale)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in ae.state_dict().items()}
    save_file(state, str(path / WEIGHTS_FILE), metadata={"format": str(FORMAT_VERSION), "kind": cfg.kind})
    meta = {"format": FORMAT_VERSION, "kind": cfg.kind, "config": asdict(cfg), "latent_scale": scale}
    if sample_latent_scale is not None:
        meta["sample_latent_scale"] = _check_scale(sample_latent_scale)
    (path / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def read_meta(path: str | Path) -> AutoencoderMeta:
    path = Path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path} is not an autoencoder checkpoint: {META_FILE} is missing")
    raw = json.loads(meta_file.read_text())
    if raw.get("format") != FORMAT_VERSION:
        raise CheckpointMismatchError(f"{meta_file}: format {raw.get('format')!r}, this code reads {FORMAT_VERSION}")
    cfg = config_from_dict(raw["config"])
    if raw.get("kind") != cfg.kind:
        raise CheckpointMismatchError(f"{meta_file}: kind {raw.get('kind')!r} disagrees with config kind {cfg.kind!r}")
    sample = raw.get("sample_latent_scale")
    return AutoencoderMeta(config=cfg, latent_scale=_check_scale(raw["latent_scale"]),
                           sample_latent_scale=None if sample is None else _check_scale(sample))


def _config_diff(a: AutoencoderConfig, b: AutoencoderConfig) -> list[str]:
    da, db = asdict(a), asdict(b)
    out = []
    for key in sorted(set(da) | set(db)):
        if da.get(key) != db.get(key):
            out.append(f"{key}: checkpoint {da.get(key)!r} vs model {db.get(key)!r}")
    return out


def load_state_into(ae: Autoencoder, path: str | Path) -> None:
    """Load the checkpoint's weights into an existing model, or fail listing every mismatch."""
    path = Path(path)
    state = load_file(str(path / WEIGHTS_FILE))
    own = ae.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        lines = [f"checkpoint {path} does not fit this {type(ae).__name__}:"]
        tops_ckpt, tops_model = sorted({k.split(".")[0] for k in state}), sorted({k.split(".")[0] for k in own})
        if tops_ckpt != tops_model:  # e.g. a KL checkpoint offered to a VQ model
            lines.append(f"  top-level modules differ: checkpoint {tops_ckpt} vs model {tops_model}")
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else ""))
        raise CheckpointMismatchError("\n".join(lines))
    ae.load_state_dict(state, strict=True)


def stage1_folder(path: str | Path) -> Path:
    """The folder holding a stage-1 model: ours (autoencoder.json), a diffusers AutoencoderKL/VQModel
    (config.json), or the `vae/` / `vqvae/` of a diffusers pipeline folder; else an error naming what was
    looked for."""
    from autoencoders.diffusers_io import is_diffusers_stage1

    path = Path(path)
    for cand in (path, path / "vae", path / "vqvae"):
        if (cand / META_FILE).is_file() or is_diffusers_stage1(cand):
            return cand
    if not path.exists():
        raise FileNotFoundError(f"autoencoder {path}: no such folder")
    raise FileNotFoundError(f"{path} is not an autoencoder: looked for {META_FILE} (ours), config.json of a diffusers "
                            "AutoencoderKL/VQModel, and vae/ or vqvae/ of a diffusers pipeline folder")


def load_autoencoder(
    path: str | Path, expected: AutoencoderConfig | None = None, device: str | torch.device = "cpu",
    scale_from: Callable[[Autoencoder], float] | None = None,
) -> tuple[Autoencoder, AutoencoderMeta]:
    """Rebuild the model from `autoencoder.json` and load its weights (eval mode).

    With `expected`, a checkpoint of another config is refused with the differing fields listed.
    A diffusers `AutoencoderKL` / `VQModel` folder (or a pipeline folder holding one as `vae/` or
    `vqvae/`) is read through `autoencoders/diffusers_io.py`, its `scaling_factor` as the latent scale,
    or, when it has none, `scale_from(autoencoder)` (a measurement on the caller's images).
    """
    path = stage1_folder(path)
    if not (path / META_FILE).is_file():
        from autoencoders.diffusers_io import load_diffusers_stage1

        ae, cfg, scale = load_diffusers_stage1(path)
        if scale is None:  # `scale_from` measures 1/std of the latents on the caller's images
            if scale_from is None:
                raise CheckpointMismatchError(
                    f"{path}/config.json has no scaling_factor and no images were given to measure one; add the "
                    "latent scale there, or train stage 2 on image shards with `autoencoder:` (measured there)")
            scale = scale_from(ae.to(device).eval())
        if expected is not None and expected != cfg:
            diff = "\n  ".join(_config_diff(cfg, expected))
            raise CheckpointMismatchError(f"autoencoder {path} has another model config:\n  {diff}")
        return ae.to(device).eval(), AutoencoderMeta(config=cfg, latent_scale=_check_scale(scale))
    meta = read_meta(path)
    if expected is not None and expected != meta.config:
        diff = "\n  ".join(_config_diff(meta.config, expected))
        raise CheckpointMismatchError(f"checkpoint {path} was trained with another model config:\n  {diff}")
    ae = build_autoencoder(meta.config)
    load_state_into(ae, path)
    return ae.to(device).eval(), meta


def export_diffusers(ae: Autoencoder, latent_scale: float, path: str | Path) -> Path:
    """KL only: a folder that `diffusers.AutoencoderKL.from_pretrained(path)` loads, with
    `scaling_factor` = latent_scale. (The VQ quantizer has no diffusers equivalent.)"""
    if ae.kind != "kl":
        raise NotImplementedError(
            f"diffusers export supports KL autoencoders only (got kind {ae.kind!r}); "
            "use save_autoencoder for VQ models"
        )
    scale = _check_scale(latent_scale)
    path = Path(path)
    ae.vae.save_pretrained(str(path), safe_serialization=True)
    config_file = path / "config.json"
    config = json.loads(config_file.read_text())
    config["scaling_factor"] = scale
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path
