"""One-line errors (issue 11): a user's mistake in an `ldm` verb ends with exit code 2 and exactly one
line on stderr that says what is wrong and what to do; no traceback unless `--debug`.

Each case runs the real command in a subprocess (`python -m ldm_system.cli`), as a user would.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
LDM_CONFIG = ROOT / "configs" / "ldm" / "fmnist-debug.yaml"


def ldm(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "ldm_system.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _images(folder: Path, n: int = 3) -> Path:
    folder.mkdir()
    for i in range(n):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / f"{i}.png")
    return folder


def _packed(tmp: Path) -> Path:
    from ldm_system.data.pack import pack

    out = tmp / "shards"
    pack(str(_images(tmp / "src")), out, image_size=8, channels=1)
    return out


def case_pack_into_existing(tmp: Path) -> list[str]:
    shards = _packed(tmp)
    return ["data", "pack", str(tmp / "src"), str(shards)]


def case_encode_into_existing(tmp: Path) -> list[str]:
    shards = _packed(tmp)
    return ["data", "encode", "--autoencoder", str(tmp / "ae"), str(shards), str(shards)]


def case_full_disk(tmp: Path) -> list[str]:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full to make a write fail with ENOSPC")
    out = tmp / "out"
    out.mkdir()
    # The manifest is written to manifest.json.tmp and renamed; every write to /dev/full fails
    # with ENOSPC, a real full-disk error from the kernel, without filling a real disk.
    (out / "manifest.json.tmp").symlink_to("/dev/full")
    return ["data", "pack", str(_images(tmp / "src")), str(out), "--image-size", "8"]


def case_truncated_weights(tmp: Path) -> list[str]:
    from autoencoders.config import AutoencoderConfig
    from autoencoders.io import FORMAT_VERSION, META_FILE, WEIGHTS_FILE

    ae = tmp / "ae"
    ae.mkdir()
    cfg = AutoencoderConfig(in_channels=1, channels=(32,), f=1, latent_channels=1, layers_per_block=1,
                            mid_attention=False)
    meta = {"format": FORMAT_VERSION, "kind": "kl", "config": asdict(cfg), "latent_scale": 1.0}
    (ae / META_FILE).write_text(json.dumps(meta))
    save_file({"w": torch.zeros(1000)}, str(ae / WEIGHTS_FILE))
    data = (ae / WEIGHTS_FILE).read_bytes()
    (ae / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])  # a download cut in the middle
    return ["eval-ae", "--autoencoder", str(ae), str(tmp)]


def case_missing_pack_source(tmp: Path) -> list[str]:
    return ["data", "pack", str(tmp / "nowhere"), str(tmp / "out")]


def case_missing_autoencoder(tmp: Path) -> list[str]:
    return ["eval-ae", "--autoencoder", str(tmp / "nowhere"), str(tmp)]


def case_missing_config(tmp: Path) -> list[str]:
    return ["train", "--config", str(tmp / "nowhere.yaml")]


def case_bad_config_key(tmp: Path) -> list[str]:
    return ["train", "--config", str(LDM_CONFIG), "--set", "train.stepz=10"]


def case_out_of_range_value(tmp: Path) -> list[str]:
    return ["train", "--config", str(LDM_CONFIG), "--set", "train.steps=0"]


def case_bad_yaml(tmp: Path) -> list[str]:
    (tmp / "bad.yaml").write_text("train:\n  steps: [1,\n")  # the parser's message has several lines
    return ["train", "--config", str(tmp / "bad.yaml")]


def case_missing_argument(tmp: Path) -> list[str]:
    return ["data", "pack", str(tmp)]


# (case, words the one line must hold[, "slow"])
CASES = [
    (case_pack_into_existing, ["ldm data pack: error:", "already holds shards", "--overwrite"]),
    (case_encode_into_existing, ["ldm data encode: error:", "already holds shards", "--overwrite"]),
    (case_full_disk, ["ldm data pack: error: no space left", "out", "bytes free"]),
    # eval-ae imports the autoencoder stack (diffusers): ~7 s of CPU, slow-marked.
    (case_truncated_weights, ["ldm eval-ae: error:", "model.safetensors is damaged", "export it again"], "slow"),
    (case_missing_pack_source, ["ldm data pack: error:", "nowhere", "neither a folder nor a built-in"]),
    (case_missing_autoencoder, ["ldm eval-ae: error:", "nowhere", "not an autoencoder checkpoint"], "slow"),
    (case_missing_config, ["ldm train: error:", "config file not found", "nowhere.yaml"]),
    (case_bad_config_key, ["ldm train: error:", "unknown key 'train.stepz'", "valid keys:"]),
    (case_out_of_range_value, ["ldm train: error:", "train.steps = 0 is out of range: must be >= 1"]),
    (case_bad_yaml, ["ldm train: error:", "bad.yaml: not valid YAML"]),
    (case_missing_argument, ["ldm data pack: error:", "required: out_dir", "--help"]),
]


PARAMS = [pytest.param(c[0], c[1], id=c[0].__name__.removeprefix("case_"),
                       marks=[pytest.mark.slow] if c[2:] == ("slow",) else []) for c in CASES]


@pytest.mark.parametrize("case,words", PARAMS)
def test_user_mistakes_are_one_line_and_exit_2(case, words, tmp_path: Path) -> None:
    result = ldm(tmp_path, *case(tmp_path))
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = ldm(tmp_path, "--debug", *case_missing_config(tmp_path))
    assert result.returncode == 1 and "Traceback" in result.stderr and "ConfigError" in result.stderr


def _pixel_run(tmp: Path) -> list[str]:
    """`ldm train` on tiny 8x8 grey image shards, pixel space (no autoencoder needed)."""
    return ["train", "--config", str(LDM_CONFIG), "--set", f"data.shards={_packed(tmp)}", "--set",
            "unet.in_channels=1", "--set", f"train.out_dir={tmp / 'run'}", "--set", "train.steps=1"]


@pytest.mark.parametrize("extra_env, args, words", [
    ({"ACCELERATE_MIXED_PRECISION": "bf16"}, ["--set", "train.mixed_precision=fp16"],
     ["ldm train: error:", "train.mixed_precision is 'fp16' in the config but the launcher says 'bf16'"]),
    ({}, ["--resume", "no-such-checkpoint"],
     ["ldm train: error:", "--resume no-such-checkpoint: no such checkpoint folder", "--resume latest"]),
], ids=["launcher_conflict", "missing_resume_folder"])
def test_training_mistakes_are_one_line(extra_env, args, words, tmp_path: Path, monkeypatch) -> None:
    for k, v in extra_env.items():
        monkeypatch.setenv(k, v)
    result = ldm(tmp_path, *_pixel_run(tmp_path), *args)
    errors = [l for l in result.stderr.splitlines() if "error" in l.lower()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], errors[0]
