"""`ldm train-baseline` and `ldm report` from the command line: two families trained with their
debug configs on real Fashion-MNIST, then one report over both (the same code path as the README)."""
from __future__ import annotations

import json

import pytest

from ldm_fixtures import ROOT
from ldm_system.cli import main

CONFIGS = ROOT / "configs" / "baselines"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from ldm_system.data.pack import pack

    root = tmp_path_factory.mktemp("baseline-cli")
    pack("builtin:fashion-mnist", root / "test", image_size=32, split="test", limit=128, shard_size=64)
    return root


def test_train_two_families_then_report(shards, capsys):
    for family in ("gan", "flow"):
        rc = main(["train-baseline", family, "--config", str(CONFIGS / f"{family}-debug.yaml"),
                   "--set", f"data.shards={shards / 'test'}", "--set", f"train.out_dir={shards / family}",
                   "--set", "train.steps=2"])
        assert rc == 0 and (shards / family / "model" / "baseline.json").exists()
        assert json.loads((shards / family / "model" / "baseline.json").read_text())["family"] == family
    out = shards / "report"
    rc = main(["report", f"gan={shards / 'gan'}", f"flow={shards / 'flow' / 'model'}", "--test-shards",
               str(shards / "test"), "--num", "24", "--bpd-images", "16", "--out", str(out)])
    assert rc == 0
    rows = {r["name"]: r for r in json.loads((out / "report.json").read_text())["rows"]}
    assert set(rows) == {"gan", "flow"} and rows["gan"]["family"] == "gan"
    assert rows["gan"]["bits_per_dim"] is None  # no likelihood for a GAN
    assert 0 < rows["flow"]["bits_per_dim"] < 16 and rows["flow"]["fd"] > 0
    assert (out / "report.png").exists() and (out / "samples_flow.png").exists()
    assert "report.md" in capsys.readouterr().out


def test_bad_command_lines_exit_2(shards, capsys):
    assert main(["train-baseline", "gan", "--config", str(CONFIGS / "gan-debug.yaml"), "--set", "model.z_dimm=4"]) == 2
    assert "z_dimm" in capsys.readouterr().err
    assert main(["report", f"x={shards / 'nothing'}", "--test-shards", str(shards / "test")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", f"x={shards / 'test'}", "--test-shards", str(shards / "test")]) == 2  # shards, not a model
    assert "neither an `ldm export` folder" in capsys.readouterr().err
