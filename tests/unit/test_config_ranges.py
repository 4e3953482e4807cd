"""Every config value has its range (issue 11): the one table in ldm_system/config_ranges.py, checked
while YAML and `--set` overrides are read, with errors that name the dotted key, the file, the value
and the allowed range."""
from __future__ import annotations

import dataclasses
import re
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import pytest

from ldm_system.config import ConfigError, from_dict, load_config
from ldm_system.config_ranges import CHECKS, RANGES, RELATIONS, Range
from ldm_system.data.pack import PackConfig
from ldm_system.train.runs import AERunConfig, LDMRunConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
LDM = CONFIGS / "ldm" / "fmnist-debug.yaml"
AE = CONFIGS / "autoencoder" / "fmnist-kl-f4-debug.yaml"
GAN = CONFIGS / "baselines" / "gan-debug.yaml"
FLOW = CONFIGS / "baselines" / "flow-debug.yaml"
AR = CONFIGS / "baselines" / "ar-debug.yaml"


def _run_class(path: Path) -> type:
    from ldm_system.baselines.registry import lookup

    by_folder = {"ldm": LDMRunConfig, "autoencoder": AERunConfig}
    return by_folder.get(path.parent.name) or lookup(path.stem.rsplit("-", 1)[0]).config  # gan-fmnist → gan


def _numbers(tp: Any) -> bool:
    """Whether a field of type `tp` holds numbers (int, float, optional, or a tuple of them)."""
    if tp in (int, float):
        return True
    args = [a for a in get_args(tp) if a is not type(None) and a is not Ellipsis]
    if get_origin(tp) in (Union, types.UnionType, tuple, list):
        return bool(args) and all(_numbers(a) for a in args)
    return False


def test_every_table_entry_names_a_numeric_field_of_its_dataclass() -> None:
    for cls, entries in RANGES.items():
        assert dataclasses.is_dataclass(cls)
        hints = get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        for name, allowed in entries.items():
            assert name in names, f"{cls.__name__}.{name} is not a field"
            assert _numbers(hints[name]), f"{cls.__name__}.{name} is not numeric: {hints[name]}"
            assert isinstance(allowed, Range)
    for cls, relations in RELATIONS.items():
        names = {f.name for f in dataclasses.fields(cls)}
        for rel in relations:
            assert set(rel.fields) <= names, f"{cls.__name__}: {rel.fields}"


def test_the_defaults_are_in_range() -> None:
    for cls, entries in RANGES.items():
        for f in dataclasses.fields(cls):
            if f.name in entries and f.default is not dataclasses.MISSING and f.default is not None:
                values = f.default if isinstance(f.default, tuple) else (f.default,)
                assert all(v in entries[f.name] for v in values), f"{cls.__name__}.{f.name} = {f.default}"


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_is_in_range(path: Path) -> None:
    load_config(_run_class(path), path, ["data.shards=x"] if path.parent.name == "autoencoder" else [], checks=CHECKS)


def test_range_text_and_membership() -> None:
    assert str(Range(1)) == ">= 1" and str(Range(0, lo_open=True)) == "> 0"
    assert str(Range(0, 1)) == "in [0, 1]" and str(Range(0, 1, hi_open=True)) == "in [0, 1)"
    decay = Range(0, 1, hi_open=True)
    assert 0 in decay and 0.999 in decay and 1.0 not in decay and -0.1 not in decay
    assert float("nan") not in Range(0) and float("inf") not in Range(0) and True not in Range(0)


