"""Every folder kind we read or write, told apart by the one file that describes it.

    kind                 marker                                    written by
    CHECKPOINT           trainer.json + config.yaml                the engine (run/checkpoints/step_N)
    RUN                  checkpoints/ (newest checkpoint inside)   `ldm train`
    EXPORT               ldm.json                                  `ldm export`
    BASELINE             baseline.json                             `ldm train-baseline`
    STAGE1               autoencoder.json                          `ldm train-ae`
    DIFFUSERS_PIPELINE   model_index.json                          diffusers `save_pretrained` (and `ldm export`)
    DIFFUSERS_MODEL      config.json with `_class_name`            diffusers model `save_pretrained`

An export carries model_index.json too, so stock diffusers loads it; ldm.json is checked first and wins.
This module imports nothing of ours: everything above may ask it what a folder is.
"""
from __future__ import annotations

import enum
import json
import re
from pathlib import Path

TRAINER_JSON, CONFIG_YAML, WEIGHTS_DIR, CHECKPOINTS_DIR, LATEST = "trainer.json", "config.yaml", "weights", "checkpoints", "latest"
LDM_META = "ldm.json"
BASELINE_META = "baseline.json"
STAGE1_META = "autoencoder.json"
MODEL_INDEX = "model_index.json"
MODEL_CONFIG = "config.json"


class Kind(enum.Enum):
    CHECKPOINT = "ldm-system training checkpoint"
    RUN = "ldm-system run folder"
    EXPORT = "ldm-system export"
    BASELINE = "ldm-system baseline model"
    STAGE1 = "ldm-system autoencoder"
    DIFFUSERS_PIPELINE = "diffusers pipeline folder"
    DIFFUSERS_MODEL = "diffusers model folder"


class UnknownArtifactError(FileNotFoundError):
    """A folder that is none of the kinds we read; the message lists what was looked for."""


LOOKED_FOR = (f"{LDM_META} (our export), {TRAINER_JSON} + {CONFIG_YAML} (our checkpoint), {CHECKPOINTS_DIR}/ (our "
              f"run), {BASELINE_META}, {STAGE1_META}, {MODEL_INDEX} (diffusers pipeline), {MODEL_CONFIG} with "
              "_class_name (diffusers model)")


def _class_name(config: Path) -> str | None:
    try:
        return json.loads(config.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


def detect(path: str | Path) -> Kind:
    """The kind of the folder at `path` (a `checkpoints/latest` pointer counts as its checkpoint)."""
    p = Path(path)
    if p.is_file() and p.name == LATEST:
        p = p.parent / p.read_text().strip()
    if not p.is_dir():
        raise UnknownArtifactError(f"{path}: no such folder")
    if (p / LDM_META).is_file():
        return Kind.EXPORT
    if (p / TRAINER_JSON).is_file() and (p / CONFIG_YAML).is_file():
        return Kind.CHECKPOINT
    if (p / CHECKPOINTS_DIR).is_dir():
        return Kind.RUN
    if (p / BASELINE_META).is_file() or (p / "model" / BASELINE_META).is_file():
        return Kind.BASELINE
    if (p / STAGE1_META).is_file():
        return Kind.STAGE1
    if (p / MODEL_INDEX).is_file():
        return Kind.DIFFUSERS_PIPELINE
    if (p / MODEL_CONFIG).is_file() and _class_name(p / MODEL_CONFIG):
        return Kind.DIFFUSERS_MODEL
    raise UnknownArtifactError(f"{path}: not a model folder we know; looked for {LOOKED_FOR}")


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint, a run folder (its `latest` pointer, else its highest
    step_N holding trainer.json) or a `checkpoints/latest` pointer."""
    p = Path(path)
    kind = detect(p)
    if kind is Kind.RUN:
        root = p / CHECKPOINTS_DIR
        pointer = root / LATEST
        found = root / pointer.read_text().strip() if pointer.is_file() else None
        if found is None or not (found / TRAINER_JSON).is_file():
            steps = sorted((int(m.group(1)), d) for d in root.iterdir()
                           if (m := re.fullmatch(r"step_(\d+)", d.name)) and (d / TRAINER_JSON).is_file())
            found = steps[-1][1] if steps else None
        if found is None:
            raise FileNotFoundError(f"{path}: the run has no complete checkpoint yet")
        return found
    if kind is not Kind.CHECKPOINT:
        raise FileNotFoundError(f"{path} is a {kind.value}, not an ldm-system training checkpoint or run folder")
    return p.parent / p.read_text().strip() if p.is_file() else p


__all__ = ["Kind", "UnknownArtifactError", "detect", "resolve_checkpoint", "LDM_META", "BASELINE_META", "STAGE1_META",
           "MODEL_INDEX", "MODEL_CONFIG", "TRAINER_JSON", "CONFIG_YAML", "WEIGHTS_DIR", "LATEST"]
