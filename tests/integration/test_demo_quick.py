"""`ldm demo --quick` as the README's first command runs it (in a subprocess, short): every stage runs,
every file it lists is written, and the inversion's PSNR is printed beside the autoencoder's ceiling."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def test_quick_demo_writes_every_output_and_the_psnr_ceiling(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "ldm_system.cli", "demo", "--quick", "--out", str(out)],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for name in ("samples.png", "inversion.png", "edit.png"):
        assert Image.open(out / name).size[0] > 32
    assert (out / "model" / "ldm.json").exists() and (out / "stage1" / "autoencoder").is_dir()
    found = re.search(r"mean PSNR (\d+\.\d+) dB \(the autoencoder's own round trip: (\d+\.\d+) dB, the ceiling\)",
                      proc.stdout)
    assert found, proc.stdout[-2000:]
    inversion, ceiling = map(float, found.groups())
    assert 0 < inversion <= ceiling + 0.5  # the inversion cannot beat the autoencoder it decodes through
