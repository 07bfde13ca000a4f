"""`semsynth serve`, the API through FastAPI's TestClient: answers, and every refusal (body and
layout limits, full queue, timeout, unknown models, path traversal, foreign Host/Origin, bad files),
always as JSON without a traceback. Tiny untrained checkpoints made here; the bundled model only
where its outputs matter."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import struct
import threading
import time
import urllib.parse
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from semsynth.checkpoint import save_model
from semsynth.cli import main
from semsynth.data import resize_label
from semsynth.labels import get_space
from semsynth.layouts import street_layout
from semsynth.models import build_model, model_config
from semsynth.precision import holds_bf16, native_bf16, resolve_precision
from semsynth.serve import Limits, create_app, load_models
from semsynth.serve.app import ModelSlot, upload_name

CS = get_space("cityscapes")
SIZE = (32, 64)
BASE = "http://127.0.0.1:7860"  # the Host a browser on this machine sends


def _tiny(path: Path, space: str = "cityscapes", k: int = 2) -> Path:
    sp = get_space(space)
    torch.manual_seed(0)
    cfg = model_config({"arch": "crn", "levels": 4, "k": k, "width_mult": 1 / 32, "num_classes": sp.num_classes})
    save_model(path / "model.safetensors", build_model(cfg), cfg, sp, "crn", step=1)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    return {"street": _tiny(root / "street"), "camvid": _tiny(root / "camvid", "camvid", k=1)}


@pytest.fixture(scope="module")
def slots(ckpts):
    s = load_models([str(ckpts["street"]), str(ckpts["camvid"])], device="cpu", precision="fp32", queue=2)
    yield s
    for v in s.values():
        v.close()


def client(slots, **limits) -> TestClient:
    return TestClient(create_app(slots, Limits(**{"queue": 2, **limits})), base_url=BASE, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def api(slots):
    return client(slots)


def png_bytes(arr, mode=None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def layout_file(ids, space=CS) -> bytes:
    """A grey id map in the space's own encoding, as the page sends it."""
    return png_bytes(space.file_ids()[ids].astype(np.uint8))


def ids_of(j) -> np.ndarray:
    return np.frombuffer(base64.b64decode(j["ids"]), dtype="<u2").reshape(j["height"], j["width"])


