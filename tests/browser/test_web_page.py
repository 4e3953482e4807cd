"""The page of `ldm serve`, driven end to end in a real headless Chromium (Selenium + chromedriver).

A real `ldm serve` process with a bearer token serves the small trained Fashion-MNIST model. The test
enters the token (a wrong one first), samples a grid while watching its progress, uploads an image
and inverts it (PSNR shown, reconstruction beside the input), edits it with the keep-steps slider,
SDEdits it, interpolates between two uploads, and checks every displayed `ldm` command; the invert
command is run for real and must give the PSNR the page showed. Screenshots go to a temporary folder
(printed); LDM_WEB_SCREENSHOT=PATH also copies the sample tab's to PATH (docs/web.png for the README).

    apt-get install -y --no-install-recommends chromium chromium-driver
    bash launch/test.sh -m slow tests/browser
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from serving_http import free_port, start_ldm_serve, wait_healthy

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:  # the `test` extra installs it
    webdriver = None

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = [name for name, found in (("selenium (pip install selenium)", webdriver), ("chromium", CHROMIUM),
                                    ("chromedriver (apt-get install chromium-driver)", CHROMEDRIVER)) if not found]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(MISSING), reason=f"the browser test needs {', '.join(MISSING)}")]

TOKEN = "browser-test-token-0123456789"
WINDOW = (1280, 820)
SNEAKER, SANDAL, BAG = 7, 5, 8  # Fashion-MNIST labels


# ---- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(serving_model_dir, tmp_path_factory):
    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    proc = start_ldm_serve(serving_model_dir, port, "--token-file", str(token_file))
    url = f"http://127.0.0.1:{port}"
    log: list[str] = []  # read all along: a full pipe would stall the server (every progress poll is a line)

    def drain() -> None:
        for line in proc.stdout:
            log.append(line)

    threading.Thread(target=drain, daemon=True).start()
    try:
        wait_healthy(proc, url)
        yield url, log
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def uploads(tmp_path_factory) -> Path:
    """Held-out Fashion-MNIST images as files a user would upload: a sneaker (28x28, square) and a bag
    padded to 42x28 (not square: the command must then pin the size the server used)."""
    from ldm_system.data.sources.fashion_mnist import load_fashion_mnist

    images, labels = load_fashion_mnist("test")
    folder = tmp_path_factory.mktemp("uploads")
    first = {label: next(i for i in range(9000, len(labels)) if labels[i] == label) for label in (SNEAKER, BAG)}
    Image.fromarray(images[first[SNEAKER]]).save(folder / "sneaker.png")
    Image.fromarray(np.pad(images[first[BAG]], ((0, 0), (7, 7)))).save(folder / "bag wide.png")
    return folder


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("web_screenshots")
    print(f"\nscreenshots: {folder}")
    return folder


# ---- helpers ---------------------------------------------------------------------------------------
def wait_for(driver, condition, timeout: float = 180, what: str = ""):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d), message=what)


def fill(form, name: str, value) -> None:
    field = form.find_element(By.NAME, name)
    field.clear()
    field.send_keys(str(value))


def choose(form, name: str, label: str) -> None:
    Select(form.find_element(By.NAME, name)).select_by_visible_text(label)


def tab(driver, name: str):
    driver.find_element(By.CSS_SELECTOR, f'.tabs [data-tab="{name}"]').click()
    return driver.find_element(By.ID, f"form-{name}")


def submit(driver, name: str, runs: bool = True) -> tuple[list[str], object]:
    """Click the form's button; returns the progress lines seen until the result (or error) arrived.
    runs=False: a request refused at once, whose answer may beat the first look at the page."""
    out = driver.find_element(By.CSS_SELECTOR, f'[data-output="{name}"]')
    driver.find_element(By.CSS_SELECTOR, f"#form-{name} button[type=submit]").click()
    # the progress area opens in the click's own handler, before any answer can arrive
    assert out.find_element(By.CSS_SELECTOR, ".progress").is_displayed() or not runs
    lines, deadline = [], time.monotonic() + 300
    while not driver.execute_script("return arguments[0].querySelector('.progress').hidden", out):
        lines.append(out.find_element(By.CSS_SELECTOR, ".progress-text").text)
        assert time.monotonic() < deadline, f"{name}: no answer in 300 s; progress said {lines[-3:]}"
        time.sleep(0.05)
    return lines, out


def command(out) -> str:
    return out.find_element(By.CSS_SELECTOR, ".cli code").get_attribute("textContent")


def shot(driver, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def image_sizes(driver, out, selector: str) -> list[list[int]]:
    return driver.execute_script(
        "return Array.from(arguments[0].querySelectorAll(arguments[1]), i => [i.naturalWidth, i.naturalHeight])",
        out, selector)


def page_pngs(driver, out, selector: str) -> list[np.ndarray]:
    srcs = driver.execute_script("return Array.from(arguments[0].querySelectorAll(arguments[1]), i => i.src)",
                                 out, selector)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(s.partition(",")[2])))) for s in srcs]


# ---- the test --------------------------------------------------------------------------------------
def test_page_end_to_end(server, browser, uploads, serving_model_dir, shots):
    d = browser
    server, server_log = server
    auth = {"Authorization": f"Bearer {TOKEN}"}

    # -- the token: asked at once, a wrong one is refused and asked again, then kept for the tab ------------
    d.get(server + "/")
    dialog = wait_for(d, lambda d: d.find_element(By.CSS_SELECTOR, "#token-dialog[open]"), 60, "no token dialog")
    token_input = dialog.find_element(By.NAME, "token")
    token_input.send_keys("wrong-token-0123456789")
    shot(d, shots, "01-token")
    dialog.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(d, lambda d: "refused" in d.find_element(By.CSS_SELECTOR, "#token-dialog[open] .token-message").text,
             30, "a wrong token was not refused")
    token_input.send_keys(TOKEN + Keys.ENTER)
    wait_for(d, lambda d: d.find_elements(By.CSS_SELECTOR, "body.ready"), 30, "the page did not get ready")
    assert d.execute_script("return sessionStorage.getItem('ldm-serve-token')") == TOKEN
    d.refresh()  # asked once: a reload in the same tab goes straight to work
    wait_for(d, lambda d: d.find_elements(By.CSS_SELECTOR, "body.ready"), 30, "no ready after reload")
    assert not d.find_elements(By.CSS_SELECTOR, "#token-dialog[open]")
    chips = d.find_element(By.ID, "model-info").text
    assert "class-conditional · 10 classes" in chips and "32×32 px" in chips

    # -- sample a grid, one image per class, with live progress ---------------------------------------------
    form = tab(d, "sample")
    assert Select(form.find_element(By.NAME, "class")).first_selected_option.text == "all classes (cycle)"
    fill(form, "num", 10)
    fill(form, "steps", 60)
    lines, out = submit(d, "sample")
    steps_seen = [m for m in (re.match(r"step (\d+) / (\d+)", s) for s in lines) if m]
    assert steps_seen and {int(m[2]) for m in steps_seen} == {60}, lines
    assert image_sizes(d, out, ".grid img") == [[32, 32]] * 10
    assert command(out) == "ldm sample --model MODEL --num 10 --class all --sampler ddim --steps 60 --guidance 3 " \
                           "--seed 0 --out samples.png"
    # what the page sent is what the command says: the same request over the API gives the same pixels
    classes = httpx.get(f"{server}/health").json()["model"]["classes"]
    body = {"num": 10, "classes": classes, "sampler": "ddim", "steps": 60, "guidance": 3, "seed": 0}
    api = httpx.post(f"{server}/sample", json=body, headers=auth, timeout=300).json()["images"]
    for page_im, b64 in zip(page_pngs(d, out, ".grid img"), api):
        ref = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))
        assert np.abs(page_im.astype(int) - ref.astype(int)).max() <= 1
    d.find_elements(By.CSS_SELECTOR, ".grid .tile")[SNEAKER].click()
    readme_shot = shot(d, shots, "02-sample")

    # -- upload an image and invert it: PSNR, reconstruction beside the input -------------------------------
    form = tab(d, "invert")
    form.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(uploads / "sneaker.png"))
    names = '[data-slot="input"] .picker-name'  # in three tabs, two of them hidden: textContent, not .text
    wait_for(d, lambda d: [e.get_attribute("textContent") for e in d.find_elements(By.CSS_SELECTOR, names)]
             == ["sneaker.png"] * 3, 10, "the upload did not reach the invert/edit/SDEdit slots")
    choose(form, "class", "Sneaker")
    fill(form, "steps", 30)
    _, out = submit(d, "invert")
    assert not out.find_element(By.CSS_SELECTOR, ".error").is_displayed(), out.text
    psnr = float(out.find_element(By.CSS_SELECTOR, ".stat.psnr .stat-value").text.removesuffix(" dB"))
    assert 12 < psnr < 60, psnr
    captions = [e.text for e in out.find_elements(By.CSS_SELECTOR, ".pair-view figcaption")]
    assert captions == ["input", "reconstruction"]
    assert image_sizes(d, out, ".pair-view img") == [[28, 28], [32, 32]]  # the upload as is, the model's size
    cmd = command(out)
    assert cmd == "ldm invert --model MODEL sneaker.png --class Sneaker --steps 30 --out inversion"
    shot(d, shots, "03-invert")
    # the command, run for real on the uploaded file, gives the PSNR the page showed
    argv = [str(serving_model_dir) if a == "MODEL" else a for a in shlex.split(cmd)]
    ldm = os.path.join(os.path.dirname(sys.executable), "ldm")
    run = subprocess.run([ldm, *argv[1:], "--no-progress"], cwd=uploads, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert run.returncode == 0, run.stderr
    cli_psnr = json.loads((uploads / "inversion" / "metrics.json").read_text())["images"][0]["psnr"]
    assert abs(cli_psnr - psnr) < 0.02, (cli_psnr, psnr)

    # -- edit it to another class with the keep-steps slider ------------------------------------------------
    form = tab(d, "edit")
    choose(form, "source_class", "Sneaker")
    choose(form, "target_class", "Sandal")
    fill(form, "steps", 30)
    slider = form.find_element(By.NAME, "keep_steps")
    assert form.find_element(By.NAME, "keep_out").text == "5 of 30"
    slider.send_keys(Keys.RIGHT * 3)
    assert form.find_element(By.NAME, "keep_out").text == "8 of 30"
    _, out = submit(d, "edit")
    assert image_sizes(d, out, ".pair-view img") == [[28, 28], [32, 32]], out.text
    assert command(out) == ("ldm edit --model MODEL sneaker.png --source-class Sneaker --target-class Sandal "
                            "--keep-steps 8 --steps 30 --out edit")
    edited = page_pngs(d, out, ".pair-view img")[1]
    shot(d, shots, "04-edit")

    # -- SDEdit -------------------------------------------------------------------------------------------
    form = tab(d, "sdedit")
    choose(form, "target_class", "Sandal")
    fill(form, "steps", 30)
    form.find_element(By.NAME, "strength").send_keys(Keys.LEFT * 2)
    assert form.find_element(By.NAME, "strength_out").text == "0.50"
    _, out = submit(d, "sdedit")
    assert image_sizes(d, out, ".pair-view img") == [[28, 28], [32, 32]], out.text
    assert command(out) == ("ldm edit --model MODEL sneaker.png --target-class Sandal --strength 0.5 --steps 30 "
                            "--seed 0 --out sdedit")
    assert not np.array_equal(page_pngs(d, out, ".pair-view img")[1], edited)  # another method, another image
    shot(d, shots, "05-sdedit")

    # -- interpolate between two uploads (one not square) ---------------------------------------------------
    form = tab(d, "interpolate")
    form.find_element(By.CSS_SELECTOR, '[data-slot="a"] input[type=file]').send_keys(str(uploads / "sneaker.png"))
    form.find_element(By.CSS_SELECTOR, '[data-slot="b"] input[type=file]').send_keys(str(uploads / "bag wide.png"))
    wait_for(d, lambda d: form.find_element(By.CSS_SELECTOR, '[data-slot="b"] .picker-name').text == "bag wide.png",
             10, "image B was not taken")
    fill(form, "num", 6)
    fill(form, "steps", 20)
    _, out = submit(d, "interpolate")
    assert image_sizes(d, out, ".strip img") == [[32, 32]] * 6, out.text
    assert [e.text for e in out.find_elements(By.CSS_SELECTOR, ".strip figcaption")] == ["A", "1", "2", "3", "4", "B"]
    assert command(out) == ("ldm interpolate --model MODEL sneaker.png 'bag wide.png' --height 32 --width 32 "
                            "--num 6 --steps 20 --out interpolation.png")
    shot(d, shots, "06-interpolate")

    # -- Cancel: the page drops the request, the server stops the work at its next step ------------------------
    form = tab(d, "sample")
    fill(form, "num", 16)
    fill(form, "steps", 200)
    out = d.find_element(By.CSS_SELECTOR, '[data-output="sample"]')
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(d, lambda d: out.find_element(By.CSS_SELECTOR, ".progress-text").text.startswith("step "), 60,
             "no step progress on the long request")
    out.find_element(By.CSS_SELECTOR, ".cancel").click()
    wait_for(d, lambda d: out.find_element(By.CSS_SELECTOR, ".error").text == "Cancelled.", 10, "not cancelled")
    assert form.find_element(By.CSS_SELECTOR, "button[type=submit]").is_enabled()
    wait_for(d, lambda d: any(re.search(r"request web-[0-9a-f]+ cancelled \(client disconnected\) at step \d+/200", line)
                              for line in server_log), 30, "the server did not stop the cancelled work")
    shot(d, shots, "07-cancelled")

    # -- a request the server refuses: its one-line reason on the page, the last result kept -----------------
    form = tab(d, "sample")
    fill(form, "steps", 5000)
    _, out = submit(d, "sample", runs=False)
    error = out.find_element(By.CSS_SELECTOR, ".error")
    assert error.is_displayed() and "steps" in error.text and "5000" in error.text, error.text
    assert len(out.find_elements(By.CSS_SELECTOR, ".grid img")) == 10
    shot(d, shots, "08-error")

    # the page threw nothing (the network log holds the 401s and the 422 provoked above, on purpose)
    problems = [e for e in d.get_log("browser") if e["level"] == "SEVERE" and e["source"] != "network"]
    assert not problems, problems

    assert readme_shot.stat().st_size < 200_000, f"{readme_shot}: {readme_shot.stat().st_size} bytes"
    if os.environ.get("LDM_WEB_SCREENSHOT"):
        shutil.copyfile(readme_shot, os.environ["LDM_WEB_SCREENSHOT"])


@pytest.fixture(scope="module")
def text_server(tmp_path_factory):
    """A text-conditioned model (untrained tiny UNet, random CLIP) served in this process, without a token."""
    from ldm_system.diffusion.config import DiffusionConfig
    from ldm_system.models.latent import LatentCodec
    from ldm_system.models.text import TextEncoder, save_random_text_encoder
    from ldm_system.models.unet import Denoiser, UNetConfig
    from ldm_system.serving.pipeline import LDMPipeline
    from ldm_system.serving.server import create_app
    from serving_http import running_server

    clip = save_random_text_encoder(tmp_path_factory.mktemp("clip"), hidden_size=32, max_length=16)
    unet = UNetConfig(sample_size=8, in_channels=3, block_out_channels=(16, 32), attention_levels=(False, True),
                      layers_per_block=1, attention_head_dim=4, norm_num_groups=8, conditioning="text",
                      cross_attention_dim=32)
    pipe = LDMPipeline(Denoiser(unet), LatentCodec.identity(), DiffusionConfig(),
                       text=TextEncoder.from_pretrained(clip, max_length=16))
    with running_server(create_app(pipe)) as url:
        yield url


def test_page_on_a_text_model_without_a_token(text_server, browser, shots):
    """Prompts instead of class menus, prompts in the commands (shell-quoted), no token asked."""
    d = browser
    d.get(text_server + "/")  # another port, another origin: no token kept from the other test
    wait_for(d, lambda d: d.find_elements(By.CSS_SELECTOR, "body.ready"), 30, "the page did not get ready")
    assert not d.find_elements(By.CSS_SELECTOR, "#token-dialog[open]")
    assert "text-conditioned" in d.find_element(By.ID, "model-info").text
    form = tab(d, "sample")
    assert not form.find_element(By.NAME, "class").is_displayed() and form.find_element(By.NAME, "prompt").is_displayed()
    fill(form, "prompt", "a sandal")
    fill(form, "num", 4)
    fill(form, "steps", 3)
    _, out = submit(d, "sample")
    assert image_sizes(d, out, ".grid img") == [[8, 8]] * 4, out.text
    assert command(out) == ("ldm sample --model MODEL --num 4 --prompt 'a sandal' --sampler ddim --steps 3 "
                            "--guidance 3 --seed 0 --out samples.png")
    # a sample becomes the input of the edit tabs
    d.find_elements(By.CSS_SELECTOR, ".grid .tile")[1].click()
    out.find_element(By.CSS_SELECTOR, '[data-use="input"]').click()

    form = tab(d, "edit")
    assert form.find_element(By.CSS_SELECTOR, '.picker-name').text == "sample_seed0_1.png"
    assert not form.find_element(By.NAME, "source_class").is_displayed()
    fill(form, "source_prompt", "a sneaker")
    fill(form, "target_prompt", "it's a sandal")
    fill(form, "steps", 3)
    assert form.find_element(By.NAME, "keep_out").text == "3 of 3"  # the slider follows the steps down
    _, out = submit(d, "edit")
    assert image_sizes(d, out, ".pair-view img") == [[8, 8], [8, 8]], out.text
    cmd = command(out)
    assert cmd == ("ldm edit --model MODEL sample_seed0_1.png --source-prompt 'a sneaker' "
                   "--target-prompt 'it'\\''s a sandal' --keep-steps 3 --steps 3 --out edit")
    assert shlex.split(cmd)[8] == "it's a sandal"
    shot(d, shots, "09-text-edit")
