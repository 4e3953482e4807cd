"""`ldm sample / invert / edit / interpolate` end to end, in-process through `ldm_system.cli.main`,
plus one real subprocess for the installed entry point's exit code."""
import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from ldm_system.cli import build_parser, main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The one error line (other libraries may log unrelated warnings on stderr first)."""
    lines = [line for line in err.splitlines() if line.startswith("ldm ")]
    assert len(lines) == 1, err
    return lines[0]


def test_sample_writes_grid_and_individual_pngs_with_a_progress_bar(serving_model_dir, tmp_path, capsys):
    grid, folder = tmp_path / "grid.png", tmp_path / "each"
    code, out, err = run(capsys, "sample", "--model", serving_model_dir, "--num", 3, "--class", "Sneaker", "Bag", 0,
                         "--steps", 4, "--guidance", 3, "--seed", 1, "--out", grid, "--individual", folder, "--nrow", 3)
    assert code == 0, err
    assert "wrote 3 samples" in out
    assert "4/4" in err  # the bar counted one (batched, guided) network evaluation per step
    with Image.open(grid) as im:
        assert im.size == (3 * 34 + 2, 34 + 2)  # 3 tiles of 32 px with 2 px padding
    pngs = sorted(folder.glob("*.png"))
    assert [p.name for p in pngs] == ["0000.png", "0001.png", "0002.png"]
    with Image.open(pngs[0]) as im:
        assert im.size == (32, 32) and im.mode == "L"


def test_sample_same_seed_same_grid(serving_model_dir, tmp_path, capsys):
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for p, seed in zip(paths, (5, 5, 6)):
        assert run(capsys, "sample", "--model", serving_model_dir, "--num", 2, "--class", "all", "--steps", 3,
                   "--seed", seed, "--out", p, "--no-progress")[0] == 0
    a, b, c = (p.read_bytes() for p in paths)
    assert a == b and a != c


def test_invert_writes_noise_reconstructions_and_metrics(serving_model_dir, held_out_files, tmp_path, capsys):
    paths, labels = held_out_files
    out_dir = tmp_path / "inv"
    code, out, err = run(capsys, "invert", "--model", serving_model_dir, paths[0], paths[1], "--class", labels[0],
                         labels[1], "--steps", 8, "--fixed-point", 1, "--out", out_dir, "--no-progress")
    assert code == 0, err
    assert "resized (aspect kept) and centre-cropped to 32x32" in err  # 28x28 files: the policy, announced
    report = json.loads((out_dir / "metrics.json").read_text())
    assert len(report["images"]) == 2
    for row in report["images"]:
        assert row["psnr"] > 10 and 0 < row["ssim"] <= 1 and row["latent_mse"] < 0.05
        assert abs(row["psnr"] - row["autoencoder_psnr"]) < 1.0  # inversion is near the codec's ceiling
        assert f"{row['psnr']:7.2f}" in out  # the table printed the same numbers
    with safe_open(str(out_dir / "x_T.safetensors"), "pt") as f:
        x_T = f.get_tensor("x_T")
        assert json.loads(f.metadata()["classes"]) == labels[:2]
    assert x_T.shape == (2, 3, 8, 8)
    stems = [p.stem for p in paths[:2]]
    assert sorted(p.name for p in out_dir.glob("*_recon.png")) == sorted(f"{s}_recon.png" for s in stems)
    with Image.open(out_dir / "comparison.png") as im:
        assert im.size == (2 * 34 + 2, 2 * 34 + 2)  # inputs above, reconstructions below


def test_invert_noise_as_pt(serving_model_dir, held_out_files, tmp_path, capsys):
    code, _, err = run(capsys, "invert", "--model", serving_model_dir, held_out_files[0][0], "--steps", 3,
                       "--noise-format", "pt", "--out", tmp_path, "--no-progress")
    assert code == 0, err
    saved = torch.load(tmp_path / "x_T.pt", weights_only=True)
    assert saved["x_T"].shape == (1, 3, 8, 8) and saved["steps"] == "3"


def test_invert_null_opt_writes_null_embeddings_that_replay(serving_model_dir, serving_pipe, held_out_files, tmp_path,
                                                             capsys):
    """--null-opt saves the fitted per-step null embeddings next to x_T; x_T + those embeddings replay
    the saved reconstruction (`pipe.reconstruct`), x_T alone gives the plain guided one."""
    from ldm_system.serving.cli import load_noise, replay_inversion
    from ldm_system.serving.image_io import open_image_file

    paths, labels = held_out_files
    out_dir = tmp_path / "inv"
    code, out, err = run(capsys, "invert", "--model", serving_model_dir, paths[0], "--class", labels[0], "--steps", 4,
                         "--guidance", 3, "--null-opt", "--out", out_dir, "--no-progress")
    assert code == 0, err
    assert "null_embeddings.safetensors" in out
    x_T, meta = load_noise(out_dir / "x_T.safetensors")
    nulls, null_meta = load_noise(out_dir / "null_embeddings.safetensors", "null_embeddings")
    emb = serving_pipe.net.class_embedding(torch.tensor([0])).shape[1]
    assert nulls.shape == (4, 1, emb) and null_meta == meta and meta["null_optimization"] == "True"
    saved = open_image_file(out_dir / f"{paths[0].stem}_recon.png", 32, 1).tensor  # [-1, 1], 8-bit
    replay = replay_inversion(serving_pipe, out_dir)
    assert (replay - saved).abs().max() <= 1.01 / 127.5  # the PNG's rounding, nothing more
    direct = serving_pipe.reconstruct(x_T, classes=[labels[0]], steps=4, guidance=3.0, null_embeddings=nulls)
    torch.testing.assert_close(direct, replay, atol=0, rtol=0)
    plain = serving_pipe.reconstruct(x_T, classes=[labels[0]], steps=4, guidance=3.0)
    assert (plain - saved).abs().max() > 0.05  # the embeddings matter


def test_edit_needs_exactly_one_target(serving_model_dir, held_out_files, capsys):
    img = str(held_out_files[0][0])
    for target in ([], ["--target-class", "1", "--target-prompt", "a bag"]):
        with pytest.raises(SystemExit) as exc:
            main(["edit", "--model", str(serving_model_dir), img, "--source-class", "0", *target])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert ("one of the arguments --target-class --target-prompt is required" in err if not target
                else "argument --target-prompt: not allowed with argument --target-class" in err), err


def test_edit_class_and_sdedit_modes(serving_model_dir, held_out_files, tmp_path, capsys):
    paths, labels = held_out_files
    code, out, err = run(capsys, "edit", "--model", serving_model_dir, paths[0], "--source-class", labels[0],
                         "--target-class", "Sandal", "--steps", 6, "--keep-steps", 2, "--out", tmp_path / "e1")
    assert code == 0, err
    assert "12/12" in err  # progress: 6 inversion + 6 sampling evaluations
    with Image.open(tmp_path / "e1" / f"{paths[0].stem}_edit.png") as im:
        assert im.size == (32, 32)
    code, _, err = run(capsys, "edit", "--model", serving_model_dir, paths[0], "--target-class", "Sandal",
                       "--strength", 0.5, "--steps", 6, "--out", tmp_path / "e2", "--no-progress")
    assert code == 0, err
    assert (tmp_path / "e2" / "comparison.png").is_file()


def test_interpolate_writes_one_row(serving_model_dir, held_out_files, tmp_path, capsys):
    paths, _ = held_out_files
    out = tmp_path / "path.png"
    code, _, err = run(capsys, "interpolate", "--model", serving_model_dir, paths[0], paths[1], "--num", 5,
                       "--steps", 4, "--out", out, "--no-progress")
    assert code == 0, err
    with Image.open(out) as im:
        assert im.size == (5 * 34 + 2, 34 + 2)


@pytest.mark.parametrize("argv, message", [
    (["sample", "--num", 2, "--steps", 0], "ldm sample: error: --steps must be positive, got 0"),
    (["sample", "--num", 0], "ldm sample: error: --num must be positive, got 0"),
    (["sample", "--num", 2, "--steps", 2, "--class", "Hat"], "ldm sample: error: unknown class 'Hat'; known classes: T-shirt/top"),
    (["sample", "--num", 2, "--steps", 2, "--class", 12], "ldm sample: error: unknown class '12': class ids are 0..9"),
    (["sample", "--num", 3, "--steps", 2, "--class", 1, 2], "ldm sample: error: --class: give one value, 'all' or one per image (3), got 2"),
    (["sample", "--num", 2, "--steps", 1001], "ldm sample: error: num_steps=1001 exceeds num_train_timesteps=1000"),
    (["sample", "--num", 2, "--out", "grid.txt"], "ldm sample: error: --out grid.txt: expected an image file name"),
    (["sample", "--num", 2, "--steps", 2, "--sampler", "ddpm", "--eta", 0.5], "ldm sample: error: eta applies to the ddim sampler only"),
    (["sample", "--num", 2, "--steps", 2, "--prompt", "a bag"], "ldm sample: error: this model is not text-conditional"),
    (["sample", "--num", 2, "--class", 1, "--prompt", "a bag"], "ldm sample: error: give --class (class-conditional models) or --prompt"),
    (["invert", "MISSING.png"], "ldm invert: error: image not found: MISSING.png"),
    (["invert", "{img}", "--steps", -1], "ldm invert: error: --steps must be positive, got -1"),
    (["invert", "{img}", "--guidance", 3, "--null-opt"], "ldm invert: error: --null-opt needs --class"),
    (["invert", "{img}", "--class", 1, "--prompt", "a bag"], "ldm invert: error: give --class (class-conditional models) or --prompt"),
    (["invert", "{img}", "--prompt", "a bag", "--steps", 2], "ldm invert: error: this model is not text-conditional"),
    (["edit", "{img}", "--source-class", 0, "--target-prompt", "a bag"], "ldm edit: error: give --source-class/--target-class (class models) or"),
    (["edit", "{img}", "--source-prompt", "a shoe", "--target-class", 1], "ldm edit: error: give --source-class/--target-class"),
    (["edit", "{img}", "--target-prompt", "a bag", "--steps", 2], "ldm edit: error: this model is not text-conditional; edit with source_class/target_class"),
    (["interpolate", "{img}", "{img}", "--prompt", "a", "--steps", 2], "ldm interpolate: error: this model is not text-conditional"),
    (["edit", "{img}", "--target-class", 1], "ldm edit: error: --source-class is required"),
    (["edit", "{img}", "--source-class", 0, "--target-class", 1, "--steps", 10, "--keep-steps", 11],
     "ldm edit: error: --keep-steps must lie in [0, --steps=10], got 11"),
    (["edit", "{img}", "--target-class", 1, "--strength", 1.5], "ldm edit: error: --strength must lie in (0, 1]"),
    (["interpolate", "{img}", "{img}", "--num", 1], "ldm interpolate: error: --num must be at least 2, got 1"),
    (["sample", "--num", 1, "--guidance", "nan"], "ldm sample: error: --guidance must be a finite number >= 0, got nan"),
    (["sample", "--num", 1, "--eta", "inf"], "ldm sample: error: --eta must be a finite number >= 0, got inf"),
    (["edit", "{img}", "--target-class", 1, "--strength", "nan"], "ldm edit: error: --strength must lie in (0, 1], got nan"),
    (["invert", "{img}", "--fixed-point", -1], "ldm invert: error: --fixed-point must be at least 0, got -1"),
])
def test_bad_input_exits_2_with_one_line(serving_model_dir, held_out_files, tmp_path, capsys, argv, message):
    img = held_out_files[0][0]
    argv = [str(a).replace("{img}", str(img)) for a in argv]
    if argv[0] != "sample" or "--out" not in argv:
        argv += ["--out", str(tmp_path / ("o.png" if argv[0] in ("sample", "interpolate") else "o"))]
    code, _, err = run(capsys, argv[0], "--model", serving_model_dir, *argv[1:], "--no-progress")
    assert code == 2
    assert error_line(err).startswith(message), err
    assert "Traceback" not in err


def test_missing_model_and_unreadable_image(serving_model_dir, tmp_path, capsys):
    code, _, err = run(capsys, "sample", "--model", tmp_path / "nope", "--out", tmp_path / "g.png")
    assert code == 2 and "is not an exported ldm-system model" in error_line(err)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    code, _, err = run(capsys, "invert", "--model", serving_model_dir, bad, "--out", tmp_path / "o", "--no-progress")
    assert code == 2 and error_line(err).startswith(f"ldm invert: error: cannot read image {bad}")


def test_serve_binds_loopback_by_default():
    a = build_parser().parse_args(["serve", "--model", "m"])
    assert a.host == "127.0.0.1" and a.port == 8000


def test_installed_entry_point_exit_code(tmp_path):
    """The real `ldm` process: a bad step count fails before any model is loaded, with exit code 2."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ldm = os.path.join(os.path.dirname(sys.executable), "ldm")
    p = subprocess.run([ldm, "sample", "--model", str(tmp_path), "--steps", "0", "--out", str(tmp_path / "g.png")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2
    assert error_line(p.stderr) == "ldm sample: error: --steps must be positive, got 0"


# ---- trust and safety: damaged model folders, side files we did not write, bad ports -----------------
def _damaged_copy(src, tmp_path, damage: str):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(src, model)
    if damage == "ldm.json":
        (model / "ldm.json").write_text("{not json")
        return model, model / "ldm.json"
    if damage == "no unet":
        shutil.rmtree(model / "unet")
        return model, model / "unet"
    weights = next((model / damage).glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:50_000])  # a download cut short
    return model, weights


@pytest.mark.parametrize("damage", ["unet", "autoencoder", "ldm.json", "no unet"])
def test_damaged_model_folder_is_one_line_naming_the_file(serving_model_dir, tmp_path, capsys, damage):
    model, culprit = _damaged_copy(serving_model_dir, tmp_path, damage)
    code, _, err = run(capsys, "sample", "--model", model, "--num", 1, "--steps", 2, "--out", tmp_path / "g.png",
                       "--no-progress")
    assert code == 2 and "Traceback" not in err
    assert str(culprit) in error_line(err), err


@pytest.mark.parametrize("port", [70000, 0, -1])
def test_serve_port_out_of_range_is_one_line(serving_model_dir, capsys, port):
    code, _, err = run(capsys, "serve", "--model", serving_model_dir, "--port", port)
    assert code == 2 and "Traceback" not in err
    assert error_line(err) == f"ldm serve: error: --port must lie in 1..65535, got {port}"


def test_serve_without_a_model_folder_is_one_line(tmp_path, capsys):
    code, _, err = run(capsys, "serve", "--model", tmp_path / "nope")
    assert code == 2 and "Traceback" not in err
    assert "is not an exported ldm-system model" in error_line(err)


def test_side_files_never_unpickle_code(tmp_path):
    """x_T / null-embedding files are safetensors; an old-style .pt is read with weights_only=True, so
    a pickle that would run code is refused (and does not run), and a truncated file names itself."""
    from ldm_system.serving.noise_files import load_noise, save_noise

    x = torch.randn(1, 3, 8, 8)
    path = save_noise(tmp_path / "x_T.safetensors", x, {"steps": "4"})
    back, meta = load_noise(path)
    assert torch.equal(back, x) and meta == {"steps": "4"}

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x_T": x, "steps": "4", "payload": Exploit()}, tmp_path / "x_T.pt")
    with pytest.raises(ValueError, match=r"x_T\.pt: not a readable tensor file"):
        load_noise(tmp_path / "x_T.pt")
    assert not marker.exists()

    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"x_T\.safetensors: truncated or not a safetensors file"):
        load_noise(path)
