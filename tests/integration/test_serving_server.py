"""The HTTP server for real: uvicorn on a free 127.0.0.1 port in a background thread, httpx requests."""
import base64
import threading
import time

import httpx
import numpy as np
import pytest
import torch

from ldm_system.serving.image_io import tensor_to_b64png
from ldm_system.serving.server import BatchingConfig, ServerLimits, create_app, is_loopback
from serving_http import decode_png, ldm_serve_process, png_b64, running_server

LIMITS = ServerLimits(max_steps=20, max_batch=4, max_null_opt_steps=5, max_input_side=256, max_body_bytes=200_000)
# a wide window: on a loaded 2-core machine concurrent test clients must still land in one batch
BATCHING = BatchingConfig(window_ms=300, max_images=8)


@pytest.fixture(scope="module")
def base_url(serving_pipe):
    with running_server(create_app(serving_pipe, LIMITS, batching=BATCHING)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=120) as c:
        yield c


def test_health_describes_the_model(client):
    r = client.get("/health")
    assert r.status_code == 200
    h = r.json()
    assert h["status"] == "ok"
    assert h["model"]["classes"][7] == "Sneaker" and len(h["model"]["classes"]) == 10
    assert h["model"]["image_size"] == 32 and h["model"]["image_channels"] == 1
    assert h["model"]["latent_shape"] == [3, 8, 8] and h["model"]["prompts"] is False
    assert h["samplers"] == ["ddim", "ddpm", "dpm++2m"]
    assert h["limits"]["max_steps"] == 20


def test_sample_returns_pngs_of_the_model_size(client):
    body = {"num": 2, "classes": ["Sneaker", 5], "steps": 4, "guidance": 3.0, "seed": 3}
    r = client.post("/sample", json=body)
    assert r.status_code == 200, r.text
    images = [decode_png(s) for s in r.json()["images"]]
    assert len(images) == 2 and all(im.size == (32, 32) and im.mode == "L" for im in images)
    again = client.post("/sample", json=body).json()["images"]
    assert again == r.json()["images"]  # DDIM, eta 0, same seed: identical bytes


def test_invert_reports_psnr_and_returns_noise(client, serving_pipe, held_out):
    images, labels = held_out
    body = {"images": tensor_to_b64png(images[:2]), "classes": labels[:2], "steps": 10, "return_noise": True}
    r = client.post("/invert", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["psnr"]) == 2 and all(p > 10 for p in out["psnr"])
    assert all(m < 0.05 for m in out["latent_mse"])
    assert decode_png(out["reconstructions"][0]).size == (32, 32)
    noise = out["noise"]
    x_T = np.frombuffer(base64.b64decode(noise["data"]), dtype="<f4").reshape(noise["shape"])
    assert noise["shape"] == [2, 3, 8, 8]
    # the same inversion in-process gives the same noise (the PNG round trip of the input is exact)
    local = serving_pipe.invert(images[:2], classes=labels[:2], steps=10)
    assert torch.allclose(torch.from_numpy(x_T.copy()), local.x_T, atol=1e-5)


def test_null_optimized_invert_returns_embeddings_that_replay(client, serving_pipe, held_out):
    images, labels = held_out
    body = {"images": tensor_to_b64png(images[:1]), "classes": labels[:1], "steps": 3, "guidance": 3.0,
            "null_optimization": True, "return_noise": True}
    r = client.post("/invert", json=body)
    assert r.status_code == 200, r.text
    out = r.json()

    def tensor(d):
        return torch.from_numpy(np.frombuffer(base64.b64decode(d["data"]), dtype="<f4").reshape(d["shape"]).copy())

    nulls = tensor(out["null_embeddings"])
    assert nulls.shape[:2] == (3, 1)  # (steps, B, E)
    replay = serving_pipe.reconstruct(tensor(out["noise"]), classes=labels[:1], steps=3, guidance=3.0,
                                      null_embeddings=nulls)
    served = torch.from_numpy(np.asarray(decode_png(out["reconstructions"][0]), dtype=np.float32)) / 127.5 - 1
    assert (replay[0, 0] - served).abs().max() <= 1.01 / 127.5  # equal up to the PNG's 8-bit rounding
    without = serving_pipe.reconstruct(tensor(out["noise"]), classes=labels[:1], steps=3, guidance=3.0)
    assert (without[0, 0] - served).abs().max() > 0.05  # the embeddings are what makes the replay match
    plain = client.post("/invert", json={**body, "null_optimization": False}).json()
    assert "null_embeddings" not in plain


