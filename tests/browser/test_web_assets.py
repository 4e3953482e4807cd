"""The page `ldm serve` answers at `/`, without a browser: served without the token, self-contained (no
external references), no way out of its asset folder, and /health carries what the page reads.

The server runs a tiny untrained pipeline over real HTTP (the page's assets do not need a trained one)."""
from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx
import pytest

from serving_http import raw_request, running_server

TOKEN = "page-test-token-0123456789"
ASSETS = ("index.html", "client.js", "page.js", "page.css")


@pytest.fixture(scope="module")
def url():
    from ldm_system.diffusion.config import DiffusionConfig
    from ldm_system.models.latent import LatentCodec
    from ldm_system.models.unet import Denoiser, UNetConfig
    from ldm_system.serving.pipeline import LDMPipeline
    from ldm_system.serving.server import create_app

    unet = UNetConfig(sample_size=8, in_channels=1, block_out_channels=(16, 32), attention_levels=(False, False),
                      layers_per_block=1, norm_num_groups=8, conditioning="class", num_classes=3)
    pipe = LDMPipeline(Denoiser(unet), LatentCodec.identity(), DiffusionConfig(), classes=["Bag", "Coat", "Shirt"])
    with running_server(create_app(pipe, token=TOKEN)) as u:
        yield u


class _Refs(HTMLParser):
    """Every src/href in a document."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ("src", "href") and v is not None]


def test_page_and_assets_are_served_without_the_token(url):
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    refs = _Refs()
    refs.feed(page.text)
    assert sorted(refs.refs) == ["/ui/client.js", "/ui/page.css", "/ui/page.js", "data:,"]  # inline favicon: no 404
    for name in ("client.js", "page.js"):
        js = httpx.get(f"{url}/ui/{name}")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    client = httpx.get(f"{url}/ui/client.js").text  # every API call names itself and is followed on /progress
    assert "X-Request-Id" in client and "/progress/" in client
    css = httpx.get(f"{url}/ui/page.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    # the API behind it is guarded: the page must send the token
    assert httpx.post(f"{url}/sample", json={"num": 1, "steps": 1}).status_code == 401
    assert httpx.get(f"{url}/progress/abc", headers={"Authorization": f"Bearer {TOKEN}"}).status_code != 401


@pytest.mark.parametrize("name", ASSETS)
def test_assets_reference_nothing_outside_the_server(url, name):
    text = httpx.get(f"{url}/" if name == "index.html" else f"{url}/ui/{name}").text
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), "an external URL in " + name
    assert not re.search(r"@import|@font-face|url\(\s*['\"]?(?!data:)", text), "a loaded resource in " + name


@pytest.mark.parametrize("path", [
    "/ui/../server.py", "/ui/..%2Fserver.py", "/ui/%2e%2e%2fserver.py", "/ui/..%5Cserver.py", "/ui/.%2e/cli.py",
    "/ui/web_page.py", "/ui/.hidden.js", "/ui/", "/ui/page.js%00.css", "/ui/../sample",
])
def test_ui_refuses_paths_outside_its_folder(url, path):
    status, answer = raw_request(url, f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close")
    assert status == 404, (path, answer[:200])
    assert b"import" not in answer and b"def " not in answer  # no Python source came back


def test_open_paths_do_not_open_the_api(url):
    """`/ui/..` is open to the token check but routes nowhere: a POST through it reaches no endpoint."""
    status, _ = raw_request(url, "POST /ui/../sample HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                                 "Content-Length: 2\r\nConnection: close", b"{}")
    assert status in (401, 404, 405)


def test_health_carries_what_the_page_reads(url):
    """page.js shapes its forms from these fields (conditioning, classes, image size, samplers, limits)."""
    h = httpx.get(f"{url}/health").json()
    m = h["model"]
    assert m["conditioning"] == "class" and m["classes"] == ["Bag", "Coat", "Shirt"]
    assert m["image_size"] == 8 and m["image_channels"] == 1 and m["prediction_type"] == "eps"
    assert "ddim" in h["samplers"]
    for key in ("max_steps", "max_batch", "max_guidance", "max_fixed_point_iters"):
        assert h["limits"][key] > 0
    js = httpx.get(f"{url}/ui/page.js").text
    for field in ("conditioning", "classes", "image_size", "image_channels", "prediction_type", "samplers",
                  "max_steps", "max_batch", "max_guidance", "max_fixed_point_iters"):
        assert field in js
