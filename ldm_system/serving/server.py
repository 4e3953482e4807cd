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
from concurrent forward passes, and the pipeline temporarily swaps attributes (progress hooks) that
must not interleave. Errors are JSON `{"detail": "one readable sentence"}`: 400 for payloads that
are not images, 413 for oversized bodies, 422 for well-formed requests with invalid values (steps
beyond the limits, unknown class, wrong image size).
"""
from __future__ import annotations

import base64
import hmac
import ipaddress
import logging
import math
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ldm_system.diffusion.samplers import SAMPLERS
from ldm_system.models.conditioning import per_image
from ldm_system.serving.image_io import ImageDecodeError, ImageSizeError, b64_to_tensor, tensor_to_b64png
from ldm_system.serving.schemas import EditRequest, InterpolateRequest, InvertRequest, SampleRequest

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


def _invalid(msg: str) -> HTTPException:
    return HTTPException(status_code=422, detail=msg)


class _Handlers:
    """The endpoint bodies, kept apart from FastAPI wiring so each reads as plain pipeline calls."""

    def __init__(self, pipe, limits: ServerLimits) -> None:
        self.pipe, self.limits = pipe, limits
        self.lock = threading.Lock()

    # ---- validation ---------------------------------------------------------------------------
    def check_steps(self, steps: int, limit: int | None = None, what: str = "steps") -> None:
        limit = limit or self.limits.max_steps
        if not 1 <= steps <= limit:
            raise _invalid(f"{what} must lie in 1..{limit} (server limit), got {steps}")

    def check_batch(self, n: int, what: str) -> None:
        if not 1 <= n <= self.limits.max_batch:
            raise _invalid(f"{what} must lie in 1..{self.limits.max_batch} (server limit), got {n}")

    def check_guidance(self, g: float) -> None:
        if not (math.isfinite(g) and 0 <= g <= self.limits.max_guidance):
            raise _invalid(f"guidance must lie in [0, {self.limits.max_guidance}], got {g}")

    def classes(self, spec, n: int) -> list | None:
        if spec is None:
            return None
        self.pipe.conditioning.check_kind(True, False)
        values = per_image(spec, n, "classes")
        for v in values:  # unknown names/ids → 422 naming the known classes
            self.pipe.conditioning.class_id(v)
        return values

    def prompts(self, spec, n: int) -> list[str]:
        self.pipe.conditioning.check_kind(False, True)
        return per_image(spec, n, "prompts", "prompt")

    def images(self, data: list[str], resize: bool) -> torch.Tensor:
        self.check_batch(len(data), "number of images")
        p = self.pipe
        out = []
        for i, s in enumerate(data):
            try:
                out.append(b64_to_tensor(s, p.image_size, p.image_channels, resize=resize,
                                         max_side=self.limits.max_input_side, name=f"images[{i}]"))
            except ImageSizeError as e:
                raise _invalid(str(e)) from None
            except ImageDecodeError as e:
                raise HTTPException(status_code=400, detail=str(e)) from None
        return torch.cat(out).to(p.device)

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

    def sample(self, r: SampleRequest) -> dict:
        self.check_batch(r.num, "num")
        self.check_steps(r.steps)
        self.check_guidance(r.guidance)
        if r.sampler not in SAMPLERS:
            raise _invalid(f"unknown sampler {r.sampler!r}; choose one of {sorted(SAMPLERS)}")
        classes = self.classes(r.classes, r.num)
        extra = {}
        if r.prompts is not None:  # text-conditioned models; class models reject prompts with a 422
            if classes is not None:
                raise _invalid("give classes (class-conditional models) or prompts (text models), not both")
            extra["prompts"] = self.prompts(r.prompts, r.num)
        conditional = classes is not None or r.prompts is not None
        with self.lock:
            t0 = time.perf_counter()
            images = self.pipe.sample(r.num, classes=classes, sampler=r.sampler, steps=r.steps, eta=r.eta,
                                      guidance=r.guidance if conditional else 1.0, seed=r.seed, **extra)
            seconds = time.perf_counter() - t0
        return {"images": tensor_to_b64png(images), "size": self.pipe.image_size, "seconds": seconds}

    def invert(self, r: InvertRequest) -> dict:
        self.check_steps(r.steps, self.limits.max_null_opt_steps if r.null_optimization else None,
                         "steps (with null_optimization)" if r.null_optimization else "steps")
        self.check_guidance(r.guidance)
        if not 0 <= r.fixed_point_iters <= self.limits.max_fixed_point_iters:
            raise _invalid(f"fixed_point_iters must lie in 0..{self.limits.max_fixed_point_iters}, got {r.fixed_point_iters}")
        if r.classes is not None and r.prompts is not None:
            raise _invalid("give classes (class-conditional models) or prompts (text models), not both")
        if r.null_optimization and (r.classes is None and r.prompts is None or r.guidance == 1.0):
            raise _invalid("null_optimization needs classes (class models) or prompts (text models) and a "
                           "guidance other than 1")
        images = self.images(r.images, r.resize)
        classes = self.classes(r.classes, images.shape[0])
        extra = {} if r.prompts is None else {"prompts": self.prompts(r.prompts, images.shape[0])}
        with self.lock:
            t0 = time.perf_counter()
            res = self.pipe.invert(images, classes=classes, steps=r.steps, fixed_point_iters=r.fixed_point_iters,
                                   guidance=r.guidance, null_optimization=r.null_optimization, **extra)
            seconds = time.perf_counter() - t0
        out = {"reconstructions": tensor_to_b64png(res.reconstruction), "psnr": res.psnr, "ssim": res.ssim,
               "latent_mse": res.latent_mse, "seconds": seconds}
        if r.return_noise:
            out["noise"] = _tensor_json(res.x_T)
            if res.null_embeddings is not None:  # (steps, B, ...): replay with pipe.reconstruct(null_embeddings=)
                out["null_embeddings"] = _tensor_json(res.null_embeddings)
        return out

    def edit(self, r: EditRequest) -> dict:
        self.check_steps(r.steps)
        self.check_guidance(r.guidance)
        sdedit_mode = r.strength is not None
        if sdedit_mode and r.keep_steps is not None:
            raise _invalid("give keep_steps (class edit) or strength (SDEdit), not both")
        if sdedit_mode and not 0 < r.strength <= 1:
            raise _invalid(f"strength must lie in (0, 1], got {r.strength}")
        text_edit = r.target_prompt is not None
        if (r.target_class is None) == (r.target_prompt is None):
            raise _invalid("give exactly one of target_class (class-conditional models) or target_prompt "
                           "(text-conditioned models)")
        if text_edit and r.source_class is not None or not text_edit and r.source_prompt is not None:
            raise _invalid("give source_class/target_class (class models) or source_prompt/target_prompt "
                           "(text models), not a mix")
        if text_edit:  # a prompt for a class model, or a class for a text model → 422 naming the right kind
            self.prompts(r.target_prompt, 1)
        else:
            self.classes(r.target_class, 1)
        if not sdedit_mode and not text_edit and r.source_class is None:
            raise _invalid("source_class is required for a class edit (or set strength for SDEdit)")
        if r.keep_steps is not None and not 0 <= r.keep_steps <= r.steps:
            raise _invalid(f"keep_steps must lie in [0, steps={r.steps}], got {r.keep_steps}")
        if r.source_class is not None:
            self.classes(r.source_class, 1)
        images = self.images(r.images, r.resize)
        with self.lock:
            t0 = time.perf_counter()
            if sdedit_mode:
                edited = self.pipe.sdedit(images, strength=r.strength, target_class=r.target_class, steps=r.steps,
                                          guidance=r.guidance, seed=r.seed, target_prompt=r.target_prompt)
            else:
                edited = self.pipe.edit(images, source_class=r.source_class, target_class=r.target_class,
                                        steps=r.steps, keep_steps=r.keep_steps, guidance=r.guidance,
                                        source_prompt=r.source_prompt, target_prompt=r.target_prompt)
            seconds = time.perf_counter() - t0
        mode = "sdedit" if sdedit_mode else "text" if text_edit else "class"
        return {"images": tensor_to_b64png(edited), "mode": mode, "seconds": seconds}

    def interpolate(self, r: InterpolateRequest) -> dict:
        self.check_steps(r.steps)
        if len(r.images) != 2:
            raise _invalid(f"images: interpolation takes exactly two images (the ends), got {len(r.images)}")
        if not 2 <= r.num <= self.limits.max_batch:
            raise _invalid(f"num must lie in 2..{self.limits.max_batch} (frames, both ends included; server limit), "
                           f"got {r.num}")
        if r.classes is not None and r.prompts is not None:
            raise _invalid("give classes (class-conditional models) or prompts (text models), not both")
        images = self.images(r.images, r.resize)
        classes = self.classes(r.classes, 2)
        extra = {} if r.prompts is None else {"prompts": self.prompts(r.prompts, 2)}
        with self.lock:
            t0 = time.perf_counter()
            frames = self.pipe.interpolate(images[:1], images[1:], num=r.num, steps=r.steps, classes=classes, **extra)
            seconds = time.perf_counter() - t0
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

    @app.middleware("http")
    async def _limit_body(request: Request, call_next):  # registered first, so it runs after _auth
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limits.max_body_bytes:
            return JSONResponse(status_code=413, content={"detail": f"request body of {size} bytes exceeds the "
                                                          f"server limit of {limits.max_body_bytes}"})
        return await call_next(request)

    if token is not None:
        expected = f"Bearer {token}".encode()

        @app.middleware("http")
        async def _auth(request: Request, call_next):  # before the body is read or anything is decoded
            given = request.headers.get("authorization", "").encode()
            if request.url.path != "/health" and not hmac.compare_digest(given, expected):
                return JSONResponse(status_code=401, content={"detail": "missing or wrong bearer token"},
                                    headers={"WWW-Authenticate": "Bearer"})
            return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):  # one readable line, not pydantic's list
        return JSONResponse(status_code=422, content={"detail": _flatten_validation(exc)})

    @app.exception_handler(ValueError)
    async def _value_error(request: Request, exc: ValueError):  # the pipeline's own input checks
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    # Plain `def` endpoints: FastAPI runs them in its thread pool, so the event loop stays free
    # (health checks answer) while a request holds the model lock.
    app.get("/health")(h.health)

    @app.post("/sample")
    def sample(req: SampleRequest) -> dict:
        return h.sample(req)

    @app.post("/invert")
    def invert(req: InvertRequest) -> dict:
        return h.invert(req)

    @app.post("/edit")
    def edit(req: EditRequest) -> dict:
        return h.edit(req)

    @app.post("/interpolate")
    def interpolate(req: InterpolateRequest) -> dict:
        return h.interpolate(req)

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
