"""Preemption on a real SLURM: two emulated nodes on this host, `launch/slurm/train.sbatch` as shipped.

The job trains the debug LDM on two nodes (one CPU process each, gloo), gets `scancel --signal=USR1 --full`
mid-run, checkpoints, requeues itself and finishes after a restart. Its exported weights (EMA and raw) must
equal, bit for bit, those of the same job run without the signal.

Needs root and SLURM (`apt-get install --no-install-recommends slurmctld slurmd slurm-client munge`); the test
installs it when apt-get is there, and skips with the reason otherwise.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from launch_utils import env as launch_env
from ldm_fixtures import LDM_DEBUG, ROOT, build_debug_latents

pytestmark = pytest.mark.slow

CLUSTER = ROOT / "launch" / "slurm" / "local_cluster.sh"
SBATCH = ROOT / "launch" / "slurm" / "train.sbatch"
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "munged", "mungekey"]
STEPS = 160  # a few tenths of a second each: the signal lands well inside the run
SIGNAL_AFTER = 8  # send USR1 once the run has logged this step
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def _ensure_slurm() -> str | None:
    """None when SLURM is usable here, else why not."""
    if os.geteuid() != 0:
        return "the local cluster runs slurmctld/slurmd as SlurmUser=root: needs root"
    if all(shutil.which(b) for b in BINARIES):
        return None
    if not shutil.which("apt-get"):
        return "SLURM is not installed and there is no apt-get to install it"
    e = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=e)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(cmd)}` timed out"
        if r.returncode != 0:
            return f"could not install SLURM: `{' '.join(cmd)}` failed: {r.stderr.strip()[-400:]}"
    missing = [b for b in BINARIES if not shutil.which(b)]
    return f"SLURM installed but {missing} still missing" if missing else None


@pytest.fixture(scope="module")
def slurm_env():
    reason = _ensure_slurm()
    if reason:
        pytest.skip(reason)
    d = Path(tempfile.mkdtemp(prefix="ldm-slurm-", dir="/tmp"))  # short: munge's socket path has a length limit
    up = subprocess.run(["bash", str(CLUSTER), "up", str(d)], capture_output=True, text=True, timeout=120)
    try:
        if up.returncode != 0:
            pytest.skip(f"the local SLURM cluster did not start: {up.stderr.strip()[-600:]}")
        conf = re.search(r"export SLURM_CONF=(\S+)", up.stdout).group(1)
        yield {"SLURM_CONF": conf}
    finally:
        subprocess.run(["bash", str(CLUSTER), "down", str(d)], capture_output=True, text=True, timeout=120)
        shutil.rmtree(d, ignore_errors=True)


def _job(env: dict, jid: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", jid], env=env, capture_output=True, text=True, timeout=30)
    return dict(kv.split("=", 1) for kv in out.stdout.split() if "=" in kv)


def _wait(pred, timeout: float, what: str, log: Path | None = None):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        got = pred()
        if got:
            return got
        time.sleep(1)
    tail = log.read_text()[-4000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")


def _last_step(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    if not metrics.exists():
        return 0
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.strip()]
    return max(steps, default=0)


def _export(run: Path, out: Path, raw: bool) -> dict[str, torch.Tensor]:
    ckpts = run / "checkpoints"
    latest = ckpts / (ckpts / "latest").read_text().strip()
    subprocess.run([sys.executable, "-m", "ldm_system.cli", "export", *(["--raw"] if raw else []), str(latest), str(out)],
                   cwd=ROOT, env=launch_env(), check=True, capture_output=True, timeout=300)
    tensors = {}
    for f in sorted(out.rglob("*.safetensors")):
        tensors.update({f"{f.relative_to(out)}:{k}": v for k, v in load_file(f).items()})
    assert tensors, f"no weights exported under {out}"
    return tensors


@pytest.mark.parametrize("accel", ["multi_node", "zero2", "zero3"])  # DDP, DeepSpeed ZeRO-2, ZeRO-3
def test_preempted_job_requeues_and_matches_uninterrupted(slurm_env, tmp_path, accel):
    t_start = time.monotonic()
    latents = build_debug_latents(tmp_path / "data")
    env = {**launch_env(), **slurm_env, "ACCEL_CONFIG": f"launch/accelerate/{accel}.yaml", "GPUS_PER_NODE": "1",
           "ACCEL_ARGS": "--mixed_precision no", "VENV": str(Path(sys.executable).parent.parent)}
    env.pop("LDM_EXIT_STATUS_FILE", None)

    def submit(name: str) -> tuple[str, Path, Path]:
        run, log = tmp_path / name, tmp_path / f"{name}.out"
        args = [f"data.shards={latents}", f"train.out_dir={run}", f"train.steps={STEPS}", "train.checkpoint.every=0",
                "train.log.every=1", "data.batch_size=4", "preview.num_images=2", "preview.steps=2"]
        cmd = ["sbatch", "--parsable", "-N2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=25",
               f"--job-name=ldm-{name}", f"--output={log}", f"--chdir={ROOT}", str(SBATCH), str(LDM_DEBUG)]
        for a in args:
            cmd += ["--set", a]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().split(";")[0], run, log

    jid, run, log = submit("preempted")
    base_jid, base_run, base_log = submit("uninterrupted")
    t_submit = time.monotonic()

    # Mid-run: the first run has logged a few steps and is far from the end.
    _wait(lambda: _last_step(run) >= SIGNAL_AFTER, 600, f"job {jid} to reach step {SIGNAL_AFTER}", log)
    t_signal = time.monotonic()
    assert _last_step(run) < STEPS // 2, "the run got too far before the signal: raise STEPS"
    subprocess.run(["scancel", "--signal=USR1", "--full", jid], env=env, check=True, timeout=30)

    def requeued_or_ended():
        j = _job(env, jid)
        return j if int(j.get("Restarts", "0")) >= 1 or j.get("JobState") in TERMINAL else None

    j = _wait(requeued_or_ended, 300, f"job {jid} to requeue", log)
    assert int(j.get("Restarts", "0")) >= 1, f"job {jid} ended without a requeue: {j}\n{log.read_text()[-4000:]}"
    t_requeued = time.monotonic()
    done = _wait(lambda: (j := _job(env, jid)).get("JobState") in TERMINAL and j, 900, f"job {jid} to finish", log)
    base = _wait(lambda: (j := _job(env, base_jid)).get("JobState") in TERMINAL and j, 900,
                 f"job {base_jid} to finish", base_log)
    text = log.read_text()
    assert done["JobState"] == "COMPLETED" and done["ExitCode"] == "0:0", f"{done}\n{text[-4000:]}"
    assert base["JobState"] == "COMPLETED" and base["Restarts"] == "0", f"{base}\n{base_log.read_text()[-4000:]}"

    # The first start checkpointed and asked for the requeue; the restart (SLURM_RESTART_COUNT=1) resumed.
    preempted = re.search(r"run status 'preempted' \((\{.*?\})\)", text)
    assert preempted, text[-4000:]
    stopped_at = json.loads(preempted.group(1))["step"]
    assert SIGNAL_AFTER <= stopped_at < STEPS
    assert re.search(rf"job {jid} restart 1 on", text), text[-4000:]
    assert "run status 'completed'" in text
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert steps.count(1) == 1 and steps[-1] == STEPS, "the restart began again from step 1 instead of resuming"

    for raw in (False, True):
        a = _export(run, tmp_path / f"export-preempted-{raw}", raw)
        b = _export(base_run, tmp_path / f"export-uninterrupted-{raw}", raw)
        assert a.keys() == b.keys()
        diff = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
        assert not diff, f"{'raw' if raw else 'EMA'} weights differ after preemption + requeue: {diff[:5]}"
    print(f"\n[slurm] signal after {t_signal - t_submit:.0f}s from submit, requeued {t_requeued - t_signal:.0f}s later, "
          f"stopped at step {stopped_at}, test {time.monotonic() - t_start:.0f}s")
