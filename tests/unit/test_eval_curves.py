"""Curves across budgets and sampling settings: names, tables, and the PNG charts."""
from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from ldm_system.eval.curves import (Point, budget_table, line_chart, seed_groups, seed_of, seed_table, split_budget,
                                    write_curves, x_ticks, TICK_GAP)
from ldm_system.eval.report import Row


def _row(name, fd, family="gan", step=None, setting="", spi=0.01):
    return Row(name, family, fd, 0.5, 0.5, None, spi, 100, kid=fd / 1e4, kid_std=1e-5, step=step, setting=setting)


def test_budget_names():
    assert split_budget("gan@10") == ("gan", 10.0) and split_budget("ldm-f4@2.5") == ("ldm-f4", 2.5)
    assert split_budget("ldm") == ("ldm", None) and split_budget("gan@x") == ("gan@x", None)


def test_budget_table_and_charts(tmp_path):
    rows = [_row("data (train vs test)", 20.0, family="data"),
            _row("gan@5", 120.0, step=300), _row("gan@10", 90.0, step=610),
            _row("ldm@5", 80.0, "ldm", 150), _row("ldm@10", 50.0, "ldm", 320, spi=0.2),
            _row("ldm@10 (DDIM-10)", 70.0, "ldm", 320, "DDIM-10", spi=0.04),
            _row("broken@5", float("nan"), "flow")]
    rows[-1].error = "NaN samples"
    table = budget_table(rows)
    assert "| gan@10 | 10 | 610 | 90.00 | 9.00 ± 0.01 | 0.0100 |" in table
    assert table.index("gan@5") < table.index("gan@10") < table.index("ldm@5") and "broken" not in table
    written = write_curves(rows, tmp_path)
    assert [p.name for p in written] == ["curves.png", "sampling.png"]
    img = Image.open(tmp_path / "curves.png").convert("RGB")
    colours = {c for _, c in img.getcolors(1 << 20)}
    assert (31, 119, 180) in colours and (214, 39, 40) in colours  # one line per family
    assert write_curves(rows[:2], tmp_path / "none") == []  # one budget: no curve to draw


def test_chart_refuses_nothing_to_plot(tmp_path):
    with pytest.raises(ValueError, match="no finite points"):
        line_chart([Point("a", float("nan"), 1.0)], tmp_path / "x.png", "t", "x", "y")


def _save_vae(folder, seed: int) -> str:
    """A small random KL autoencoder saved as a stage-1 folder: the cheapest model `ldm report` scores."""
    from autoencoders.config import AutoencoderConfig
    from autoencoders.factory import build_autoencoder
    from autoencoders.io import save_autoencoder

    cfg = AutoencoderConfig(kind="kl", in_channels=1, channels=(8, 16, 16), f=4, latent_channels=3,
                            layers_per_block=1, norm_groups=8)
    torch.manual_seed(seed)
    save_autoencoder(build_autoencoder(cfg), cfg, 1.0, folder)
    return str(folder)


def _vae_folders(tmp_path) -> dict[str, str]:
    """40 test images packed under tmp_path/test, and vae@1, vae@2: two random VAE folders."""
    from ldm_system.data.pack import pack

    pack("builtin:fashion-mnist", tmp_path / "test", image_size=32, split="test", limit=40, shard_size=40)
    return {f"vae@{k}": _save_vae(tmp_path / f"vae{k}", k) for k in (1, 2)}


def test_report_over_budgets_end_to_end(tmp_path):
    """Two VAE folders named by budget: report.md gets the table and the training-time chart."""
    from ldm_system.eval.report import run_report

    models = _vae_folders(tmp_path)
    rows = run_report(models, str(tmp_path / "test"), tmp_path / "out", num=20, bpd_images=20)
    assert [r.name for r in rows] == ["vae@1", "vae@2"] and all(r.family == "vae" for r in rows)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Quality against training time" in md and "![curves](curves.png)" in md
    assert (tmp_path / "out" / "curves.png").exists()
    assert json.loads((tmp_path / "out" / "report.json").read_text())["rows"][0]["setting"] == ""


