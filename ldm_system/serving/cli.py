"""`ldm sample | invert | edit | interpolate | serve`: thin commands over `LDMPipeline`.

    ldm sample --model M --num 16 --class Sneaker --guidance 3 --out grid.png
    ldm sample --model M --num 4 --prompt "a sandal" --guidance 3 --out grid.png      (text models)
    ldm invert --model M a.png b.png --class Sneaker Bag --fixed-point 2 --out inv/
    ldm invert --model M a.png --prompt "a sneaker" --guidance 3 --null-opt --out inv/   (null-text inversion)
    ldm edit --model M shoe.png --source-class Sneaker --target-class Sandal --keep-steps 10 --out edit/
    ldm edit --model M shoe.png --source-prompt "a sneaker" --target-prompt "a sandal" --out edit/   (text models)
    ldm edit --model M shoe.png --target-class Sandal --strength 0.6 --out edit/      (SDEdit; or --target-prompt)
    ldm edit --model M wide.png --height 64 --width 128 ...      (invert/edit/interpolate: any multiple of the pixel step)
    ldm interpolate --model M a.png b.png --num 8 [--class A B | --prompt TEXT [TEXT]] --out path.png
    ldm serve --model M [--host 127.0.0.1 --port 8000]

Each command parses its flags into a request (`serving/requests.py`) and checks it before the model
loads, so a bad flag costs no weights; the rules and their messages live there, spelled with the
flags below (`CLI`). Bad input raises ValueError / FileNotFoundError, which `ldm_system.cli.main`
turns into one line on stderr and exit code 2. Input images keep their aspect (`LDMPipeline.open_images`:
about the model's pixel count, or --height/--width), resized and cropped only by a thin remainder
(noted on stderr).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Sequence

import torch

from ldm_system.diffusion.samplers import SAMPLERS
from ldm_system.models.conditioning import per_image
from ldm_system.serving.device import resolve_device
from ldm_system.serving.noise_files import load_noise, replay_inversion, save_noise
from ldm_system.serving.requests import (InterpolateRequest, InvertRequest, Names, SampleRequest, SDEditRequest,
                                         edit_or_sdedit)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
KEPT = "default: each image keeps its aspect at about the training pixel count; one given side keeps it too"
CLI: Names = {  # request field → the flag that sets it, for error messages
    "num": "--num", "steps": "--steps", "classes": "--class", "prompts": "--prompt", "guidance": "--guidance",
    "eta": "--eta", "fixed_point_iters": "--fixed-point", "null_optimization": "--null-opt",
    "keep_steps": "--keep-steps", "strength": "--strength", "source_class": "--source-class",
    "target_class": "--target-class", "source_prompt": "--source-prompt", "target_prompt": "--target-prompt",
    "height": "--height", "width": "--width",
}


# ---- files and the model (checked before loading) ------------------------------------------------
def _check_image_out(path: str) -> Path:
    p = Path(path)
    if p.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"--out {path}: expected an image file name ending in one of {', '.join(IMAGE_SUFFIXES)}")
    return p


def _check_inputs(paths: Sequence[str]) -> None:
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"image not found: {p}")


def _load_pipeline(a: argparse.Namespace):
    from ldm_system.serving.pipeline import LDMPipeline

    torch.manual_seed(a.seed)
    return LDMPipeline.from_pretrained(a.model, device=resolve_device(a.device))


def _check_sides(a: argparse.Namespace) -> None:
    for flag, side in (("--height", a.height), ("--width", a.width)):
        if side is not None and side < 1:
            raise ValueError(f"{flag} must be positive, got {side}")


def _load_images(pipe, paths: Sequence[str], a: argparse.Namespace) -> torch.Tensor:
    from ldm_system.serving.pipeline import stack_images

    loaded = pipe.open_images(paths, a.height, a.width)
    for p, im in zip(paths, loaded):
        if im.resized:
            (w, h), (tw, th) = im.original_size, im.size
            print(f"note: {p} is {w}x{h}; resized (aspect kept) and centre-cropped to {tw}x{th}", file=sys.stderr)
    return stack_images(loaded, paths).to(pipe.device)


def expand_classes(pipe, spec: Sequence[str] | None, n: int, flag: str = "--class") -> list | None:
    """CLI class list → one class per image: none, "all" (cycle through the classes), one value for
    every image, or exactly n values. Each value is a class name or an integer id."""
    if list(spec or []) == ["all"]:
        return pipe.conditioning.cycle_classes(n)
    return per_image(spec or None, n, flag, "value, 'all'")


def expand_prompts(prompts: Sequence[str] | None, n: int) -> list[str] | None:
    return per_image(prompts or None, n, "--prompt", "prompt")


def _per_image(pipe, req, n: int):
    """The request with --class / --prompt expanded to one value per image (needs the model for 'all')."""
    return dataclasses.replace(req, classes=expand_classes(pipe, req.classes, n), prompts=expand_prompts(req.prompts, n))


def _stem_names(paths: Sequence[str]) -> list[str]:
    """Unique output stems for the inputs (a.png and dir2/a.png must not overwrite each other)."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        s = Path(p).stem
        seen[s] = seen.get(s, 0) + 1
        names.append(s if seen[s] == 1 else f"{s}_{seen[s]}")
    return names


