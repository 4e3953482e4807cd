"""Stage-1 configs: presets, YAML files that mirror them exactly, and validation messages."""
from dataclasses import fields, is_dataclass
from pathlib import Path
import typing

import pytest
import yaml

from autoencoders.config import (
    PRESETS,
    AutoencoderConfig,
    DiscriminatorConfig,
    LossConfig,
    QuantizerConfig,
    Stage1Config,
    Stage1OptimConfig,
    preset,
)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "autoencoder"


def strict_build(cls, data: dict, where: str = ""):
    """A minimal strict YAML -> nested frozen dataclass mapping (as the engine's loader does)."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    assert not unknown, f"unknown keys {unknown} in {where or cls.__name__}"
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if is_dataclass(hint) and isinstance(value, dict):
            value = strict_build(hint, value, f"{where}.{key}")
        kwargs[key] = value
    return cls(**kwargs)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_yaml_matches_preset_exactly(name):
    data = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    assert set(data) == {"model", "loss", "disc", "optim"}
    cfg = strict_build(Stage1Config, data)
    assert cfg == preset(name)


def test_every_preset_has_a_yaml():
    assert set(PRESETS) <= {p.stem for p in CONFIG_DIR.glob("*.yaml")}


SECTIONS = {"model": AutoencoderConfig, "loss": LossConfig, "disc": DiscriminatorConfig, "optim": Stage1OptimConfig}


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_stage1_sections_of_every_yaml_are_valid(path):
    """Run configs (with engine sections next to ours) must still fill our dataclasses strictly."""
    data = yaml.safe_load(path.read_text())
    for key, cls in SECTIONS.items():
        if key in data:
            strict_build(cls, data[key], f"{path.name}:{key}")


def test_presets_sizes():
    assert preset("kl-f4").model.f == 4 and preset("kl-f8").model.f == 8
    assert preset("vq-f4").model.kind == "vq" and preset("vq-f4").model.quantizer.codebook_size == 8192
    for name in ("kl-f4-debug", "kl-f8-debug", "vq-f4-debug"):
        assert max(preset(name).model.channels) <= 32


def test_lists_become_tuples():
    cfg = AutoencoderConfig(channels=[32, 64], f=2, norm_groups=32)
    assert cfg.channels == (32, 64)
    assert Stage1OptimConfig(betas=[0.5, 0.9]).betas == (0.5, 0.9)
    hash(cfg)  # frozen and hashable


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: AutoencoderConfig(channels=(32, 64, 64), f=8), "does not match"),
        (lambda: AutoencoderConfig(kind="vqgan"), "model.kind"),
        (lambda: AutoencoderConfig(in_channels=4), "in_channels"),
        (lambda: AutoencoderConfig(channels=(48, 64, 64), f=4, norm_groups=32), "norm_groups"),
        (lambda: QuantizerConfig(codebook_size=1), "codebook_size"),
        (lambda: QuantizerConfig(ema_decay=1.0), "ema_decay"),
        (lambda: LossConfig(rec="huber"), "loss.rec"),
        (lambda: LossConfig(perceptual="vgg"), "loss.perceptual"),
        (lambda: LossConfig(reg="r1"), "reg_weight"),
        (lambda: LossConfig(kl_weight=-1.0), "kl_weight"),
        (lambda: DiscriminatorConfig(norm="layer"), "disc.norm"),
        (lambda: Stage1OptimConfig(betas=(0.5, 1.5)), "betas"),
    ],
)
def test_bad_values_raise_clear_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_unknown_preset():
    with pytest.raises(KeyError, match="kl-f4-debug"):
        preset("kl-f16")
