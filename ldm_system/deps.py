"""Checks on the installed environment that a plain ImportError would explain badly.

Our Triton attention package is installed under the top-level name `kernels` (the repository
layout is fixed). Hugging Face ships an unrelated distribution with the same import name, and
transformers >= 5.25 depends on it. The two cannot be installed side by side: whichever `kernels`
comes first on `sys.path` shadows the other, and transformers then fails deep inside its own
imports (`cannot import name 'CUDAProperties' from 'kernels'`). `pyproject.toml` therefore caps
transformers below 5.25, and `launch/setup.sh` removes the foreign distribution; this check turns
the remaining case (an environment assembled by hand) into one clear message.
"""
from __future__ import annotations

import importlib.metadata

OUR_DISTRIBUTION = "ldm-system"


def foreign_kernels_version() -> str | None:
    """The version of a `kernels` distribution that is not ours, or None when there is none."""
    try:
        dist = importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        return None
    return dist.version


def check_no_foreign_kernels() -> None:
    """Raise a one-line, actionable error when Hugging Face's `kernels` is installed next to ours."""
    version = foreign_kernels_version()
    if version is not None:
        raise ImportError(
            f"the distribution 'kernels' {version} (Hugging Face) is installed next to ldm-system, whose Triton "
            "attention package has the same import name 'kernels'; transformers cannot load models while both are "
            "present. Fix: pip uninstall -y kernels && pip install 'transformers<5.25' "
            "(launch/setup.sh does this)"
        )