# ---- commands -----------------------------------------------------------------------------------
def cmd_sample(a: argparse.Namespace) -> int:
    from ldm_system.images import save_grid
    from ldm_system.serving.image_io import save_pngs
    from ldm_system.serving.progress import step_progress

    req = SampleRequest(a.num, a.classes, a.prompts, a.sampler, a.steps, a.eta, a.guidance, a.seed,
                        a.height, a.width).check(names=CLI)
    out = _check_image_out(a.out)
    pipe = _load_pipeline(a)
    req = _per_image(pipe, req, a.num)
    with step_progress(a.steps, f"{a.sampler} {a.steps}", enabled=not a.no_progress) as callback:
        images = pipe.sample(**req.arguments(), callback=callback)
    save_grid(images, out, nrow=a.nrow)
    print(f"wrote {a.num} samples to {out}")
    if a.individual:
        folder = Path(a.individual)
        save_pngs(images, [folder / f"{i:04d}.png" for i in range(a.num)])
        print(f"wrote {a.num} PNGs to {folder}/")
    return 0


def cmd_invert(a: argparse.Namespace) -> int:
    from ldm_system.images import save_grid
    from ldm_system.serving.image_io import save_pngs
    from ldm_system.serving.metrics import autoencoder_psnr
    from ldm_system.serving.progress import invert_steps, step_progress

    req = InvertRequest(a.classes, a.prompts, a.steps, a.fixed_point, a.guidance, a.null_opt).check(names=CLI)
    _check_inputs(a.images)
    _check_sides(a)
    pipe = _load_pipeline(a)
    images = _load_images(pipe, a.images, a)
    req = _per_image(pipe, req, len(a.images))
    with step_progress(invert_steps(a.steps, a.null_opt), f"invert {a.steps}", enabled=not a.no_progress) as callback:
        r = pipe.invert(images, **req.arguments(), callback=callback)
    ae_psnr = autoencoder_psnr(pipe.codec, r)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    names = _stem_names(a.images)
    ids = None if req.classes is None else [pipe.conditioning.class_id(c) for c in req.classes]
    meta = {"images": json.dumps([str(p) for p in a.images]), "steps": str(a.steps), "model": str(a.model),
            "classes": json.dumps(ids), "prompts": json.dumps(req.prompts), "guidance": str(a.guidance),
            "null_optimization": str(a.null_opt)}
    noise = save_noise(out / f"x_T.{a.noise_format}", r.x_T, meta)
    if r.null_embeddings is not None:  # replay: ldm_system.serving.noise_files.replay_inversion(pipe, out)
        nulls = save_noise(out / f"null_embeddings.{a.noise_format}", r.null_embeddings, meta, key="null_embeddings")
        noise = f"{noise}, {nulls}"
    save_pngs(r.reconstruction, [out / f"{n}_recon.png" for n in names])
    save_grid(torch.cat([r.images, r.reconstruction]), out / "comparison.png", nrow=len(names))
    rows = [{"image": str(p), "psnr": r.psnr[i], "ssim": r.ssim[i], "latent_mse": r.latent_mse[i],
             "autoencoder_psnr": ae_psnr[i]} for i, p in enumerate(a.images)]
    (out / "metrics.json").write_text(json.dumps({"steps": a.steps, "fixed_point_iters": a.fixed_point,
                                                  "guidance": a.guidance, "null_optimization": a.null_opt,
                                                  "images": rows}, indent=2))
    width = max(len(n) for n in names)
    print(f"{'image':<{width}}  PSNR dB  SSIM    latent MSE  (autoencoder alone: PSNR dB)")
    for n, row in zip(names, rows):
        print(f"{n:<{width}}  {row['psnr']:7.2f}  {row['ssim']:.4f}  {row['latent_mse']:.3e}   ({row['autoencoder_psnr']:.2f})")
    print(f"wrote {noise}, reconstructions and comparison.png (top: input, bottom: reconstruction) to {out}/")
    return 0


