"""A local HTTP JSON server around one loaded `LDMPipeline`.

    GET  /health    model info (classes, image size, samplers) and the server limits
    POST /sample    {"num": 4, "classes": "Sneaker", "steps": 50, "guidance": 3}  → {"images": [b64 PNG, ...]}
    POST /invert    {"images": [b64], "classes": ..., "steps": 50, ...}           → reconstructions + PSNR/SSIM
    POST /edit      {"images": [b64], "source_class": ..., "target_class": ...}   → edited images
                    (text models: "source_prompt" / "target_prompt"; SDEdit with "strength")
    POST /interpolate {"images": [b64 a, b64 b], "num": 8, "steps": 50}            → {"frames": [b64 PNG, ...]}

With a token (`LDM_SERVE_TOKEN`, or `ldm serve --token-file F`), every endpoint except /health
needs `Authorization: Bearer <token>` (401 otherwise); /health stays open for load-balancer probes.

The model is loaded once. Inference is serialised with a lock: one model on a CPU gains nothing
from concurrent forward passes. Each body is converted into a request of `serving/requests.py`,
which holds every rule; the server adds only its limits and the image decoding. Errors are JSON `{"detail": "one readable sentence"}`: 400 for payloads that
are not images, 413 for oversized bodies, 422 for well-formed requests with invalid values (steps
beyond the limits, unknown class, wrong image size).
"""
from __future__ import annotations

import base64
import hmac
import ipaddress
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ldm_system.diffusion.samplers import SAMPLERS
from ldm_system.serving import requests
from ldm_system.serving.image_io import ImageDecodeError, ImageSizeError, b64_to_tensor, tensor_to_b64png
from ldm_system.serving.requests import HTTP, Limits
from ldm_system.serving.schemas import EditRequest, InterpolateRequest, InvertRequest, SampleRequest
from ldm_system.serving.web_page import add_web_routes, is_open

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerLimits:
    """Per-request bounds: each request holds the model lock for its whole run, so they bound latency."""

    max_steps: int = 200  # sampler / inversion steps (DDPM-1000 belongs in `ldm sample`, not a request)
    max_batch: int = 16  # images per request
    max_fixed_point_iters: int = 5
    max_null_opt_steps: int = 50  # null-condition inversion costs ~12 evaluations per step
    max_guidance: float = 30.0
    max_input_side: int = 2048  # declared pixel size of an uploaded image, checked before decoding
    max_body_bytes: int = 32 * 1024 * 1024

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value <= 0 and name != "max_fixed_point_iters":
                raise ValueError(f"ServerLimits.{name} must be positive, got {value}")

    @property
    def requests(self) -> Limits:
        """The bounds the request dataclasses check."""
        return Limits(max_steps=self.max_steps, max_batch=self.max_batch,
                      max_fixed_point_iters=self.max_fixed_point_iters, max_null_opt_steps=self.max_null_opt_steps,
                      max_guidance=self.max_guidance)


class _Handlers:
    """The endpoint bodies: JSON → request (every rule lives there) → one pipeline call under the lock → JSON."""

    def __init__(self, pipe, limits: ServerLimits) -> None:
        self.pipe, self.limits = pipe, limits
        self.lock = threading.Lock()

    def images(self, data: list[str], resize: bool) -> torch.Tensor:
        n, top = len(data), self.limits.max_batch
        if not 1 <= n <= top:
            raise HTTPException(422, f"number of images must lie in 1..{top} (server limit), got {n}")
        p = self.pipe
        out = []
        for i, s in enumerate(data):
            try:
                out.append(b64_to_tensor(s, p.image_size, p.image_channels, resize=resize,
                                         max_side=self.limits.max_input_side, name=f"images[{i}]"))
            except ImageSizeError as e:
                raise HTTPException(422, str(e)) from None
            except ImageDecodeError as e:
                raise HTTPException(400, str(e)) from None
        return torch.cat(out).to(p.device)

    def run(self, verb, *args, **kwargs):
        """One pipeline call, alone on the model: (result, seconds)."""
        with self.lock:
            t0 = time.perf_counter()
            out = verb(*args, **kwargs)
            return out, time.perf_counter() - t0

    # ---- endpoints ----------------------------------------------------------------------------
    def health(self) -> dict:
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
            },
            "samplers": sorted(SAMPLERS),
            "limits": asdict(self.limits),
        }

    def sample(self, body: SampleRequest) -> dict:
        req = body.request().check(self.limits.requests, HTTP)
        images, seconds = self.run(self.pipe.sample, **req.arguments())
        return {"images": tensor_to_b64png(images), "size": self.pipe.image_size, "seconds": seconds}

    def invert(self, body: InvertRequest) -> dict:
        req = body.request().check(self.limits.requests, HTTP)
        images = self.images(body.images, body.resize)
        res, seconds = self.run(self.pipe.invert, images, **req.arguments())
        out = {"reconstructions": tensor_to_b64png(res.reconstruction), "psnr": res.psnr, "ssim": res.ssim,
               "latent_mse": res.latent_mse, "seconds": seconds}
        if body.return_noise:
            out["noise"] = _tensor_json(res.x_T)
            if res.null_embeddings is not None:  # (steps, B, ...): replay with pipe.reconstruct(null_embeddings=)
                out["null_embeddings"] = _tensor_json(res.null_embeddings)
        return out

    def edit(self, body: EditRequest) -> dict:
        req = body.request(self.limits.requests, self.pipe.conditioning.kind)
        images = self.images(body.images, body.resize)
        sdedit_mode = isinstance(req, requests.SDEditRequest)
        edited, seconds = self.run(self.pipe.sdedit if sdedit_mode else self.pipe.edit, images, **req.arguments())
        mode = "sdedit" if sdedit_mode else "text" if body.target_prompt is not None else "class"
        return {"images": tensor_to_b64png(edited), "mode": mode, "seconds": seconds}

    def interpolate(self, body: InterpolateRequest) -> dict:
        if len(body.images) != 2:
            raise HTTPException(422, f"images: interpolation takes exactly two images (the ends), got {len(body.images)}")
        req = body.request().check(self.limits.requests, HTTP)
        images = self.images(body.images, body.resize)
        frames, seconds = self.run(self.pipe.interpolate, images[:1], images[1:], **req.arguments())
        return {"frames": tensor_to_b64png(frames), "size": self.pipe.image_size, "seconds": seconds}


