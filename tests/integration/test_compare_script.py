"""`launch/compare.sh` as a user runs it, in four passes at tiny budgets: the comparison grows (the VAE
alone, a family with its own stage 1, then another seed), a pass skips what an earlier one saved, and the
report's score cache makes a repeated report sample nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _compare(tmp_path: Path, **env: str) -> str:
    ldm = Path(sys.executable).parent / "ldm"
    full = {**os.environ, "WORK": str(tmp_path / "work"), "OUT": str(tmp_path / "report"), "LDM": str(ldm),
            "TRAIN_LIMIT": "300", "NUM": "16", "LDM_STEPS": "2", "AE_MINUTES": "0.05", **env}
    proc = subprocess.run(["bash", str(ROOT / "launch" / "compare.sh")], env=full, cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_compare_grows_pass_by_pass(tmp_path):
    work, report = tmp_path / "work", tmp_path / "report"
    # pass 0: the VAE alone (a stage 1, no budgets, no models yet), models only
    out = _compare(tmp_path, FAMILIES="vae", BUDGETS="0.05", REPORT="0")
    assert (work / "stage1-vae" / "autoencoder").is_dir() and not list((work / "models").iterdir())
    # pass 1: the GAN and the f = 8 LDM (its own KL-f8 stage 1 and latents), models only
    out = _compare(tmp_path, FAMILIES="gan ldm-f8", BUDGETS="0.05 0.1", REPORT="0")
    saved = sorted(p.name for p in (work / "models").iterdir())
    assert saved == ["gan@0.05", "gan@0.1", "ldm-f8@0.05", "ldm-f8@0.1"] and not (report / "report.md").exists()
    assert all((work / "models" / m / ".complete").exists() for m in saved)
    assert (work / "stage1-f8" / "autoencoder").is_dir() and (work / "latents-f8" / "manifest.json").exists()
    assert "train.budget_clock=cpu" in out and "REPORT=0: no report" in out
    # the second budget resumed the first: the GAN's optimizer steps only grow
    steps = [json.loads((work / "models" / m / "baseline.json").read_text())["step"] for m in ("gan@0.05", "gan@0.1")]
    assert 0 < steps[0] < steps[1]

    # pass 2: another GAN seed, then the report over every saved model (pass 1's included)
    out = _compare(tmp_path, FAMILIES="gan", BUDGETS="0.1", SEEDS="1")
    assert (work / "models" / "gan@0.1#1" / ".complete").exists() and "runs/gan#1" in out
    md = (report / "report.md").read_text()
    for name in ("gan@0.05", "gan@0.1", "gan@0.1#1", "ldm-f8@0.1", "vae-elbo"):
        assert f"| {name} |" in md
    assert "## Training stability: FD across seeds" in md and "| gan | 0.1 | 2 |" in md
    assert len(list((work / "scores").glob("*.pt"))) == 6  # six models, one sampling setting each

    # pass 3: the same again trains nothing and samples nothing
    out = _compare(tmp_path, FAMILIES="gan", BUDGETS="0.1", SEEDS="1")
    assert "= gan@0.1#1: saved by an earlier pass" in out and "train-baseline" not in out
    assert out.count("score read from the cache") == 6
    assert (report / "commands.txt").read_text().count("# pass of ") == 4