def cmd_edit(a: argparse.Namespace) -> int:
    from ldm_system.images import save_grid
    from ldm_system.serving.image_io import save_pngs
    from ldm_system.serving.progress import step_progress

    req = edit_or_sdedit(source_class=a.source_class, target_class=a.target_class, source_prompt=a.source_prompt,
                         target_prompt=a.target_prompt, keep_steps=a.keep_steps, strength=a.strength,
                         steps=a.steps, guidance=a.guidance, seed=a.seed, names=CLI)
    _check_inputs(a.images)
    _check_sides(a)
    pipe = _load_pipeline(a)
    images = _load_images(pipe, a.images, a)
    sdedit_mode = isinstance(req, SDEditRequest)
    total, desc = (int(a.steps * a.strength), f"sdedit {a.strength}") if sdedit_mode else (2 * a.steps, f"edit {a.steps}")
    with step_progress(total, desc, enabled=not a.no_progress) as callback:
        verb = pipe.sdedit if sdedit_mode else pipe.edit
        edited = verb(images, **req.arguments(), callback=callback)
    out = Path(a.out)
    names = _stem_names(a.images)
    save_pngs(edited, [out / f"{n}_edit.png" for n in names])
    save_grid(torch.cat([images, edited]), out / "comparison.png", nrow=len(names))
    print(f"wrote {len(names)} edited image(s) and comparison.png (top: input, bottom: edit) to {out}/")
    return 0


def cmd_interpolate(a: argparse.Namespace) -> int:
    from ldm_system.images import save_grid
    from ldm_system.serving.progress import step_progress

    req = InterpolateRequest(a.num, a.steps, a.classes, a.prompts).check(names=CLI)
    out = _check_image_out(a.out)
    _check_inputs([a.image_a, a.image_b])
    _check_sides(a)
    pipe = _load_pipeline(a)
    images = _load_images(pipe, [a.image_a, a.image_b], a)
    req = _per_image(pipe, req, 2)
    with step_progress(2 * a.steps, f"interpolate {a.num}", enabled=not a.no_progress) as callback:
        frames = pipe.interpolate(images[:1], images[1:], **req.arguments(), callback=callback)
    save_grid(frames, out, nrow=a.num)
    print(f"wrote {a.num} frames (slerp between the inverted latents) to {out}")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from ldm_system.serving.server import BatchingConfig, ServerLimits, serve

    if not 1 <= a.port <= 65535:  # uvicorn would fail deep inside with an OverflowError
        raise ValueError(f"--port must lie in 1..65535, got {a.port}")
    for flag in SERVE_LIMIT_FLAGS:
        value = getattr(a, flag[2:].replace("-", "_"))
        if not value > 0:
            raise ValueError(f"{flag} must be positive, got {value}")
    if a.batch_window_ms < 0:
        raise ValueError(f"--batch-window-ms must be >= 0, got {a.batch_window_ms}")
    device = resolve_device(a.device)  # before the model loads: a wrong --device costs no weights
    limits = ServerLimits(max_steps=a.max_steps, max_batch=a.max_batch, max_input_side=a.max_input_side,
                          max_input_pixels=a.max_input_pixels, max_body_bytes=a.max_body_bytes,
                          max_queue=a.max_queue, request_timeout_s=a.request_timeout)
    batching = BatchingConfig(window_ms=a.batch_window_ms, max_images=a.batch_images)
    serve(a.model, host=a.host, port=a.port, limits=limits, device=device, token=server_token(a.token_file),
          batching=batching, shutdown_timeout_s=a.shutdown_timeout)
    return 0


