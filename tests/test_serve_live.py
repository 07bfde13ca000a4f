"""`semsynth serve` as a user runs it: a real server process on loopback, driven by Debian's
Chromium through Playwright (painting, fill, undo, synthesis, upload, downloads, a screenshot), and
a bounded load test. The browser test needs /usr/bin/chromium (`apt-get install chromium`); it
never downloads a browser. `SEMSYNTH_UPDATE_DOCS=1` also writes the README's docs/images/serve.png."""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import re
import shlex
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semsynth.cli import main
from semsynth.data import resize_label
from semsynth.labels import get_space
from semsynth.layouts import street_layout
from semsynth.pipelines import CRNPipeline

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
CS = get_space("cityscapes")
REPO = Path(__file__).resolve().parents[1]
WAIT_MS = 300_000  # for one answer; generous for a CPU shared with other work (a second when idle)


@contextmanager
def server(*args: str, start_timeout: float = 600):
    """`semsynth serve --port 0 ARGS` in a child process, as a user starts it; yields (URL, process)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "semsynth.cli", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    try:
        seen, m, deadline = [], None, time.monotonic() + start_timeout
        while m is None and time.monotonic() < deadline:  # the URL comes once the models are loaded
            try:
                seen.append(lines.get(timeout=1))
                m = re.search(r"open (http://\S+/)", seen[-1])
            except queue.Empty:
                assert proc.poll() is None, f"semsynth serve exited: {''.join(seen + list(lines.queue))}"
        assert m, f"no URL from semsynth serve within {start_timeout} s: {''.join(seen)!r}"
        yield m.group(1).rstrip("/"), proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def server_thread(*models: str):
    """The same server in a thread of this process (no second torch start-up); yields the URL."""
    from semsynth.serve.app import Limits, load_models, make_server

    slots = load_models(list(models), device="cpu", precision="fp32")
    srv, sock, url = make_server(slots, Limits(timeout=WAIT_MS / 1000), port=0)
    t = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    try:
        while not srv.started:
            assert t.is_alive(), "the server thread ended"
            time.sleep(0.05)
        yield url.rstrip("/")
    finally:
        srv.should_exit = True
        t.join(30)
        for s in slots.values():
            s.close()


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def decode_data_url(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


# ----------------------------------------------------------------------------------- browser


def until(page, expression: str, timeout_ms: int = WAIT_MS) -> None:
    """Poll a JavaScript expression from here: `wait_for_function` evaluates strings inside the page,
    which the page's Content-Security-Policy (no 'unsafe-eval') rightly refuses."""
    deadline = time.monotonic() + timeout_ms / 1000
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"not true within {timeout_ms / 1000:g} s: {expression}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_browser_paints_synthesizes_and_reads_a_cityscapes_map(browser, data, tmp_path, monkeypatch):
    t0 = time.perf_counter()
    upload = data / "cityscapes/gtFine/val/frankfurt/frankfurt_000000_000576_gtFine_labelIds.png"
    with server_thread("default") as url:
        page = browser.new_page(viewport={"width": 1280, "height": 800}, accept_downloads=True)
        page.set_default_timeout(WAIT_MS)
        problems = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on(
            "console",
            lambda m: (
                m.type == "error" and not m.text.startswith("Failed to load resource") and problems.append(m.text)
            ),
        )  # refusals the test provokes are logged as failed loads
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready='1']")
        until(page, "window.semsynth.result() !== null")  # the live preview of the start layout
        assert page.locator("canvas#layout").count() == 1
        W, H = 256, 128
        layout = lambda: np.array(page.evaluate("window.semsynth.layout().ids")).reshape(H, W)  # noqa: E731
        idx = {
            n: page.evaluate(f"window.semsynth.classIndex({n!r})")
            for n in ("sky", "road", "vegetation", "building", "car")
        }
        box = page.locator("#layout").bounding_box()
        at = lambda x, y: (box["x"] + (x + 0.5) * box["width"] / W, box["y"] + (y + 0.5) * box["height"] / H)  # noqa: E731

        def pick(name):  # through the filter box, as a user finds a class
            page.fill("#filter", name)
            page.locator("#palette li:not([hidden]) button", has_text=name).first.click()
            page.fill("#filter", "")
            page.locator("#filter").blur()  # tool keys go to the page, not the filter box

        def drag(points):
            page.mouse.move(*at(*points[0]))
            page.mouse.down()
            for p in points[1:]:
                page.mouse.move(*at(*p), steps=4)
            page.mouse.up()

        def synthesized(before_seq):
            until(page, f"(window.semsynth.result() || {{seq: 0}}).seq > {before_seq}")
            return page.evaluate("window.semsynth.result()")

        # a sky background by fill, then strokes of two classes
        page.click("#clear")
        assert (layout() == CS.void).all()
        pick("sky")
        page.click("[data-tool=fill]")
        page.mouse.click(*at(10, 10))
        assert (layout() == idx["sky"]).all()
        page.eval_on_selector("#size", "el => { el.value = 20; el.dispatchEvent(new Event('input')); }")
        pick("road")
        page.keyboard.press("b")
        for y in range(78, 128, 12):
            drag([(4, y), (120, y)])
        pick("vegetation")
        for y in range(6, 50, 12):
            drag([(136, y), (252, y)])
        lay = layout()
        assert lay[100, 60] == idx["road"] and lay[30, 200] == idx["vegetation"] and lay[30, 60] == idx["sky"]
        # fill, undo / redo with the keyboard and the buttons
        pick("building")
        page.keyboard.press("g")
        page.mouse.click(*at(60, 30))
        assert layout()[30, 60] == idx["building"] and layout()[100, 60] == idx["road"]
        page.keyboard.press("Control+z")
        assert np.array_equal(layout(), lay)
        page.keyboard.press("Control+Shift+z")
        assert layout()[30, 60] == idx["building"]
        page.click("#undo")
        assert np.array_equal(layout(), lay)
        # rectangle, line, eyedropper, eraser (void), then undo all four
        pick("car")
        page.keyboard.press("r")
        drag([(100, 60), (110, 66)])
        assert (layout()[60:67, 100:111] == idx["car"]).all()
        page.keyboard.press("l")
        drag([(5, 5), (40, 5)])
        assert layout()[5, 20] == idx["car"]
        page.keyboard.press("i")
        page.mouse.click(*at(200, 30))
        assert page.inner_text("#palette button.on") == "vegetation"
        page.keyboard.press("e")
        drag([(230, 100), (240, 100)])
        assert layout()[100, 235] == CS.void
        for _ in range(3):
            page.keyboard.press("Control+z")
        assert np.array_equal(layout(), lay)

        # synthesize; the photo differs between the painted regions
        page.click("#synth")
        res = synthesized(page.evaluate("window.semsynth.requests()") - 1)  # this request's answer
        assert len(res["images"]) == 3 and page.locator("#gallery img").count() == 3
        photo = decode_data_url(page.get_attribute("#photo", "src"))
        assert photo.shape == (H, W, 3)
        road, veg = (photo[lay == idx[c]].mean(0) for c in ("road", "vegetation"))
        assert np.abs(road - veg).sum() > 40, (road, veg)
        # exactly what the model makes of the painted ids
        want = CRNPipeline.from_pretrained("default", device="cpu")(lay)[0]
        for got, w in zip(res["images"], want):
            assert np.array_equal(decode_data_url(got), w)
        # downloads: the id PNG reads back as the painted ids; the settings name the command
        with page.expect_download() as d:
            page.click("#dl-layout")
        saved = tmp_path / d.value.suggested_filename
        d.value.save_as(saved)
        assert saved.name.endswith("_layout.png") and np.array_equal(CS.read(saved), lay)
        with page.expect_download() as d:
            page.click("#dl-settings")
        settings = json.loads(Path(d.value.path()).read_text())
        assert settings["command"] == f"semsynth synthesize default {saved.name} -o out/ --k 3"
        assert (settings["k"], settings["model"], settings["label_space"]) == (3, "default", "cityscapes")
        monkeypatch.chdir(tmp_path)  # the command, run where the layout was saved, writes the same images
        assert main(shlex.split(settings["command"])[1:] + ["--device", "cpu"]) == 0
        for out, got in zip(settings["outputs"], res["images"]):
            assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), decode_data_url(got))
        with page.expect_download() as d:
            page.click("#gallery img:nth-child(2)")
            page.click("#dl-photo")
        assert np.array_equal(np.asarray(Image.open(d.value.path()).convert("RGB")), decode_data_url(res["images"][1]))

        # a wrong file: the server's message, in the page
        (tmp_path / "notes.png").write_bytes(b"not an image")
        page.set_input_files("#upload", str(tmp_path / "notes.png"))
        page.wait_for_selector("#error:not([hidden])")
        assert "notes.png: cannot read label map" in page.inner_text("#error")
        # a real Cityscapes label map, decoded by the server; live preview follows
        seq = page.evaluate("window.semsynth.result().seq")
        page.set_input_files("#upload", str(upload))
        until(page, "document.getElementById('status').textContent.includes('2048×1024')")
        assert np.array_equal(layout(), resize_label(CS.read(upload), (H, W)))
        assert page.is_hidden("#error")
        synthesized(seq)
        until(page, "document.getElementById('status').textContent.includes('image(s)')")
        page.click("#gallery img:nth-child(1)")
        page.keyboard.press("b")
        shot = page.screenshot(path=str(tmp_path / "serve.png"))
        if os.environ.get("SEMSYNTH_UPDATE_DOCS"):
            (REPO / "docs/images/serve.png").write_bytes(shot)
        assert problems == []
    print(f"\nbrowser test: {time.perf_counter() - t0:.1f} s wall")