def test_classifier_trains_and_scores_conditional_samples(tmp_path):
    """Our classifier learns Fashion-MNIST; class accuracy tells a labelled generator from a label-blind one."""
    from ldm_system.cli import main
    from ldm_system.data.pack import pack
    from ldm_system.data.stream import first_images
    from ldm_system.eval.classifier import conditional_accuracy, load_classifier

    pack("builtin:fashion-mnist", tmp_path / "train", image_size=32, split="train", limit=2000, shard_size=2000)
    pack("builtin:fashion-mnist", tmp_path / "test", image_size=32, split="test", limit=600, shard_size=600)
    assert main(["eval", "train-classifier", str(tmp_path / "train"), "--test-shards", str(tmp_path / "test"),
                 "--out", str(tmp_path / "clf"), "--epochs", "1"]) == 0
    model, meta = load_classifier(tmp_path / "clf")
    assert meta["test_accuracy"] > 0.6 and meta["test_images"] == 600  # 10 classes: chance is 0.1
    x, y = first_images(str(tmp_path / "test"), 600, with_labels=True)
    order = torch.cat([torch.nonzero(y == c)[:10, 0] for c in range(10)]).view(10, 10).t().reshape(-1)
    drawn_for = torch.arange(100) % 10  # what a class-conditional model's sample(100) is drawn for
    assert conditional_accuracy(model, x[order], drawn_for) > 0.6  # real images of the right class
    assert conditional_accuracy(model, x[order], (drawn_for + 3) % 10) < 0.3  # images ignoring their labels
    with pytest.raises(FileNotFoundError, match="not a classifier folder"):
        load_classifier(tmp_path)


def test_verdict_table_reads_the_claims_off_the_rows():
    from ldm_system.eval.verdict import sharpness, verdict_rows, verdict_table

    def row(name, family, fd, spi, sharp, precision=0.5, recall=0.5, bpd=None):
        r = _row(name, fd, family, spi=spi)
        r.sharpness, r.precision, r.recall, r.bits_per_dim = sharp, precision, recall, bpd
        return r

    rows = [row("data (train vs test)", "data", 20.0, 0.0, 0.20),
            row("ldm@5", "ldm", 90.0, 0.2, 0.15), row("ldm@10", "ldm", 60.0, 0.2, 0.16),
            row("ldm@10 (DDIM-10)", "ldm", 70.0, 0.04, 0.16),
            row("pixel@5", "ldm", 150.0, 0.9, 0.1), row("pixel@10", "ldm", 100.0, 0.9, 0.1),
            row("gan@10", "gan", 80.0, 0.004, 0.19, precision=0.6, recall=0.01),
            row("vae", "vae", 200.0, 0.001, 0.05),
            row("flow@10", "flow", 120.0, 0.03, 0.12, bpd=3.7),
            row("ar@10", "ar", 210.0, 0.6, 0.14, bpd=4.2)]
    rows[3].setting = "DDIM-10"
    verdicts = {c.split(" ")[0] + " " + c.split(" ")[1]: v for c, _, v in verdict_rows(rows)}
    assert verdicts == {"GANs give": "supported", "GAN training": "not measured (a row is missing)",
                        "VAEs are": "supported", "Flows give": "supported",
                        "Autoregressive models": "supported", "Diffusion gives": "supported",
                        "Latent diffusion": "refuted"}  # LDM reaches 100 at 5 min: not ≤ ¼ of 10 min
    table = verdict_table(rows)
    assert "LDM reaches it in 5 min" in table and "GAN sharpness 0.95× data" in table
    assert verdict_rows(rows[:2])[0][2] == "not measured (a row is missing)"
    flat, edges = torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8)
    edges[..., ::2] = 1.0
    assert sharpness(flat) == 0.0 and sharpness(edges) > 1.0