def test_invert_resize_policy_is_opt_in(client):
    wrong = {"images": [png_b64((28, 28))], "steps": 2}
    r = client.post("/invert", json=wrong)
    assert r.status_code == 422
    assert "is 28x28, the model takes 32x32" in r.json()["detail"] and '"resize": true' in r.json()["detail"]
    assert client.post("/invert", json={**wrong, "resize": True}).status_code == 200


def test_uploads_of_any_size_keep_their_shape(client, serving_pipe):
    """keep_shape: a 48x24 upload is inverted and edited at 2:1 (about the model's pixel count, sides on
    its pixel step), or at the height and width asked for; a side off the step is a 422."""
    step = serving_pipe.pixel_step
    wide = {"images": [png_b64((48, 24))], "steps": 2, "keep_shape": True}
    r = client.post("/invert", json=wide)
    assert r.status_code == 200, r.text
    w, h = decode_png(r.json()["reconstructions"][0]).size
    assert w > h and w % step == 0 and h % step == 0 and abs(w / h - 2) < 0.5
    r = client.post("/edit", json={**wide, "target_class": "Bag", "strength": 0.5, "height": 2 * step, "width": 4 * step})
    assert r.status_code == 200, r.text
    assert decode_png(r.json()["images"][0]).size == (4 * step, 2 * step)
    r = client.post("/invert", json={**wide, "height": step + 1})
    assert r.status_code == 422 and "multiple" in r.json()["detail"]
    r = client.post("/invert", json={**wide, "images": [png_b64((48, 24)), png_b64((24, 48))]})
    assert r.status_code == 422 and "different shapes" in r.json()["detail"]


def test_edit_class_and_sdedit(client, held_out):
    images, labels = held_out
    img = tensor_to_b64png(images[:1])
    r = client.post("/edit", json={"images": img, "source_class": labels[0], "target_class": "Bag", "steps": 6,
                                   "keep_steps": 2})
    assert r.status_code == 200, r.text
    assert r.json()["mode"] == "class" and decode_png(r.json()["images"][0]).size == (32, 32)
    r = client.post("/edit", json={"images": img, "target_class": "Bag", "steps": 6, "strength": 0.5})
    assert r.status_code == 200 and r.json()["mode"] == "sdedit"


def test_interpolate_returns_the_frames(client, serving_pipe, held_out):
    images, labels = held_out
    body = {"images": tensor_to_b64png(images[:2]), "classes": labels[:2], "num": 3, "steps": 4}
    r = client.post("/interpolate", json=body)
    assert r.status_code == 200, r.text
    frames = r.json()["frames"]
    assert len(frames) == 3 and all(decode_png(f).size == (32, 32) for f in frames)
    local = serving_pipe.interpolate(images[:1], images[1:2], num=3, steps=4, classes=labels[:2])
    assert frames == tensor_to_b64png(local)  # the in-process call, byte for byte


