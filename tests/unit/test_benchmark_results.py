"""The benchmark results format and the renderer that writes its tables into the docs."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


sys.path.insert(0, str(BENCH))  # the scripts import `_results` as a top-level module
results, render = importlib.import_module("_results"), importlib.import_module("render_readme")


def _saved(tmp_path: Path) -> Path:
    res = results.start("toy", argparse.Namespace(quick=True, json="x.json", batch=8))
    res.table("rates", ["run", "images/s"], [["a", 12.345], ["b", 1234.5]])
    res.ratio("a / b", 0.01)
    res.save(tmp_path / "results" / "toy.json")
    return tmp_path / "results"


def test_results_round_trip_and_source(tmp_path):
    out = _saved(tmp_path)
    raw = json.loads((out / "toy.json").read_text())
    assert raw["schema"] == results.SCHEMA and raw["settings"] == {"quick": True, "batch": 8}
    assert raw["source"].startswith("python benchmarks/toy.py --quick, ")
    back = results.load(out / "toy.json")
    assert back.tables[0].rows == [["a", "12.3"], ["b", "1,234"]] and back.ratios == {"a / b": 0.01}


def test_render_fills_blocks_and_keeps_the_rest(tmp_path):
    out = _saved(tmp_path)
    doc = tmp_path / "README.md"
    doc.write_text("intro\n<!-- results: toy/rates -->\nstale\n<!-- /results -->\nmiddle\n"
                   "<!-- results: toy/ratios -->\n<!-- /results -->\nend\n")
    assert render.main(["--doc", str(doc), "--results", str(out), "--check"]) == 1
    assert render.main(["--doc", str(doc), "--results", str(out)]) == 0
    text = doc.read_text()
    assert "stale" not in text and text.startswith("intro\n") and "\nmiddle\n" in text and text.endswith("end\n")
    assert "| a   | 12.3     |" in text and "| a / b    | 0.01  |" in text
    assert render.main(["--doc", str(doc), "--results", str(out), "--check"]) == 0


def test_render_names_missing_results(tmp_path):
    doc = tmp_path / "README.md"
    doc.write_text("<!-- results: nowhere/rates -->\n<!-- /results -->\n")
    with pytest.raises(FileNotFoundError, match="benchmarks/nowhere.py --json"):
        render.main(["--doc", str(doc), "--results", str(tmp_path)])
    out = _saved(tmp_path)
    doc.write_text("<!-- results: toy/speed -->\n<!-- /results -->\n")
    with pytest.raises(KeyError, match="has no table 'speed'.*rates"):
        render.main(["--doc", str(doc), "--results", str(out)])


def test_shipped_docs_match_their_results():
    """Every generated table in benchmarks/README.md and docs/scaling.md equals its results file."""
    assert render.main(["--check"]) == 0