# ----------------------------------------------------------------------------------- load


def test_load_only_200_or_429_and_the_server_survives(tmp_path):
    """8 clients x 25 requests on loopback, alternating between the bundled models (the SIMS one with
    a bank of the shared Cityscapes pairs, when ../shared is there)."""
    import httpx2 as httpx

    from semsynth.sims.bank import build_bank_from_paths
    from semsynth.utils import shared_dir

    args = ["--timeout", "600"]  # refusals here come from the queue, not the clock
    if (shared_dir() / "data/cityscapes").is_dir():
        build_bank_from_paths(
            [shared_dir() / "data/cityscapes"], tmp_path / "bank", size=(128, 256), rgb_scale=1, progress=False
        )
        args += ["--bank", str(tmp_path / "bank")]

    clients, per_client = 8, 25
    ids = street_layout(11, (128, 256))
    buf = io.BytesIO()
    Image.fromarray(CS.file_ids()[ids].astype(np.uint8)).save(buf, format="PNG")
    layout = buf.getvalue()
    with server(*args) as (url, proc):
        models = [m["name"] for m in httpx.get(url + "/api/models").json()["models"]]
        results: list[tuple[str, int, float]] = []
        lock = threading.Lock()
        deadline = time.monotonic() + 600  # bounded in time as well as in count

        def client(i):
            with httpx.Client(base_url=url, timeout=600) as c:
                for n in range(per_client):
                    if time.monotonic() > deadline:
                        return
                    model = models[(i + n) % len(models)]
                    t = time.perf_counter()
                    r = c.post("/api/synthesize", files={"label": ("l.png", layout)}, data={"model": model, "k": "1"})
                    dt = time.perf_counter() - t
                    with lock:
                        results.append((model, r.status_code, dt))
                    if r.status_code == 429:
                        assert int(r.headers["retry-after"]) >= 1
                        time.sleep(0.05)  # a quick retry, not the advised wait: keeps the pressure on

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        assert proc.poll() is None, "the server died"
        assert httpx.get(url + "/api/health").json()["status"] == "ok"
        final = httpx.post(url + "/api/synthesize", files={"label": ("l.png", layout)}, timeout=600)
        assert final.status_code == 200 and final.json()["model"] == models[0] == "default"
        stats = {m["name"]: m for m in httpx.get(url + "/api/models").json()["models"]}
        peak = peak_rss_mb(proc.pid)
    codes = sorted({c for _, c, _ in results})
    assert set(codes) <= {200, 429}, codes
    assert len(results) == clients * per_client, "the load test ran out of time"
    lines = [
        f"load test: {clients} clients x {per_client} requests in {wall:.1f} s, server peak RSS {peak:.0f} MB"
        if peak
        else f"load test: {wall:.1f} s"
    ]
    for m in models:
        ok = np.array([dt for n, c, dt in results if n == m and c == 200]) * 1000
        busy = sum(1 for n, c, _ in results if n == m and c == 429)
        assert len(ok) >= 1
        assert stats[m]["served"] == len(ok) + (m == models[0]) and stats[m]["refused"] == busy
        lines.append(
            f"  {m}: {len(ok)} x 200 (p50 {np.percentile(ok, 50):.0f} ms, p95 {np.percentile(ok, 95):.0f} ms), "
            f"{busy} x 429"
        )
    print("\n" + "\n".join(lines))
