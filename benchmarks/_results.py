"""One results format and the two options every benchmark shares.

Every script in `benchmarks/` takes

    --quick        a short run with the same code path (smaller sizes, fewer repeats)
    --json PATH    also write what it printed to PATH, in the format below

and records its tables through `Results`. A results file holds:

    {"schema": 1, "name": "latent_vs_pixel",          # the script (benchmarks/<name>.py)
     "source": "python benchmarks/latent_vs_pixel.py on ..., 2026-11-22",   # which run made the numbers
     "settings": {"batch_size": 8, ...},              # the options the run used
     "tables": [{"key": "rates", "columns": [...], "rows": [[...], ...]}],
     "ratios": {"latent / pixel, wall": 11.72, ...}}  # the headline numbers, as numbers

Table cells are what the run printed: strings as formatted there ("12–12.8", "11.72x"), or plain
numbers. `benchmarks/render_readme.py` writes the tables of `benchmarks/results/*.json` into
`benchmarks/README.md` and `docs/scaling.md` between `<!-- results: NAME/KEY -->` and `<!-- /results -->`.

Standard library only: `attention.py` must run on a GPU machine that has only torch and triton.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Union

SCHEMA = 1
Cell = Union[str, int, float, None]


@dataclass(frozen=True)
class Table:
    key: str  # unique within one results file; names the README block
    columns: list[str]
    rows: list[list[Cell]]


@dataclass
class Results:
    """What one run measured. `table` records and returns the Markdown to print; `save` writes JSON."""

    name: str
    settings: dict[str, Any]
    source: str = ""
    tables: list[Table] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)

    def table(self, key: str, columns: list[str], rows: list[list[Any]]) -> str:
        if any(t.key == key for t in self.tables):
            raise ValueError(f"{self.name}: table {key!r} recorded twice")
        if any(len(r) != len(columns) for r in rows):
            raise ValueError(f"{self.name}/{key}: every row needs {len(columns)} cells")
        t = Table(key, [str(c) for c in columns], [[_cell(v) for v in r] for r in rows])
        self.tables.append(t)
        return markdown(t)

    def ratio(self, key: str, value: float) -> None:
        self.ratios[key] = float(value)

    def save(self, path: str | Path | None) -> None:
        """Write the results to `path` (the --json option); None writes nothing."""
        if path is None:
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"schema": SCHEMA, **asdict(self)}, indent=1, ensure_ascii=False) + "\n")
        print(f"results written to {path}")


def _cell(value: Any) -> Cell:
    """A float is kept as printed (3 significant digits, thousands without decimals): the table is
    the printed one, and `ratios` keep the full numbers."""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if value is None or isinstance(value, (str, int)) and not isinstance(value, bool):
        return value
    return str(value)


def add_options(parser: argparse.ArgumentParser, quick: str) -> None:
    """The shared options; `quick` says what --quick shrinks in this script."""
    parser.add_argument("--quick", action="store_true", help=f"short run, same code path: {quick}")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write the results to PATH (format: benchmarks/_results.py)")


def start(name: str, args: argparse.Namespace, source: str = "") -> Results:
    """Results of this run, with every parsed option as its settings (minus --json itself)."""
    settings = {k: v if isinstance(v, (bool, int, float, str, type(None))) else str(v)
                for k, v in vars(args).items() if k != "json"}
    if not source:
        quick = " --quick" if settings.get("quick") else ""
        source = (f"python benchmarks/{name}.py{quick}, {date.today().isoformat()}, "
                  f"{os.cpu_count()} CPU cores ({platform.machine()})")
    return Results(name, settings, source)


def load(path: str | Path) -> Results:
    raw = json.loads(Path(path).read_text())
    if raw.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema {raw.get('schema')!r}, expected {SCHEMA}")
    tables = [Table(t["key"], t["columns"], t["rows"]) for t in raw["tables"]]
    return Results(raw["name"], raw["settings"], raw["source"], tables, raw.get("ratios", {}))


def markdown(t: Table) -> str:
    """A Markdown table, columns padded to their widest cell."""
    text = [[str(c) for c in t.columns]] + [["" if v is None else str(v) for v in r] for r in t.rows]
    widths = [max(len(r[i]) for r in text) for i in range(len(t.columns))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(text[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, text[1:])])
