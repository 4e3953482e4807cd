"""A user's folder end to end on 2 CPU processes: mixed shapes and every caption layout, packed with
buckets (each stored image's bucket, crop and caption checked against its original), stage 1 on
bucketed batches under DDP, `ldm data encode`, stage 2 under DDP with the ranks training different
buckets in the same step, stopped mid-epoch and resumed to end with the weights of a run that never
stopped, and a non-square image sampled from the exported model."""
from __future__ import annotations

import io
import json
import math
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from bucket_fixtures import SHAPES, build_folder
from launch_utils import accelerate
from ldm_fixtures import AE_DEBUG, LDM_DEBUG
from ldm_system.data.stream import StreamConfig, make_loader

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # four 2-process launches, about two minutes
BATCH = 2


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    from ldm_system.data.pack import pack

    root = tmp_path_factory.mktemp("bucket-ddp")
    build_folder(root / "src")
    m = pack(str(root / "src"), root / "images", image_size=32, buckets=True, bucket_step=8, channels=1, shard_size=4)
    return root, m


@pytest.fixture(scope="module")
def latents(packed):
    """Stage 1 on the bucketed images under DDP (2 processes), then `ldm data encode`."""
    from ldm_system.data.encode import encode_shards

    root, _ = packed
    accelerate(["-m", "ldm_system.cli", "train-ae", "--config", str(AE_DEBUG), "--set", f"data.shards={root / 'images'}",
                "--set", f"train.out_dir={root / 'ae'}", "--set", f"data.batch_size={BATCH}", "--set", "train.steps=2",
                "--set", "scale_batches=100", "--set", "loss.disc_start=1"], mode="ddp")
    meta = json.loads((root / "ae" / "checkpoints" / "step_00000002" / "trainer.json").read_text())
    assert meta["world_size"] == 2
    encode_shards(root / "ae" / "autoencoder", root / "images", root / "latents", batch_size=4, progress=False)
    return root / "latents"


def test_each_stored_image_is_its_original_in_its_bucket_with_its_caption(packed):
    root, m = packed
    assert m.meta["captions"] == {"txt": 4, "caption": 4, "metadata": 4, "none": 0, "several_sources": 0}
    buckets = [(b["width"], b["height"]) for b in m.meta["buckets"]]
    stored = {}
    for shard in sorted((root / "images").glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                stored.setdefault(key.split("_", 1)[1], {})[ext] = tar.extractfile(member).read()
    assert sorted(stored) == sorted(name for name, _, _ in SHAPES)
    for i, (name, w, h) in enumerate(SHAPES):
        entries, info = stored[name], json.loads(stored[name]["json"])
        bw, bh = info["bucket"]
        nearest = min(abs(math.log(a / b) - math.log(w / h)) for a, b in buckets)
        assert info["original_size"] == [w, h] and abs(math.log(bw / bh) - math.log(w / h)) == nearest
        (rw, rh), (left, top) = info["resized_size"], info["crop_left_top"]
        original = Image.open(root / "src" / f"{name}.png").convert("L")
        expect = original.resize((rw, rh), Image.Resampling.LANCZOS).crop((left, top, left + bw, top + bh))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(entries["png"]))), np.asarray(expect)), name
        caption = (f"a {name} photo", f"{name}, tag one, tag two", f"meta {name}")[i % 3]  # .txt, .caption, jsonl
        assert entries["txt"].decode() == caption


def test_both_stages_on_two_processes_resume_exactly_and_sample_non_square(latents, tmp_path):
    from ldm_system.serving.export import export_checkpoint
    from ldm_system.serving.pipeline import LDMPipeline

    # The loaders the two ranks build (same config, rank 0 and 1 of 2): some steps pair different shapes.
    cfg = StreamConfig(shards=str(latents), batch_size=BATCH, num_workers=0, shuffle_buffer=64)
    per_rank = [[tuple(b.images.shape[2:]) for b, _ in zip(make_loader(cfg, r, 2), range(4))] for r in range(2)]
    assert any(a != b for a, b in zip(*per_rank)), per_rank

    def run(out, steps, *extra):
        accelerate(["tests/distributed/ldm_run.py", str(LDM_DEBUG), f"--set=data.shards={latents}",
                    f"--set=train.out_dir={out}", f"--set=data.batch_size={BATCH}", "--set=preview.num_images=2",
                    "--set=preview.steps=2", f"--set=train.steps={steps}", *extra], mode="ddp")
        return torch.load(out / "gathered.pt", weights_only=True)

    full = run(tmp_path / "full", 4)
    run(tmp_path / "split", 2)  # 12 images, 4 per step: stopped mid-epoch with samples waiting in buckets
    resumed = run(tmp_path / "split", 4, "--resume=latest")
    assert full["step"] == resumed["step"] == 4 and full["world"] == 2
    assert all(torch.equal(full["state"][k], resumed["state"][k]) for k in full["state"])

    pipe = LDMPipeline.from_pretrained(export_checkpoint(tmp_path / "split", tmp_path / "model"))
    images = pipe.sample(2, steps=2, height=16, width=48)
    assert images.shape == (2, 1, 16, 48) and torch.isfinite(images).all()