# (config, --set override, dotted key, shown value, allowed range or relation text)
BAD = [
    (LDM, "train.steps=0", "train.steps", "0", "must be >= 1"),
    (LDM, "train.steps=-5", "train.steps", "-5", "must be >= 1"),
    (LDM, "data.batch_size=0", "data.batch_size", "0", "must be >= 1"),
    (LDM, "data.num_workers=-1", "data.num_workers", "-1", "must be >= 0"),
    (LDM, "data.image_size=0", "data.image_size", "0", "must be >= 1"),
    (LDM, "optim.lr=0", "optim.lr", "0.0", "must be > 0"),
    (LDM, "optim.lr=.nan", "optim.lr", "nan", "must be > 0"),
    (LDM, "optim.betas=[0.9, 1.0]", "optim.betas[1]", "1.0", "must be in [0, 1)"),
    (LDM, "diffusion.cond_drop_prob=1.5", "diffusion.cond_drop_prob", "1.5", "must be in [0, 1]"),
    (LDM, "diffusion.num_train_timesteps=1", "diffusion.num_train_timesteps", "1", "must be >= 2"),
    (LDM, "train.ema.decay=1.0", "train.ema.decay", "1.0", "must be in [0, 1)"),
    (LDM, "train.grad_accum=0", "train.grad_accum", "0", "must be >= 1"),
    (LDM, "train.faults.max_nan_steps=0", "train.faults.max_nan_steps", "0", "must be >= 1"),
    (LDM, "unet.block_out_channels=[32, 0]", "unet.block_out_channels[1]", "0", "must be >= 1"),
    (LDM, "unet.sample_size=7", "unet.sample_size", "7", "not divisible by 2, the UNet's downsampling"),
    (LDM, "preview.steps=0", "preview.steps", "0", "must be >= 1"),
    (LDM, "text.max_length=1", "text.max_length", "1", "must be >= 2"),
    (AE, "data.image_size=30", "data.image_size", "30", "not divisible by model.f = 4"),
    (AE, "optim.ae_lr=-1e-4", "optim.ae_lr", "-0.0001", "must be > 0"),
    (AE, "model.quantizer.ema_decay=1", "model.quantizer.ema_decay", "1.0", "must be in (0, 1)"),
    (AE, "loss.kl_weight=-1", "loss.kl_weight", "-1.0", "must be >= 0"),
    (AE, "model.f=8", "model.f", "8", "does not match model.channels"),
    (GAN, "model.image_size=24", "model.image_size", "24", "must be a power of two"),
    (GAN, "data.image_size=16", "data.image_size", "16", "but model.image_size = 32"),
    (GAN, "optim.gen_lr=0", "optim.gen_lr", "0.0", "must be > 0"),
    (FLOW, "model.image_size=18", "model.image_size", "18", "not divisible by 4"),
    (AR, "model.heads=3", "model.width", "", "not divisible by model.heads = 3"),
    (AR, "optim.cond_drop_prob=-0.1", "optim.cond_drop_prob", "-0.1", "must be in [0, 1]"),
    (LDM, "data.prefetch_factor=0", "data.prefetch_factor", "0", "must be >= 1"),
]


@pytest.mark.parametrize("path,override,key,value,allowed", BAD, ids=[b[1] for b in BAD])
def test_out_of_range_values_name_key_file_value_and_range(path, override, key, value, allowed) -> None:
    extra = ["data.shards=x"] if path.parent.name == "autoencoder" else []
    with pytest.raises(ConfigError) as e:
        load_config(_run_class(path), path, [*extra, override], checks=CHECKS)
    msg = str(e.value)
    assert msg.startswith(f"{path}: {key}"), msg
    assert (f" = {value} " in msg if value else True) and allowed in msg, msg
    assert "\n" not in msg


def test_a_bad_value_in_the_file_itself(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  shards: x\ntrain:\n  steps: 0\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: train.steps = 0 is out of range: must be >= 1")):
        load_config(LDMRunConfig, path, checks=CHECKS)


def test_a_missing_required_key_says_how_to_give_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing required key 'data' in top level; .* --set data=..."):
        load_config(AERunConfig, CONFIGS / "autoencoder" / "kl-f4-debug.yaml", checks=CHECKS)


def test_a_value_from_set_says_so() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(LDMRunConfig, LDM, ["train.steps=0"], checks=CHECKS)
    assert str(e.value) == f"{LDM}: train.steps = 0 is out of range: must be >= 1 (given as --set train.steps=0)"


def test_pack_options_are_checked_from_a_mapping() -> None:
    # `ldm data pack` options are not read from YAML, but a mapping of them is checked the same way.
    with pytest.raises(ConfigError, match=re.escape("pack.json: shard_size = 0 is out of range: must be >= 1")):
        from_dict(PackConfig, {"src": "builtin:photos", "out_dir": "x", "shard_size": 0}, "pack.json", checks=CHECKS)


def test_without_the_table_only_types_are_checked() -> None:
    # The config reader sits at the bottom and imports no table: a loader that passes none gets types only.
    assert load_config(LDMRunConfig, LDM, ["train.steps=0"]).train.steps == 0