def image_of(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def refused(r, status: int, *words: str) -> str:
    """The answer is `status` with a one-line JSON error containing `words`, and no traceback."""
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    msg = r.json()["error"]
    assert "Traceback" not in r.text and "\n" not in msg and 'File "' not in msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


def block(slot: ModelSlot, n: int) -> threading.Event:
    """Occupy `n` places of the slot's queue with jobs that wait for the returned event."""
    ev = threading.Event()
    for _ in range(n):
        assert slot.submit(ev.wait, 30) is not None
    return ev


def drained(slot: ModelSlot) -> None:
    for _ in range(300):
        if slot.info()["pending"] == 0:
            return
        time.sleep(0.01)
    raise AssertionError("queue did not drain")


# ----------------------------------------------------------------------------------- answers


def test_health_models_and_palette(api, slots):
    assert api.get("/api/health").json() == {"status": "ok", "version": "0.1.0", "models": ["street", "camvid"]}
    j = api.get("/api/models").json()
    m = {x["name"]: x for x in j["models"]}
    assert (m["street"]["kind"], m["street"]["label_space"], m["street"]["k"]) == ("crn", "cityscapes", 2)
    assert (m["street"]["height"], m["street"]["width"], m["street"]["procedural"]) == (32, 64, True)
    assert (m["camvid"]["label_space"], m["camvid"]["procedural"]) == ("camvid", False)
    assert j["limits"]["queue"] == 2 and j["limits"]["max_body"] == 20 * 2**20
    p = api.get("/api/models/street/palette").json()
    assert p["label_space"] == "cityscapes" and p["void"] == 19 and p["void_id"] == 0
    assert [c["name"] for c in p["classes"]] == list(CS.names)
    assert p["classes"][0] == {"index": 0, "name": "road", "color": [128, 64, 128], "id": 7}


def test_synthesize_answers_the_documented_json(api, slots):
    ids = street_layout(3, SIZE)
    r = api.post(
        "/api/synthesize", files={"label": ("x.png", layout_file(ids))}, data={"model": "street", "k": "2", "seed": "5"}
    )
    assert r.status_code == 200, r.text
    j = r.json()
    assert set(j) == {"model", "seed", "width", "height", "images"}
    assert (j["model"], j["seed"], j["width"], j["height"], len(j["images"])) == ("street", 5, 64, 32, 2)
    want = slots["street"].pipe(ids, k=2)[0]
    for url, w in zip(j["images"], want):
        assert np.array_equal(image_of(url), w)  # exactly the pipeline's images
    # every field but the file is optional: the first model, all its k variants, seed 0
    j = api.post("/api/synthesize", files={"label": ("x.png", layout_file(ids))}).json()
    assert (j["model"], j["seed"], len(j["images"])) == ("street", 0, 2)


def test_synthesize_reads_any_label_format(api, data):
    f = data / "cityscapes/gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
    ids = CS.read(f)
    for name, blob in (
        (f.name, f.read_bytes()),  # 2048x1024 labelIds
        ("colour.png", png_bytes(CS.colors[np.minimum(ids, 18)])),  # colour map
        ("x_trainIds.png", png_bytes(np.where(ids == 19, 255, ids).astype(np.uint8))),
    ):
        r = api.post("/api/synthesize", files={"label": (name, blob)}, data={"k": "1"})
        assert r.status_code == 200 and len(r.json()["images"]) == 1, (name, r.text[:200])


def test_decode_and_procedural_layouts(api, data):
    f = data / "cityscapes/gtFine/val/frankfurt/frankfurt_000000_000576_gtFine_labelIds.png"
    j = api.post("/api/decode", files={"label": (f.name, f.read_bytes())}, data={"model": "street"}).json()
    assert (j["source_width"], j["source_height"], j["width"], j["height"]) == (2048, 1024, 64, 32)
    assert np.array_equal(ids_of(j), resize_label(CS.read(f), SIZE))
    j = api.get("/api/layout", params={"model": "street", "seed": 7}).json()
    assert j["seed"] == 7 and np.array_equal(ids_of(j), street_layout(7, SIZE))
    refused(api.get("/api/layout", params={"model": "camvid"}), 422, "Cityscapes", "camvid")
    refused(api.get("/api/layout", params={"seed": -1}), 422, "seed")
    refused(api.get("/api/layout", params={"seed": "x"}), 422, "seed")


def test_page_and_its_files(api):
    r = api.get("/")
    assert r.status_code == 200 and "<canvas" in r.text and "default-src 'none'" in r.headers["content-security-policy"]
    for src in ("/static/app.js", "/static/png.js", "/static/style.css"):
        assert src in r.text or src == "/static/png.js"
        assert api.get(src).status_code == 200
    assert "import { encodeGreyPNG }" in api.get("/static/app.js").text
    assert "http" not in r.text.replace("http-equiv", "")  # nothing loaded from elsewhere (no CDN, no fonts)


# ----------------------------------------------------------------------------------- refusals


def test_request_body_limit_413(slots):
    c = client(slots, max_body=1000)
    refused(
        c.post("/api/synthesize", files={"label": ("x.png", b"\0" * 2000)}), 413, "request body over", "--max-body-mb"
    )
    body = b'--b\r\nContent-Disposition: form-data; name="label"; filename="x.png"\r\n\r\n' + b"\0" * 5000

    def chunks():  # no Content-Length: the limit applies while the body streams in
        for i in range(0, len(body), 500):
            yield body[i : i + 500]

    r = c.post("/api/synthesize", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    refused(r, 413, "request body over")
    refused(c.post("/api/decode", content=b"", headers={"content-length": "x1"}), 400, "Content-Length")


def test_layout_size_limit_413_before_decoding(slots):
    c = client(slots, max_pixels=64 * 64)
    refused(
        c.post("/api/synthesize", files={"label": ("big.png", layout_file(np.zeros((65, 64), int)))}),
        413,
        "64x65 = 4,160 pixels",
        "at most 4,096",
        "--max-pixels",
    )
    # a 100000 x 100000 header over a few bytes of data: refused from the header alone
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")
    refused(c.post("/api/synthesize", files={"label": ("bomb.png", bomb)}), 413, "pixels")
    ok = c.post("/api/synthesize", files={"label": ("ok.png", layout_file(np.zeros((64, 64), int)))})
    assert ok.status_code == 200


def test_bad_fields_and_files_422(api):
    lay = layout_file(street_layout(0, SIZE))
    refused(api.post("/api/synthesize", data={"k": "1"}, files={"other": ("a", b"x")}), 422, "'label'")
    refused(api.post("/api/synthesize", data={"label": "not a file"}, files={"x": ("a", b"")}), 422, "'label'")
    refused(api.post("/api/synthesize", json={"label": "x"}), 415, "multipart/form-data")
    refused(api.post("/api/synthesize", files={"label": ("a.png", lay)}, data={"k": "3"}), 422, "k must be in 1..2")
    refused(api.post("/api/synthesize", files={"label": ("a.png", lay)}, data={"k": "0"}), 422, "k must be in 1..2")
    refused(
        api.post("/api/synthesize", files={"label": ("a.png", lay)}, data={"k": "two"}), 422, "k must be an integer"
    )
    refused(api.post("/api/synthesize", files={"label": ("a.png", lay)}, data={"seed": "-1"}), 422, "seed")
    # undecodable files: the message names the upload, never the temporary copy on the server
    m = refused(
        api.post("/api/synthesize", files={"label": ("junk.png", b"\x89PNG nonsense")}),
        422,
        "junk.png",
        "cannot read label map",
    )
    assert "/tmp" not in m and "semsynth-serve-" not in m
    wrong = np.zeros((8, 8, 3), np.uint8) + np.array([1, 2, 3], np.uint8)
    refused(
        api.post("/api/decode", files={"label": ("wrong.png", png_bytes(wrong))}),
        422,
        "wrong.png",
        "(1, 2, 3)",
        "not in the cityscapes palette",
    )
    refused(
        api.post("/api/synthesize", files={"label": ("ids.png", png_bytes(np.full((8, 8), 200, np.uint8)))}),
        422,
        "200 (64 px)",
        "labelId",
    )
    refused(
        api.post("/api/synthesize", content=b"--b\r\nbroken", headers={"content-type": "multipart/form-data"}),
        400,
        "multipart",
    )


def test_upload_names_never_reach_the_filesystem(api):
    assert upload_name("../../etc/passwd") == "passwd"
    assert upload_name("..\\..\\win.ini") == "win.ini"
    assert upload_name("/abs/x_trainIds.png") == "x_trainIds.png"  # the encoding hint survives
    assert upload_name("..") == "layout.png" and upload_name(None) == "layout.png"
    assert upload_name("a b$(rm).png") == "a_b_rm_.png"
    m = refused(api.post("/api/synthesize", files={"label": ("../../../../etc/passwd", b"root:x:0:0")}), 422)
    assert m.startswith("passwd: cannot read label map")


def test_only_models_named_at_start(api, ckpts):
    lay = layout_file(street_layout(0, SIZE))
    refused(api.get("/api/models/nope/palette"), 404, "unknown model 'nope'", "['camvid', 'street']")
    for name in ("default", str(ckpts["street"]), "../street", "/etc/passwd"):  # names, never paths
        refused(
            api.post("/api/synthesize", files={"label": ("a.png", lay)}, data={"model": name}), 404, "unknown model"
        )


def test_full_queue_429_with_retry_after(api, slots):
    slot = slots["street"]
    ev = block(slot, 2)
    try:
        r = api.post("/api/synthesize", files={"label": ("a.png", layout_file(street_layout(0, SIZE)))})
        refused(r, 429, "busy", "--queue")
        assert int(r.headers["retry-after"]) >= 1
        assert api.get("/api/models/street/palette").status_code == 200  # the rest still answers
        other = api.post(
            "/api/synthesize",
            data={"model": "camvid"},  # other models have their own queue
            files={"label": ("a.png", layout_file(np.zeros(SIZE, int), get_space("camvid")))},
        )
        assert other.status_code == 200
    finally:
        ev.set()
    drained(slot)
    assert (
        api.post("/api/synthesize", files={"label": ("a.png", layout_file(street_layout(0, SIZE)))}).status_code == 200
    )


def test_timeout_503_and_the_job_is_dropped(slots):
    c = client(slots, timeout=0.3)
    slot = slots["street"]
    before = slot.info()
    ev = block(slot, 1)
    try:
        r = c.post("/api/synthesize", files={"label": ("a.png", layout_file(street_layout(0, SIZE)))})
        refused(r, 503, "no answer within 0.3 s", "--timeout")
        assert slot.info()["pending"] == 1  # the timed-out request left the queue; the blocker remains
    finally:
        ev.set()
    drained(slot)
    after = slot.info()
    assert after["timed_out"] == before["timed_out"] + 1 and after["served"] == before["served"]


def _asgi(app, path: str, method="GET", headers=(), body=b"", disconnect_after_body=False):
    """Call the ASGI app with a raw path as uvicorn would pass it (percent-decoded `path`, the bytes
    in `raw_path`): test clients normalise `..` away before anything is sent."""
    raw = path.encode("latin-1")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": urllib.parse.unquote(path.split("?")[0]),
        "raw_path": raw.split(b"?")[0],
        "query_string": raw.split(b"?", 1)[1] if b"?" in raw else b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:7860"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 7860),
    }
    sent, out = [False], {"status": None, "body": b""}

    async def receive():
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        if disconnect_after_body:
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return out["status"], out["body"]


TRAVERSALS = [
    p + d + t
    for p in ("/static/", "/assets/", "/", "//", "/static//", "/api/models/")
    for d in (
        "../../../../../../",
        "%2e%2e/%2e%2e/%2e%2e/%2e%2e/",
        "..%2f..%2f..%2f..%2f",
        "..\\..\\..\\",
        "%252e%252e%252f",
        "....//....//",
        "%c0%ae%c0%ae/",
    )
    for t in ("etc/passwd", "semsynth/serve/app.py", "app.py")
] + [
    "/static/%00app.js",
    "/static/app.js%00.png",
    "/static/.",
    "/static/..",
    "/static/",
    "/static",
    "/static/app.js/../../app.py",
    "/static/../app.py",
    "/static/__init__.py",
    "/static/app.py",
]


def test_static_files_from_the_package_only(slots):
    app = create_app(slots)
    status, body = _asgi(app, "/static/app.js")
    assert status == 200 and b"encodeGreyPNG" in body
    for path in TRAVERSALS:
        status, body = _asgi(app, path)
        assert status in (400, 404, 405), (path, status)
        assert b"root:" not in body and b"import" not in body, path
        assert json.loads(body)["error"], path


def test_abandoned_requests_leave_the_queue(slots):
    """A client that goes away (a newer preview superseded it) does not keep its place: the job
    is cancelled before it runs."""
    slot = slots["street"]
    ran, before = [], slot.info()["abandoned"]
    orig = slot.synthesize
    slot.synthesize = lambda *a: ran.append(1) or orig(*a)
    ev = block(slot, 1)
    try:
        b = (
            b'--b\r\nContent-Disposition: form-data; name="label"; filename="a.png"\r\n\r\n'
            + layout_file(street_layout(0, SIZE))
            + b"\r\n--b--\r\n"
        )
        status, _ = _asgi(
            create_app(slots, Limits(queue=2)),
            "/api/synthesize",
            "POST",
            body=b,
            headers=[(b"content-type", b"multipart/form-data; boundary=b"), (b"content-length", str(len(b)).encode())],
            disconnect_after_body=True,
        )
        assert status == 499 and slot.info()["abandoned"] == before + 1
    finally:
        ev.set()
        drained(slot)
        slot.synthesize = orig
    assert ran == []


def test_foreign_host_and_origin_are_refused(api):
    refused(api.get("/api/health", headers={"host": "evil.example:7860"}), 421, "evil.example")
    refused(api.get("/", headers={"host": "attacker.test"}), 421)
    lay = layout_file(street_layout(0, SIZE))
    refused(
        api.post("/api/synthesize", files={"label": ("a.png", lay)}, headers={"origin": "https://evil.example"}),
        403,
        "https://evil.example",
    )
    assert api.post("/api/synthesize", files={"label": ("a.png", lay)}, headers={"origin": BASE}).status_code == 200
    for host in ("localhost:7860", "[::1]:7860", "127.0.0.1"):
        assert api.get("/api/health", headers={"host": host}).status_code == 200


def test_errors_are_json_without_tracebacks(api, slots):
    refused(api.get("/nowhere"), 404)
    refused(api.delete("/api/health"), 405)
    slot = slots["street"]
    orig = slot.synthesize
    slot.synthesize = lambda *a: (_ for _ in ()).throw(RuntimeError("secret detail"))
    try:
        m = refused(
            api.post("/api/synthesize", files={"label": ("a.png", layout_file(street_layout(0, SIZE)))}),
            500,
            "internal error (RuntimeError)",
        )
        assert "secret" not in m
    finally:
        slot.synthesize = orig


# ----------------------------------------------------------------------------------- models, CLI


def test_sims_models_need_a_bank(tmp_path):
    cfg = model_config("sims-tiny", num_classes=CS.num_classes, native=[32, 64])
    save_model(tmp_path / "sims" / "model.safetensors", build_model(cfg), cfg, CS, "sims-synthesis")
    with pytest.raises(ValueError, match="--bank"):
        load_models([str(tmp_path / "sims")], device="cpu")
    assert main(["serve", "--model", str(tmp_path / "sims"), "--port", "0"]) == 2


def test_sims_model_served_with_a_bank(tmp_path):
    from test_sims_nets import make_cityscapes

    from semsynth.data import open_dataset
    from semsynth.sims.bank import build_bank

    cs = make_cityscapes(tmp_path / "cs", n=3, size=(64, 128), seed=1, disparity=False)
    build_bank(open_dataset(cs, space=CS), tmp_path / "bank", size=(32, 64), rgb_scale=2, progress=False)
    cfg = model_config("sims-tiny", num_classes=CS.num_classes, native=[64, 128])
    save_model(tmp_path / "sims" / "model.safetensors", build_model(cfg), cfg, CS, "sims-synthesis")
    slots = load_models([str(tmp_path / "sims")], bank=str(tmp_path / "bank"), device="cpu", precision="fp32")
    c = client(slots)
    info = c.get("/api/models").json()["models"][0]
    assert (info["kind"], info["k"], info["default_k"], info["bank"], info["width"]) == (
        "sims",
        4,
        1,
        str(tmp_path / "bank"),
        128,
    )
    lay = layout_file(CS.read(next((cs / "gtFine").rglob("*_labelIds.png"))))
    j = c.post("/api/synthesize", files={"label": ("a.png", lay)}, data={"k": "2", "seed": "4"}).json()
    assert (j["width"], j["height"], len(j["images"])) == (128, 64, 2)
    again = c.post("/api/synthesize", files={"label": ("a.png", lay)}, data={"k": "2", "seed": "4"}).json()
    assert again["images"] == j["images"]  # seeds make SIMS canvases reproducible
    # seed 0 is what `semsynth synthesize ... --k 2` writes
    (tmp_path / "a.png").write_bytes(lay)
    from semsynth.pipelines import load_pipeline

    load_pipeline(str(tmp_path / "sims"), device="cpu", bank=str(tmp_path / "bank")).synthesize_files(
        [tmp_path / "a.png"], tmp_path / "out", k=2, progress=False
    )
    j = c.post("/api/synthesize", files={"label": ("a.png", lay)}, data={"k": "2"}).json()
    for i, url in enumerate(j["images"]):
        assert np.array_equal(image_of(url), np.asarray(Image.open(tmp_path / "out" / f"a_k{i}.png")))
    assert len(c.post("/api/synthesize", files={"label": ("a.png", lay)}).json()["images"]) == 1  # default k
    refused(c.post("/api/synthesize", files={"label": ("a.png", lay)}, data={"k": "5"}), 422, "1..4")
    slots["sims"].close()


def test_precision(ckpts):
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if native_bf16(cpu) else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="precision .fp16.: choose one of auto, fp32, bf16"):
        resolve_precision("fp16", cpu)
    ids = street_layout(1, SIZE)
    for prec, bf16 in (("fp32", False), ("bf16", True)):
        s = load_models([str(ckpts["street"])], device="cpu", precision=prec)["street"]
        assert s.info()["precision"] == prec
        seen = set()
        conv = next(m for m in s.pipe.model.modules() if isinstance(m, torch.nn.Conv2d))
        hook = conv.register_forward_hook(lambda m, i, o: seen.add(holds_bf16(o)))
        images = s.synthesize(ids, 2, 0)
        hook.remove()
        s.close()
        assert seen == {bf16}  # the convolutions ran in the chosen precision (in the worker thread)
        assert len(images) == 2 and images[0].dtype == np.uint8 and images[0].shape == (*SIZE, 3)


def test_cli_refusals_are_one_line(ckpts, capsys):
    assert main(["serve", "--model", "no/such/model"]) == 2
    assert "no/such/model" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(ckpts["street"]), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err
    assert main(["serve", "--model", str(ckpts["street"]), "--queue", "0"]) == 2
    assert main(["serve", "--model", str(ckpts["street"]), "--timeout", "0"]) == 2
