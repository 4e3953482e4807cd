"""Helpers to start real multi-process runs (accelerate launch over gloo) from tests."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".venv" / "torch_extensions"))
    e["OMP_NUM_THREADS"] = "1"
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("TRITON_INTERPRET", None)
    return e


def accelerate(args: list[str], mode: str, procs: int = 2, timeout: int = 600, mixed_precision: str | None = None) -> subprocess.CompletedProcess:
    """mode: "ddp" (gloo DDP on CPU), "zero1"/"zero2"/"zero3" (DeepSpeed through accelerate's flags),
    or "file:launch/accelerate/zero3.yaml" (one of the shipped accelerate config files)."""
    cmd = [str(BIN / "accelerate"), "launch", "--num_processes", str(procs), "--main_process_port", str(free_port())]
    e = env()
    if mode.startswith("file:"):
        cmd += ["--config_file", mode.removeprefix("file:")]
        if "distributed_type: MULTI_GPU" in (ROOT / mode.removeprefix("file:")).read_text():
            e["ACCELERATE_USE_CPU"] = "1"  # DDP over gloo: without it, a CPU machine runs unsynchronised copies
    elif mode == "ddp":
        e["ACCELERATE_USE_CPU"] = "1"
        cmd += ["--multi_gpu"] if procs > 1 else []
    else:
        stage = mode[-1]
        cmd += ["--use_deepspeed", "--zero_stage", stage, "--num_machines", "1"]
        if stage == "3":
            cmd += ["--zero3_save_16bit_model", "true"]
    if mixed_precision:
        cmd += ["--mixed_precision", mixed_precision]
    cmd += args
    out = subprocess.run(cmd, env=e, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}")
    return out


def python(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, *args], env=env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise AssertionError(f"{args} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}")
    return out
