"""A local HTTP JSON server around one loaded `LDMPipeline`.

    GET  /health    model info (classes, image size, samplers), the limits, the queue; never waits on the model
    GET  /progress/{request_id}  {"state": queued|running|done|failed|cancelled|unknown, "step": i, "total": n}
    POST /sample    {"num": 4, "classes": "Sneaker", "steps": 50, "guidance": 3}  → {"images": [b64 PNG, ...]}
    POST /invert    {"images": [b64], "classes": ..., "steps": 50, ...}           → reconstructions + PSNR/SSIM
    POST /edit      {"images": [b64], "source_class": ..., "target_class": ...}   → edited images
                    (text models: "source_prompt" / "target_prompt"; SDEdit with "strength")
    POST /interpolate {"images": [b64 a, b64 b], "num": 8, "steps": 50}            → {"frames": [b64 PNG, ...]}

With a token (`LDM_SERVE_TOKEN`, or `ldm serve --token-file F`), every API path needs
`Authorization: Bearer <token>` (401 otherwise); the page at /, its /ui/ assets and /health are open.
A client may name its request with `X-Request-Id` (1-64 of A-Z a-z 0-9 _ -) to follow it on
/progress; every JSON answer carries its "request_id".

The model is loaded once and owned by one worker thread (`scheduler.py`): concurrent sample requests
with the same settings are merged into one UNet batch, each with its own seed; other verbs run one
at a time. Endpoints are coroutines that only parse, queue and wait, so /health and /progress answer
while the model works. Each body is converted into a request of `serving/requests.py`, which holds
every rule. Errors are JSON `{"detail": "one readable sentence", "request_id": ...}`:
400 bad image payload or header, 401 token, 409 request id in flight, 413 body or image too large,
415 image format, 422 invalid values (including NaN/Infinity anywhere in the body), 503 queue full or
shutting down (with Retry-After), 504 request timeout.
"""
from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import math
import signal
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ldm_system.diffusion.samplers import SAMPLERS
from ldm_system.serving import requests
from ldm_system.serving.guards import REQUEST_ID, Guards
from ldm_system.serving.image_io import (ImageDecodeError, ImageSizeError, b64_bytes, bytes_to_kept_shape,
                                         bytes_to_tensor, tensor_to_b64png)
from ldm_system.serving.progress import ProgressBoard, RequestIdInUse, invert_steps
from ldm_system.serving.requests import HTTP, Limits
from ldm_system.serving.scheduler import TIMED_OUT, BatchingConfig, Job, QueueFull, Scheduler, Stopped
from ldm_system.serving.schemas import (EditRequest, InterpolateRequest, InvertRequest, SampleRequest,
                                        flatten_errors, parse_body)
from ldm_system.serving.uploads import UploadRejected, check_upload
from ldm_system.serving.web_page import add_web_routes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerLimits:
    """Per-request bounds (they bound latency) and the server's own: body size, queue, time."""

    max_steps: int = 200  # sampler / inversion steps (DDPM-1000 belongs in `ldm sample`, not a request)
    max_batch: int = 16  # images per request
    max_fixed_point_iters: int = 5
    max_null_opt_steps: int = 50  # null-condition inversion costs ~12 evaluations per step
    max_guidance: float = 30.0
    max_input_side: int = 2048  # declared pixel size of an uploaded image, checked before decoding
    max_input_pixels: int = 2048 * 2048  # declared width x height, checked before decoding
    max_body_bytes: int = 32 * 1024 * 1024  # counted while the body streams in
    max_queue: int = 64  # requests waiting for the model; more are answered 503 + Retry-After
    request_timeout_s: float = 300.0  # queue wait + run; the work stops at its next step, answered 504

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (math.isfinite(value) and value > 0) and name != "max_fixed_point_iters":
                raise ValueError(f"ServerLimits.{name} must be positive, got {value}")

    @property
    def requests(self) -> Limits:
        """The bounds the request dataclasses check."""
        return Limits(max_steps=self.max_steps, max_batch=self.max_batch,
                      max_fixed_point_iters=self.max_fixed_point_iters, max_null_opt_steps=self.max_null_opt_steps,
                      max_guidance=self.max_guidance)


# How long an endpoint waits beyond the request timeout for the worker to report the stop itself.
_BACKSTOP_S = 30.0


async def _disconnected(request: Request) -> None:
    """Return when the client goes away (the body has been read, so the next message is the disconnect)."""
    message = await request.receive()
    while message["type"] != "http.disconnect":
        message = await request.receive()