SERVE_LIMIT_FLAGS = ("--max-steps", "--max-batch", "--max-input-side", "--max-input-pixels", "--max-body-bytes",
                     "--max-queue", "--request-timeout", "--shutdown-timeout", "--batch-images")


def server_token(token_file: str | None) -> str | None:
    """The bearer token from --token-file (first line) or LDM_SERVE_TOKEN; None: no authentication.
    Not a command-line value, which any local user could read in the process list."""
    import os

    if token_file is not None:
        path = Path(token_file)
        if not path.is_file():
            raise FileNotFoundError(f"--token-file {token_file}: no such file")
        lines = path.read_text().strip().splitlines()
        token = lines[0].strip() if lines else ""
        if not token:
            raise ValueError(f"--token-file {token_file} is empty")
        return token
    return os.environ.get("LDM_SERVE_TOKEN") or None


# ---- parser -------------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser, steps: int = 50) -> None:
    p.add_argument("--model", required=True, help="an `ldm export` folder or a diffusers pipeline folder")
    p.add_argument("--steps", type=int, default=steps, help="sampler steps (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (DDIM inversion and class edits are deterministic)")
    p.add_argument("--device", default="auto", help="auto (default: cuda when present, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _sample_command(sub) -> None:
    p = sub.add_parser("sample", help="draw images from an exported model")
    _common(p)
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--class", dest="classes", nargs="+", metavar="C",
                   help="class name or id: one for all images, one per image, or 'all' to cycle (default: unconditional)")
    p.add_argument("--prompt", dest="prompts", nargs="+", metavar="TEXT",
                   help="text-conditioned models: one prompt for all images or one per image (default: empty prompt)")
    p.add_argument("--sampler", default="ddim", choices=sorted(SAMPLERS))
    p.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity (0: deterministic)")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1: off)")
    p.add_argument("--nrow", type=int, default=None, help="images per grid row")
    p.add_argument("--out", default="samples.png", help="grid image")
    p.add_argument("--individual", default=None, metavar="DIR", help="also write one PNG per image here")
    _size_flags(p, "default: the training size")
    p.set_defaults(fn=cmd_sample)


def _size_flags(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--height", type=int, default=None, help="image height in pixels, a multiple of the model's "
                   f"pixel step ({default})")
    p.add_argument("--width", type=int, default=None, help="image width in pixels (as --height)")


def _invert_command(sub) -> None:
    p = sub.add_parser("invert", help="DDIM-invert images to noise x_T and reconstruct them")
    _common(p)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--class", dest="classes", nargs="+", metavar="C",
                   help="the images' class(es), as for sample (list the images first: --class takes every value after it)")
    p.add_argument("--prompt", dest="prompts", nargs="+", metavar="TEXT",
                   help="text-conditioned models: the images' caption(s), one for all or one per image (default: empty prompt)")
    p.add_argument("--fixed-point", type=int, default=0, metavar="K", help="fixed-point refinements per step")
    p.add_argument("--guidance", type=float, default=1.0, help="reconstruct under this guidance scale")
    p.add_argument("--null-opt", action="store_true",
                   help="null-condition (class models) / null-text (text models) inversion: fit the guided "
                        "reconstruction; also writes the fitted null_embeddings next to x_T")
    p.add_argument("--noise-format", default="safetensors", choices=["safetensors", "pt"])
    _size_flags(p, KEPT)
    p.add_argument("--out", default="inversion", help="output folder")
    p.set_defaults(fn=cmd_invert)