@pytest.mark.parametrize("path, body, status, detail", [
    ("/sample", {"num": 1, "steps": 21}, 422, "steps must lie in 1..20 (server limit), got 21"),
    ("/sample", {"num": 1, "steps": 0}, 422, "steps must lie in 1..20"),
    ("/sample", {"num": 5, "steps": 2}, 422, "num must lie in 1..4 (server limit), got 5"),
    ("/sample", {"num": 1, "steps": 2, "classes": "Hat"}, 422, "unknown class 'Hat'; known classes: T-shirt/top"),
    ("/sample", {"num": 1, "steps": 2, "classes": 99}, 422, "unknown class 99: class ids are 0..9"),
    ("/sample", {"num": 2, "steps": 2, "classes": [1, 2, 3]}, 422, "classes: give one value or one per image (2), got 3"),
    ("/sample", {"num": 1, "steps": 2, "sampler": "euler"}, 422, "unknown sampler 'euler'"),
    ("/sample", {"num": 1, "steps": 2, "guidence": 3}, 422, "guidence: Extra inputs are not permitted"),
    ("/sample", {"num": "two"}, 422, "num: Input should be a valid integer"),
    ("/sample", {"num": 1, "steps": 2, "guidance": -1}, 422, "guidance must lie in [0, 30.0], got -1.0"),
    ("/sample", {"num": 1, "steps": 2, "prompts": "a bag"}, 422, "this model is not text-conditional"),
    ("/sample", {"num": 1, "steps": 2, "prompts": "a bag", "classes": 1}, 422, "give classes (class-conditional models) or prompts"),
    ("/invert", {"images": ["not base64!!"], "steps": 2}, 400, "images[0]: not valid base64"),
    ("/invert", {"images": [base64.b64encode(b"hello").decode()], "steps": 2}, 400, "images[0]: not a decodable image"),
    ("/invert", {"images": [], "steps": 2}, 422, "number of images must lie in 1..4"),
    ("/invert", {"images": ["{png}"], "steps": 2, "fixed_point_iters": 9}, 422, "fixed_point_iters must lie in 0..5"),
    ("/invert", {"images": ["{png}"], "steps": 6, "classes": 1, "guidance": 3, "null_optimization": True}, 422,
     "steps (with null_optimization) must lie in 1..5"),
    ("/invert", {"images": ["{png}"], "steps": 2, "null_optimization": True}, 422, "null_optimization needs classes"),
    ("/invert", {"images": ["{big}"], "steps": 2, "resize": True}, 400, "images[0]: 300x300 exceeds the server limit of 256"),
    ("/edit", {"images": ["{png}"], "target_class": 1, "steps": 4}, 422, "source_class is required"),
    ("/edit", {"images": ["{png}"], "source_class": 0, "target_class": 1, "steps": 4, "keep_steps": 5}, 422,
     "keep_steps must lie in [0, steps=4], got 5"),
    ("/edit", {"images": ["{png}"], "target_class": 1, "steps": 4, "strength": 0.5, "keep_steps": 1}, 422,
     "give keep_steps (class edit) or strength (SDEdit), not both"),
    ("/edit", {"images": ["{png}"], "source_class": 0, "steps": 4}, 422,
     "give exactly one of target_class (class-conditional models) or target_prompt (text-conditioned models)"),
    ("/edit", {"images": ["{png}"], "target_class": 1, "target_prompt": "a bag", "steps": 4}, 422, "give exactly one of"),
    ("/edit", {"images": ["{png}"], "target_prompt": "a bag", "steps": 4}, 422, "this model is not text-conditional"),
    ("/invert", {"images": ["{png}"], "steps": 2, "prompts": "a bag"}, 422, "this model is not text-conditional"),
    ("/interpolate", {"images": ["{png}", "{png}"], "num": 5, "steps": 2}, 422,
     "num must lie in 2..4 (frames, both ends included; server limit), got 5"),
    ("/interpolate", {"images": ["{png}", "{png}"], "num": 1, "steps": 2}, 422, "num must lie in 2..4"),
    ("/interpolate", {"images": ["{png}", "{png}"], "num": 3, "steps": 21}, 422, "steps must lie in 1..20 (server limit), got 21"),
    ("/interpolate", {"images": ["{png}"], "num": 3, "steps": 2}, 422, "interpolation takes exactly two images (the ends), got 1"),
    ("/interpolate", {"images": ["{png}", "not base64!!"], "num": 3, "steps": 2}, 400, "images[1]: not valid base64"),
    ("/interpolate", {"images": ["{png}", "{png}"], "num": 3, "steps": 2, "classes": [1, 2, 3]}, 422, "classes: give one value or one per image (2), got 3"),
    ("/interpolate", {"images": ["{png}", "{png}"], "steps": 2, "frames": 3}, 422, "frames: Extra inputs are not permitted"),
    ("/edit", {"images": ["{png}"], "source_class": 0, "target_class": "Hat", "steps": 4}, 422, "unknown class 'Hat'"),
])
def test_bad_requests_get_clear_4xx(client, path, body, status, detail):
    subst = {"{png}": png_b64(), "{big}": png_b64((300, 300))}
    if "images" in body:
        body = {**body, "images": [subst.get(s, s) for s in body["images"]]}
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert r.json()["detail"].startswith(detail) or detail in r.json()["detail"], r.json()


