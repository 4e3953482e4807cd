"""Stage 1 ↔ diffusers: a diffusers `AutoencoderKL` / `VQModel` folder as our autoencoder, and our VQ
model as a `VQModel` folder.

Both of our kinds are diffusers' own Encoder/Decoder blocks, so a diffusers folder maps onto an
`AutoencoderConfig` when its config holds nothing we do not build. The check is exact: the config we
would write back (the class's defaults plus our arguments) must equal the folder's `config.json` on
every architecture key, otherwise the folder is refused naming the keys (a silently different
model would encode to other latents).

The latent scale is the folder's `scaling_factor` (diffusers multiplies latents by it, as we do); a
folder without one has its scale measured on the caller's images (`load_autoencoder(scale_from=...)`).
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path

from autoencoders.config import AutoencoderConfig, QuantizerConfig
from autoencoders.weights import read_weights, weight_file

CONFIG_FILE = "config.json"
STAGE1_CLASSES = ("AutoencoderKL", "VQModel")
# Keys that do not change what the model computes in fp32 (or that we check separately).
_IGNORED = {"sample_size", "scaling_factor", "force_upcast", "_class_name", "_diffusers_version", "_name_or_path"}


class NotRepresentableError(ValueError):
    """A diffusers folder whose model we cannot rebuild exactly."""


def read_config(folder: Path) -> dict:
    return json.loads((Path(folder) / CONFIG_FILE).read_text())


def is_diffusers_stage1(folder: Path) -> bool:
    f = Path(folder) / CONFIG_FILE
    return f.is_file() and json.loads(f.read_text()).get("_class_name") in STAGE1_CLASSES


def _diffusers_kwargs(cfg: AutoencoderConfig) -> tuple[str, dict]:
    """(class name, constructor arguments) of the diffusers model that computes what `cfg` does."""
    n = len(cfg.channels)
    common = dict(in_channels=cfg.in_channels, out_channels=cfg.in_channels,
                  down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
                  block_out_channels=list(cfg.channels), layers_per_block=cfg.layers_per_block, act_fn="silu",
                  latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_groups,
                  mid_block_add_attention=cfg.mid_attention)
    if cfg.kind == "kl":
        return "AutoencoderKL", {**common, "use_quant_conv": True, "use_post_quant_conv": True,
                                 "shift_factor": None, "latents_mean": None, "latents_std": None}
    return "VQModel", {**common, "num_vq_embeddings": cfg.quantizer.codebook_size, "vq_embed_dim": None,
                       "norm_type": "group", "lookup_from_codebook": False}


def _class(name: str):
    import diffusers

    return {"AutoencoderKL": diffusers.AutoencoderKL, "VQModel": diffusers.VQModel}[name]


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def built_config(cls: type, kwargs: dict) -> dict:
    """The config a diffusers model class ends up with when built from `kwargs`: its constructor's
    defaults, overridden by `kwargs` (what we compare a folder's config.json against)."""
    sig = inspect.signature(cls.__init__)
    expected = {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}
    expected.update(kwargs)
    return expected


def config_differences(folder_cfg: dict, cls_name: str, kwargs: dict) -> list[str]:
    """Keys where the folder's config differs from the model we would build (defaults + kwargs)."""
    expected = built_config(_class(cls_name), kwargs)
    out = []
    for key, value in folder_cfg.items():
        if key in _IGNORED or key not in expected:
            continue
        if key == "vq_embed_dim" and value == folder_cfg.get("latent_channels"):
            continue  # None means "= latent_channels" in diffusers
        if _norm(value) != _norm(expected[key]):
            out.append(f"{key}: folder {value!r}, we build {expected[key]!r}")
    return out


def config_from_diffusers(folder: Path) -> tuple[AutoencoderConfig, float | None]:
    """(our config, latent scale) for a diffusers stage-1 folder, or NotRepresentableError with the reason."""
    raw = read_config(folder)
    name = raw.get("_class_name")
    if name not in STAGE1_CLASSES:
        raise NotRepresentableError(f"{folder}: a {name!r} model; stage 1 takes {' or '.join(STAGE1_CLASSES)}")
    channels = tuple(raw.get("block_out_channels", ()))
    try:
        cfg = AutoencoderConfig(
            kind="kl" if name == "AutoencoderKL" else "vq", in_channels=int(raw.get("in_channels", 3)),
            channels=channels, f=2 ** (len(channels) - 1), latent_channels=int(raw.get("latent_channels", 4)),
            layers_per_block=int(raw.get("layers_per_block", 1)), norm_groups=int(raw.get("norm_num_groups", 32)),
            mid_attention=bool(raw.get("mid_block_add_attention", True)),
            quantizer=QuantizerConfig(codebook_size=int(raw.get("num_vq_embeddings", 256))))
    except ValueError as e:
        raise NotRepresentableError(f"{folder}: {e}") from e
    diff = config_differences(raw, *_diffusers_kwargs(cfg))
    if diff:
        raise NotRepresentableError(f"{folder}: this {name} differs from every stage-1 model we build:\n  "
                                    + "\n  ".join(diff))
    # None: the folder names no scale; the caller measures one on its data or refuses (autoencoders/io.py)
    return cfg, (float(raw["scaling_factor"]) if raw.get("scaling_factor") is not None else None)


def load_diffusers_stage1(folder: Path):
    """(our Autoencoder, config, latent scale) from a diffusers `AutoencoderKL` / `VQModel` folder."""
    from autoencoders.factory import build_autoencoder

    cfg, scale = config_from_diffusers(folder)
    ae = build_autoencoder(cfg)
    state = read_weights(weight_file(Path(folder)))
    if cfg.kind == "kl":
        state = {f"vae.{k}": v for k, v in state.items()}
    else:
        state = {("quantizer.codebook" if k == "quantize.embedding.weight" else k): v for k, v in state.items()}
        own = ae.state_dict()  # our quantizer's training buffers (usage ages, restart pool) keep their start values
        state.update({k: v for k, v in own.items() if k.startswith("quantizer.") and k not in state})
    missing, unexpected = ae.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise NotRepresentableError(f"{folder}: weights do not fit the config (missing {missing[:5]}, "
                                    f"unexpected {unexpected[:5]})")
    return ae.eval(), cfg, scale


def export_vq_diffusers(ae, latent_scale: float, path: str | Path) -> Path:
    """Our VQ model as a `VQModel` folder (`scaling_factor` = latent scale), when it maps exactly."""
    cfg = ae.cfg
    if cfg.quantizer.l2_normalize:
        raise NotRepresentableError("a VQ model with quantizer.l2_normalize looks codes up by cosine similarity; "
                                    "diffusers' VQModel uses Euclidean distance, so it cannot be exported as one")
    name, kwargs = _diffusers_kwargs(cfg)
    model = _class(name)(**kwargs, scaling_factor=float(latent_scale))
    state = {("quantize.embedding.weight" if k == "quantizer.codebook" else k): v.detach().float()
             for k, v in ae.state_dict().items() if not (k.startswith("quantizer.") and k != "quantizer.codebook")}
    model.load_state_dict(state, strict=True)
    model.save_pretrained(str(path), safe_serialization=True)
    return Path(path)


__all__ = ["STAGE1_CLASSES", "NotRepresentableError", "is_diffusers_stage1", "config_from_diffusers",
           "load_diffusers_stage1", "export_vq_diffusers", "config_differences"]
