"""The environment can load transformers models next to our `kernels` package."""
from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from ldm_system import deps

ROOT = Path(__file__).resolve().parents[2]


def test_no_foreign_kernels_distribution_installed():
    assert deps.foreign_kernels_version() is None, "launch/setup.sh should have removed Hugging Face's 'kernels'"


def test_transformers_model_builds_from_the_repository_root():
    """From the repo root our `kernels/` folder is first on sys.path, which is where the clash showed."""
    code = ("from transformers import CLIPTextConfig, CLIPTextModel\n"
            "CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=8, num_attention_heads=2, "
            "num_hidden_layers=1, vocab_size=50, max_position_embeddings=8))\nprint('built')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "built" in out.stdout, out.stderr[-2000:]


def test_check_names_the_fix(monkeypatch):
    monkeypatch.setattr(deps, "foreign_kernels_version", lambda: "0.19.1")
    with pytest.raises(ImportError, match=r"pip uninstall -y kernels"):
        deps.check_no_foreign_kernels()


def test_installed_transformers_is_below_the_cap():
    major, minor = (int(x) for x in importlib.metadata.version("transformers").split(".")[:2])
    assert (major, minor) < (5, 25)
