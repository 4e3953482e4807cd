"""Builders for small real-data artefacts shared by integration and distributed tests."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AE_DEBUG = ROOT / "configs" / "autoencoder" / "fmnist-kl-f4-debug.yaml"
LDM_DEBUG = ROOT / "configs" / "ldm" / "fmnist-debug.yaml"


def build_debug_latents(root: Path, num_images: int = 256, ae_steps: int = 2) -> Path:
    """Real Fashion-MNIST test images → a debug KL-f4 autoencoder → latent shards. Returns the latent folder."""
    from ldm_system.config import load_config
    from ldm_system.data.encode import encode_shards
    from ldm_system.data.pack import pack
    from ldm_system.train.runs import AERunConfig, run_autoencoder

    lat = root / "latents"
    if (lat / "manifest.json").exists():
        return lat
    pack("builtin:fashion-mnist", root / "images", image_size=32, split="test", limit=num_images, shard_size=64)
    cfg = load_config(AERunConfig, AE_DEBUG, [f"data.shards={root / 'images'}", f"train.out_dir={root / 'ae'}",
                                               f"train.steps={ae_steps}", "train.checkpoint.every=0", "scale_batches=2"])
    run_autoencoder(cfg)
    encode_shards(root / "ae" / "autoencoder", root / "images", lat, batch_size=64, shard_size=64, progress=False)
    return lat
