"""Strict YAML → frozen dataclass loading, overrides, and the resolved dump."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from ldm_system.config import ConfigError, dump_config, load_config
from ldm_system.train.engine_config import EngineConfig


@dataclass(frozen=True)
class Opt:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass(frozen=True)
class Root:
    name: str = "run"
    steps: int = 10
    mode: Literal["a", "b"] = "a"
    channels: tuple[int, ...] = (32, 64)
    resume: str | None = None
    opt: Opt = field(default_factory=Opt)


@dataclass(frozen=True)
class EngineRun:  # the engine's part of every run config
    train: EngineConfig = field(default_factory=EngineConfig)


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_loads_nested_values(tmp_path):
    cfg = load_config(Root, _write(tmp_path, "steps: 5\nopt:\n  lr: 3\nchannels: [8, 16, 32]\n"))
    assert cfg == Root(steps=5, opt=Opt(lr=3.0), channels=(8, 16, 32))
    assert isinstance(cfg.opt.lr, float)


def test_unknown_key_names_key_file_and_valid_keys(tmp_path):
    p = _write(tmp_path, "opt:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(Root, p)
    msg = str(e.value)
    assert "opt.lrr" in msg and str(p) in msg and "valid keys: betas, lr" in msg


def test_engine_keys_of_the_flat_layout_name_their_new_place(tmp_path):
    """train: is split by concern; a user's old config fails with the key to write instead."""
    from ldm_system.config_ranges import CHECKS

    p = _write(tmp_path, "train:\n  steps: 4\n  ema_decay: 0.99\n")
    with pytest.raises(ConfigError, match=r"key 'train.ema_decay' has moved to 'train.ema.decay'") as e:
        load_config(EngineRun, p, checks=CHECKS)
    assert e.value.key == "train.ema_decay" and str(p) in str(e.value)
    with pytest.raises(ConfigError, match=r"'train.ckpt_every' has moved to 'train.checkpoint.every'"):
        load_config(EngineRun, None, ["train.ckpt_every=5"], checks=CHECKS)
    cfg = load_config(EngineRun, _write(tmp_path, "train:\n  ema: {module: unet, decay: 0.99}\n"),
                      ["train.checkpoint.every=5", "train.lr.schedule=cosine"], checks=CHECKS)
    assert (cfg.train.ema.decay, cfg.train.checkpoint.every, cfg.train.lr.schedule) == (0.99, 5, "cosine")
    with pytest.raises(ConfigError, match=r"train.ema.decay = 1.0 is out of range"):
        load_config(EngineRun, None, ["train.ema.decay=1.0"], checks=CHECKS)


def test_wrong_type_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="steps must be an integer, got str"):
        load_config(Root, _write(tmp_path, "steps: ten\n"))
    with pytest.raises(ConfigError, match="mode must be one of"):
        load_config(Root, _write(tmp_path, "mode: c\n"))
    with pytest.raises(ConfigError, match=r"opt.betas must have 2 items"):
        load_config(Root, _write(tmp_path, "opt:\n  betas: [0.9]\n"))
    with pytest.raises(ConfigError, match="must be a number"):
        load_config(Root, _write(tmp_path, "opt:\n  lr: true\n"))


def test_overrides(tmp_path):
    cfg = load_config(Root, _write(tmp_path, "steps: 5\n"), ["opt.lr=1e-3", "steps=7", "resume=null", "name=x y"])
    assert cfg.opt.lr == 1e-3 and cfg.steps == 7 and cfg.resume is None and cfg.name == "x y"
    with pytest.raises(ConfigError, match="unknown key 'opt.beta'"):
        load_config(Root, None, ["opt.beta=1"])
    with pytest.raises(ConfigError, match="must look like"):
        load_config(Root, None, ["steps"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Root, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Root, _write(tmp_path, "a: [1,\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Root, _write(tmp_path, "- 1\n"))


def test_dump_round_trips(tmp_path):
    cfg = Root(steps=3, opt=Opt(lr=0.5))
    dump_config(cfg, tmp_path / "out.yaml")
    assert yaml.safe_load((tmp_path / "out.yaml").read_text())["opt"]["lr"] == 0.5
    assert load_config(Root, tmp_path / "out.yaml") == cfg
