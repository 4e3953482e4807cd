"""The allowed range of every numeric config value, in one table.

`ldm_system.config.load_config` / `from_dict` consult this table (as `CHECKS`, passed in by the
top-level loaders: the CLI, the demo, benchmarks) while they read a YAML file or `--set` overrides,
so a value that would make no work (or nonsense) fails before anything is built, with the full
dotted key, the file, the value and what is allowed:

    configs/ldm/fmnist-kl-f4.yaml: train.steps = 0 is out of range: must be >= 1

Two kinds of entries:

- `RANGES[cls][field]`: an interval for one numeric field of dataclass `cls` (for a tuple field,
  for each item). `None` in an optional field is not checked. NaN and ±inf are never in range.
- `RELATIONS[cls]`: checks between fields that the config alone can decide, e.g. that a UNet's
  sample size is divisible by its downsampling. Each names the fields it reads (a test keeps those
  names honest) and returns what is wrong, or None.

Checks that need data (a shard manifest, a checkpoint, a text model) stay where that data is read.
The dataclasses' own `__post_init__` checks stay too: they guard configs built in code; for YAML
the table is checked first, so its message is the one a user sees.

Why a module of its own: the table names the config classes by type, so it imports the modules that
define them (data, models, diffusion, train, baselines, autoencoders). `ldm_system.config` sits
below all of them and imports nothing of ours, so the table travels the other way: a loader at the
top passes `checks=CHECKS` to `load_config`.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autoencoders.config import (
    AutoencoderConfig,
    DiscriminatorConfig,
    LossConfig,
    QuantizerConfig,
    Stage1OptimConfig,
)
from ldm_system.baselines.ar_model import ARModelConfig
from ldm_system.baselines.autoregressive import AROptimConfig, ARPreviewConfig, ARRunConfig
from ldm_system.baselines.flow import FlowModelConfig, FlowOptimConfig, FlowPreviewConfig, FlowRunConfig
from ldm_system.baselines.gan import GANLossConfig, GANOptimConfig, GANPreviewConfig, GANRunConfig
from ldm_system.baselines.gan_models import GANModelConfig
from ldm_system.config import Checks
from ldm_system.data.pack import PackConfig
from ldm_system.data.stream import StreamConfig
from ldm_system.diffusion.config import DiffusionConfig
from ldm_system.models.text import TextEncoderConfig
from ldm_system.models.unet import UNetConfig
from ldm_system.train.diffusion_task import OptimConfig, PreviewConfig
from ldm_system.train.engine_config import (CheckpointConfig, EMAConfig, EngineConfig, FaultConfig, LogConfig,
                                             LRConfig)
from ldm_system.train.runs import AERunConfig, LDMRunConfig


@dataclass(frozen=True)
class Range:
    """lo <= value <= hi (strict with lo_open / hi_open); a missing bound is unbounded."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, value: Any) -> bool:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return False
        above = self.lo is None or (value > self.lo if self.lo_open else value >= self.lo)
        below = self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)
        return above and below

    def __str__(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return "a finite number"


AT_LEAST_1 = Range(1)  # steps, batch sizes, widths, counts of things that must exist
AT_LEAST_2 = Range(2)
NON_NEGATIVE = Range(0)  # worker counts, seeds, weights, "0 = off" intervals
POSITIVE = Range(0, lo_open=True)  # learning rates, epsilons, scales
PROBABILITY = Range(0, 1)
DECAY = Range(0, 1, hi_open=True)  # EMA decay, Adam betas: 1 would never move
OPEN_UNIT = Range(0, 1, lo_open=True, hi_open=True)
PORT = Range(1, 65535)  # for network ports, should a config ever hold one

RANGES: dict[type, dict[str, Range]] = {
    # ---- data -----------------------------------------------------------------------------
    StreamConfig: {
        "batch_size": AT_LEAST_1,
        "num_workers": NON_NEGATIVE,
        "image_size": AT_LEAST_1,
        "shuffle_buffer": NON_NEGATIVE,
        "seed": NON_NEGATIVE,
        "prefetch_factor": AT_LEAST_1,
        "keep_tags": NON_NEGATIVE,
    },
    PackConfig: {
        "shard_size": AT_LEAST_1,
        "image_size": AT_LEAST_1,
        "seed": NON_NEGATIVE,
        "limit": AT_LEAST_1,
        "num_samples": AT_LEAST_1,
        "bucket_step": AT_LEAST_1,
        "max_aspect": Range(lo=1.0),
    },
    # ---- the engine (the micro-batch is data.batch_size; precision is a Literal) ----------
    EngineConfig: {
        "steps": AT_LEAST_1,
        "grad_accum": AT_LEAST_1,
        "max_grad_norm": NON_NEGATIVE,  # 0 disables clipping
        "max_minutes": NON_NEGATIVE,  # 0 = no budget
        "seed": NON_NEGATIVE,
    },
    LRConfig: {"warmup_steps": NON_NEGATIVE, "min_ratio": PROBABILITY},
    EMAConfig: {"decay": DECAY},
    CheckpointConfig: {
        "every": NON_NEGATIVE,  # 0 = only at the end
        "keep_last": NON_NEGATIVE,  # 0 = keep all
    },
    LogConfig: {
        "every": AT_LEAST_1,
        "preview_every": NON_NEGATIVE,  # 0 = only at the end
    },
    FaultConfig: {
        "max_nan_steps": AT_LEAST_1,  # 0 would stop on the first step
        "dist_timeout_s": POSITIVE,  # a collective that never times out hangs on a dead machine
    },
    # ---- stage 1 --------------------------------------------------------------------------
    AERunConfig: {"scale_batches": AT_LEAST_1},
    AutoencoderConfig: {
        "channels": AT_LEAST_1,
        "f": AT_LEAST_1,
        "latent_channels": AT_LEAST_1,
        "layers_per_block": AT_LEAST_1,
        "norm_groups": AT_LEAST_1,
    },
    QuantizerConfig: {
        "codebook_size": AT_LEAST_2,
        "beta": NON_NEGATIVE,
        "ema_decay": OPEN_UNIT,
        "ema_eps": POSITIVE,
        "restart_after": NON_NEGATIVE,
    },
    LossConfig: {
        "rec_weight": NON_NEGATIVE,
        "kl_weight": NON_NEGATIVE,
        "codebook_weight": NON_NEGATIVE,
        "perceptual_weight": NON_NEGATIVE,
        "disc_weight": NON_NEGATIVE,
        "disc_start": NON_NEGATIVE,
        "max_adaptive_weight": POSITIVE,
        "reg_weight": NON_NEGATIVE,
        "lecam_decay": OPEN_UNIT,
    },
    DiscriminatorConfig: {"channels": AT_LEAST_1, "n_layers": AT_LEAST_1},
    Stage1OptimConfig: {"ae_lr": POSITIVE, "disc_lr": POSITIVE, "betas": DECAY, "weight_decay": NON_NEGATIVE},
    # ---- stage 2 --------------------------------------------------------------------------
    UNetConfig: {
        "sample_size": AT_LEAST_1,
        "in_channels": AT_LEAST_1,
        "block_out_channels": AT_LEAST_1,
        "layers_per_block": AT_LEAST_1,
        "attention_head_dim": AT_LEAST_1,
        "norm_num_groups": AT_LEAST_1,
        "num_classes": NON_NEGATIVE,
        "cross_attention_dim": NON_NEGATIVE,
        "dropout": DECAY,
    },
    DiffusionConfig: {
        "num_train_timesteps": AT_LEAST_2,
        "beta_start": OPEN_UNIT,
        "beta_end": OPEN_UNIT,
        "min_snr_gamma": POSITIVE,
        "offset_noise": NON_NEGATIVE,
        "cond_drop_prob": PROBABILITY,
    },
    OptimConfig: {"lr": POSITIVE, "weight_decay": NON_NEGATIVE, "betas": DECAY, "eps": POSITIVE},
    PreviewConfig: {"num_images": AT_LEAST_1, "steps": AT_LEAST_1, "guidance": NON_NEGATIVE, "seed": NON_NEGATIVE},
    TextEncoderConfig: {"max_length": AT_LEAST_2},  # start and end tokens
    # ---- baselines ------------------------------------------------------------------------
    GANModelConfig: {
        "image_size": Range(8),
        "channels": AT_LEAST_1,
        "z_dim": AT_LEAST_1,
        "num_classes": NON_NEGATIVE,
        "class_embed_dim": AT_LEAST_1,
        "gen_channels": AT_LEAST_1,
        "disc_channels": AT_LEAST_1,
    },
    GANLossConfig: {"r1_gamma": NON_NEGATIVE, "r1_every": AT_LEAST_1},
    GANOptimConfig: {"gen_lr": POSITIVE, "disc_lr": POSITIVE, "betas": DECAY, "eps": POSITIVE},
    GANPreviewConfig: {"num_images": AT_LEAST_1, "seed": NON_NEGATIVE, "bn_batches": AT_LEAST_1},
    GANRunConfig: {"bn_batches": AT_LEAST_1},
    FlowModelConfig: {
        "channels": AT_LEAST_1,
        "image_size": AT_LEAST_1,
        "levels": AT_LEAST_1,
        "steps": AT_LEAST_1,
        "hidden": AT_LEAST_1,
        "input_scale": POSITIVE,
        "sample_temperature": NON_NEGATIVE,  # 0 samples the prior means
    },
    FlowOptimConfig: {"lr": POSITIVE, "betas": DECAY, "eps": POSITIVE, "weight_decay": NON_NEGATIVE},
    FlowPreviewConfig: {"num_images": AT_LEAST_1, "temperature": NON_NEGATIVE, "seed": NON_NEGATIVE},
    FlowRunConfig: {"init_batches": NON_NEGATIVE},  # 0 = lazy ActNorm init
    ARModelConfig: {
        "channels": AT_LEAST_1,
        "image_size": AT_LEAST_1,
        "width": AT_LEAST_1,
        "depth": AT_LEAST_1,
        "heads": AT_LEAST_1,
        "mlp_ratio": POSITIVE,
        "num_classes": NON_NEGATIVE,
    },
    AROptimConfig: {
        "lr": POSITIVE,
        "weight_decay": NON_NEGATIVE,
        "betas": DECAY,
        "eps": POSITIVE,
        "cond_drop_prob": PROBABILITY,
    },
    ARPreviewConfig: {
        "num_images": AT_LEAST_1,
        "temperature": POSITIVE,  # logits are divided by it
        "top_k": Range(0, 256),  # 0 = all 256 byte values
        "seed": NON_NEGATIVE,
    },
}


# ---- relations between fields ------------------------------------------------------------------
Key = Callable[[str], str]  # field path below the dataclass -> full dotted key ("unet.sample_size")


@dataclass(frozen=True)
class Relation:
    """`check(values, key)` gets the dataclass's field values (a dict, defaults filled in) and `key`
    to spell full dotted names; it returns what is wrong, or None. `fields` are the fields it reads."""

    fields: tuple[str, ...]
    check: Callable[[dict[str, Any], Key], str | None]


def _unet_downsampling(v: dict[str, Any], key: Key) -> str | None:
    # diffusers' UNet halves the resolution after every level but the last.
    down = 2 ** (len(v["block_out_channels"]) - 1)
    if v["sample_size"] % down:
        return (f"{key('sample_size')} = {v['sample_size']} is not divisible by {down}, the UNet's downsampling "
                f"(2 ** (len({key('block_out_channels')}) - 1))")
    return None


def _ae_levels(v: dict[str, Any], key: Key) -> str | None:
    expected = 2 ** (len(v["channels"]) - 1)
    if v["f"] != expected:
        return (f"{key('f')} = {v['f']} does not match {key('channels')}: {len(v['channels'])} levels "
                f"downsample by 2 ** {len(v['channels']) - 1} = {expected}")
    return None


def _ae_image_size(v: dict[str, Any], key: Key) -> str | None:
    size, f = v["data"].image_size, v["model"].f
    if size is not None and size % f:
        return (f"{key('data.image_size')} = {size} is not divisible by {key('model.f')} = {f}, "
                "the autoencoder's downsampling")
    return None


def _gan_power_of_two(v: dict[str, Any], key: Key) -> str | None:
    size = v["image_size"]
    if size & (size - 1):  # G starts at 4x4 and doubles
        return f"{key('image_size')} = {size} must be a power of two (the generator doubles from 4x4)"
    return None


def _flow_squeezes(v: dict[str, Any], key: Key) -> str | None:
    down = 2 ** v["levels"]
    if v["image_size"] % down:
        return (f"{key('image_size')} = {v['image_size']} is not divisible by {down} "
                f"(each of the {key('levels')} = {v['levels']} levels halves it)")
    return None


def _ar_heads(v: dict[str, Any], key: Key) -> str | None:
    if v["width"] % v["heads"]:
        return f"{key('width')} = {v['width']} is not divisible by {key('heads')} = {v['heads']}"
    return None


def _preview_fits_unet(v: dict[str, Any], key: Key) -> str | None:
    """preview.classes for class models only (ids below unet.num_classes), preview.prompts for text models."""
    preview, unet = v["preview"], v["unet"]
    if unet == UNetConfig():  # no unet: section: `--init-from` brings the model, checked when the run starts
        return None
    if preview.classes and unet.conditioning != "class":
        return f"{key('preview.classes')} is set but {key('unet.conditioning')} = {unet.conditioning!r}, not 'class'"
    if preview.prompts and unet.conditioning != "text":
        return f"{key('preview.prompts')} is set but {key('unet.conditioning')} = {unet.conditioning!r}, not 'text'"
    ids = [c for c in preview.classes if isinstance(c, int) or c.lstrip("-").isdigit()]
    if bad := [c for c in ids if not 0 <= int(c) < unet.num_classes]:
        return f"{key('preview.classes')} has class id {bad[0]}; ids are 0..{unet.num_classes - 1} ({key('unet.num_classes')})"
    return None


def _data_fits_model(v: dict[str, Any], key: Key) -> str | None:
    """Baselines: a size or channel count forced on the data must be the model's."""
    data, model = v["data"], v["model"]
    if data.image_size is not None and data.image_size != model.image_size:
        return f"{key('data.image_size')} = {data.image_size} but {key('model.image_size')} = {model.image_size}"
    if data.channels is not None and data.channels != model.channels:
        return f"{key('data.channels')} = {data.channels} but {key('model.channels')} = {model.channels}"
    return None


RELATIONS: dict[type, tuple[Relation, ...]] = {
    UNetConfig: (Relation(("sample_size", "block_out_channels"), _unet_downsampling),),
    AutoencoderConfig: (Relation(("f", "channels"), _ae_levels),),
    AERunConfig: (Relation(("data", "model"), _ae_image_size),),
    GANModelConfig: (Relation(("image_size",), _gan_power_of_two),),
    FlowModelConfig: (Relation(("image_size", "levels"), _flow_squeezes),),
    ARModelConfig: (Relation(("width", "heads"), _ar_heads),),
    GANRunConfig: (Relation(("data", "model"), _data_fits_model),),
    FlowRunConfig: (Relation(("data", "model"), _data_fits_model),),
    ARRunConfig: (Relation(("data", "model"), _data_fits_model),),
    LDMRunConfig: (Relation(("preview", "unet"), _preview_fits_unet),),
}


def range_problem(cls: type, name: str, value: Any, key: str) -> str | None:
    """What is wrong with `value` for field `name` of `cls` (spelled `key`), or None."""
    allowed = RANGES.get(cls, {}).get(name)
    if allowed is None or value is None:
        return None
    items = list(enumerate(value)) if isinstance(value, (tuple, list)) else [(None, value)]
    for i, item in items:
        if item not in allowed:
            where = key if i is None else f"{key}[{i}]"
            return f"{where} = {item!r} is out of range: must be {allowed}"
    return None


def relation_problems(cls: type, given: dict[str, Any], where: str) -> list[str]:
    """What the field relations of `cls` find wrong, with `given` (the values read, already coerced)
    completed by the defaults. A relation reading a missing required field is left to the class."""
    relations = RELATIONS.get(cls, ())
    if not relations:
        return []
    values = dict(given)
    for f in dataclasses.fields(cls):
        if f.name not in values and f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.name not in values and f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()

    def key(path: str) -> str:
        return f"{where}.{path}" if where else path

    found = (rel.check(values, key) for rel in relations if all(f in values for f in rel.fields))
    return [p for p in found if p]


# What the top-level loaders pass to `ldm_system.config.load_config(..., checks=CHECKS)`.
CHECKS = Checks(range_problem, relation_problems)
