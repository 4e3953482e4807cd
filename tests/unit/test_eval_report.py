"""The cross-family report on stand-in generators with known behaviour, on real Fashion-MNIST."""
from __future__ import annotations

import json

import pytest
import torch

from ldm_system.eval.protocols import GenerativeModel, LikelihoodModel
from ldm_system.eval.report import (Row, data_row, evaluate, load_generator, markdown_table, merge_reports, redraw_report,
                                   row_order, write_report)


class Replay:
    """Returns held-out images: a perfect generator (in distribution)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images, self.image_shape = images, tuple(images.shape[1:])

    def sample(self, num: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return self.images[torch.randint(0, self.images.shape[0], (num,), generator=g)]


class Noise:
    """Uniform noise with an exactly known likelihood: 8 bits/dim for any 8-bit image."""

    def __init__(self, shape) -> None:
        self.image_shape = shape

    def sample(self, num: int, seed: int = 0) -> torch.Tensor:
        return torch.rand(num, *self.image_shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1

    def bits_per_dim(self, images: torch.Tensor) -> torch.Tensor:
        return torch.full((images.shape[0],), 8.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from ldm_system.data.pack import pack
    from ldm_system.data.stream import first_images
    from ldm_system.eval.features import build_feature_extractor

    root = tmp_path_factory.mktemp("report")
    pack("builtin:fashion-mnist", root / "test", image_size=32, split="test", limit=240, shard_size=80)
    images = first_images(str(root / "test"), 240)
    net = build_feature_extractor("effnet-lite0")
    test = images[:120]
    return test, images[120:], net, net(test)


def test_protocols_tell_likelihood_families_apart(data):
    test, *_ = data
    assert isinstance(Replay(test), GenerativeModel) and not isinstance(Replay(test), LikelihoodModel)
    assert isinstance(Noise((1, 32, 32)), LikelihoodModel)


def test_a_good_generator_scores_far_better_than_noise(data):
    test, other, net, feats = data
    good, _ = evaluate("replay", "test", Replay(other), test, feats, net, num=60, batch=30)
    bad, samples = evaluate("noise", "test", Noise((1, 32, 32)), test, feats, net, num=60, batch=30)
    floor = data_row(other[:60], feats, net)
    assert samples.shape == (60, 1, 32, 32)
    assert good.fd < bad.fd / 2, (good.fd, bad.fd)  # measured 86 vs 258 (60 samples: FD is biased upwards)
    assert good.precision > 0.5 > bad.precision and good.recall > bad.recall
    assert abs(good.fd - floor.fd) < 0.5 * floor.fd  # replaying real images sits at the data floor
    # KID has no sample-count bias: real images replayed sit near 0, noise far above
    assert abs(good.kid) < 3 * good.kid_std + 1e-3 and bad.kid > 20 * max(bad.kid_std, 1e-6)
    assert good.bits_per_dim is None and bad.bits_per_dim == pytest.approx(8.0)
    assert bad.seconds_per_image > 0


def test_wrong_image_shape_is_refused(data):
    test, _, net, feats = data
    with pytest.raises(ValueError, match=r"makes \(3, 32, 32\) images, the test set holds \(1, 32, 32\)"):
        evaluate("rgb", "test", Noise((3, 32, 32)), test, feats, net, num=10)

    class Diverged(Noise):
        def sample(self, num, seed=0):
            return torch.full((num, *self.image_shape), float("nan"))

    with pytest.raises(ValueError, match=r"finite: False"):
        evaluate("nan", "test", Diverged((1, 32, 32)), test, feats, net, num=10)


def test_report_files(tmp_path, data):
    test, *_ = data
    rows = [Row("data (train vs test)", "data", 10.0, 0.9, 0.9, None, 0.0, 60),
            Row("flow", "flow", 50.0, 0.4, 0.3, 3.25, 0.01, 60, kid=0.0123, kid_std=0.0004),
            Row("broken", "gan", float("nan"), float("nan"), float("nan"), None, float("nan"), 0, error="NaN samples")]
    out = write_report(rows, {"flow": test[:20], "data (train vs test)": test[20:40]}, tmp_path, {"num": 60})
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["rows"]] == ["data (train vs test)", "broken", "flow"]  # data first, then by name
    assert report["rows"][1]["fd"] is None and report["rows"][1]["error"] == "NaN samples"  # valid JSON, no NaN
    assert report["rows"][2]["bits_per_dim"] == 3.25
    md = (out / "report.md").read_text()
    assert "| flow | flow | 50.00 | 12.30 ± 0.40 | 0.400 | 0.300 | – | 3.250 | 0.0100 |" in md and "not comparable" in md
    assert "| broken | gan | failed: NaN samples |" in md
    assert (out / "samples_flow.png").exists() and (out / "report.png").exists()
    assert "| data (train vs test) | data | 10.00 | nan ± nan | 0.900 | 0.900 | – | – | – |" in markdown_table(rows)


def test_rows_are_listed_by_family_budget_seed_and_setting():
    names = ["gan@8", "gan@4#1", "ldm@4 (DDIM-10)", "gan@4", "data (train vs test)", "ldm@4", "gan@4#2", "gan@10"]
    rows = [Row(n, "data" if n.startswith("data") else n[:3], 1.0, 0, 0, None, 0, 1,
                setting="DDIM-10" if "(" in n else "") for n in names]
    assert [r.name for r in sorted(rows, key=row_order)] == [
        "data (train vs test)", "gan@4", "gan@4#1", "gan@4#2", "gan@8", "gan@10", "ldm@4", "ldm@4 (DDIM-10)"]


def test_redraw_rewrites_tables_and_charts_from_report_json(tmp_path, data, capsys):
    from ldm_system.cli import main

    test, *_ = data
    rows = [Row(f"{fam}@{m}", fam, fd, 0.5, 0.3, None, spi, 60, kid=0.01, kid_std=0.001, step=10 * m)
            for fam, spi in (("gan", 0.0003), ("ldm", 0.06)) for m, fd in ((2, 90.0), (4, 80.0))]
    rows.append(Row("ldm@4 (DDIM-10)", "ldm", 81.0, 0.5, 0.3, None, 0.012, 60, setting="DDIM-10", step=40))
    write_report(rows, {r.name: test[:8] for r in rows}, tmp_path, {"num": 60})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for name in ("report.md", "curves.png", "sampling.png", "report.png"):
        (tmp_path / name).unlink()
    assert main(["report", "--redraw", "--out", str(tmp_path)]) == 0
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # the same tables and charts, nothing sampled
    with pytest.raises(FileNotFoundError, match="no report here"):
        redraw_report(tmp_path / "elsewhere")
    (tmp_path / "report.json").write_text('{"rows": [{"name": "x", "colour": 1}]}')
    with pytest.raises(ValueError, match="not a report written by `ldm report`"):
        redraw_report(tmp_path)
    with pytest.raises(SystemExit, match="give no models"):
        main(["report", "--redraw", "x=y", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--test-shards"):
        main(["report", f"a={tmp_path}", "--out", str(tmp_path)])


def test_reports_scored_the_same_way_merge(tmp_path, data):
    from ldm_system.cli import main

    test, *_ = data
    settings = {"samples per model": 60, "test images": "t", "feature net": "effnet-lite0", "seed": 0}
    a = [Row("data (train vs test)", "data", 10.0, 0.9, 0.9, None, 0.0, 60), Row("gan@4", "gan", 50.0, 0.5, 0.1, None, 0.001, 60)]
    b = [Row("data (train vs test)", "data", 10.5, 0.9, 0.9, None, 0.0, 60), Row("vae-elbo", "vae", 120.0, 0.9, 0.0, None, 0.001, 60)]
    write_report(a, {r.name: test[:8] for r in a}, tmp_path / "a", settings)
    write_report(b, {"vae-elbo": test[8:16]}, tmp_path / "b", settings)
    assert main(["report", "--merge", str(tmp_path / "b"), "--out", str(tmp_path / "a")]) == 0
    merged = json.loads((tmp_path / "a" / "report.json").read_text())
    assert [r["name"] for r in merged["rows"]] == ["data (train vs test)", "gan@4", "vae-elbo"]
    assert merged["rows"][0]["fd"] == 10.0  # a row in both keeps the first report's
    assert merged["settings"]["merged from"] == str(tmp_path / "b")
    assert "| vae-elbo | vae | 120.00 |" in (tmp_path / "a" / "report.md").read_text()
    assert (tmp_path / "a" / "samples_vae-elbo.png").read_bytes() == (tmp_path / "b" / "samples_vae-elbo.png").read_bytes()
    # scored with other settings: refused, and the report is left as it was
    write_report(b, {}, tmp_path / "c", {**settings, "samples per model": 500})
    before = (tmp_path / "a" / "report.json").read_text()
    with pytest.raises(ValueError, match="its 'samples per model' is 500, .* is 60: scores made under other settings"):
        merge_reports(tmp_path / "a", [tmp_path / "c"])
    assert (tmp_path / "a" / "report.json").read_text() == before


def test_unknown_folders_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an `ldm export` folder"):
        load_generator(tmp_path)
    (tmp_path / "baseline.json").write_text(json.dumps({"family": "vae", "model": {}}))
    with pytest.raises(ValueError, match="unknown family 'vae'"):
        load_generator(tmp_path)


def test_cli_model_list_errors(tmp_path):
    from ldm_system.cli import parse_models

    assert parse_models([f"a={tmp_path}"]) == {"a": str(tmp_path)}
    with pytest.raises(ValueError, match="expected NAME=MODEL_DIR"):
        parse_models([str(tmp_path)])
    with pytest.raises(ValueError, match="given twice"):
        parse_models([f"a={tmp_path}", f"a={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_models([f"a={tmp_path / 'nope'}"])


def test_an_autoencoder_folder_is_the_vae_row(tmp_path, data):
    """A stage-1 KL folder loads as a VAE: N(0, I) prior samples decoded at the test images' size."""
    from autoencoders.config import AutoencoderConfig
    from autoencoders.io import save_autoencoder
    from autoencoders.factory import build_autoencoder
    from ldm_system.eval.vae_generator import VAEPriorGenerator

    test, _, net, feats = data
    cfg = AutoencoderConfig(kind="kl", in_channels=1, channels=(8, 16, 16), f=4, latent_channels=3,
                            layers_per_block=1, norm_groups=8)
    torch.manual_seed(0)
    ae = build_autoencoder(cfg)
    save_autoencoder(ae, cfg, 0.25, tmp_path / "ae")
    family, gen = load_generator(tmp_path / "ae", image_size=32)
    assert family == "vae" and gen.image_shape == (1, 32, 32) and gen.latent_shape == (3, 8, 8)
    a, b = gen.sample(4, seed=3), gen.sample(4, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, gen.sample(4, seed=4))
    z = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(a, ae.eval().decode(z).clamp(-1, 1), atol=1e-6)  # exactly the prior, decoded
    matched = VAEPriorGenerator(tmp_path / "ae", 32, prior="matched")
    assert matched.std == pytest.approx(4.0)  # 1 / latent scale: the latents' own std
    row, samples = evaluate("vae", family, gen, test, feats, net, num=20, batch=10)
    assert samples.shape == (20, 1, 32, 32) and row.bits_per_dim is None and row.fd > 0
    with pytest.raises(ValueError, match="give the image size"):
        load_generator(tmp_path / "ae")
    with pytest.raises(ValueError, match="not a multiple of the autoencoder's f = 4"):
        VAEPriorGenerator(tmp_path / "ae", 30)


def test_inception_features_name_the_columns_fid():
    rows = [Row("flow", "flow", 50.0, 0.4, 0.3, 3.25, 0.01, 60, kid=0.0123, kid_std=0.0004)]
    text = markdown_table(rows, "inception-v3")
    assert text.startswith("| model | family | FID* | KID* (×10³) |") and "pytorch-fid weights" in text
    assert "FD-effnet*" in markdown_table(rows) and "not comparable" in markdown_table(rows)