@pytest.mark.parametrize("path, body, where", [
    ("/sample", '{"num": 1, "steps": 2, "guidance": NaN}', "guidance: numbers must be finite, got nan"),
    ("/sample", '{"num": 1, "steps": 2, "eta": Infinity}', "eta: numbers must be finite, got inf"),
    ("/sample", '{"num": 1, "steps": 2, "eta": -Infinity}', "eta: numbers must be finite, got -inf"),
    ("/sample", '{"num": 1, "steps": 2, "guidance": 1e999}', "guidance: numbers must be finite, got inf"),
    ("/sample", '{"num": 2, "steps": 2, "classes": [1, NaN]}', "classes[1]: numbers must be finite"),
    ("/sample", '{"num": 1, "steps": 2, "unknown": {"deep": [1, 2, 1e999]}}', "unknown.deep[2]: numbers must be finite"),
    ("/edit", '{"images": ["{png}"], "target_class": 1, "steps": 4, "strength": NaN}', "strength: numbers must be finite"),
    ("/invert", '{"images": ["{png}"], "steps": 2, "guidance": Infinity}', "guidance: numbers must be finite"),
])
def test_non_finite_numbers_anywhere_are_422(client, path, body, where):
    """Python's JSON reader accepts NaN, Infinity and 1e999 (→ inf): the body parser refuses them
    wherever they sit, naming the place."""
    body = body.replace("{png}", png_b64())
    r = client.post(path, content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith(where), r.text
    assert r.json()["request_id"]


@pytest.mark.parametrize("body, detail", [
    (b"", "the request body is empty"),
    (b"{not json", "the request body is not valid JSON"),
    (b"[1, 2]", "the request body must be a JSON object, got list"),
    (b"\xff\xfe", "the request body is not valid JSON"),
])
def test_unreadable_bodies_are_422(client, body, detail):
    r = client.post("/sample", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith(detail), r.text


def test_oversized_body_is_413(client):
    r = client.post("/invert", content=b"x" * 300_000, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "exceeds the server limit" in r.json()["detail"]


def _concurrently(base_url: str, bodies: list[dict]) -> list[dict]:
    """POST every body to /sample at the same moment (one client thread each)."""
    results: list = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def go(i):
        with httpx.Client(base_url=base_url, timeout=120) as c:
            start.wait()
            results[i] = c.post("/sample", json=bodies[i]).json()

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    return results


def _pixels(b64_images: list[str]) -> np.ndarray:
    return np.stack([np.asarray(decode_png(s), dtype=np.int16) for s in b64_images])


@pytest.mark.parametrize("settings", [
    {"sampler": "ddim", "guidance": 3.0},
    {"sampler": "ddpm", "guidance": 1.0},  # stochastic: each request's step noise comes from its own seed
    {"sampler": "ddim", "eta": 0.7, "guidance": 2.0},
])
def test_concurrent_samples_share_a_batch_and_equal_their_solo_results(client, base_url, settings):
    """Four compatible requests at once run as one UNet batch (`batch_requests`); each keeps its seed,
    so its images are what it gets alone (up to the float rounding of a batched network call: PNG
    pixels within one level, nearly all equal)."""
    bodies = [{"num": n, "classes": c, "steps": 4, "seed": seed, **settings}
              for n, c, seed in ((1, 1, 11), (2, 7, 12), (1, "Bag", 13), (1, 1, 14))]
    together = _concurrently(base_url, bodies)
    assert max(r["batch_requests"] for r in together) >= 2, together  # merged (4 when they all arrive in the window)
    assert sum(r["batch_requests"] for r in together) > len(bodies)
    for body, merged in zip(bodies, together):
        solo = client.post("/sample", json=body).json()
        assert solo["batch_requests"] == 1
        a, b = _pixels(merged["images"]), _pixels(solo["images"])
        assert a.shape == b.shape == (body["num"], 32, 32)
        assert np.abs(a - b).max() <= 1 and (a == b).mean() > 0.995
    # different seeds really give different images (the merge did not share the noise)
    assert not np.array_equal(_pixels(together[0]["images"]), _pixels(together[3]["images"]))


def test_incompatible_samples_do_not_merge(base_url):
    bodies = [{"num": 1, "classes": 1, "steps": 3, "seed": 1}, {"num": 1, "classes": 1, "steps": 4, "seed": 1},
              {"num": 1, "steps": 3, "seed": 1}]  # other steps; unconditional vs class
    for r in _concurrently(base_url, bodies):
        assert r["batch_requests"] == 1, r


def test_progress_follows_a_request_by_its_id(client, base_url):
    assert client.get("/progress/never-seen").json() == {"state": "unknown", "step": 0, "total": 0,
                                                         "request_id": "never-seen"}
    r = client.post("/sample", json={"num": 1, "steps": 7}, headers={"X-Request-Id": "prog_1"})
    assert r.status_code == 200 and r.json()["request_id"] == "prog_1" and r.headers["x-request-id"] == "prog_1"
    assert client.get("/progress/prog_1").json() == {"state": "done", "step": 7, "total": 7, "request_id": "prog_1"}
    seen = []

    def poll():
        with httpx.Client(base_url=base_url, timeout=10) as c:
            while not seen or seen[-1]["state"] not in ("done", "failed"):
                seen.append(c.get("/progress/prog_2").json())
                time.sleep(0.01)

    watcher = threading.Thread(target=poll)
    watcher.start()
    r = client.post("/invert", json={"images": [png_b64()], "steps": 20}, headers={"X-Request-Id": "prog_2"})
    watcher.join(timeout=60)
    assert r.status_code == 200
    running = [p["step"] for p in seen if p["state"] == "running"]
    assert running and 0 < min(running) and max(running) <= 40 and running == sorted(running), seen
    assert seen[-1] == {"state": "done", "step": 40, "total": 40, "request_id": "prog_2"}  # inversion + reconstruction
    bad = client.post("/sample", json={"num": 1, "steps": 99}, headers={"X-Request-Id": "prog_3"})
    assert bad.status_code == 422 and bad.json()["request_id"] == "prog_3"
    assert client.get("/progress/prog_3").json()["state"] == "failed"
    assert client.get("/progress/bad$id").status_code == 422


def test_every_json_answer_carries_a_request_id(client):
    for r in (client.get("/health"), client.post("/sample", json={"num": 1, "steps": 2}),
              client.post("/sample", json={"num": 99}), client.get("/no-such-path")):
        assert r.json()["request_id"] == r.headers["x-request-id"] and len(r.json()["request_id"]) == 16, r.text
    r = client.get("/health", headers={"X-Request-Id": "x" * 65})
    assert r.status_code == 400 and r.json()["detail"].startswith("X-Request-Id must be 1-64 characters")


def test_limits_and_loopback_helpers():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    with pytest.raises(ValueError, match="max_steps must be positive"):
        ServerLimits(max_steps=0)


@pytest.mark.slow
def test_ldm_serve_command_end_to_end(serving_model_dir):
    """`ldm serve` as a real process (its start-up imports take ~30 s on a loaded 2-core machine)."""
    with ldm_serve_process(serving_model_dir, "--max-steps", "8") as (proc, url):
        device = httpx.get(f"{url}/health").json()["model"]["device"]  # --device auto: cuda when present
        assert device.startswith("cuda" if torch.cuda.is_available() else "cpu")
        r = httpx.post(f"{url}/sample", json={"num": 1, "classes": "Bag", "steps": 4}, timeout=60)
        assert r.status_code == 200 and decode_png(r.json()["images"][0]).size == (32, 32)
        r = httpx.post(f"{url}/sample", json={"num": 1, "steps": 9}, timeout=60)
        assert r.status_code == 422 and "1..8" in r.json()["detail"]


def test_bearer_token_guards_every_api_path(serving_pipe, tmp_path, monkeypatch):
    from ldm_system.serving.cli import server_token

    token = "s3cret-token-0123456789"
    with pytest.raises(ValueError, match="at least 16 characters"):
        create_app(serving_pipe, LIMITS, token="short")
    body = {"num": 1, "classes": "Sneaker", "steps": 2}
    with running_server(create_app(serving_pipe, LIMITS, token=token)) as url, httpx.Client(base_url=url) as app:
        assert app.get("/health").status_code == 200  # probes stay open
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": token},
                        {"Authorization": f"Basic {token}"}, {"Authorization": f"Bearer{token}"}):
            for r in (app.post("/sample", json=body, headers=headers), app.get("/progress/abc", headers=headers)):
                assert r.status_code == 401 and r.json()["detail"] == "missing or wrong bearer token"
                assert r.headers["www-authenticate"] == "Bearer" and r.json()["request_id"]
        # the scheme is case-insensitive (RFC 7235); extra spaces before the token are allowed
        for scheme in ("Bearer ", "bearer ", "BEARER ", "bEaReR   "):
            r = app.post("/sample", json=body, headers={"Authorization": scheme + token})
            assert r.status_code == 200 and len(r.json()["images"]) == 1, scheme
        assert app.get("/progress/abc", headers={"Authorization": f"bearer {token}"}).json()["state"] == "unknown"
    # where the token comes from: a file's first line, else the environment, else none
    (tmp_path / "tok").write_text(f"{token}\n")
    assert server_token(str(tmp_path / "tok")) == token
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        server_token(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        server_token(str(tmp_path / "missing"))
    monkeypatch.setenv("LDM_SERVE_TOKEN", token)
    assert server_token(None) == token
    monkeypatch.delenv("LDM_SERVE_TOKEN")
    assert server_token(None) is None
