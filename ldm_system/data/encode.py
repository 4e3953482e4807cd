"""`ldm data encode`: image shards → latent shards through a frozen stage-1 autoencoder.

What is stored (the choice, and why):

- `latent.npy`: the scaled latent s·z of each image, float32 (c, h, w). For KL it is s·mean (the
  posterior mode); for VQ, s·(quantised code vectors). Stage 2 trains on it directly.
- KL only: `mean.npy` = s·mean and `logvar.npy` = logvar + 2·log s, i.e. the posterior in the
  *scaled* space. With `data.sample_posterior: true` the stream draws a fresh z ~ N(mean, e^logvar)
  each epoch, which is what LDM trains on; the posterior is kept so that this stays possible after
  encoding once.
- `cls`, `txt` and (bucketed shards) the `json` placement record are carried over unchanged, keys
  are preserved.

The manifest's `meta` records the autoencoder path, its kind, the latent scales (`latent_scale`: the
mode's, which `latent.npy`, `mean.npy` and `logvar.npy` are scaled by; KL: `sample_latent_scale`, the
one stage 2 uses with `data.sample_posterior`; see ldm_system/artifacts/latent_scale.py) and the
latent shape, so stage 2 never needs a literal scale. A diffusers VAE without a `scaling_factor` (or
with diffusers' default that does not fit) gets its scales measured on the images being encoded.

Bucketed image shards (`ldm data pack --buckets`) keep their shapes: the stream hands out one bucket
per batch, each latent is stored at its own (c, h/f, w/f), and `meta["buckets"]` lists the latent
buckets with their counts (so the stream batches them by bucket again). `latent_shape` is then the
base (c, S/f, S/f), and `bucket_step` / `pixel_buckets` keep the pixel-side facts.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ldm_system.data.manifest import Manifest, read_manifest
from ldm_system.data.stream import StreamConfig, make_loader
from ldm_system.data.text_cache import TEXT_ENTRY, TextCache
from ldm_system.data.writer import ShardWriter, check_out_dir


def _npy(a: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a.detach().cpu().float().numpy(), allow_pickle=False)
    return buf.getvalue()


@torch.no_grad()
def encode_shards(
    autoencoder: str | Path,
    shards: str | Path,
    out_dir: str | Path,
    batch_size: int = 64,
    shard_size: int = 5000,
    num_workers: int = 0,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
    text_encoder: str | Path | None = None,
    text_max_length: int = 77,
) -> Manifest:
    """With `text_encoder` (a local CLIP text model folder), each caption's states are cached next to
    its latent (text_cache.py)."""
    from ldm_system.artifacts.latent_scale import load_stage1

    src = read_manifest(shards)
    if src.kind != "images":
        raise ValueError(f"{shards}: holds {src.kind}, `ldm data encode` needs image shards")
    check_out_dir(Path(out_dir), overwrite)  # before loading the autoencoder: a mistake shows at once

    def stream():
        return make_loader(StreamConfig(shards=str(shards), batch_size=batch_size, num_workers=num_workers,
                                        infinite=False, shuffle_buffer=0, shard_shuffle=False))

    # a diffusers folder without a (fitting) scaling_factor gets both scales measured on these images
    ae, meta, scales = load_stage1(autoencoder, lambda: iter(stream()), device=device)
    cfg = meta.config
    if src.channels != cfg.in_channels:
        raise ValueError(f"{shards} holds {src.channels}-channel images; the autoencoder expects {cfg.in_channels}")
    pixel_buckets = src.meta.get("buckets")
    if pixel_buckets is not None:
        odd = [f"{b['width']}x{b['height']}" for b in pixel_buckets if b["count"] and (b["width"] % cfg.f or b["height"] % cfg.f)]
        if odd:
            raise ValueError(f"{shards}: buckets {', '.join(odd)} are not multiples of the autoencoder's f={cfg.f}; "
                             f"repack with a --bucket-step that is a multiple of {cfg.f}")
    elif src.image_size is None or src.image_size % cfg.f:
        raise ValueError(f"{shards}: image size {src.image_size} is not a multiple of the autoencoder's f={cfg.f}")
    scale = scales.mode  # latent.npy = z · scale: the posterior mode at unit std
    text = TextCache(text_encoder, text_max_length, device) if text_encoder else None
    log_s2 = 2.0 * math.log(scale)
    bar = tqdm(total=src.num_samples, desc="encode", disable=not progress)
    latent_counts: dict[tuple[int, int], int] = {}  # (w, h) of the latents -> samples
    with ShardWriter(Path(out_dir), shard_size, overwrite=overwrite) as w:
        for batch in stream():
            images = batch.images.to(device).float()
            entries = []
            if cfg.kind == "kl":
                post = ae.encode(images)
                mean, logvar = post.mean * scale, post.logvar + log_s2
                latent = mean
                for i in range(len(batch.keys)):
                    entries.append({"latent.npy": _npy(latent[i]), "mean.npy": _npy(mean[i]), "logvar.npy": _npy(logvar[i])})
            else:
                latent = ae.encode_latents(images) * scale
                entries = [{"latent.npy": _npy(latent[i])} for i in range(len(batch.keys))]
            text_states = text.entries(batch.captions) if text is not None else []
            lh, lw = latent.shape[-2:]
            latent_counts[(lw, lh)] = latent_counts.get((lw, lh), 0) + len(batch.keys)
            for i, key in enumerate(batch.keys):
                e = entries[i]
                label = int(batch.labels[i])
                if label >= 0:
                    e["cls"] = str(label).encode()
                if batch.captions[i]:
                    e["txt"] = batch.captions[i].encode("utf-8")
                if text is not None:
                    e[TEXT_ENTRY] = text_states[i]
                if batch.placements and batch.placements[i]:
                    e["json"] = batch.placements[i]  # original size and crop, for size conditioning
                w.write(key, e)
            bar.update(len(batch.keys))
        bar.close()
        if text is not None:
            text.write_null(Path(out_dir))
        latent_shape = list(latent.shape[1:])
        bucket_meta = {}
        if pixel_buckets is not None:
            base = int(src.meta["base_size"]) // cfg.f
            latent_shape = [latent_shape[0], base, base]
            bucket_meta = {
                "buckets": [{"width": lw, "height": lh, "count": n} for (lw, lh), n in sorted(latent_counts.items())],
                "pixel_buckets": pixel_buckets,
                "bucket_step": src.meta.get("bucket_step"),
            }
        return w.write_manifest(
            source=f"encode:{src.source}",
            split=src.split,
            kind="latents",
            image_size=None if pixel_buckets is not None else latent_shape[-1],
            channels=latent_shape[0],
            classes=src.classes,
            seed=src.seed,
            meta={
                "autoencoder": str(Path(autoencoder).resolve()),
                "autoencoder_kind": cfg.kind,
                **scales.manifest_meta(),  # latent_scale (mode), sample_latent_scale (KL), measured or stored
                "latent_shape": latent_shape,
                "image_size": src.image_size,
                "image_channels": src.channels,
                "images": str(Path(shards).resolve()),
                **bucket_meta,
                **({"text_encoder": text.identity} if text is not None else {}),
            },
        )
