"""The baseline registry is the one list of families: the CLI's choices come from it, and every entry
is a complete `Family(config, run, load)`."""
from __future__ import annotations

import dataclasses

import pytest

from ldm_system.baselines.registry import FAMILIES, Family, lookup


def test_cli_choices_are_the_registry():
    from ldm_system.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    family_arg = next(a for a in sub.choices["train-baseline"]._actions if a.dest == "family")
    assert tuple(family_arg.choices) == FAMILIES == ("gan", "flow", "ar", "vq-ar")


@pytest.mark.parametrize("name", FAMILIES)
def test_every_entry_is_complete(name):
    family = lookup(name)
    assert isinstance(family, Family) and dataclasses.is_dataclass(family.config)
    assert {"data", "model", "train"} <= {f.name for f in dataclasses.fields(family.config)}
    assert callable(family.run) and callable(family.load)
    with pytest.raises(dataclasses.FrozenInstanceError):
        family.run = None


def test_unknown_family():
    with pytest.raises(ValueError, match="unknown family 'vae'; known: gan, flow, ar"):
        lookup("vae")
