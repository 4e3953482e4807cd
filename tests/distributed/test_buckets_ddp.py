"""Stage 2 on bucketed latents under DDP on 2 CPU processes: the ranks train different buckets in the
same step, and a run stopped mid-epoch and resumed ends with the same weights as one that never stopped."""
from __future__ import annotations

import pytest
import torch

from bucket_fixtures import build_bucket_latents
from launch_utils import accelerate
from ldm_fixtures import LDM_DEBUG
from ldm_system.data.stream import StreamConfig, make_loader

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # three 2-process launches, about a minute
BATCH = 2


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    root = tmp_path_factory.mktemp("bucket-ddp")
    build_bucket_latents(root)
    return root / "latents"


def test_ranks_train_different_buckets_and_resume_exactly(latents, tmp_path):
    # The loaders the two ranks build (same config, rank 0 and 1 of 2): some steps pair different shapes.
    cfg = StreamConfig(shards=str(latents), batch_size=BATCH, num_workers=0, shuffle_buffer=64)
    per_rank = [[tuple(b.images.shape[2:]) for b, _ in zip(make_loader(cfg, r, 2), range(4))] for r in range(2)]
    assert any(a != b for a, b in zip(*per_rank)), per_rank

    def run(out, steps, *extra):
        accelerate(["tests/distributed/ldm_run.py", str(LDM_DEBUG), f"--set=data.shards={latents}",
                    f"--set=train.out_dir={out}", f"--set=data.batch_size={BATCH}", "--set=train.ckpt_every=2",
                    "--set=preview.num_images=2", "--set=preview.steps=2", f"--set=train.steps={steps}", *extra],
                   mode="ddp")
        return torch.load(out / "gathered.pt", weights_only=True)

    full = run(tmp_path / "full", 4)
    run(tmp_path / "split", 2)
    resumed = run(tmp_path / "split", 4, "--resume=latest")
    assert full["step"] == resumed["step"] == 4 and full["world"] == 2
    assert all(torch.equal(full["state"][k], resumed["state"][k]) for k in full["state"])