def test_of_several_vae_rows_the_best_generator_is_judged():
    """The LDM's autoencoder (KL weight 1e-6) decodes prior samples to textures; a VAE trained on the ELBO
    is the generator the claim is about: the VAE row with the lowest FD stands for the family."""
    from ldm_system.eval.verdict import verdict_rows

    rows = [_row("data (train vs test)", 20.0, "data"), _row("vae", 200.0, "vae"), _row("vae-elbo", 120.0, "vae")]
    for r, sharp in zip(rows, (0.2, 0.25, 0.05)):
        r.sharpness = sharp
    numbers, verdict = next((n, v) for c, n, v in verdict_rows(rows) if c == "VAEs are blurry")
    assert verdict == "supported" and numbers.startswith("vae-elbo sharpness 0.25× data, FD 120.0")
    rows[2].fd = 250.0  # now the texture row is the better generator
    numbers, verdict = next((n, v) for c, n, v in verdict_rows(rows) if c == "VAEs are blurry")
    assert verdict == "refuted" and numbers.startswith("vae sharpness 1.25× data")
    rows[1].sharpness = None  # a report.json from before sharpness was measured: no verdict, no crash
    assert next(v for c, n, v in verdict_rows(rows) if c == "VAEs are blurry") == "not measured (a row is missing)"


def test_seeds_are_named_grouped_and_kept_out_of_the_curves(tmp_path):
    assert split_budget("gan@4#2") == ("gan", 4.0) and seed_of("gan@4#2") == 2 and seed_of("gan@4") == 0
    assert seed_of("ldm@4#1 (DDIM-10)") == 1 and seed_of("vae") == 0 and split_budget("gan@4#x") == ("gan@4#x", None)
    rows = [_row("gan@4", 80.0), _row("gan@4#1", 100.0), _row("gan@4#2", 120.0), _row("gan@8#1", 70.0),
            _row("ldm@4", 60.0, "ldm"), _row("ldm@4 (DDIM-10)", 65.0, "ldm", setting="DDIM-10")]
    groups = seed_groups(rows)
    assert list(groups) == [("gan", 4.0)] and [r.name for r in groups[("gan", 4.0)]] == ["gan@4", "gan@4#1", "gan@4#2"]
    assert "| gan | 4 | 3 | 80.0, 100.0, 120.0 | 100.0 ± 20.0 | 0.200 |" in seed_table(rows)
    assert seed_table(rows[:1]) == ""
    # gan@8#1 is another seed, not a second budget of the seed-0 curve: no training-time chart
    assert [p.name for p in write_curves(rows, tmp_path)] == ["sampling.png"]


def test_verdict_on_training_stability_compares_seed_spreads():
    from ldm_system.eval.verdict import verdict_rows

    def stability(gan_fds, ldm_fds):
        rows = [_row("data (train vs test)", 20.0, "data")]
        for family, fds in (("gan", gan_fds), ("ldm", ldm_fds)):
            rows += [_row(f"{family}@4" + (f"#{k}" if k else ""), fd, family) for k, fd in enumerate(fds)]
        for r in rows:
            r.sharpness = 0.2
        return next((n, v) for c, n, v in verdict_rows(rows) if c == "GAN training is unstable")

    numbers, verdict = stability([80.0, 100.0, 120.0], [60.0, 61.0, 59.0])
    assert verdict == "supported" and "GAN 100.0 ± 20.0 (std/mean 0.200)" in numbers and "over 3 seeds at 4 min" in numbers
    assert stability([80.0, 82.0, 81.0], [60.0, 70.0, 50.0])[1] == "refuted"
    assert stability([80.0], [60.0, 61.0])[1] == "not measured (a row is missing)"  # one GAN seed only


def test_report_cache_reads_back_unchanged_models_and_rescores_changed_ones(tmp_path, capsys):
    """`--cache`: a second report reads every score back (same rows, same samples); retraining a model
    (its files change) or a torn cache file makes it scored again; the other models stay cached."""
    from ldm_system.eval.report import run_report

    models = _vae_folders(tmp_path)
    report = lambda name: run_report(models, str(tmp_path / "test"), tmp_path / name, num=20, bpd_images=20,  # noqa: E731
                                     cache=tmp_path / "cache")
    first = report("a")
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2 and "read from the cache" not in capsys.readouterr().out
    again = report("b")
    assert "[vae@1] score read from the cache" in capsys.readouterr().out
    assert [(r.name, r.fd, r.kid) for r in again] == [(r.name, r.fd, r.kid) for r in first]
    settings = json.loads((tmp_path / "b" / "report.json").read_text())["settings"]
    assert settings["scores read from the cache"].startswith("2 ")
    # the same samples come back (kept in half precision): the grids differ by at most one 8-bit level
    grid = lambda d: torch.tensor(list(Image.open(tmp_path / d / "samples_vae_1.png").convert("L").getdata()))  # noqa: E731
    assert (grid("a") - grid("b")).abs().max() <= 1

    _save_vae(tmp_path / "vae2", 7)  # "retrain" vae@2: new weights, new files
    rescored = report("c")
    out = capsys.readouterr().out
    assert "[vae@1] score read from the cache" in out and "[vae@2] score read from the cache" not in out
    assert rescored[1].fd != first[1].fd and rescored[0].fd == first[0].fd
    for f in (tmp_path / "cache").glob("*.pt"):
        f.write_bytes(b"torn")
    report("d")
    out = capsys.readouterr().out
    assert "unreadable" in out and "read from the cache" not in out