def _edit_command(sub) -> None:
    p = sub.add_parser("edit", help="class edit by inversion, or SDEdit with --strength")
    _common(p)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--source-class", default=None, help="the image's class (class edits)")
    p.add_argument("--source-prompt", default=None, metavar="TEXT",
                   help="text models: a caption of the image (default: the empty prompt, i.e. unconditional inversion)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-class", default=None, help="class models: the class to edit towards")
    target.add_argument("--target-prompt", default=None, metavar="TEXT", help="text models: the caption to edit towards")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--keep-steps", type=int, default=None,
                      help="first steps that follow the source class (layout); default steps // 5")
    mode.add_argument("--strength", type=float, default=None, help="SDEdit mode: noise level in (0, 1]")
    p.add_argument("--guidance", type=float, default=1.0)
    _size_flags(p, KEPT)
    p.add_argument("--out", default="edit", help="output folder")
    p.set_defaults(fn=cmd_edit)


def _interpolate_command(sub) -> None:
    p = sub.add_parser("interpolate", help="slerp between two inverted images")
    _common(p)
    p.add_argument("image_a", metavar="IMAGE_A")
    p.add_argument("image_b", metavar="IMAGE_B")
    p.add_argument("--num", type=int, default=8, help="frames, ends included")
    p.add_argument("--class", dest="classes", nargs="+", metavar="C", help="one class for both, or one each")
    p.add_argument("--prompt", dest="prompts", nargs="+", metavar="TEXT",
                   help="text models: one prompt for both, or one each (default: empty prompt)")
    _size_flags(p, KEPT)
    p.add_argument("--out", default="interpolation.png")
    p.set_defaults(fn=cmd_interpolate)


def _serve_command(sub) -> None:
    p = sub.add_parser("serve", help="HTTP JSON server (sample / invert / edit / interpolate)")
    p.add_argument("--model", required=True)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto", help="auto (default: cuda when present, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--max-steps", type=int, default=200, help="sampler/inversion steps per request (default %(default)s)")
    p.add_argument("--max-batch", type=int, default=16, help="images (or frames) per request (default %(default)s)")
    p.add_argument("--max-input-side", type=int, default=2048, help="uploaded image side, read from its header "
                   "before decoding (default %(default)s)")
    p.add_argument("--max-input-pixels", type=int, default=2048 * 2048,
                   help="uploaded image width x height, read from its header: decompression bombs get 413 "
                   "(default %(default)s)")
    p.add_argument("--max-body-bytes", type=int, default=32 * 1024 * 1024,
                   help="request body, counted while it streams in (chunked too): 413 (default %(default)s)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests waiting for the model; more get 503 + Retry-After (default %(default)s)")
    p.add_argument("--request-timeout", type=float, default=300.0, metavar="S",
                   help="seconds a request may wait and run; then it stops at its next step: 504 (default %(default)s)")
    p.add_argument("--shutdown-timeout", type=float, default=10.0, metavar="S",
                   help="on SIGTERM, seconds the requests in flight get to finish before they are cancelled "
                   "(default %(default)s)")
    p.add_argument("--batch-window-ms", type=float, default=15.0, metavar="MS",
                   help="how long a sample request waits for compatible ones to share its UNet batch "
                   "(default %(default)s; 0: merge only what is already queued)")
    p.add_argument("--batch-images", type=int, default=32,
                   help="images in one merged UNet batch (default %(default)s; 1: one request at a time)")
    p.add_argument("--token-file", default=None, metavar="F",
                   help="require `Authorization: Bearer <first line of F>` (or set LDM_SERVE_TOKEN)")
    p.set_defaults(fn=cmd_serve)



def add_serving_commands(sub) -> None:
    _sample_command(sub)
    _invert_command(sub)
    _edit_command(sub)
    _interpolate_command(sub)
    _serve_command(sub)

__all__ = ["CLI", "add_serving_commands", "expand_classes", "expand_prompts", "load_noise", "replay_inversion",
           "save_noise", "server_token"]
