"""The `semsynth serve` web application: a JSON API over the models named at start, and the page.

    GET  /api/health                           {"status": "ok", "version", "models": [names]}
    GET  /api/models                           the models, their sizes, k, precision, queues; limits
    GET  /api/models/{name}/palette            classes (name, colour, file id) of a model's label space
    GET  /api/layout?model=NAME&seed=S         a procedural street layout at the model's size
    POST /api/decode      label [model]        a label file -> class indices at the model's size
    POST /api/synthesize  label [model k seed] -> {"model", "seed", "width", "height", "images"}

Layouts travel as {"width", "height", "ids"}: base64 of little-endian uint16 class indices
(void = the number of classes), so class ids stay exact. Every label file is decoded here by
`LabelSpace.read`, exactly as `semsynth synthesize` reads it.

Safety: the request body is capped before it is parsed (413), a layout's pixel count is read from
its header before it is decoded (413); each model has one worker thread and a bounded queue
(429 + Retry-After when full, 503 past the per-request timeout; a request whose client has gone is
dropped from the queue); models are only the ones named at start, looked up by name; the page's
files are read once from this package's static/ folder and served from that table by name; the
Host and Origin headers must be local when bound to loopback (DNS rebinding, cross-site posts).
Every error answers {"error": message}; tracebacks go to the server log only.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import io
import ipaddress
import logging
import math
import re
import socket
import tempfile
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from .. import __version__
from .. import checkpoint as ckpt
from ..data import resize_label
from ..errors import InputError
from ..labels import LabelError, get_space
from ..layouts import street_layout
from ..pipelines import SIMSPipeline, load_pipeline, pipeline_class
from ..utils import pick_device

log = logging.getLogger("semsynth.serve")

STATIC = Path(__file__).parent / "static"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}
# The page needs nothing from elsewhere; the policy makes the browser refuse anything that would.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
# SIMS makes one image per pass (retrieval is shared); at most this many variants per request
SIMS_VARIANTS = 4
MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class Limits:
    max_body: int = 20 * 2**20  # bytes of a request body (413)
    max_pixels: int = 4096 * 2048  # pixels of an uploaded layout (413)
    queue: int = 4  # requests waiting or running per model (429 beyond)
    timeout: float = 60.0  # seconds per request, queueing included (503 beyond)


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# --------------------------------------------------------------------------- models


class ModelSlot:
    """One model named at start, with one worker thread and a bounded queue: at most `queue`
    requests wait or run at once, more are refused rather than piling up. The pipeline runs at
    its own precision (`pipe.precision`, chosen when it was loaded)."""

    def __init__(self, name: str, source: str, pipe, queue: int = 4, bank: str | None = None):
        self.name, self.source, self.pipe, self.bank = name, str(source), pipe, bank
        self.kind = "sims" if isinstance(pipe, SIMSPipeline) else "crn"
        self.space = pipe.space
        self.size = tuple(int(v) for v in pipe.size)
        self.k = pipe.max_k or SIMS_VARIANTS  # SIMS variants have no natural limit: cap them here
        self.default_k = pipe.default_k  # (a SIMS variant costs a whole pass)
        self.device = torch.device(pipe.device)
        self.queue = int(queue)
        self.procedural = list(self.space.names) == list(get_space("cityscapes").names)
        self.stats = {"served": 0, "refused": 0, "abandoned": 0, "timed_out": 0}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"semsynth-{name}")
        self._lock = threading.Lock()
        self._pending = 0
        self._seconds = collections.deque(maxlen=32)

    @property
    def precision(self) -> str:
        return self.pipe.precision

    def info(self) -> dict:
        with self._lock:
            pending = self._pending
        return {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "bank": self.bank,
            "label_space": self.space.name,
            "classes": self.space.num_classes,
            "height": self.size[0],
            "width": self.size[1],
            "k": self.k,
            "default_k": self.default_k,
            "precision": self.precision,
            "device": str(self.device),
            "procedural": self.procedural,
            "queue": self.queue,
            "pending": pending,
            **self.stats,
        }

    def submit(self, fn, *args) -> Future | None:
        """Queue `fn(*args)` on this model's worker; None when the queue is full."""
        with self._lock:
            if self._pending >= self.queue:
                self.stats["refused"] += 1
                return None
            self._pending += 1
        fut = self._pool.submit(self._timed, fn, *args)
        fut.add_done_callback(self._release)  # also runs when a queued job is cancelled
        return fut

    def _timed(self, fn, *args):
        t = time.perf_counter()
        try:
            return fn(*args)
        finally:
            with self._lock:
                self._seconds.append(time.perf_counter() - t)

    def _release(self, _fut) -> None:
        with self._lock:
            self._pending -= 1

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained by one: recent service time x queue length."""
        with self._lock:
            per = sum(self._seconds) / len(self._seconds) if self._seconds else 1.0
            return max(1, math.ceil(per * self._pending))

    def synthesize(self, ids: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
        """(H, W) class indices -> k (h, w, 3) uint8 images at the model's size. CRN is
        deterministic (its k outputs are the variants, seed unused); SIMS variant v pastes other
        retrieved candidates drawn with `seed`, which also seeds the canvas."""
        return list(self.pipe(ids, k=k, seed=seed)[0])

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _model_name(spec: str) -> str:
    if spec in ckpt.BUNDLED:
        return spec
    p = Path(spec)
    return p.parent.name if p.suffix == ".safetensors" and p.stem == "model" else (p.stem if p.suffix else p.name)


def load_models(
    specs: list[str] | None = None,
    bank: str | None = None,
    device: str | None = None,
    precision: str = "auto",
    queue: int = 4,
    say=print,
) -> dict[str, ModelSlot]:
    """Name -> ModelSlot for checkpoints or bundled names (default: every installed bundled model;
    SIMS ones only with a bank). The names are what requests choose from; nothing else loads."""
    if queue < 1:
        raise InputError(f"--queue must be at least 1 (got {queue})")
    dev = pick_device(device)
    explicit = bool(specs)
    specs = list(specs) if specs else [n for n, p in ckpt.BUNDLED.items() if p.exists()]
    slots: dict[str, ModelSlot] = {}
    for spec in specs:
        sims = pipeline_class(ckpt.read_metadata(spec)["task"]) is SIMSPipeline
        if sims and not bank:
            if explicit:
                raise InputError(
                    f"{spec}: is a SIMS model; serve it with --bank BANK (a memory bank "
                    "built with `semsynth sims build-bank`)"
                )
            say(f"semsynth serve: skipping the SIMS model {spec!r} (no --bank given)")
            continue
        pipe = load_pipeline(spec, device=str(dev), precision=precision, **({"bank": bank} if sims else {}))
        name, n = _model_name(spec), 2
        while name in slots:
            name, n = f"{_model_name(spec)}-{n}", n + 1
        slots[name] = ModelSlot(name, spec, pipe, queue, bank if sims else None)
    if not slots:
        raise InputError("no model to serve: name one with --model NAME|PATH")
    return slots


# --------------------------------------------------------------------------- label files

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def upload_name(filename: str | None) -> str:
    """The client's file name reduced to a safe base name: it still tells the id encoding
    (`*_trainIds.png`), but never a place on this machine."""
    name = _SAFE.sub("_", (filename or "").replace("\\", "/").rsplit("/", 1)[-1]).strip("._")[-120:]
    return name or "layout.png"


def image_size(data: bytes, max_pixels: int) -> None:
    """Refuse (413) a layout whose header announces more than `max_pixels`, before decoding it.
    Bytes that are no image pass: `LabelSpace.read` then says what is wrong with them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
    except Image.DecompressionBombError:
        w = h = math.inf
    except Exception:  # noqa: BLE001 (PIL raises many types for bytes that are no image)
        return
    if w * h > max_pixels:
        size = "more than PIL's decompression-bomb limit of" if w == math.inf else f"{w}x{h} = {w * h:,}"
        raise ApiError(413, f"the layout is {size} pixels; this server accepts at most {max_pixels:,} (--max-pixels)")


