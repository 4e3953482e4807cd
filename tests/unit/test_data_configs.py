"""The shipped data configs fill DataConfig strictly and name a usable stream setup."""
from __future__ import annotations

from pathlib import Path

import pytest

from ldm_system.config import load_config
from ldm_system.data.data_config import DataConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "data"


@pytest.mark.parametrize("name,src", [("fashion-mnist", "builtin:fashion-mnist"),
                                                ("photos", "builtin:photos")])
def test_data_configs_load(name: str, src: str) -> None:
    cfg = load_config(DataConfig, str(CONFIGS / f"{name}.yaml"), ["stream.batch_size=7"])
    assert cfg.pack.src == src
    assert cfg.stream.batch_size == 7
    assert cfg.stream.shards == cfg.pack.out_dir  # streams what it packs
    assert cfg.stream.image_size == cfg.pack.image_size