def test_f_tradeoff_table_and_figure(tmp_path):
    """pixel (f=1), ldm-f2, ldm (f=4), ldm-f8 at one budget: a row per f in f order and a two-panel PNG;
    the largest budget with two or more f is used; fewer than two f: nothing."""
    from ldm_system.eval.report import write_report
    from ldm_system.eval.tradeoff import tradeoff_rows, tradeoff_table, write_tradeoff

    def row(name, fd, step, shape, ceiling):
        r = _row(name, fd, "ldm", step=step)
        r.latent_shape, r.recon_psnr = shape, ceiling
        return r

    rows = [row("ldm-f8@8", 110.0, 2400, [3, 4, 4], 17.5), row("ldm@8", 65.0, 1800, [3, 8, 8], 22.1),
            row("pixel@8", 125.0, 130, [1, 32, 32], None), row("ldm-f2@8", 90.0, 700, [3, 16, 16], 27.9),
            row("ldm@16", 50.0, 3600, [3, 8, 8], 22.1), row("ldm@8#1", 70.0, 1800, [3, 8, 8], 22.1)]
    minutes, at = tradeoff_rows(rows)
    assert minutes == 8 and list(at) == [1, 2, 4, 8] and at[4].name == "ldm@8"  # seed 0; ldm@16 stands alone
    table = tradeoff_table(rows)
    assert "| 1 | pixel@8 | 1×32×32 | – (pixels) | 16.2 | 125.00 |" in table
    assert "| 8 | ldm-f8@8 | 3×4×4 | 17.50 | 300.0 | 110.00 |" in table
    assert table.index("| 2 | ldm-f2@8") < table.index("| 4 | ldm@8")
    png = write_tradeoff(rows, tmp_path)
    assert png.name == "tradeoff.png" and Image.open(png).size == (1040, 360)
    assert write_tradeoff(rows[:1], tmp_path / "none") is None and tradeoff_table(rows[4:5]) == ""
    md = (write_report(rows, {"ldm@8": torch.zeros(4, 1, 32, 32)}, tmp_path / "report", {"num": 10}) / "report.md").read_text()
    assert "## The f trade-off" in md and "![tradeoff](tradeoff.png)" in md


def test_x_ticks_on_a_wide_log_axis_are_1_2_5_values_that_do_not_overlap():
    # the sampling chart spans 0.0003 .. 0.9 s/image: measured values there crowd into unreadable labels
    px = lambda v: 64 + (math.log10(v) - math.log10(3e-4)) / (math.log10(0.9) - math.log10(3e-4)) * 426  # noqa: E731
    measured = [3e-4, 0.0019, 0.005, 0.0051, 0.006, 0.0118, 0.056, 0.19, 0.193, 0.9]
    ticks = x_ticks(measured, px, log_x=True)
    assert set(ticks) <= {m * 10.0 ** k for k in range(-4, 1) for m in (1, 2, 5)}
    assert all(px(b) - px(a) >= TICK_GAP for a, b in zip(ticks, ticks[1:]))
    assert len(ticks) >= 4 and 3e-4 <= ticks[0] and ticks[-1] <= 0.9
    # a narrow axis keeps the measured values (2, 4, 8 minutes)
    px2 = lambda v: 64 + (math.log10(v) - math.log10(2)) / math.log10(4) * 426  # noqa: E731
    assert x_ticks([2.0, 4.0, 8.0], px2, log_x=True) == [2.0, 4.0, 8.0]
