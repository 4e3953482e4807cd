"""The trained model the browser test serves: the same build as tests/integration's (kept between runs
in LDM_TEST_MODEL_DIR when set)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from serving_model import build_trained_model


@pytest.fixture(scope="session")
def serving_model_dir(tmp_path_factory) -> Path:
    root = os.environ.get("LDM_TEST_MODEL_DIR")
    return build_trained_model(Path(root) if root else tmp_path_factory.mktemp("serving_model"))