def _tensor_json(t: torch.Tensor) -> dict:
    """A tensor as JSON: shape + base64 of its float32 little-endian bytes (numpy: frombuffer(..., "<f4"))."""
    x = t.detach().cpu().float().contiguous()
    return {"shape": list(x.shape), "dtype": "float32", "byte_order": "little",
            "data": base64.b64encode(x.numpy().astype("<f4").tobytes()).decode("ascii")}


def _flatten_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def _add_guards(app: FastAPI, limits: ServerLimits, token: str | None) -> None:
    """Checks that run before a body is read: its size, and the bearer token (when one is set)."""

    @app.middleware("http")
    async def _limit_body(request: Request, call_next):  # registered first, so it runs after _auth
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limits.max_body_bytes:
            return JSONResponse(status_code=413, content={"detail": f"request body of {size} bytes exceeds the "
                                                          f"server limit of {limits.max_body_bytes}"})
        return await call_next(request)

    if token is None:
        return
    expected = f"Bearer {token}".encode()

    @app.middleware("http")
    async def _auth(request: Request, call_next):  # before the body is read or anything is decoded
        given = request.headers.get("authorization", "").encode()
        if not is_open(request.url.path) and not hmac.compare_digest(given, expected):
            return JSONResponse(status_code=401, content={"detail": "missing or wrong bearer token"},
                                headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)


def create_app(pipeline, limits: ServerLimits = ServerLimits(), token: str | None = None) -> FastAPI:
    """The FastAPI app serving an already-loaded pipeline (load it once, outside).

    token: when set, requests other than GET /health must carry `Authorization: Bearer <token>`.
    """
    if token is not None and len(token) < 16:
        raise ValueError("the server token must have at least 16 characters")
    h = _Handlers(pipeline, limits)
    app = FastAPI(title="ldm-system", version="1",
                  summary="sample / invert / edit / interpolate with a latent diffusion model")
    app.state.handlers = h
    _add_guards(app, limits, token)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):  # one readable line, not pydantic's list
        return JSONResponse(status_code=422, content={"detail": _flatten_validation(exc)})

    @app.exception_handler(ValueError)
    async def _value_error(request: Request, exc: ValueError):  # the requests' and the model's rules
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    # Plain (bound) `def` endpoints: FastAPI runs them in its thread pool, so the event loop stays
    # free (health checks answer) while a request holds the model lock; it reads the body's schema
    # from each handler's annotation.
    add_web_routes(app)
    app.get("/health")(h.health)
    app.post("/sample")(h.sample)
    app.post("/invert")(h.invert)
    app.post("/edit")(h.edit)
    app.post("/interpolate")(h.interpolate)
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(model: str | Path, host: str = "127.0.0.1", port: int = 8000, limits: ServerLimits = ServerLimits(),
          device: str = "cpu", token: str | None = None) -> None:
    import uvicorn

    from ldm_system.serving.pipeline import LDMPipeline

    if not is_loopback(host) and token is None:
        logger.warning("binding %s without a token: anyone who can reach this address can use the server "
                       "(set LDM_SERVE_TOKEN or --token-file)", host)
    pipe = LDMPipeline.from_pretrained(model, device=device)
    app = create_app(pipe, limits, token=token)
    auth = "bearer token required" if token else "no authentication"
    print(f"serving {model} on http://{host}:{port}  (GET /health, POST /sample /invert /edit /interpolate; {auth})")
    uvicorn.run(app, host=host, port=port, log_level="info")


__all__ = ["ServerLimits", "create_app", "is_loopback", "serve"]
