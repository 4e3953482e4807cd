"""The `ldm` command. Each subcommand is a thin layer over a library function.

    ldm data pack SRC OUT_DIR          images (folder or builtin:...) → WebDataset shards
    ldm data encode --autoencoder CKPT SHARDS OUT_DIR
    ldm train-ae --config configs/autoencoder/kl-f4.yaml [--set k=v ...] [--resume latest]
    ldm eval-ae --autoencoder CKPT SHARDS
    ldm eval train-classifier TRAIN_SHARDS --test-shards TEST --out DIR
    ldm train --config configs/ldm/fmnist-kl-f4.yaml [--set ...] [--resume latest] [--init-from SRC]
    ldm export CKPT OUT_DIR [--raw]
    ldm sample | invert | edit | interpolate | serve   (see ldm_system/serving/)
    ldm demo                            the whole two-stage pipeline on Fashion-MNIST

Multi-process: `accelerate launch [--use_deepspeed ...] -m ldm_system.cli train ...`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import NoReturn

from ldm_system.config import load_config
from ldm_system.errors import user_message


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML run config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=100 (repeatable)")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    p.add_argument("--resume-weights-only", action="store_true",
                   help="with --resume: load only the checkpoint's consolidated weights (new optimizer state)")


def _load_run_config(cls: type, a: argparse.Namespace):
    """The run config from --config and --set, each value checked against the range table as it is read."""
    from ldm_system.config_ranges import CHECKS  # names every family's config classes

    return load_config(cls, a.config, a.overrides, checks=CHECKS)


# ---- data ---------------------------------------------------------------------------------
def cmd_data_pack(a: argparse.Namespace) -> int:
    from ldm_system.data.pack import pack

    m = pack(a.src, a.out_dir, shard_size=a.shard_size, image_size=a.image_size, seed=a.seed, split=a.split,
             channels=a.channels, limit=a.limit, num_samples=a.num_samples, overwrite=a.overwrite,
             buckets=a.buckets, bucket_step=a.bucket_step, max_aspect=a.max_aspect, caption_column=a.caption_column)
    print(f"packed {m.num_samples} samples into {len(m.shards)} shards in {a.out_dir} "
          f"({m.num_skipped} skipped; classes: {len(m.classes)}; image size: {m.image_size})")
    if "buckets" in m.meta:
        used = [f"{b['width']}x{b['height']}:{b['count']}" for b in m.meta["buckets"] if b["count"]]
        print(f"  buckets (WxH:count): {' '.join(used)}; area lost: mean {m.meta['area_lost']['mean']:.1%}, "
              f"max {m.meta['area_lost']['max']:.1%}")
    if "captions" in m.meta:
        print(f"  captions from: {m.meta['captions']}")
    for s in m.skipped[:10]:
        print(f"  skipped {s.path}: {s.reason}")
    return 0


def cmd_data_encode(a: argparse.Namespace) -> int:
    from ldm_system.data.manifest import read_manifest
    from ldm_system.data.writer import check_out_dir

    # A missing input or a taken output folder shows at once, before torch and the autoencoder load.
    read_manifest(a.shards)
    check_out_dir(Path(a.out_dir), a.overwrite)
    from ldm_system.data.encode import encode_shards

    m = encode_shards(a.autoencoder, a.shards, a.out_dir, batch_size=a.batch_size, shard_size=a.shard_size,
                      device=a.device, overwrite=a.overwrite, text_encoder=a.text_encoder,
                      text_max_length=a.text_max_length)
    print(f"encoded {m.num_samples} samples → {a.out_dir} (latents {m.meta['latent_shape']}, "
          f"scale {m.meta['latent_scale']:.5f})")
    if a.text_encoder:
        print(f"  cached text states of {a.text_encoder} (weights sha256 {m.meta['text_encoder']['weights_sha256'][:12]})")
    return 0


# ---- stage 1 ------------------------------------------------------------------------------
def cmd_train_ae(a: argparse.Namespace) -> int:
    from ldm_system.train.runs import AERunConfig, run_autoencoder

    cfg = _load_run_config(AERunConfig, a)
    out = run_autoencoder(cfg, resume=a.resume, resume_weights_only=a.resume_weights_only)
    print(f"autoencoder: {out}")
    return 0


def cmd_eval_ae(a: argparse.Namespace) -> int:
    from autoencoders.io import load_autoencoder
    from ldm_system.data.stream import StreamConfig, make_loader
    from ldm_system.eval.autoencoder import METRIC_LABELS, eval_autoencoder

    ae, _ = load_autoencoder(a.autoencoder)
    stream = make_loader(StreamConfig(shards=a.shards, batch_size=a.batch_size, num_workers=0, infinite=False,
                                      shuffle_buffer=0, shard_shuffle=False))
    batches = (b.images for i, b in zip(range(a.max_batches), stream))
    report = eval_autoencoder(ae, batches)
    for k, v in report.items():
        print(f"{k:>22s}: {v:.4f}   {METRIC_LABELS.get(k, '')}")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
    return 0


# ---- stage 2 ------------------------------------------------------------------------------
def cmd_train(a: argparse.Namespace) -> int:
    from ldm_system.train.runs import LDMRunConfig, run_ldm

    cfg = _load_run_config(LDMRunConfig, a)
    run_ldm(cfg, resume=a.resume, init_from=a.init_from, resume_weights_only=a.resume_weights_only).close()
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from ldm_system.serving.export import export_checkpoint

    out = export_checkpoint(a.checkpoint, a.out_dir, use_ema=not a.raw)
    print(f"exported to {out}")
    return 0


# ---- baselines and the cross-family report ---------------------------------------------------------
def cmd_train_baseline(a: argparse.Namespace) -> int:
    if a.resume_weights_only:
        raise ValueError("--resume-weights-only is not supported for baselines; use --resume latest")
    from ldm_system.baselines.registry import lookup

    family = lookup(a.family)
    cfg = _load_run_config(family.config, a)
    print(f"{a.family}: model written to {family.run(cfg, resume=a.resume)}")
    return 0


def parse_models(items: list[str]) -> dict[str, str]:
    models: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"expected NAME=MODEL_DIR, got {item!r}")
        if name in models:
            raise ValueError(f"model name {name!r} given twice")
        if not Path(path).exists():
            raise FileNotFoundError(f"{name}: {path} does not exist")
        models[name] = path
    return models


def _step_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected step counts like 50 or 50,25,10, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"step counts must be positive, got {text!r}")
    return counts


def cmd_train_classifier(a: argparse.Namespace) -> int:
    from ldm_system.eval.classifier import train_classifier

    if a.epochs < 1 or a.limit < 1:
        raise ValueError(f"--epochs and --limit must be >= 1, got {a.epochs} and {a.limit}")
    meta = train_classifier(a.train_shards, a.test_shards, a.out, epochs=a.epochs, limit=a.limit)
    print(f"classifier: test accuracy {meta['test_accuracy']:.4f} on {meta['test_images']} images "
          f"({meta['train_images']} training images, {meta['epochs']} epochs, {meta['train_seconds']} s) → {a.out}")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from ldm_system.eval.report import merge_reports, redraw_report, run_report

    if a.redraw or a.merge:
        if a.models:
            raise SystemExit("ldm report --redraw/--merge rewrite the report in --out from report.json files; "
                             "give no models")
        done = merge_reports(a.out, a.merge) if a.merge else redraw_report(a.out)
        print(f"report: {done / 'report.md'} ({'merged' if a.merge else 'redrawn from report.json'})")
        return 0
    if not a.models or not a.test_shards:
        raise SystemExit("ldm report: give NAME=MODEL_DIR models and --test-shards (or --redraw)")
    models = parse_models(a.models)
    run_report(models, a.test_shards, a.out, num=a.num, train_shards=a.train_shards, seed=a.seed,
               ldm_steps=a.ldm_steps, ldm_guidance=a.ldm_guidance, bpd_images=a.bpd_images, classifier=a.classifier,
               feature_net=a.feature_net, cache=a.cache)
    print(f"report: {Path(a.out) / 'report.md'} (figure: {Path(a.out) / 'report.png'})")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from ldm_system.demo import run_demo

    return run_demo(Path(a.out), quick=a.quick)


class _Parser(argparse.ArgumentParser):
    """argparse, with usage mistakes in one line too (it prints the whole usage block first by default).
    Subcommand parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="ldm", description="Two-stage latent diffusion: train, sample, invert, edit.")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--debug", action="store_true", help="show the traceback of every error")
    sub = ap.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="pack and encode datasets").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("pack", help="write WebDataset shards from an image folder or builtin:fashion-mnist / builtin:photos")
    p.add_argument("src")
    p.add_argument("out_dir")
    p.add_argument("--shard-size", type=int, default=5000)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train", help="train or test (built-in datasets)")
    p.add_argument("--channels", type=int, default=None, choices=[1, 3])
    p.add_argument("--limit", type=int, default=None, help="pack at most this many samples")
    p.add_argument("--num-samples", type=int, default=None, help="builtin:photos: number of crops")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--buckets", action="store_true",
                   help="aspect-ratio buckets of about IMAGE_SIZE^2 pixels instead of square crops")
    p.add_argument("--bucket-step", type=int, default=8,
                   help="bucket sides are multiples of this (must divide by the autoencoder's f x UNet downsampling)")
    p.add_argument("--max-aspect", type=float, default=4.0, help="buckets span 1:R to R:1")
    p.add_argument("--caption-column", default="text", help="caption column of metadata.jsonl / metadata.csv")
    p.set_defaults(fn=cmd_data_pack)
    p = data.add_parser("encode", help="encode image shards into latent shards with a stage-1 autoencoder")
    p.add_argument("--autoencoder", required=True)
    p.add_argument("shards")
    p.add_argument("out_dir")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--shard-size", type=int, default=10000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--text-encoder", default=None, metavar="PATH",
                   help="also cache each caption's states from this local CLIP text model (fp16, next to the latent)")
    p.add_argument("--text-max-length", type=int, default=77, help="tokens per caption for --text-encoder")
    p.set_defaults(fn=cmd_data_encode)

    p = sub.add_parser("train-ae", help="stage 1: train a KL or VQ autoencoder")
    _add_config_args(p)
    p.set_defaults(fn=cmd_train_ae)
    p = sub.add_parser("eval-ae", help="PSNR / SSIM / FID-style distance of an autoencoder")
    p.add_argument("--autoencoder", required=True)
    p.add_argument("shards")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-batches", type=int, default=16)
    p.add_argument("--json", default=None, help="also write the report here")
    p.set_defaults(fn=cmd_eval_ae)

    ev = sub.add_parser("eval", help="evaluation tools").add_subparsers(dest="eval_command", required=True)
    p = ev.add_parser("train-classifier", help="train the small classifier that `ldm report --classifier` scores "
                                               "conditional models with; prints its test accuracy")
    p.add_argument("train_shards", help="labelled image shards")
    p.add_argument("--test-shards", required=True, help="labelled held-out shards (its accuracy is measured there)")
    p.add_argument("--out", required=True, help="folder for classifier.safetensors + classifier.json")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit", type=int, default=60000, help="training images used (the first ones)")
    p.set_defaults(fn=cmd_train_classifier)

    p = sub.add_parser("train", help="stage 2: train the diffusion UNet")
    _add_config_args(p)
    p.add_argument("--init-from", default=None, help="fine-tune from a checkpoint, export or diffusers UNet folder")
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("export", help="consolidate a checkpoint into safetensors + diffusers folders")
    p.add_argument("checkpoint")
    p.add_argument("out_dir")
    p.add_argument("--raw", action="store_true", help="export raw weights instead of EMA")
    p.set_defaults(fn=cmd_export)

    try:
        from ldm_system.serving.cli import add_serving_commands
    except ImportError:  # serving is optional at import time; its own commands explain what is missing
        add_serving_commands = None
    if add_serving_commands is not None:
        add_serving_commands(sub)

    p = sub.add_parser("train-baseline", help="train a GAN, normalizing-flow or autoregressive baseline")
    from ldm_system.baselines.registry import FAMILIES  # names only: no family module is imported

    p.add_argument("family", choices=FAMILIES)
    _add_config_args(p)
    p.set_defaults(fn=cmd_train_baseline)
    p = sub.add_parser("report", help="compare trained models of every family on the same test images")
    p.add_argument("models", nargs="*", metavar="NAME=MODEL_DIR",
                   help="an `ldm export` folder, a baseline model folder or a stage-1 autoencoder folder (the VAE "
                        "row), e.g. ldm=outputs/demo/model; FAMILY@MINUTES names (ldm@10) draw training-time curves")
    p.add_argument("--test-shards", default=None, help="held-out image shards (the first --num images are used)")
    p.add_argument("--redraw", action="store_true",
                   help="rewrite report.md and its charts in --out from its report.json, sampling nothing")
    p.add_argument("--merge", action="append", default=[], metavar="REPORT_DIR",
                   help="add another report's rows to the one in --out (scored with the same settings), then redraw")
    p.add_argument("--train-shards", default=None, help="adds a 'data' row: train vs test images, the FD floor")
    p.add_argument("--num", type=int, default=500, help="samples per model and test images for FD")
    p.add_argument("--bpd-images", type=int, default=1000, help="test images for bits/dim (likelihood models)")
    p.add_argument("--ldm-steps", type=_step_counts, default=(50,), metavar="K[,K...]",
                   help="DDIM steps for diffusion models; several (50,25,10) add rows for the FD-vs-sampling-time curve")
    p.add_argument("--ldm-guidance", type=float, default=1.0)
    p.add_argument("--classifier", default=None, help="an `ldm eval train-classifier` folder: adds class accuracy")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="keep each model's score here and read it back while the model's files and the evaluation "
                        "settings are unchanged (a grown comparison re-samples only its new models)")
    p.add_argument("--feature-net", default="effnet-lite0", choices=("effnet-lite0", "inception-v3"),
                   help="features for FD/KID: EfficientNet-Lite0 (offline, not comparable to FID) or Inception-v3 "
                        "(real FID; needs pytorch_fid and its weights on disk, nothing is downloaded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/report")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("demo", help="the two-stage pipeline on Fashion-MNIST, end to end")
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")
    p.set_defaults(fn=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.fn(args) or 0)
    except Exception as e:
        # A user's mistake is one line and exit code 2 (ldm_system/errors.py says which errors are);
        # anything else is our bug and keeps its traceback, as does everything under --debug.
        output = getattr(args, "out_dir", None) or getattr(args, "out", None)
        message = None if args.debug else user_message(e, output)
        if message is None:
            raise
        verb = " ".join(["ldm", args.command, *([args.data_command] if args.command == "data" else [])])
        print(f"{verb}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
