"""Stage 2 refuses bucketed latents whose bucket step its UNet cannot divide, in one line naming a
--bucket-step that works, before any training (`check_latent_buckets`)."""
from __future__ import annotations

import pytest

from bucket_fixtures import build_bucket_latents
from ldm_fixtures import LDM_DEBUG
from ldm_system.config import load_config
from ldm_system.data.buckets import check_latent_buckets
from ldm_system.train.runs import LDMRunConfig, run_ldm


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    root = tmp_path_factory.mktemp("bucket-step")
    return root, build_bucket_latents(root)[1]  # --bucket-step 8, KL-f4


def test_a_unet_that_downsamples_more_than_the_step_allows_is_refused(latents) -> None:
    root, lat = latents
    assert lat.meta["bucket_step"] == 8
    check_latent_buckets(lat.meta, 2)  # f=4 x 2 = 8: every bucket divides
    check_latent_buckets({"latent_shape": [3, 8, 8]}, 4)  # square latents: nothing to check
    with pytest.raises(ValueError, match=r"^bucket step 8 is not a multiple of 16 \(the autoencoder's f times the "
                                         r"UNet's downsampling\); repack with --bucket-step 16"):
        check_latent_buckets(lat.meta, 4)
    cfg = load_config(LDMRunConfig, LDM_DEBUG, [f"data.shards={root / 'latents'}", f"train.out_dir={root / 'run'}",
                                                "unet.block_out_channels=[32,64,64]",
                                                "unet.attention_levels=[false,true,true]", "train.steps=1"])
    with pytest.raises(ValueError, match="repack with --bucket-step 16"):
        run_ldm(cfg)
    assert not (root / "run" / "checkpoints").exists()  # refused before training
