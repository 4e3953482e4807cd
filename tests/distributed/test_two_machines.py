"""Several machines, as users launch them: two `accelerate launch` commands on localhost with
`--num_machines 2 --machine_rank 0|1 --main_process_ip 127.0.0.1`, one process each, gloo,
through the shipped accelerate files and the real `ldm train` CLI.

- DDP (launch/accelerate/multi_node.yaml): one epoch of the debug latents; each machine's loader
  consumed exactly half of the samples, and the logged LR follows the warmup once per step.
- ZeRO-3 (launch/accelerate/zero3.yaml): 6 uninterrupted steps vs 3 steps + `--resume latest` to 6:
  weights, EMA, optimizer shards, every rank's RNG and data position are identical, bit for bit.
- A dead machine: killing one launcher mid-run makes the other exit with an error within
  `train.faults.dist_timeout_s`; relaunching both with `--resume latest` continues from the checkpoint.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from launch_utils import BIN, ROOT, env, free_port
from ldm_fixtures import LDM_DEBUG, build_debug_latents

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return build_debug_latents(tmp_path_factory.mktemp("two-machines"))


def _launchers(config_file: str, train_args: list[str], port: int, extra_env: dict | None = None):
    """Start both machines' launchers; return the Popen objects (rank 0 first)."""
    e = {**env(), **(extra_env or {})}
    procs = []
    for rank in (0, 1):
        cmd = [str(BIN / "accelerate"), "launch", "--config_file", config_file, "--num_machines", "2",
               "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
               "--main_process_port", str(port), "--mixed_precision", "no",
               "-m", "ldm_system.cli", "train", "--config", str(LDM_DEBUG), *train_args]
        procs.append(subprocess.Popen(cmd, env=e, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, start_new_session=True))
    return procs


def _run(config_file: str, train_args: list[str], extra_env: dict | None = None, timeout: int = 400) -> None:
    procs = _launchers(config_file, train_args, free_port(), extra_env)
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                os.killpg(q.pid, signal.SIGKILL)
            raise
    for rank, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"machine {rank} failed ({p.returncode}):\n{out[-5000:]}"


def _args(latents: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["--set", f"data.shards={latents}", "--set", f"train.out_dir={out}", "--set", f"train.steps={steps}",
            "--set", "data.batch_size=4", "--set", "train.log.every=1", "--set", "preview.num_images=2",
            "--set", "preview.steps=2", *extra]


def _ckpt(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step_{step:08d}"


def test_ddp_on_two_machines_splits_the_data(latents, tmp_path):
    out = tmp_path / "ddp"
    # 256 samples, 2 machines x batch 4: 32 steps are one epoch
    _run("launch/accelerate/multi_node.yaml",
         _args(latents, out, 32, "--set", "train.checkpoint.every=0", "--set", "train.lr.warmup_steps=8"),
         extra_env={"ACCELERATE_USE_CPU": "1"})
    folder = _ckpt(out, 32)
    loaders = [json.loads((folder / f"loader_rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["samples_consumed"] for s in loaders] == [128, 128]  # each machine saw half of the epoch
    assert json.loads((folder / "trainer.json").read_text())["world_size"] == 2
    logs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    lr = {r["step"]: r["lr/unet"] for r in logs}
    base = 5e-4  # optim.lr of the debug config
    assert lr[1] == pytest.approx(base * 2 / 8) and lr[4] == pytest.approx(base * 5 / 8)  # once per step, not per rank
    assert lr[8] == pytest.approx(base)


def _same_files(a: Path, b: Path, pattern: str) -> list[str]:
    names = sorted(p.relative_to(a).as_posix() for p in a.glob(pattern))
    assert names, f"no {pattern} in {a}"
    return [n for n in names if (a / n).read_bytes() != (b / n).read_bytes()]


def test_zero3_on_two_machines_resumes_bit_for_bit(latents, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    common = ("--set", "train.checkpoint.every=3")
    _run("launch/accelerate/zero3.yaml", _args(latents, full, 6, *common))
    _run("launch/accelerate/zero3.yaml", _args(latents, cut, 3, *common))
    _run("launch/accelerate/zero3.yaml", _args(latents, cut, 6, *common, "--resume", "latest"))
    a, b = _ckpt(full, 6), _ckpt(cut, 6)
    for name in ("weights/unet.safetensors", "weights/unet.ema.safetensors"):
        x, y = load_file(str(a / name)), load_file(str(b / name))
        assert all(torch.equal(x[k], y[k]) for k in x), f"{name} differs after the resume"
    assert _same_files(a, b, "ema_rank*.safetensors") == []  # each rank's EMA shard
    assert _same_files(a, b, "loader_rank*.json") == []  # data position of every rank
    assert _same_files(a, b, "random_states_*.pkl") == []  # torch / numpy / python RNG of every rank
    # Optimizer: DeepSpeed's fp32 master weights (reassembled without the shards' padding, which holds
    # whatever was in memory) and the Adam moments of every rank's shard.
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ma, mb = (get_fp32_state_dict_from_zero_checkpoint(str(p)) for p in (a, b))
    assert set(ma) == set(mb) and all(torch.equal(ma[k], mb[k]) for k in ma)
    for r in (0, 1):
        name = f"pytorch_model/zero_pp_rank_{r}_mp_rank_00_optim_states.pt"
        # our own files, just written by this test's runs; DeepSpeed pickles more than tensors
        sa, sb = (torch.load(p / name, map_location="cpu", weights_only=False)["optimizer_state_dict"]
                  for p in (a, b))
        for x, y in zip(sa["optimizer_state_dict"]["state"].values(), sb["optimizer_state_dict"]["state"].values()):
            assert set(x) == {"step", "exp_avg", "exp_avg_sq"} and all(torch.equal(x[k], y[k]) for k in x)
    la = [json.loads(l)["loss/unet"] for l in (full / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(l)["loss/unet"] for l in (cut / "metrics.jsonl").read_text().splitlines()]
    assert la == lb


def _kill_machine(pid: int) -> None:
    """SIGKILL a launcher and every process below it. torchrun's workers leave the launcher's process
    group, and a killed launcher does not take them along: only a whole-machine kill is a dead machine."""
    import psutil

    root = psutil.Process(pid)
    for p in [*root.children(recursive=True), root]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def test_a_dead_machine_does_not_hang_the_other(latents, tmp_path):
    out = tmp_path / "dead"
    args = _args(latents, out, 400, "--set", "train.checkpoint.every=2", "--set", "train.faults.dist_timeout_s=30")
    procs = _launchers("launch/accelerate/multi_node.yaml", args, free_port(), {"ACCELERATE_USE_CPU": "1"})
    deadline = time.time() + 300
    while not (_ckpt(out, 4)).is_dir():
        assert all(p.poll() is None for p in procs), "training ended before a machine could be killed"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.1)
    _kill_machine(procs[1].pid)  # machine 1 dies: its launcher and its worker
    killed_at = time.time()
    try:
        procs[0].communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(procs[0].pid, signal.SIGKILL)
        pytest.fail("machine 0 still waits on the dead machine after 120 s")
    assert procs[0].returncode != 0
    assert time.time() - killed_at < 90
    procs[1].wait()
    _run("launch/accelerate/multi_node.yaml", _args(latents, out, 8, "--set", "train.checkpoint.every=2",
                                                    "--resume", "latest"), extra_env={"ACCELERATE_USE_CPU": "1"})
    assert json.loads((_ckpt(out, 8) / "trainer.json").read_text())["step"] == 8
