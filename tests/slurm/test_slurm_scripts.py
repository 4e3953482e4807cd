"""Cheap checks of the SLURM scripts for the default suite: they parse, and the sbatch keeps its preemption contract.

The real cluster run is tests/slurm/test_slurm_preemption.py (slow).
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "launch" / "slurm" / "train.sbatch"
CLUSTER = ROOT / "launch" / "slurm" / "local_cluster.sh"


@pytest.mark.parametrize("script", [SBATCH, CLUSTER], ids=lambda p: p.name)
def test_scripts_parse(script):
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_sbatch_preemption_directives():
    directives = re.findall(r"^#SBATCH\s+(\S+)", SBATCH.read_text(), flags=re.M)
    for d in ("--signal=USR1@90", "--requeue", "--open-mode=append", "--ntasks-per-node=1"):
        assert d in directives, f"train.sbatch lacks #SBATCH {d}"


def test_sbatch_contract():
    text = SBATCH.read_text()
    assert "trap '' USR1" in text  # the batch shell must survive `scancel --signal=USR1 --full`
    assert "--resume latest" in text
    assert "LDM_EXIT_STATUS_FILE" in text and 'scontrol requeue "$SLURM_JOB_ID"' in text
    assert "NodeAddr" in text  # master address from the node record, not from resolving its name


def test_local_cluster_usage():
    out = subprocess.run(["bash", str(CLUSTER)], capture_output=True, text=True)
    assert out.returncode == 2 and "up|down|status" in out.stderr
