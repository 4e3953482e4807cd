"""Serving under load: dynamic batching vs one request at a time, same model, same run.

Two `ldm serve` processes on the same model answer C concurrent clients (threads of this process),
each posting /sample requests ({"num": 1, a class, S guided steps, its own seed}) back to back. The
two servers take turns in interleaved timed segments (A B, B A, ...; the idle one sleeps):

- one at a time: `--batch-images 1`, every request is its own UNet batch;
- batched: `--batch-window-ms W --batch-images 32`, compatible requests share one UNet batch.

Per mode: requests/s (completed requests over the segments' wall time), p50/p95 latency (client
side, from sending the request to the last byte of the answer) and the mean number of requests per
UNet batch (the server's own count, from /health).

    python benchmarks/serving_load.py                  # 8 clients, 4 x 15 s segments per mode
    python benchmarks/serving_load.py --quick          # 2 x 5 s segments per mode
    python benchmarks/serving_load.py --model outputs/demo/model

Without --model it builds (once, ~1 min) the small trained Fashion-MNIST model the serving tests use
(`tests/helpers/serving_model.py`) under outputs/bench_serving_model/.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "helpers"))  # serving_model (the test model) and serving_http (uvicorn)

import _results  # noqa: E402


def client_loop(url: str, index: int, steps: int, guidance: float, stop: threading.Event,
                latencies: list[float], errors: list[str]) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=120) as c:
        k = 0
        while not stop.is_set():
            body = {"num": 1, "classes": index % 10, "steps": steps, "guidance": guidance, "seed": 1000 * index + k}
            t0 = time.perf_counter()
            r = c.post("/sample", json=body)
            if r.status_code != 200:
                errors.append(f"{r.status_code} {r.text[:200]}")
            elif not stop.is_set():  # a request that ends after the segment does not count
                latencies.append(time.perf_counter() - t0)
            k += 1


def segment(url: str, clients: int, seconds: float, steps: int, guidance: float) -> tuple[list[float], float, list[str]]:
    """Run the clients for `seconds`: (latencies of the requests completed inside, wall seconds, errors)."""
    stop, latencies, errors = threading.Event(), [], []
    threads = [threading.Thread(target=client_loop, args=(url, i, steps, guidance, stop, latencies, errors))
               for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    wall = time.perf_counter() - t0
    for t in threads:
        t.join(timeout=120)
    return latencies, wall, errors


@contextmanager
def ldm_serve(model: str, threads: int, *flags: str):
    """`ldm serve` on a free port with `threads` intra-op threads: yields its URL once /health answers."""
    from serving_http import free_port, wait_healthy

    port = free_port()
    ldm = os.path.join(os.path.dirname(sys.executable), "ldm")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([ldm, "serve", "--model", model, "--port", str(port), "--device", "cpu", *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="an `ldm export` folder (default: build the test model)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20, help="DDIM steps per request")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--seconds", type=float, default=15.0, help="one timed segment")
    ap.add_argument("--repeats", type=int, default=4, help="segments per mode, interleaved")
    ap.add_argument("--window-ms", type=float, default=15.0, help="the batched server's --batch-window-ms")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of each server (more spin-wait on 2 shared cores)")
    _results.add_options(ap, quick="2 segments of 5 s per mode")
    a = ap.parse_args(argv)
    if a.quick:
        a.seconds, a.repeats = 5.0, 2
    import httpx

    if a.model is None:
        from serving_model import build_trained_model

        a.model = str(build_trained_model(ROOT / "outputs" / "bench_serving_model"))
    modes = {"one at a time": ["--batch-images", "1"],
             "batched": ["--batch-window-ms", str(a.window_ms), "--batch-images", "32"]}
    print(f"model {a.model}; {a.clients} clients, DDIM-{a.steps}, guidance {a.guidance}, "
          f"{a.repeats} x {a.seconds:g} s per mode, {a.threads} threads per server", flush=True)

    stats = {m: {"latencies": [], "wall": 0.0, "errors": [], "rates": []} for m in modes}
    with ldm_serve(a.model, a.threads, *modes["one at a time"]) as one, \
            ldm_serve(a.model, a.threads, *modes["batched"]) as batched:
        urls = {"one at a time": one, "batched": batched}
        for url in urls.values():  # warm-up: first calls allocate
            segment(url, a.clients, 2.0, a.steps, a.guidance)
        before = {m: httpx.get(f"{u}/health").json()["queue"] for m, u in urls.items()}
        for r in range(a.repeats):
            for m in (list(modes) if r % 2 == 0 else list(modes)[::-1]):
                lat, wall, errors = segment(urls[m], a.clients, a.seconds, a.steps, a.guidance)
                s = stats[m]
                s["latencies"] += lat
                s["wall"] += wall
                s["errors"] += errors
                s["rates"].append(len(lat) / wall)
                print(f"  segment {r + 1}/{a.repeats} {m:>13}: {len(lat) / wall:6.2f} requests/s", flush=True)
        for m, u in urls.items():
            after = httpx.get(f"{u}/health").json()["queue"]
            stats[m]["per_batch"] = ((after["requests_run"] - before[m]["requests_run"])
                                     / max(1, after["batches_run"] - before[m]["batches_run"]))

    res = _results.start("serving_load", a)
    rows = []
    for m, s in stats.items():
        lat, n = s["latencies"], len(s["latencies"])
        if s["errors"]:
            raise SystemExit(f"{m}: {len(s['errors'])} requests failed, e.g. {s['errors'][0]}")
        rate = n / s["wall"]
        rows.append([m, a.clients, n, f"{rate:.2f}", f"{min(s['rates']):.2f}–{max(s['rates']):.2f}",
                     f"{1000 * percentile(lat, 50):.0f}", f"{1000 * percentile(lat, 95):.0f}",
                     f"{s['per_batch']:.1f}"])
        res.ratio(f"{m}, requests/s", rate)
        res.ratio(f"{m}, p50 latency ms", 1000 * percentile(lat, 50))
    gain = statistics.median(b / o for b, o in zip(stats["batched"]["rates"], stats["one at a time"]["rates"]))
    res.ratio("batched / one at a time, requests/s (median per repeat)", gain)
    print()
    print(res.table("load", ["server", "clients", "requests", "requests/s", "segments min–max", "p50 ms", "p95 ms",
                             "requests per UNet batch"], rows))
    print(f"\nbatched / one at a time: {gain:.2f}x requests/s (median of the per-repeat ratios)")
    res.save(a.json)


if __name__ == "__main__":
    main()
