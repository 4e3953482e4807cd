"""Write the tables of `benchmarks/results/*.json` into `benchmarks/README.md` and `docs/scaling.md`.

A block in the README

    <!-- results: sampling/rates -->
    (anything: replaced)
    <!-- /results -->

receives table `rates` of `results/sampling.json`, followed by a line naming the run that made it
(the key `ratios` gives the file's headline numbers as a table).
Text outside the blocks is the README's own. Run a benchmark with `--json benchmarks/results/NAME.json`,
then this script; `--check` exits 1 when a block is out of date (what the tests run).

    python benchmarks/render_readme.py [--check]
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import Results, Table, load, markdown  # noqa: E402

HERE = Path(__file__).resolve().parent
DOCS = (HERE / "README.md", HERE.parent / "docs" / "scaling.md")
DOCS_HELP = "benchmarks/README.md, docs/scaling.md"
BLOCK = re.compile(r"(<!-- results: (?P<name>[\w-]+)/(?P<key>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def render_block(results: Results, key: str) -> str:
    """Table `key` of the results; the key `ratios` is the headline numbers as a two-column table."""
    if key == "ratios" and results.ratios:
        rows = [[k, f"{v:.3g}"] for k, v in results.ratios.items()]
        return f"{markdown(Table('ratios', ['quantity', 'value'], rows))}\n\n<sub>{results.source}</sub>\n"
    for t in results.tables:
        if t.key == key:
            return f"{markdown(t)}\n\n<sub>{results.source}</sub>\n"
    raise KeyError(f"results/{results.name}.json has no table {key!r} (it has: "
                   f"{', '.join(t.key for t in results.tables) or 'none'})")


def render(text: str, results_dir: Path) -> str:
    """`text` with every results block filled in from `results_dir`."""
    cache: dict[str, Results] = {}

    def fill(m: re.Match) -> str:
        name = m["name"]
        if name not in cache:
            path = results_dir / f"{name}.json"
            if not path.is_file():
                raise FileNotFoundError(f"README block {name}/{m['key']}: {path} is missing "
                                        f"(run benchmarks/{name}.py --json {path})")
            cache[name] = load(path)
        return m.group(1) + render_block(cache[name], m["key"]) + m.group(5)

    return BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the README's blocks are out of date")
    parser.add_argument("--doc", type=Path, action="append", help=f"documents to fill (default: {DOCS_HELP})")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    stale = 0
    for doc in args.doc or DOCS:
        old = doc.read_text()
        new = render(old, args.results)
        if new == old:
            print(f"{doc}: {len(BLOCK.findall(old))} results blocks up to date")
        elif args.check:
            print(f"{doc} is out of date: run python benchmarks/render_readme.py", file=sys.stderr)
            stale += 1
        else:
            doc.write_text(new)
            print(f"{doc}: results blocks rewritten")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