def read_upload(data: bytes, name: str, space) -> np.ndarray:
    """Class indices of an uploaded file, read by `LabelSpace.read` like any label file, from a
    fresh temporary folder; messages name the upload, not the temporary path."""
    with tempfile.TemporaryDirectory(prefix="semsynth-serve-") as d:
        p = Path(d) / name
        p.write_bytes(data)
        try:
            return space.read(p)
        except LabelError as e:
            raise LabelError(str(e).replace(str(p), name)) from None


def layout_json(ids: np.ndarray, **extra) -> dict:
    h, w = ids.shape
    return {
        **extra,
        "width": int(w),
        "height": int(h),
        "ids": base64.b64encode(np.ascontiguousarray(ids, dtype="<u2").tobytes()).decode("ascii"),
    }


def png_data_url(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --------------------------------------------------------------------------- jobs (worker threads)


def _job_synthesize(slot: ModelSlot, data: bytes, name: str, k: int, seed: int) -> list[str]:
    return [png_data_url(a) for a in slot.synthesize(read_upload(data, name, slot.space), k, seed)]


def _job_decode(slot: ModelSlot, data: bytes, name: str) -> dict:
    ids = read_upload(data, name, slot.space)
    src = ids.shape
    return layout_json(resize_label(ids, slot.size), model=slot.name, source_height=src[0], source_width=src[1])


def _job_procedural(slot: ModelSlot, seed: int) -> dict:
    return layout_json(street_layout(seed, slot.size), model=slot.name, seed=seed)


# --------------------------------------------------------------------------- the guard (ASGI)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Guard:
    """Outermost layer: the body limit (413, from Content-Length or while the body streams in, so
    nothing over the limit is ever buffered), and, when `local_only`, Host/Origin checks: a page
    from elsewhere can neither reach this server through DNS rebinding nor post to it."""

    def __init__(self, app, max_body: int, local_only: bool):
        self.app, self.max_body, self.local_only = app, max_body, local_only

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(headers)
        if refusal:
            return await _error(*refusal)(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:  # a chunked body without Content-Length
                    raise ApiError(413, self._too_big())
            return message

        await self.app(scope, limited, send)

    def _too_big(self) -> str:
        return f"request body over {self.max_body / 2**20:g} MiB (--max-body-mb)"

    def _refusal(self, headers: dict) -> tuple[int, str] | None:
        if self.local_only:
            host = urlsplit("//" + headers.get("host", "")).hostname or ""
            if not _is_loopback(host):
                return 421, f"this server answers only to local host names, not {host!r}"
            origin = headers.get("origin")
            if origin and origin != "null" and not _is_loopback(urlsplit(origin).hostname or ""):
                return 403, f"requests from pages of {origin} are refused"
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return 400, f"invalid Content-Length {length!r}"
            if int(length) > self.max_body:
                return 413, self._too_big()
        return None


# --------------------------------------------------------------------------- the app


def _static_table() -> dict[str, tuple[bytes, str]]:
    """Name -> (bytes, type) of the files in static/, read once: a request picks an entry by
    name, so no part of a URL is ever joined to a path."""
    return {
        p.name: (p.read_bytes(), _TYPES.get(p.suffix, "application/octet-stream"))
        for p in sorted(STATIC.iterdir())
        if p.is_file() and p.suffix in _TYPES
    }


def create_app(slots: dict[str, ModelSlot], limits: Limits = Limits(), local_only: bool = True):
    """The ASGI application: FastAPI inside the `Guard`. No OpenAPI pages (they load from a CDN)."""
    app = FastAPI(title="semsynth", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    static = _static_table()

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return _error(e.status, e.message, e.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request, e: HTTPException):
        return _error(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        parts = [f"{'.'.join(str(x) for x in err['loc'][1:])}: {err['msg']}" for err in e.errors()]
        return _error(422, "; ".join(parts))

    @app.exception_handler(Exception)
    async def _bug(request, e: Exception):
        log.exception("internal error on %s", request.url.path)
        return _error(500, f"internal error ({type(e).__name__}); the server log has the details")

    def slot_for(name: str | None) -> ModelSlot:
        if name in (None, ""):
            return next(iter(slots.values()))
        if name not in slots:
            raise ApiError(404, f"unknown model {str(name)[:80]!r}; this server has {sorted(slots)}")
        return slots[name]

    async def run(request: Request, slot: ModelSlot, fn, *args):
        """Run a job on the model's worker; refuse when its queue is full, give up after the
        timeout, and drop the job when the client has gone (a newer preview superseded it)."""
        fut = slot.submit(fn, slot, *args)
        if fut is None:
            wait = slot.retry_after()
            raise ApiError(
                429,
                f"model {slot.name!r} is busy ({slot.queue} requests queued, --queue); retry in {wait} s",
                {"Retry-After": str(wait)},
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.timeout
        waiting = asyncio.wrap_future(fut)
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=max(0.0, min(0.2, deadline - loop.time())))
            if done:
                try:
                    result = waiting.result()
                except LabelError as e:
                    raise ApiError(422, str(e)) from None
                slot.stats["served"] += 1
                return result
            gone = await request.is_disconnected()
            if gone or loop.time() >= deadline:
                fut.cancel()  # drops a queued job; one already running finishes unread
                waiting.add_done_callback(lambda f: f.cancelled() or f.exception())  # nor logged
                slot.stats["abandoned" if gone else "timed_out"] += 1
                if gone:
                    return None
                raise ApiError(
                    503, f"no answer within {limits.timeout:g} s (--timeout)", {"Retry-After": str(slot.retry_after())}
                )

    async def label_form(request: Request):
        """(form, slot, upload bytes, safe name) of a multipart request with a file field `label`."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ApiError(415, "send multipart/form-data with a file field 'label'")
        try:
            form = await request.form(max_files=1, max_fields=8)
        except MultiPartException as e:
            raise ApiError(400, f"malformed multipart body: {e.message}") from None
        label = form.get("label")
        if label is None or isinstance(label, str):
            raise ApiError(422, "missing the file field 'label' (a label map in any format semsynth reads)")
        try:
            data = await label.read()
        finally:
            await form.close()
        image_size(data, limits.max_pixels)
        return form, slot_for(form.get("model")), data, upload_name(label.filename)

    def int_field(form, key: str, default: int, lo: int, hi: int) -> int:
        raw = form.get(key)
        if raw in (None, ""):
            return default
        try:
            v = int(str(raw).strip())
        except ValueError:
            raise ApiError(422, f"{key} must be an integer, got {str(raw)[:40]!r}") from None
        if not lo <= v <= hi:
            raise ApiError(422, f"{key} must be in {lo}..{hi}, got {v}")
        return v

    @app.get("/")
    async def index():
        body, kind = static["index.html"]
        return Response(
            body, media_type=kind, headers={"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff"}
        )

    @app.get("/static/{name}")
    async def static_file(name: str):
        if name not in static:
            raise ApiError(404, "not found")
        body, kind = static[name]
        return Response(
            body, media_type=kind, headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
        )

    @app.get("/api/health")
    async def health():
        return {"status": "ok", "version": __version__, "models": list(slots)}

    @app.get("/api/models")
    async def models():
        return {
            "models": [s.info() for s in slots.values()],
            "limits": {**asdict(limits), "sims_variants": SIMS_VARIANTS},
        }

    @app.get("/api/models/{name}/palette")
    async def palette(name: str):
        slot = slot_for(name)
        sp = slot.space
        ids = sp.file_ids()
        return {
            "model": slot.name,
            "label_space": sp.name,
            "encoding": sp.default_encoding,
            "void": sp.void,
            "void_id": int(ids[sp.void]) if ids[sp.void] >= 0 else None,
            "classes": [
                {"index": i, "name": n, "color": c, "id": int(ids[i])}
                for i, (n, c) in enumerate(zip(sp.names, sp.colors.tolist()))
            ],
        }

    @app.get("/api/layout")
    async def procedural(request: Request, model: str | None = None, seed: int = Query(0, ge=0, le=MAX_SEED)):
        slot = slot_for(model)
        if not slot.procedural:
            raise ApiError(
                422,
                f"procedural layouts are Cityscapes street scenes; model {slot.name!r} "
                f"uses the {slot.space.name} label space",
            )
        return await run(request, slot, _job_procedural, seed) or Response(status_code=499)

    @app.post("/api/decode")
    async def decode(request: Request):
        _, slot, data, name = await label_form(request)
        return await run(request, slot, _job_decode, data, name) or Response(status_code=499)

    @app.post("/api/synthesize")
    async def synthesize(request: Request):
        form, slot, data, name = await label_form(request)
        k = int_field(form, "k", slot.default_k, 1, slot.k)
        seed = int_field(form, "seed", 0, 0, MAX_SEED)
        images = await run(request, slot, _job_synthesize, data, name, k, seed)
        if images is None:
            return Response(status_code=499)  # the client has gone; nobody reads this
        return {"model": slot.name, "seed": seed, "width": slot.size[1], "height": slot.size[0], "images": images}

    @app.exception_handler(ClientDisconnect)
    async def _gone(request, e):
        return Response(status_code=499)

    return Guard(app, limits.max_body, local_only)


def make_server(slots: dict[str, ModelSlot], limits: Limits = Limits(), host: str = "127.0.0.1", port: int = 7860):
    """(uvicorn server, its bound socket, the URL to open). The socket is bound here, so a taken
    port is one clear error; port 0 takes any free one."""
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family)
    except OSError as e:
        raise InputError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host"
        ) from None
    local = _is_loopback(host)
    shown = host if local else "127.0.0.1"
    url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{sock.getsockname()[1]}/"
    config = uvicorn.Config(
        create_app(slots, limits, local_only=local),
        log_level="warning",
        timeout_keep_alive=5,
        timeout_graceful_shutdown=2,
    )
    return uvicorn.Server(config), sock, url


def run(
    slots: dict[str, ModelSlot], limits: Limits = Limits(), host: str = "127.0.0.1", port: int = 7860, say=print
) -> None:
    """Serve until Ctrl+C."""
    server, sock, url = make_server(slots, limits, host, port)
    say(f"semsynth serve: open {url}  (models: {', '.join(slots)}; Ctrl+C stops)", flush=True)
    if not _is_loopback(host):
        say(f"semsynth serve: listening on {host}: anyone who can reach this machine can use it", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        for s in slots.values():
            s.close()