class _Handlers:
    """The endpoint bodies: JSON → request (every rule lives there) → a job for the model worker → JSON."""

    def __init__(self, pipe, limits: ServerLimits, batching: BatchingConfig) -> None:
        self.pipe, self.limits, self.batching = pipe, limits, batching
        self.board = ProgressBoard()
        self.scheduler = Scheduler(pipe, batching, self.board, max_queue=limits.max_queue)

    # ---- helpers ----------------------------------------------------------------------------
    async def body(self, request: Request, schema: type[BaseModel]) -> Any:
        raw = await request.body()  # Guards answers 413 as soon as the stream crosses the limit
        data = await run_in_threadpool(parse_body, raw)
        try:
            return schema.model_validate(data)
        except ValidationError as e:
            raise HTTPException(422, flatten_errors(e.errors())) from None

    def decode_images(self, data: list[str], body: InvertRequest | EditRequest | InterpolateRequest) -> torch.Tensor:
        """The uploads of `body` (its `images` and how they meet the model: exact size, `resize`, `keep_shape`)."""
        n, top = len(data), self.limits.max_batch
        if not 1 <= n <= top:
            raise HTTPException(422, f"number of images must lie in 1..{top} (server limit), got {n}")
        p = self.pipe
        keep = body.keep_shape or body.height is not None or body.width is not None
        if keep:
            p.latent_shape(1, body.height, body.width)  # a side off the pixel step: ValueError → 422
        out = []
        for i, s in enumerate(data):
            name = f"images[{i}]"
            try:
                raw = b64_bytes(s, name)  # decoded once: the checks and the decode read the same bytes
                check_upload(raw, self.limits.max_input_pixels, name=name)
                if keep:
                    out.append(bytes_to_kept_shape(raw, p.image_size, p.image_channels, p.pixel_step, body.height,
                                                   body.width, max_side=self.limits.max_input_side, name=name))
                    continue
                out.append(bytes_to_tensor(raw, p.image_size, p.image_channels, resize=body.resize,
                                           max_side=self.limits.max_input_side, name=name))
            except UploadRejected as e:
                raise HTTPException(e.status, str(e)) from None
            except ImageSizeError as e:
                raise HTTPException(422, str(e)) from None
            except ImageDecodeError as e:
                raise HTTPException(400, str(e)) from None
        shapes = sorted({tuple(x.shape[-2:]) for x in out})
        if len(shapes) > 1:
            raise HTTPException(422, "the images come out in different shapes "
                                     f"({', '.join(f'{w}x{h}' for h, w in shapes)}); send images of one aspect "
                                     "or give height and width")
        return torch.cat(out).to(p.device)

    async def images(self, body: InvertRequest | EditRequest | InterpolateRequest) -> torch.Tensor:
        return await run_in_threadpool(self.decode_images, body.images, body)

    def job(self, request: Request, total: int, sample: requests.SampleRequest | None = None,
            call: Callable | None = None) -> Job:
        deadline = request.state.started + self.limits.request_timeout_s
        return Job(request.state.request_id, total, deadline, sample=sample, call=call)

    async def run(self, request: Request, job: Job) -> tuple[Any, float]:
        """Queue the job and wait for it: (result, seconds it ran). The client's disconnect cancels it."""
        self.board.update(job.request_id, total=job.total)
        try:
            future = self.scheduler.submit(job)
        except QueueFull as e:
            raise HTTPException(503, str(e), headers={"Retry-After": str(e.retry_after)}) from None
        result = asyncio.wrap_future(future)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            left = job.deadline - time.monotonic() + _BACKSTOP_S
            done, _ = await asyncio.wait({result, gone}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if result not in done:  # the worker logs the stop at the job's next step
                job.cancel("client disconnected" if gone in done else TIMED_OUT)
                self.board.close(job.request_id, "cancelled")
                raise HTTPException(499 if gone in done else 504, f"request {job.cancel_reason}")
            return result.result(), job.seconds
        except Stopped as e:
            if e.reason == TIMED_OUT:
                raise HTTPException(504, f"request timed out after {self.limits.request_timeout_s:g} s (server limit "
                                         f"request_timeout_s) at step {e.step}/{e.total}") from None
            raise HTTPException(503, f"request cancelled at step {e.step}/{e.total}: {e.reason}",
                                headers={"Retry-After": "5"}) from None
        finally:
            gone.cancel()
            if not future.done():  # the endpoint is cancelled (server shutdown) or gave up
                job.cancel("request abandoned")
                result.cancel()  # nobody reads the outcome now

    async def api(self, request: Request, work: Callable[[], Awaitable[dict]]) -> dict:
        """One verb call, tracked on the progress board under its request id."""
        rid = request.state.request_id
        request.state.started = time.monotonic()
        try:
            self.board.open(rid)
        except RequestIdInUse as e:
            raise HTTPException(409, str(e)) from None
        try:
            out = await work()
        except asyncio.CancelledError:  # the server stops
            self.board.close(rid, "cancelled")
            raise
        except BaseException:
            self.board.close(rid, "failed")  # no-op when it was closed already (cancelled, failed)
            raise
        self.board.close(rid, "done")
        return {**out, "request_id": rid}

    # ---- endpoints --------------------------------------------------------------------------
    async def health(self, request: Request) -> dict:
        p, u = self.pipe, self.pipe.net.cfg
        return {
            "status": "ok",
            "model": {
                "conditioning": u.conditioning,
                "classes": p.classes or (list(range(u.num_classes)) if u.conditioning == "class" else []),
                "prompts": u.conditioning == "text",
                "image_size": p.image_size,
                "image_channels": p.image_channels,
                "latent_shape": list(p.latent_shape(1)[1:]),
                "prediction_type": p.diffusion.prediction_type,
                "num_train_timesteps": p.diffusion.num_train_timesteps,
                "device": str(p.device),
            },
            "samplers": sorted(SAMPLERS),
            "limits": asdict(self.limits),
            "batching": asdict(self.batching),
            "queue": {**self.scheduler.stats(), **self.board.counts()},
            "request_id": request.state.request_id,
        }

    async def progress(self, request_id: str) -> dict:
        if not REQUEST_ID.fullmatch(request_id):
            raise HTTPException(422, "request ids are 1-64 characters of A-Z a-z 0-9 _ -")
        return {**self.board.get(request_id), "request_id": request_id}

    async def sample(self, request: Request) -> dict:
        async def work() -> dict:
            body = await self.body(request, SampleRequest)
            req = body.request().check(self.limits.requests, HTTP)
            job = self.job(request, req.steps, sample=req)
            # PNGs are encoded on the worker right after the batch, so a batch's answers leave together
            # and its clients' next requests arrive within one batch window
            job.post = tensor_to_b64png
            images, seconds = await self.run(request, job)
            return {"images": images, "size": self.pipe.image_size, "seconds": seconds,
                    "batch_requests": job.batch_requests}
        return await self.api(request, work)

    async def invert(self, request: Request) -> dict:
        async def work() -> dict:
            body = await self.body(request, InvertRequest)
            req = body.request().check(self.limits.requests, HTTP)
            images = await self.images(body)
            call = lambda cb: self.pipe.invert(images, **req.arguments(), callback=cb)  # noqa: E731
            res, seconds = await self.run(request, self.job(request, invert_steps(req.steps, req.null_optimization),
                                                            call=call))
            out = {"reconstructions": await run_in_threadpool(tensor_to_b64png, res.reconstruction), "psnr": res.psnr,
                   "ssim": res.ssim, "latent_mse": res.latent_mse, "seconds": seconds}
            if body.return_noise:
                out["noise"] = _tensor_json(res.x_T)
                if res.null_embeddings is not None:  # (steps, B, ...): replay with pipe.reconstruct(null_embeddings=)
                    out["null_embeddings"] = _tensor_json(res.null_embeddings)
            return out
        return await self.api(request, work)

    async def edit(self, request: Request) -> dict:
        async def work() -> dict:
            body = await self.body(request, EditRequest)
            req = body.request(self.limits.requests, self.pipe.conditioning.kind)
            images = await self.images(body)
            sdedit_mode = isinstance(req, requests.SDEditRequest)
            verb = self.pipe.sdedit if sdedit_mode else self.pipe.edit
            total = int(req.steps * req.strength) if sdedit_mode else 2 * req.steps
            call = lambda cb: verb(images, **req.arguments(), callback=cb)  # noqa: E731
            edited, seconds = await self.run(request, self.job(request, total, call=call))
            mode = "sdedit" if sdedit_mode else "text" if body.target_prompt is not None else "class"
            return {"images": await run_in_threadpool(tensor_to_b64png, edited), "mode": mode, "seconds": seconds}
        return await self.api(request, work)

    async def interpolate(self, request: Request) -> dict:
        async def work() -> dict:
            body = await self.body(request, InterpolateRequest)
            if len(body.images) != 2:
                raise HTTPException(422, f"images: interpolation takes exactly two images (the ends), "
                                         f"got {len(body.images)}")
            req = body.request().check(self.limits.requests, HTTP)
            images = await self.images(body)
            call = lambda cb: self.pipe.interpolate(images[:1], images[1:], **req.arguments(), callback=cb)  # noqa: E731
            frames, seconds = await self.run(request, self.job(request, 2 * req.steps, call=call))
            return {"frames": await run_in_threadpool(tensor_to_b64png, frames), "size": self.pipe.image_size,
                    "seconds": seconds}
        return await self.api(request, work)


def _tensor_json(t: torch.Tensor) -> dict:
    """A tensor as JSON: shape + base64 of its float32 little-endian bytes (numpy: frombuffer(..., "<f4"))."""
    x = t.detach().cpu().float().contiguous()
    return {"shape": list(x.shape), "dtype": "float32", "byte_order": "little",
            "data": base64.b64encode(x.numpy().astype("<f4").tobytes()).decode("ascii")}


def _error(request: Request, status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    rid = getattr(request.state, "request_id", None)
    return JSONResponse(status_code=status, content={"detail": detail, "request_id": rid}, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return _error(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):  # path parameters
        return _error(request, 422, flatten_errors(exc.errors()))

    @app.exception_handler(ValueError)
    async def _value_error(request: Request, exc: ValueError):  # the requests' and the model's rules
        return _error(request, 422, str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        logger.error("request %s failed", getattr(request.state, "request_id", "?"), exc_info=exc)
        return _error(request, 500, f"internal error ({type(exc).__name__}); the server log has the details")


def _body_doc(schema: type[BaseModel]) -> dict:
    """The request body's JSON schema for /docs (the endpoints parse the body themselves)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema.model_json_schema()}}}}


def create_app(pipeline, limits: ServerLimits = ServerLimits(), token: str | None = None,
               batching: BatchingConfig = BatchingConfig(), shutdown_grace_s: float = 10.0) -> FastAPI:
    """The FastAPI app serving an already-loaded pipeline (load it once, outside).

    token: when set, API requests must carry `Authorization: Bearer <token>` (the page and /health stay open).
    The model worker starts here; the app's lifespan shutdown stops it (`app.state.handlers.scheduler.close`).
    """
    if token is not None and len(token) < 16:
        raise ValueError("the server token must have at least 16 characters")
    h = _Handlers(pipeline, limits, batching)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await run_in_threadpool(h.scheduler.close, shutdown_grace_s)

    app = FastAPI(title="ldm-system", version="1", lifespan=lifespan,
                  summary="sample / invert / edit / interpolate with a latent diffusion model")
    app.state.handlers = h
    app.add_middleware(Guards, max_body_bytes=limits.max_body_bytes, token=token)
    _add_error_handlers(app)
    add_web_routes(app)
    app.get("/health")(h.health)
    app.get("/progress/{request_id}")(h.progress)
    app.post("/sample", openapi_extra=_body_doc(SampleRequest))(h.sample)
    app.post("/invert", openapi_extra=_body_doc(InvertRequest))(h.invert)
    app.post("/edit", openapi_extra=_body_doc(EditRequest))(h.edit)
    app.post("/interpolate", openapi_extra=_body_doc(InterpolateRequest))(h.interpolate)
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _graceful_server(config, scheduler: Scheduler, grace_s: float):
    """A uvicorn server whose shutdown also stops the model worker: queued requests are answered 503
    at once, the running batch gets `grace_s` seconds and is then cancelled at its next step, so every
    request in flight gets an answer before uvicorn's own wait for the connections ends."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            stopping = asyncio.ensure_future(run_in_threadpool(scheduler.close, grace_s))
            await super().shutdown(sockets)
            await stopping

    return Server(config)


def serve(model: str | Path, host: str = "127.0.0.1", port: int = 8000, limits: ServerLimits = ServerLimits(),
          device: str = "auto", token: str | None = None, batching: BatchingConfig = BatchingConfig(),
          shutdown_timeout_s: float = 10.0) -> None:
    """Serve until SIGTERM / Ctrl-C: then stop accepting connections, give the requests in flight
    `shutdown_timeout_s` seconds to finish, cancel the rest at their next step, and return."""
    import uvicorn

    from ldm_system.serving.device import resolve_device
    from ldm_system.serving.pipeline import LDMPipeline

    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(levelname)s:     %(name)s: %(message)s")
    logging.getLogger("ldm_system.serving").setLevel(logging.INFO)  # cancellations and timeouts, next to uvicorn's lines
    if not is_loopback(host) and token is None:
        logger.warning("binding %s without a token: anyone who can reach this address can use the server "
                       "(set LDM_SERVE_TOKEN or --token-file)", host)
    device = resolve_device(device)
    pipe = LDMPipeline.from_pretrained(model, device=device)
    app = create_app(pipe, limits, token=token, batching=batching, shutdown_grace_s=shutdown_timeout_s)
    auth = "bearer token required" if token else "no authentication"
    print(f"serving {model} on http://{host}:{port} ({device}; GET / for the page, /health, POST /sample /invert "
          f"/edit /interpolate; {auth})", flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level="info",
                            timeout_graceful_shutdown=shutdown_timeout_s + _BACKSTOP_S)
    server = _graceful_server(config, app.state.handlers.scheduler, shutdown_timeout_s)
    # uvicorn handles SIGTERM while it runs, then restores this handler and raises the signal again;
    # a no-op here lets the command return and exit 0 after the graceful shutdown.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("server stopped", flush=True)


__all__ = ["BatchingConfig", "ServerLimits", "create_app", "is_loopback", "serve"]
