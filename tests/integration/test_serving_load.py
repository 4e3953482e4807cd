"""Load and faults: 16 concurrent clients mix valid and invalid requests against one server for about a
minute. Every valid request gets its answer (no 5xx), every invalid one a 4xx with a message, the
process memory stays bounded, and /health answers afterwards."""
import base64
import json
import os
import random
import socket
import threading
import time
from collections import Counter

import httpx
import psutil
import pytest

from ldm_system.serving.image_io import tensor_to_b64png
from ldm_system.serving.server import BatchingConfig, ServerLimits, create_app
from serving_http import png_b64, png_declaring, running_server

TOKEN = "load-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMITS = ServerLimits(max_steps=20, max_batch=4, max_input_side=256, max_body_bytes=300_000, max_queue=64)
SECONDS = float(os.environ.get("LDM_LOAD_TEST_SECONDS", "60"))


def _cases(image: str) -> tuple[list, list]:
    """(valid, invalid) requests as (method, path, body or raw bytes, extra headers, expected status)."""
    gif = png_b64(fmt="GIF")
    bomb = base64.b64encode(png_declaring(60_000, 60_000, rows=4)).decode()
    valid = [
        ("POST", "/sample", {"num": 1, "classes": 3, "steps": 4, "guidance": 3.0}, {}, 200),
        ("POST", "/sample", {"num": 2, "classes": "Bag", "steps": 4, "guidance": 3.0}, {}, 200),
        ("POST", "/sample", {"num": 1, "steps": 3, "sampler": "ddpm"}, {}, 200),
        ("POST", "/invert", {"images": [image], "steps": 3}, {}, 200),
        ("POST", "/edit", {"images": [image], "source_class": 1, "target_class": 2, "steps": 4, "keep_steps": 1}, {}, 200),
        ("POST", "/edit", {"images": [image], "target_class": 2, "steps": 4, "strength": 0.5}, {}, 200),
        ("POST", "/interpolate", {"images": [image, image], "num": 3, "steps": 2}, {}, 200),
        ("GET", "/health", None, {}, 200),
        ("GET", "/progress/some-id", None, {}, 200),
    ]
    invalid = [
        ("POST", "/sample", {"num": 1, "steps": 999}, {}, 422),
        ("POST", "/sample", b'{"num": 1, "steps": 2, "guidance": NaN}', {}, 422),
        ("POST", "/sample", b'{"num": 1, "steps": 2, "eta": 1e999}', {}, 422),
        ("POST", "/sample", {"num": 1, "guidence": 3}, {}, 422),
        ("POST", "/sample", b"{not json", {}, 422),
        ("POST", "/sample", {"num": 9, "steps": 2}, {}, 422),
        ("POST", "/sample", {"num": 1, "steps": 2, "classes": "Hat"}, {}, 422),
        ("POST", "/invert", {"images": ["not base64!!"], "steps": 2}, {}, 400),
        ("POST", "/invert", {"images": [gif], "steps": 2}, {}, 415),
        ("POST", "/invert", {"images": [bomb], "steps": 2, "resize": True}, {}, 413),
        ("POST", "/invert", b"x" * 400_000, {}, 413),
        ("POST", "/interpolate", {"images": [image], "num": 3, "steps": 2}, {}, 422),
        ("POST", "/sample", {"num": 1, "steps": 2}, {"X-Request-Id": "bad id!"}, 400),
        ("POST", "/sample", {"num": 1, "steps": 2}, {"Authorization": "Bearer wrong-token-000000000"}, 401),
        ("GET", "/no-such-path", None, {}, 404),
    ]
    return valid, invalid


def _hang_up(url: str) -> None:
    """A fault: a client that sends a long request and goes away mid-run."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"num": 4, "classes": 1, "steps": 20, "guidance": 3.0}).encode()
    with socket.create_connection((host, int(port))) as s:
        s.sendall(f"POST /sample HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
                  f"\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode() + body)
        time.sleep(random.uniform(0.05, 0.5))


@pytest.mark.slow
def test_sixteen_clients_mixing_valid_and_invalid_requests_for_a_minute(serving_pipe, held_out):
    images, _ = held_out
    valid, invalid = _cases(tensor_to_b64png(images[:1])[0])
    me = psutil.Process()
    app = create_app(serving_pipe, LIMITS, token=TOKEN, batching=BatchingConfig(window_ms=15, max_images=16))
    problems, counts, rss = [], Counter(), []
    with running_server(app) as url:
        stop = threading.Event()

        def client(k: int) -> None:
            rng = random.Random(k)
            with httpx.Client(base_url=url, timeout=120) as c:
                while not stop.is_set():
                    if rng.random() < 0.03:
                        _hang_up(url)
                        counts["hang-up"] += 1
                        continue
                    is_valid = rng.random() < 0.5
                    method, path, body, headers, want = rng.choice(valid if is_valid else invalid)
                    headers = {**AUTH, **headers}
                    if isinstance(body, dict):
                        body = {**body, "seed": rng.randrange(1000)} if path == "/sample" else body
                        r = c.request(method, path, json=body, headers=headers)
                    else:
                        r = c.request(method, path, content=body, headers={**headers, "content-type": "application/json"})
                    counts["valid" if is_valid else "invalid"] += 1
                    detail = r.json().get("detail") if r.headers.get("content-type", "").startswith("application/json") else None
                    if r.status_code != want or (not is_valid and not (isinstance(detail, str) and detail)):
                        problems.append((path, body if isinstance(body, dict) else body[:40], r.status_code, r.text[:200]))

        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(16)]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        while time.monotonic() - t0 < SECONDS:
            time.sleep(1)
            rss.append(me.memory_info().rss)
        stop.set()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "a client is stuck"
        t1 = time.monotonic()
        health = httpx.get(f"{url}/health", timeout=5)
        assert health.status_code == 200 and time.monotonic() - t1 < 1.0
        queue = health.json()["queue"]
    assert not problems, problems[:5]
    assert counts["valid"] > 50 and counts["invalid"] > 50 and counts["hang-up"] > 0, counts
    assert queue["in_flight"] == 0 and queue["finished_kept"] <= 1000, queue
    warm = rss[len(rss) // 4]  # after the first quarter: allocator pools and caches are in place
    assert max(rss[len(rss) // 4:]) - warm < 300 * 2**20, [r // 2**20 for r in rss]
    print(f"\n{dict(counts)} in {SECONDS:.0f} s; RSS {warm // 2**20} → {rss[-1] // 2**20} MiB "
          f"(max {max(rss) // 2**20}); {queue}")
