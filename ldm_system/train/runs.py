"""Typed run configs for `ldm train-ae` and `ldm train`, and the functions that assemble a run.

A run config is one YAML file with one section per component; each component receives only its
own section:

    data:  StreamConfig      train: EngineConfig
    (stage 1)  model / loss / disc / optim        (stage 2)  unet / diffusion / optim / preview / text
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from autoencoders.config import AutoencoderConfig, DiscriminatorConfig, LossConfig, Stage1Config, Stage1OptimConfig
from ldm_system.data.buckets import check_latent_buckets
from ldm_system.data.manifest import read_manifest
from ldm_system.artifacts.latent_scale import LatentScales
from ldm_system.data.stream import StreamConfig, make_loader
from ldm_system.diffusion.config import DiffusionConfig
from ldm_system.models.latent import LatentCodec
from ldm_system.models.lora import LoRAConfig
from ldm_system.models.text import TextEncoder, TextEncoderConfig
from ldm_system.models.unet import UNetConfig
from ldm_system.train.diffusion_task import DiffusionTask, OptimConfig, PreviewConfig
from ldm_system.train.engine import Trainer
from ldm_system.train.engine_config import EngineConfig


@dataclass(frozen=True)
class AERunConfig:
    data: StreamConfig
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    disc: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    optim: Stage1OptimConfig = field(default_factory=Stage1OptimConfig)
    train: EngineConfig = field(default_factory=EngineConfig)
    scale_batches: int = 8  # batches used to measure the latent scale after training

    def stage1(self) -> Stage1Config:
        return Stage1Config(model=self.model, loss=self.loss, disc=self.disc, optim=self.optim)


@dataclass(frozen=True)
class LDMRunConfig:
    data: StreamConfig
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    train: EngineConfig = field(default_factory=EngineConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)  # used when unet.conditioning is "text"
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # rank > 0: train LoRA adapters only (models/lora.py)
    # Stage-1 checkpoint for *image* shards (online encoding). Latent shards name their own
    # autoencoder in the manifest; "" with image shards means pixel-space diffusion.
    autoencoder: str = ""


def stream_factory(cfg: StreamConfig):
    return lambda rank, world: make_loader(cfg, rank=rank, world_size=world)


# ---- stage 1 ------------------------------------------------------------------------------
def run_autoencoder(cfg: AERunConfig, resume: str | None = None, resume_weights_only: bool = False) -> Path:
    """Train, then (rank 0) measure the latent scale and write `run/autoencoder/` (+ diffusers export)."""
    from autoencoders.factory import measure_latent_scales
    from autoencoders.io import export_diffusers, save_autoencoder
    from autoencoders.stage1 import Stage1Task

    task = Stage1Task(cfg.stage1())
    trainer = Trainer(task, stream_factory(cfg.data), cfg.train, run_config=cfg, micro_batch=cfg.data.batch_size,
                      resume=resume, resume_weights_only=resume_weights_only)
    trainer.fit()
    out = Path(cfg.train.out_dir) / "autoencoder"
    acc = trainer.accelerator
    if acc.is_main_process:
        ae = trainer.raw["ae"].eval()
        probe = dataclasses.replace(cfg.data, num_workers=0, infinite=False, flip=False)
        # both: stage 2 trains on the posterior mode, or on samples with data.sample_posterior
        scales = measure_latent_scales(ae, iter(make_loader(probe)), max_batches=cfg.scale_batches)
        save_autoencoder(ae, cfg.model, scales["mode"], out, scales.get("sample"))
        if cfg.model.kind == "kl":
            export_diffusers(ae, scales["mode"], out / "diffusers")
        trainer.log.info(f"latent scale {', '.join(f'{k} {v:.5f}' for k, v in scales.items())}; "
                         f"autoencoder written to {out}")
    trainer.close()
    return out


# ---- stage 2 ------------------------------------------------------------------------------
def data_codec(cfg: LDMRunConfig) -> tuple[LatentCodec, str, list[int], dict]:
    """(codec, input kind, latent shape (c, h, w), provenance) from the data manifest and `cfg.autoencoder`."""
    codec, kind, shape, ae_path, manifest = _data_codec(cfg)
    info = {"classes": list(manifest.classes), "autoencoder": ae_path}
    if buckets := manifest.meta.get("buckets"):  # in latent pixels: what previews draw at (diffusion_preview.py)
        f = 1 if kind == "latent" or codec.is_identity else codec.ae.cfg.f
        info["buckets"] = [{"width": b["width"] // f, "height": b["height"] // f, "count": b["count"]} for b in buckets]
    return codec, kind, shape, info


def _data_codec(cfg: LDMRunConfig):
    manifest = read_manifest(_manifest_folder(cfg.data.shards))
    if manifest.kind == "latents":
        ae_path = manifest.meta.get("autoencoder", "")
        if cfg.autoencoder and Path(cfg.autoencoder).resolve() != Path(ae_path).resolve():
            raise ValueError(f"latent shards were encoded with {ae_path}, but autoencoder={cfg.autoencoder}")
        scales = LatentScales.of_manifest(manifest.meta)  # latent.npy = z · scales.mode
        used = scales.for_posterior(cfg.data.sample_posterior)  # unit std for what this run reads
        ae = None
        if ae_path and Path(ae_path).exists():  # else previews show raw latents
            from autoencoders.io import load_autoencoder

            ae, meta = load_autoencoder(ae_path, scale_from=lambda _: scales.mode)  # a folder without one: measured
            if not scales.measured and abs(meta.latent_scale - scales.mode) > 1e-6 * scales.mode:
                raise ValueError(f"manifest latent scale {scales.mode} differs from the autoencoder's {meta.latent_scale}")
        codec = LatentCodec(ae, used, sample_posterior=cfg.data.sample_posterior, stored_scale=scales.mode)
        return codec, "latent", list(manifest.meta["latent_shape"]), ae_path, manifest
    if manifest.image_size is None:
        raise ValueError(f"{cfg.data.shards}: images of mixed sizes; pack with --image-size")
    size = cfg.data.image_size or manifest.image_size
    if not cfg.autoencoder:
        return LatentCodec.identity(), "image", [cfg.data.channels or manifest.channels, size, size], "", manifest
    from ldm_system.artifacts.latent_scale import load_stage1

    probe = dataclasses.replace(cfg.data, num_workers=0, infinite=False, flip=False)
    ae, _, scales = load_stage1(cfg.autoencoder, lambda: iter(make_loader(probe)))
    codec = LatentCodec(ae, scales.for_posterior(True), sample_posterior=True)  # online encoding draws samples
    f, c = codec.ae.cfg.f, codec.ae.cfg.latent_channels
    return codec, "image", [c, size // f, size // f], str(Path(cfg.autoencoder).resolve()), manifest


def _manifest_folder(spec: str) -> str:
    p = Path(spec)
    if p.is_dir() or p.name == "manifest.json":
        return str(p)
    raise ValueError(f"stage 2 needs a shard folder with manifest.json (got {spec!r}) to know the latent format")


def check_unet_fits(unet: UNetConfig, latent_shape: list[int]) -> None:
    c, h, w = latent_shape
    problems = []
    if unet.in_channels != c:
        problems.append(f"unet.in_channels={unet.in_channels} but the data has {c} channels")
    # sample_size is the base size; the UNet trains on any shape its downsampling divides (buckets).
    down = 2 ** (len(unet.block_out_channels) - 1)
    if h % down or w % down:
        problems.append(f"the data's latents are {h}x{w}, not divisible by the UNet's downsampling {down}")
    if problems:
        raise ValueError("the UNet does not fit the data: " + "; ".join(problems))


def build_text_encoder(cfg: LDMRunConfig) -> TextEncoder | None:
    """The frozen text encoder for text models. Loaded before the Trainer builds the Accelerator, so a
    ZeRO-3 run never partitions it."""
    if cfg.unet.conditioning != "text":
        if cfg.text.path:
            raise ValueError(f"text.path is set but unet.conditioning is {cfg.unet.conditioning!r}; "
                             "a text encoder is only used with conditioning 'text'")
        return None
    return TextEncoder.from_config(cfg.text)


def cached_null_text(cfg: LDMRunConfig) -> torch.Tensor | None:
    """The shards' cached null text states (1, L, D) when a text model trains from cached states
    (data/text_cache.py), else None: the text encoder then runs every step."""
    if cfg.unet.conditioning != "text":
        return None
    from ldm_system.data.text_cache import training_null_text

    spec = Path(cfg.data.shards)
    folder = spec.parent if spec.name == "manifest.json" else spec
    return training_null_text(folder, read_manifest(_manifest_folder(cfg.data.shards)), cfg.text.path,
                              cfg.text.max_length, cfg.data.shuffle_tags)


def run_ldm(cfg: LDMRunConfig, resume: str | None = None, init_from: str | None = None,
            resume_weights_only: bool = False) -> Trainer:
    from ldm_system.train.finetune import apply_init, load_init_unet, read_init_source

    source = read_init_source(init_from) if init_from else None
    if source is not None:  # a diffusers folder fixes the UNet, the forward process and the text encoder
        cfg = apply_init(cfg, source)
    codec, kind, shape, info = data_codec(cfg)
    check_unet_fits(cfg.unet, shape)
    down = 2 ** (len(cfg.unet.block_out_channels) - 1)
    check_latent_buckets(read_manifest(_manifest_folder(cfg.data.shards)).meta, down)  # names a step that works
    init = load_init_unet(source, cfg.unet) if source is not None else None
    task = DiffusionTask(cfg.unet, cfg.diffusion, cfg.optim, codec, kind, cfg.preview, init_unet=init, info=info,
                         text=build_text_encoder(cfg), lora=cfg.lora, cached_null=cached_null_text(cfg))
    trainer = Trainer(task, stream_factory(cfg.data), cfg.train, run_config=cfg, micro_batch=cfg.data.batch_size,
                      resume=resume, resume_weights_only=resume_weights_only)
    trainer.fit()
    return trainer


__all__ = ["AERunConfig", "LDMRunConfig", "run_autoencoder", "run_ldm", "data_codec", "check_unet_fits",
           "build_text_encoder", "cached_null_text"]
