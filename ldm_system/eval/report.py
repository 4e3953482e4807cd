"""One report for every model family: `ldm report NAME=MODEL ... --test-shards DIR --out DIR`.

Every model is seen through the `GenerativeModel` interface (`ldm_system/eval/protocols.py`): the
LDM through its export folder (`eval/ldm_generator.py`), the baselines through their model folders,
the VAE through a stage-1 autoencoder folder (`eval/vae_generator.py`: prior samples, decoded).
The same held-out images, the same feature network and the same number of samples go into every row:

- FD: Fréchet distance between EfficientNet-Lite0 features of `num` samples and of `num` test
  images (NOT comparable to Inception FID);
- KID: unbiased MMD² in the same feature space (Bińkowski et al. 2018), mean ± std over 50 random
  subsets of half the samples; unlike FD it carries no bias from the sample count;
- precision / recall: Kynkäänniemi et al. 2019 in the same feature space (k = 3);
- class accuracy (with `--classifier`, for class-conditional models): how many samples our own
  classifier (`eval/classifier.py`) assigns to the class they were drawn for;
- bits/dim of the 8-bit test images, for families with a likelihood (flow, autoregressive);
- seconds per sampled image, measured around `sample` alone.

A "data" row compares `num` training images with the test images: the floor that finite samples
put under FD at this `num`.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, ImageDraw

from ldm_system.baselines import registry
from ldm_system.baselines.common import MODEL_JSON
from ldm_system.data.stream import first_images
from ldm_system.eval.curves import budget_table, seed_of, seed_table, split_budget, write_curves
from ldm_system.eval.features import EFFNET_FD_LABEL, build_feature_extractor
from ldm_system.eval.verdict import sharpness, verdict_table
from ldm_system.eval.ldm_generator import LDMGenerator
from ldm_system.eval.metrics import frechet_distance_from_features, kernel_inception_distance, precision_recall
from ldm_system.eval.classifier import SmallClassifier, conditional_accuracy, load_classifier
from ldm_system.eval.protocols import ClassConditionalModel, GenerativeModel, LikelihoodModel
from ldm_system.eval.score_cache import ScoreCache, score_key
from ldm_system.eval.tradeoff import tradeoff_table, write_tradeoff
from ldm_system.eval.vae_generator import VAEPriorGenerator
from ldm_system.artifacts.kinds import LDM_META, MODEL_INDEX, STAGE1_META
from ldm_system.images import make_grid, split_grid


@dataclass
class Row:
    name: str
    family: str
    fd: float
    precision: float
    recall: float
    bits_per_dim: float | None
    seconds_per_image: float
    num_samples: int
    kid: float = math.nan
    kid_std: float = math.nan
    step: int | None = None  # optimizer steps the model was trained for, when its folder says
    class_accuracy: float | None = None  # samples the classifier assigns to their class (conditional models)
    sharpness: float | None = None  # mean |Laplacian| of the samples (eval/verdict.py)
    setting: str = ""  # a sampling setting other than the model's main one ("DDIM-10")
    recon_psnr: float | None = None  # latent diffusion: test images through its autoencoder, dB (the ceiling)
    latent_shape: list[int] | None = None  # diffusion models: the (C, H, W) the UNet denoises
    error: str | None = None  # why this model could not be scored (the others still are)


# ---- loading -------------------------------------------------------------------------------------
def load_generator(path: str | Path, ldm_steps: int = 50, ldm_guidance: float = 1.0,
                   image_size: int | None = None) -> tuple[str, GenerativeModel]:
    """(family, generator) for an `ldm export` folder, a baseline model/run folder, or a stage-1
    autoencoder folder (the VAE row: prior samples at `image_size`, the test images' size)."""
    path = Path(path)
    if (path / LDM_META).exists() or (path / MODEL_INDEX).exists():  # ours, or a diffusers pipeline folder
        return "ldm", LDMGenerator(path, steps=ldm_steps, guidance=ldm_guidance)
    if (path / STAGE1_META).exists():
        if image_size is None:
            raise ValueError(f"{path}: an autoencoder samples at any size; give the image size (the test images')")
        return "vae", VAEPriorGenerator(path, image_size)
    meta_file = path / MODEL_JSON if (path / MODEL_JSON).exists() else path / "model" / MODEL_JSON
    if not meta_file.exists():
        raise FileNotFoundError(f"{path}: neither an `ldm export` folder (ldm.json) nor a baseline model folder "
                                f"({MODEL_JSON}) nor an autoencoder folder ({STAGE1_META})")
    family = json.loads(meta_file.read_text()).get("family")
    if family not in registry.FAMILIES:
        raise ValueError(f"{meta_file}: unknown family {family!r}; known: {', '.join(registry.FAMILIES)}")
    return family, registry.lookup(family).load(str(meta_file.parent))


# ---- measuring -----------------------------------------------------------------------------------
def _features(net, images: torch.Tensor, batch: int = 100) -> torch.Tensor:
    return torch.cat([net(b) for b in images.split(batch)])


def _sample(gen: GenerativeModel, num: int, seed: int, batch: int) -> tuple[torch.Tensor, float, torch.Tensor]:
    """(num, C, H, W) samples in [-1, 1], the wall seconds spent in `sample` per image, and the class
    each was drawn for (-1 for models without classes)."""
    out, labels, seconds = [], [], 0.0
    k = gen.num_classes if isinstance(gen, ClassConditionalModel) else 0
    for i, start in enumerate(range(0, num, batch)):
        n = min(batch, num - start)
        t0 = time.perf_counter()
        x = gen.sample(n, seed=seed + i)
        seconds += time.perf_counter() - t0
        out.append(x.detach().float().cpu())
        labels.append(torch.arange(n) % k if k else torch.full((n,), -1))
    images = torch.cat(out)
    if images.shape[1:] != tuple(gen.image_shape) or not torch.isfinite(images).all():
        raise ValueError(f"generator returned {tuple(images.shape)} (finite: {bool(torch.isfinite(images).all())}), "
                         f"expected (N, {', '.join(map(str, gen.image_shape))})")
    return images.clamp(-1, 1), seconds / num, torch.cat(labels)


def evaluate(name: str, family: str, gen: GenerativeModel, test: torch.Tensor, test_feats: torch.Tensor, net,
             num: int, seed: int = 0, batch: int = 50, bpd_images: int = 1000,
             classifier: SmallClassifier | None = None) -> tuple[Row, torch.Tensor]:
    if tuple(gen.image_shape) != tuple(test.shape[1:]):
        raise ValueError(f"{name} makes {tuple(gen.image_shape)} images, the test set holds {tuple(test.shape[1:])}")
    samples, spi, labels = _sample(gen, num, seed, batch)
    feats = _features(net, samples)
    pr = precision_recall(test_feats, feats)
    bpd = None
    if isinstance(gen, LikelihoodModel):
        x = test[:bpd_images]
        bpd = float(torch.cat([gen.bits_per_dim(b).detach().float().cpu() for b in x.split(batch)]).mean())
    row = Row(name, family, frechet_distance_from_features(test_feats, feats), pr["precision"], pr["recall"],
              bpd, spi, num, **_kid(test_feats, feats))
    row.sharpness = sharpness(samples)
    if isinstance(gen, LDMGenerator):
        row.recon_psnr = gen.reconstruction_psnr(test[:num])
        u = gen.model.denoiser.cfg
        row.latent_shape = [u.in_channels, u.sample_size, u.sample_size]
    if classifier is not None and labels[0] >= 0:
        row.class_accuracy = conditional_accuracy(classifier, samples, labels)
    return row, samples


def _kid(real_feats: torch.Tensor, fake_feats: torch.Tensor) -> dict[str, float]:
    k = kernel_inception_distance(real_feats, fake_feats, subsets=50, subset_size=max(2, fake_feats.shape[0] // 2))
    return {"kid": k["kid"], "kid_std": k["kid_std"]}


def data_row(train: torch.Tensor, test_feats: torch.Tensor, net) -> Row:
    feats = _features(net, train)
    pr = precision_recall(test_feats, feats)
    row = Row("data (train vs test)", "data", frechet_distance_from_features(test_feats, feats), pr["precision"],
              pr["recall"], None, 0.0, train.shape[0], **_kid(test_feats, feats))
    row.sharpness = sharpness(train)
    return row


# ---- writing -------------------------------------------------------------------------------------
# the feature network's name in column heads, and the footnote that says what the numbers compare with
METRIC_NAMES = {"effnet-lite0": ("FD-effnet*", "KID-effnet*", f"*{EFFNET_FD_LABEL}; KID in the same features, not "
                                 "Inception KID."),
                "inception-v3": ("FID*", "KID*", "*Inception-v3 pool3 features with the pytorch-fid weights: the "
                                 "features of published FID/KID (compare only at equal sample counts).")}


def markdown_table(rows: list[Row], feature_net: str = "effnet-lite0") -> str:
    fd, kid_head, note = METRIC_NAMES[feature_net]
    lines = [f"| model | family | {fd} | {kid_head} (×10³) | precision | recall | class accuracy | bits/dim (test) "
             "| s / image |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.error is not None:
            lines.append(f"| {r.name} | {r.family} | failed: {r.error} | | | | | | |")
            continue
        bpd = "–" if r.bits_per_dim is None else f"{r.bits_per_dim:.3f}"
        spi = "–" if r.family == "data" else f"{r.seconds_per_image:.4f}"
        kid = f"{1e3 * r.kid:.2f} ± {1e3 * r.kid_std:.2f}"
        acc = "–" if r.class_accuracy is None else f"{r.class_accuracy:.3f}"
        lines.append(f"| {r.name} | {r.family} | {r.fd:.2f} | {kid} | {r.precision:.3f} | {r.recall:.3f} | {acc} | {bpd} "
                     f"| {spi} |")
    return "\n".join(lines) + f"\n\n{note}"


def figure(rows: list[Row], grids: dict[str, torch.Tensor], path: Path, per_row: int = 16) -> Path:
    """One PNG: per model a labelled strip of samples, and a bar of its FD (longer = worse)."""
    strips = {n: make_grid(g[:per_row], nrow=per_row).convert("RGB") for n, g in grids.items()}
    scale = 2
    strips = {n: s.resize((s.width * scale, s.height * scale), Image.NEAREST) for n, s in strips.items()}
    label_w, bar_w, gap = 170, 220, 8
    width = label_w + max(s.width for s in strips.values()) + bar_w + 3 * gap
    height = sum(s.height + gap for s in strips.values()) + gap
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    worst = max((r.fd for r in rows if r.error is None), default=1.0) or 1.0
    y = gap
    for r in rows:
        if r.name not in strips or r.error is not None:
            continue
        s = strips[r.name]
        canvas.paste(s, (label_w, y))
        draw.text((4, y + s.height // 2 - 12), r.name, fill="black")
        draw.text((4, y + s.height // 2 + 2), f"FD {r.fd:.1f}", fill="black")
        x0 = label_w + s.width + 2 * gap
        draw.rectangle([x0, y + s.height // 3, x0 + int(bar_w * r.fd / worst), y + 2 * s.height // 3], fill=(70, 110, 200))
        y += s.height + gap
    canvas.save(path)
    return path


def row_order(r: Row) -> tuple:
    """Tables and figures list the data row first, then by family, budget, seed, sampling setting:
    gan@4, gan@4#1, gan@4#2, gan@8 (not the order the models were given in)."""
    base = r.name.split(" (")[0]  # "ldm@4 (DDIM-10)" sorts with "ldm@4"
    family, minutes = split_budget(base)
    return (r.family != "data", family, -1.0 if minutes is None else minutes, seed_of(base), r.setting, r.name)


def write_report(rows: list[Row], grids: dict[str, torch.Tensor], out: str | Path, settings: dict) -> Path:
    """Sample grids, report.png, then `write_summary`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=row_order)
    for name, images in grids.items():
        make_grid(images[:64], nrow=8).save(out / f"samples_{_slug(name)}.png")
    if grids:  # every model failed: no samples to show
        figure(rows, grids, out / "report.png")
    return write_summary(rows, out, settings)


def write_summary(rows: list[Row], out: Path, settings: dict) -> Path:
    """report.json, report.md and its charts: everything that is drawn from the scores alone (rows
    in `row_order`)."""
    (out / "report.json").write_text(json.dumps({"settings": settings, "rows": [_jsonable(asdict(r)) for r in rows]},
                                                indent=2) + "\n")
    text = "# Model comparison\n\n" + markdown_table(rows, settings.get("feature net", "effnet-lite0")) + "\n\n" + "\n".join(
        f"- {k}: {v}" for k, v in settings.items()) + "\n\nSamples: `samples_<model>.png`; overview: `report.png`.\n"
    if table := budget_table(rows):
        text += "\n## Quality against training time\n\n" + table + "\n"
    for chart in write_curves(rows, out):
        text += f"\n![{chart.stem}]({chart.name})\n"
    if table := tradeoff_table(rows):
        text += "\n## The f trade-off: pixels vs latents of growing compression\n\n" + table + "\n"
        if chart := write_tradeoff(rows, out):
            text += f"\n![{chart.stem}]({chart.name})\n"
    if table := seed_table(rows):
        text += "\n## Training stability: FD across seeds\n\n" + table + "\n"
    text += "\n## The classic claims, against these numbers\n\n" + verdict_table(rows) + "\n"
    (out / "report.md").write_text(text)
    return out


# settings that decide what a score means: reports merge only when these agree
SCORING_SETTINGS = ("samples per model", "test images", "bits/dim images", "feature net", "seed", "LDM sampler",
                    "LDM guidance")


def _load_report(out: Path) -> tuple[list[Row], dict]:
    if not (out / "report.json").is_file():
        raise FileNotFoundError(f"{out / 'report.json'}: no report here (run `ldm report` first)")
    try:
        saved = json.loads((out / "report.json").read_text())
        return [_row_from_dict(d) for d in saved["rows"]], dict(saved.get("settings", {}))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{out / 'report.json'}: not a report written by `ldm report` ({e})") from e


def merge_reports(out: str | Path, others: Sequence[str | Path]) -> Path:
    """Add the rows (and sample grids) of other reports to the report in `out`, then redraw it: a
    comparison scored in parts (on several machines, or a family added later without its models'
    files at hand). The reports must agree on every setting that decides what a score means
    (SCORING_SETTINGS, and the classifier where the other report has class accuracies); a row named in
    both keeps `out`'s."""
    out = Path(out)
    rows, settings = _load_report(out)
    names = {r.name for r in rows}
    for other in map(Path, others):
        more, theirs = _load_report(other)
        keys = SCORING_SETTINGS + (("class accuracy",) if any(r.class_accuracy is not None for r in more) else ())
        for k in keys:
            if settings.get(k) != theirs.get(k):
                raise ValueError(f"{other}: its {k!r} is {theirs.get(k)!r}, {out}'s is {settings.get(k)!r}: scores "
                                 "made under other settings do not compare; score both the same way")
        for r in more:
            if r.name in names:
                continue
            rows.append(r)
            names.add(r.name)
            grid = other / f"samples_{_slug(r.name)}.png"
            if grid.is_file():
                (out / grid.name).write_bytes(grid.read_bytes())
        settings["merged from"] = ", ".join(filter(None, [settings.get("merged from"), str(other)]))
    return _redraw(rows, out, settings)


def redraw_report(out: str | Path) -> Path:
    """Rewrite report.md, its charts and report.png of a finished report from report.json and the
    saved sample grids (samples_<model>.png), without sampling a model again."""
    out = Path(out)
    rows, settings = _load_report(out)
    return _redraw(rows, out, settings)


def _redraw(rows: list[Row], out: Path, settings: dict) -> Path:
    """report.png from the sample grids saved in `out`, then `write_summary`."""
    rows = sorted(rows, key=row_order)
    grids = {r.name: split_grid(Image.open(path), nrow=8) for r in rows
             if (path := out / f"samples_{_slug(r.name)}.png").is_file()}
    if grids:
        figure(rows, grids, out / "report.png")
    return write_summary(rows, out, settings)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _jsonable(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _trained_step(path: str | Path) -> int | None:
    """Optimizer steps recorded in a model folder (ldm.json or baseline.json), if any."""
    path = Path(path)
    for meta in (path / LDM_META, path / MODEL_JSON, path / "model" / MODEL_JSON):
        if meta.is_file():
            step = json.loads(meta.read_text()).get("step")
            return int(step) if isinstance(step, int) else None
    return None


def _row_from_dict(d: dict) -> Row:
    return Row(**{k: (math.nan if v is None and k in ("fd", "kid", "kid_std") else v) for k, v in d.items()})


def _score(rows: list[Row], grids: dict, name: str, family: str, gen: GenerativeModel, step: int | None,
           setting: str, score, cache: ScoreCache, key: str) -> None:
    try:
        if (stored := cache.load(key)) is not None:
            row, samples = _row_from_dict(stored[0]), stored[1]
            row.name = name  # the same model may be listed under another name
            print(f"[{name}] score read from the cache", flush=True)
        else:
            row, samples = score(name, family, gen)
            cache.store(key, _jsonable(asdict(row)), samples)
    except ValueError as e:  # e.g. non-finite samples: report it, score the other models
        rows.append(Row(name, family, math.nan, math.nan, math.nan, None, math.nan, 0, error=str(e)))
        print(f"[{name}] failed: {e}", flush=True)
        return
    row.step, row.setting = step, setting
    rows.append(row)
    if not setting:
        grids[name] = samples
    print(f"[{name}] FD {row.fd:.2f}  KID {1e3 * row.kid:.2f}e-3  P {row.precision:.3f}  R {row.recall:.3f}  "
          f"bpd {row.bits_per_dim if row.bits_per_dim is not None else '-'}  {row.seconds_per_image:.4f} s/img",
          flush=True)


def run_report(models: dict[str, str], test_shards: str, out: str | Path, num: int = 500, train_shards: str | None = None,
               seed: int = 0, ldm_steps: int | Sequence[int] = 50, ldm_guidance: float = 1.0, bpd_images: int = 1000,
               feature_net: str = "effnet-lite0", classifier: str | Path | None = None,
               cache: str | Path | None = None) -> list[Row]:
    """Evaluate every NAME -> model folder on the same test images; write report.{md,json,png}.
    `cache`: a folder where scores are kept and read back while a model's files are unchanged
    (`eval/score_cache.py`).

    `ldm_steps`: one DDIM step count, or several (the first gives each diffusion model's main row,
    the others rows "NAME (DDIM-k)" for the sampling-time curve). Names `FAMILY@MINUTES` give the
    training-time curves (`eval/curves.py`)."""
    if not models:
        raise ValueError("give at least one NAME=MODEL_DIR")
    steps = [ldm_steps] if isinstance(ldm_steps, int) else list(ldm_steps)
    if not steps or min(steps) < 1:
        raise ValueError(f"ldm_steps must be one or more positive step counts, got {ldm_steps}")
    size = first_images(test_shards, 1).shape[-1]  # the VAE row samples at the test images' size
    loaded = {name: load_generator(path, steps[0], ldm_guidance, size) for name, path in models.items()}  # fail early
    test = first_images(test_shards, max(num, bpd_images))
    net = build_feature_extractor(feature_net)
    test_feats = _features(net, test[:num])
    rows: list[Row] = []
    grids: dict[str, torch.Tensor] = {}
    if train_shards:
        train = first_images(train_shards, num)
        rows.append(data_row(train, test_feats, net))
        grids[rows[-1].name] = train
    judge, judge_meta = load_classifier(classifier) if classifier else (None, {})
    score = lambda n, fam, g: evaluate(n, fam, g, test, test_feats, net, num, seed=seed, bpd_images=bpd_images,  # noqa: E731
                                       classifier=judge)
    store = ScoreCache(cache)
    evaluation = {"num": num, "seed": seed, "feature_net": feature_net, "bpd_images": bpd_images,
                  "test": str(Path(test_shards).resolve()), "guidance": ldm_guidance,
                  "classifier": str(Path(classifier).resolve()) if classifier else None}
    for name, (family, gen) in loaded.items():
        step = _trained_step(models[name])
        key = lambda setting: score_key(models[name], setting, evaluation)  # noqa: E731
        main = f"DDIM-{steps[0]}" if isinstance(gen, LDMGenerator) else ""
        _score(rows, grids, name, family, gen, step, "", score, store, key(main))
        if isinstance(gen, LDMGenerator):
            for k in steps[1:]:
                gen.steps = k
                _score(rows, grids, f"{name} (DDIM-{k})", family, gen, step, f"DDIM-{k}", score, store,
                       key(f"DDIM-{k}"))
            gen.steps = steps[0]
    settings = {"samples per model": num, "test images": test_shards, "bits/dim images": min(bpd_images, test.shape[0]),
                "feature net": feature_net, "seed": seed,
                "LDM sampler": f"DDIM-{steps[0]} (also {', '.join(map(str, steps[1:]))})" if steps[1:] else f"DDIM-{steps[0]}",
                "LDM guidance": ldm_guidance, "threads": torch.get_num_threads()}
    if store.hits:
        settings["scores read from the cache"] = f"{store.hits} (their s/image were measured when first scored)"
    if judge is not None:
        settings["class accuracy"] = (f"our classifier ({classifier}), test accuracy {judge_meta['test_accuracy']:.3f}: "
                                      "the ceiling for a model")
    write_report(rows, grids, out, settings)
    return rows
