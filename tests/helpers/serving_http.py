"""Real HTTP for the server tests: uvicorn on a free 127.0.0.1 port in a background thread, and
small clients (httpx, raw sockets) for what httpx will not send."""
from __future__ import annotations

import base64
import contextlib
import io
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
from PIL import Image


@contextmanager
def running_server(app, log_level: str = "warning") -> Iterator[str]:
    """Serve `app` until the block ends; yields the base URL. The app's lifespan runs, so its model
    worker is stopped on exit."""
    import uvicorn

    # Bind the socket ourselves (port 0 → the OS picks a free one) and hand it to uvicorn: no race
    # between "find a free port" and "listen on it".
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not shut down"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ldm_serve(model_dir: Path, port: int, *flags: str) -> subprocess.Popen:
    """`ldm serve` as a real process, its log (stdout + stderr) on the pipe."""
    ldm = os.path.join(os.path.dirname(sys.executable), "ldm")
    return subprocess.Popen([ldm, "serve", "--model", str(model_dir), "--port", str(port), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})


@contextmanager
def ldm_serve_process(model_dir: Path, *flags: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """`ldm serve` on a free port, up and healthy: (process, base URL); killed on exit if still running."""
    port = free_port()
    proc = start_ldm_serve(model_dir, port, *flags)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stdout.read()
        with contextlib.suppress(httpx.TransportError):  # not listening yet
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        assert time.monotonic() < deadline, "ldm serve did not come up"
        time.sleep(0.5)


def png_b64(size=(32, 32), value=128, fmt: str = "PNG", mode: str = "L") -> str:
    buf = io.BytesIO()
    Image.new(mode, size, value).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def png_declaring(width: int, height: int, rows: int) -> bytes:
    """A 1-bit grayscale PNG header declaring width x height, with `rows` rows of zeros compressed
    (all rows: a real decompression bomb; fewer: a truncated one, which must be refused just the same)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * rows, 9)) + chunk(b"IEND", b""))


def decode_png(b64: str) -> Image.Image:
    im = Image.open(io.BytesIO(base64.b64decode(b64)))
    im.load()
    return im


def raw_request(url: str, head: str, body: bytes = b"", timeout: float = 30) -> tuple[int, bytes]:
    """One HTTP/1.1 exchange over a plain socket: (status, response bytes)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(head.encode() + b"\r\n\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < _expected_length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def _expected_length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(head) + 4 + int(line.split(b":")[1])
    return len(data) + 1


__all__ = ["decode_png", "free_port", "ldm_serve_process", "png_b64", "png_declaring", "raw_request", "running_server",
           "start_ldm_serve", "wait_healthy"]
