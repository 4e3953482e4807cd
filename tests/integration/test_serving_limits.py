"""Every limit of `ldm serve`, over real HTTP (uvicorn on a free localhost port; raw sockets where
httpx would not send what a hostile or careless client sends)."""
import json
import logging
import signal
import socket
import threading
import time
from contextlib import ExitStack, contextmanager

import httpx
import pytest
import torch

from ldm_system.serving.device import resolve_device
from ldm_system.serving.server import BatchingConfig, ServerLimits, create_app
from serving_http import ldm_serve_process, png_b64, png_declaring, raw_request, running_server

# one long request: 200 guided steps over 16 images take seconds on any machine here
LONG = {"num": 16, "classes": 1, "steps": 200, "guidance": 3.0}
WORKER_LOG = "ldm_system.serving.scheduler"


@pytest.fixture(scope="module")
def url(serving_pipe):
    with running_server(create_app(serving_pipe, ServerLimits(), batching=BatchingConfig(max_images=1))) as u:
        yield u


@contextmanager
def held_request(url: str, body: dict, request_id: str, path: str = "/sample"):
    """A request sent on a raw socket and left waiting; leaving the block hangs up (a client that goes away)."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    data = json.dumps(body).encode()
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
              f"X-Request-Id: {request_id}\r\n\r\n".encode() + data)
    try:
        yield s
    finally:
        s.close()


def wait_state(url: str, request_id: str, states: tuple[str, ...], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        p = httpx.get(f"{url}/progress/{request_id}", timeout=10).json()
        if p["state"] in states and (p["state"] != "running" or p["step"] >= 1):
            return p
        assert time.monotonic() < deadline, f"{request_id} never reached {states}: {p}"
        time.sleep(0.02)


# ---- the body ------------------------------------------------------------------------------------
def test_chunked_oversize_body_is_413_before_it_is_read(url):
    """A chunked 40 MB upload (limit 32 MiB): the 413 arrives while the client still holds 7 MB
    unsent, so the server cannot have waited for (or parsed) the whole body."""
    host, port = url.removeprefix("http://").split(":")
    chunk = b"x" * (1 << 20)
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /invert HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(33):  # 33 MiB: just over the limit; the body's end (and 7 MB) is never sent
            s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        answer = b""
        while b"}" not in answer:
            part = s.recv(65536)
            assert part, "connection closed without an answer"
            answer += part
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    detail = json.loads(body)
    assert detail["detail"] == ("request body of more than 33554432 bytes exceeds the server limit of 33554432 bytes "
                                "(max_body_bytes)") and detail["request_id"]


def test_declared_oversize_body_is_413_unread(url):
    status, answer = raw_request(url, "POST /sample HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                                      "Content-Length: 41943040")  # 40 MB announced, nothing sent
    assert status == 413 and b"request body of 41943040 bytes exceeds the server limit" in answer


# ---- uploaded images ------------------------------------------------------------------------------
@pytest.mark.parametrize("width, height, rows, detail", [
    (6000, 6000, 6000, "images[0]: declares 6000x6000 = 36000000 pixels, over the server limit of 4194304 pixels"),
    (100_000, 100_000, 8, "images[0]: declares more than 178956970 pixels (a decompression bomb?)"),
])
def test_decompression_bomb_is_413_before_decoding(url, width, height, rows, detail):
    import base64

    bomb = base64.b64encode(png_declaring(width, height, rows)).decode()
    assert len(bomb) < 100_000  # a small upload that would take 36 MB to 10 GB decoded
    r = httpx.post(f"{url}/invert", json={"images": [bomb], "steps": 2, "resize": True}, timeout=30)
    assert r.status_code == 413 and r.json()["detail"].startswith(detail), r.text


@pytest.mark.parametrize("fmt, label", [("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF")])
def test_uploads_other_than_png_jpeg_webp_are_415(url, fmt, label):
    r = httpx.post(f"{url}/invert", json={"images": [png_b64(fmt=fmt)], "steps": 2}, timeout=30)
    assert r.status_code == 415, r.text
    assert r.json()["detail"] == f"images[0]: {label} images are not accepted; upload PNG, JPEG or WebP"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_png_jpeg_and_webp_uploads_are_taken(url, fmt):
    r = httpx.post(f"{url}/invert", json={"images": [png_b64(fmt=fmt)], "steps": 2}, timeout=60)
    assert r.status_code == 200 and len(r.json()["psnr"]) == 1, r.text


@pytest.mark.parametrize("body, detail", [
    ({"images": [png_b64()] * 17, "steps": 2}, "number of images must lie in 1..16 (server limit), got 17"),
    ({"images": [png_b64()], "steps": 201}, "steps must lie in 1..200 (server limit), got 201"),
])
def test_per_request_limits_on_images_and_steps(url, body, detail):
    r = httpx.post(f"{url}/invert", json=body, timeout=30)
    assert r.status_code == 422 and r.json()["detail"] == detail, r.text
    r = httpx.post(f"{url}/sample", json={"num": 17, "steps": 2}, timeout=30)
    assert r.status_code == 422 and r.json()["detail"] == "num must lie in 1..16 (server limit), got 17"


# ---- the model worker: health, disconnects, queue, timeouts -----------------------------------------
def test_health_answers_within_a_second_while_the_model_is_busy(url):
    with held_request(url, LONG, "busy_health"):
        wait_state(url, "busy_health", ("running",))
        for _ in range(5):
            t0 = time.monotonic()
            r = httpx.get(f"{url}/health", timeout=5)
            assert r.status_code == 200 and time.monotonic() - t0 < 1.0
            assert r.json()["queue"]["running"] == 1
            time.sleep(0.1)
    wait_state(url, "busy_health", ("cancelled",))


def test_a_client_that_disconnects_cancels_its_work_at_the_next_step(url, caplog):
    caplog.set_level(logging.INFO, logger=WORKER_LOG)
    with held_request(url, LONG, "gone_1"):
        at = wait_state(url, "gone_1", ("running",))["step"]
    t0 = time.monotonic()
    end = wait_state(url, "gone_1", ("cancelled",), timeout=30)  # marked at once; the work stops at its next step
    assert at <= end["step"] < end["total"] == 200, end
    said = "request gone_1 cancelled (client disconnected) at step "
    while not any(said in r.getMessage() for r in caplog.records):  # the server's log says where it stopped
        assert time.monotonic() - t0 < 5, caplog.text
        time.sleep(0.02)
    stopped = int(next(r.getMessage() for r in caplog.records if said in r.getMessage()).split(said)[1].split("/")[0])
    assert end["step"] <= stopped <= end["step"] + 1, (end, caplog.text)
    assert httpx.get(f"{url}/health").json()["queue"]["running"] == 0


def test_a_request_id_in_flight_cannot_be_reused(url):
    with held_request(url, LONG, "twice"):
        wait_state(url, "twice", ("running",))
        r = httpx.post(f"{url}/sample", json={"num": 1, "steps": 2}, headers={"X-Request-Id": "twice"})
        assert r.status_code == 409 and r.json()["detail"] == "X-Request-Id 'twice' names a request that is still in flight"
    wait_state(url, "twice", ("cancelled",))


def test_a_full_queue_is_503_with_retry_after(serving_pipe, caplog):
    caplog.set_level(logging.INFO, logger=WORKER_LOG)
    app = create_app(serving_pipe, ServerLimits(max_queue=1), batching=BatchingConfig(max_images=1))
    with running_server(app) as url:
        with held_request(url, LONG, "first"), ExitStack() as second:
            wait_state(url, "first", ("running",))
            second.enter_context(held_request(url, LONG, "second"))  # sent once the first one runs
            wait_state(url, "second", ("queued",))
            r = httpx.post(f"{url}/sample", json={"num": 1, "steps": 2}, headers={"X-Request-Id": "third"})
            assert r.status_code == 503, r.text
            assert r.json()["detail"].startswith("the server is busy: 1 requests are waiting (server limit max_queue=1)")
            assert int(r.headers["retry-after"]) >= 1 and r.json()["request_id"] == "third"
        # both hung up: the running one stops at its next step, the queued one never starts
        assert wait_state(url, "first", ("cancelled",))["step"] < 200
        assert wait_state(url, "second", ("cancelled",))["step"] == 0
        assert httpx.post(f"{url}/sample", json={"num": 1, "steps": 2}).status_code == 200


def test_a_request_past_its_timeout_stops_and_is_504(serving_pipe):
    app = create_app(serving_pipe, ServerLimits(request_timeout_s=1.0))
    with running_server(app) as url:
        t0 = time.monotonic()
        r = httpx.post(f"{url}/sample", json=LONG, headers={"X-Request-Id": "slow"}, timeout=60)
        assert r.status_code == 504, r.text
        assert r.json()["detail"].startswith("request timed out after 1 s (server limit request_timeout_s) at step ")
        assert time.monotonic() - t0 < 10
        p = httpx.get(f"{url}/progress/slow").json()
        assert p["state"] == "cancelled" and p["step"] < 200


# ---- the device -------------------------------------------------------------------------------------
def test_device_auto_and_its_errors(serving_model_dir, capsys):
    from ldm_system.cli import main

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="--device 'gpu0': not a device name"):
        resolve_device("gpu0")
    assert main(["sample", "--model", str(serving_model_dir), "--device", "gpu0", "--out", "x.png"]) == 2
    assert "--device 'gpu0': not a device name (auto, cpu, cuda, cuda:1, ...)" in capsys.readouterr().err
    assert main(["serve", "--model", str(serving_model_dir), "--max-queue", "0"]) == 2
    assert "--max-queue must be positive, got 0" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda: no CUDA device is available on this machine"):
            resolve_device("cuda")


# ---- SIGTERM ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_finishes_or_cancels_the_requests_in_flight_and_exits_0(serving_model_dir):
    """`ldm serve` as a process: SIGTERM while one request runs and one waits. New connections are
    refused; the running one finishes (200); the waiting one is answered 503 at once; the process
    exits 0."""
    answers = {}
    with ldm_serve_process(serving_model_dir, "--shutdown-timeout", "6", "--batch-images", "1") as (proc, url):
        def post(name: str, body: dict) -> threading.Thread:
            def go():
                answers[name] = httpx.post(f"{url}/sample", json=body, headers={"X-Request-Id": name}, timeout=120)

            t = threading.Thread(target=go)
            t.start()
            return t

        clients = [post("short", {"num": 4, "classes": 2, "steps": 100, "guidance": 3.0})]
        wait_state(url, "short", ("running",))
        clients.append(post("waiting", {"num": 1, "steps": 5}))
        wait_state(url, "waiting", ("queued",))
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for t in clients:
            t.join(timeout=60)
        assert answers["short"].status_code == 200 and len(answers["short"].json()["images"]) == 4
        assert answers["waiting"].status_code == 503 and answers["waiting"].json()["detail"] == (
            "request cancelled at step 0/5: server shutting down")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health", timeout=5)
        rc = proc.wait(timeout=60)
        seconds = time.monotonic() - t0
    log = proc.stdout.read()
    assert rc == 0 and seconds < 6 + 15, (rc, seconds, log)
    assert "request waiting cancelled (server shutting down) before it started" in log, log
    assert "server stopped" in log and "Exception" not in log, log


@pytest.mark.slow
def test_sigterm_cancels_a_request_longer_than_the_grace_period(serving_model_dir):
    """A request still running when the grace period ends is cancelled at its next step and answered 503."""
    with ldm_serve_process(serving_model_dir, "--shutdown-timeout", "2", "--max-steps", "1000") as (proc, url):
        with held_request(url, {**LONG, "steps": 1000}, "long") as s:  # minutes of work
            wait_state(url, "long", ("running",))
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            answer = s.recv(65536)
        rc = proc.wait(timeout=60)
        seconds = time.monotonic() - t0
    log = proc.stdout.read()
    assert answer.startswith(b"HTTP/1.1 503") and b"server shutting down" in answer, answer
    assert rc == 0 and seconds < 2 + 15, (rc, seconds, log)
    assert "request long cancelled (server shutting down) at step" in log, log
