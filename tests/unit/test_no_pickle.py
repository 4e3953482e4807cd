"""No pickle from outside (issue 11): every `torch.load` in the repository passes
`weights_only=True`, so a `.pt` file we did not write cannot run code when it is read.

The scan is syntactic (every call spelled `torch.load(...)`), over our packages, tests, benchmarks
and launch scripts. PENDING lists the files allowed a full-pickle load, each with its reason.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("ldm_system", "autoencoders", "kernels", "tests", "benchmarks", "launch")
PENDING = {
    # Reads DeepSpeed's optimizer shards, pickles that the test's own runs wrote a moment before, to
    # compare Adam moments bit for bit after a resume; DeepSpeed stores more than tensors there.
    "tests/distributed/test_two_machines.py",
    # The same for the baselines' exact-resume tests (torch and DeepSpeed optimizer files of its own runs).
    "tests/distributed/test_baselines_ddp.py",
}


def _unsafe_loads(path: Path) -> list[int]:
    """Line numbers of `torch.load(...)` calls without a literal `weights_only=True`."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        f = node.func
        if f.attr == "load" and isinstance(f.value, ast.Name) and f.value.id == "torch":
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in node.keywords)
            if not safe:
                lines.append(node.lineno)
    return lines


def test_the_scan_finds_an_unsafe_load(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import torch\na = torch.load('x.pt')\nb = torch.load('y.pt', weights_only=True)\n"
                     "c = torch.load('z.pt', weights_only=False)\n")
    assert _unsafe_loads(probe) == [2, 4]


def test_every_torch_load_is_weights_only() -> None:
    found = {}
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel not in PENDING and (lines := _unsafe_loads(path)):
                found[rel] = lines
    assert not found, f"torch.load without weights_only=True (a pickle from outside can run code): {found}"
