// semsynth serve: the painting page. The layout is an integer buffer of class indices (void = the
// number of classes), painted pixel by pixel and only displayed through the palette, so a class
// id is never recovered from a drawn colour. The page uses only the server's JSON API.
import { encodeGreyPNG } from "./png.js";

const $ = (id) => document.getElementById(id);
const canvas = $("layout");
const ctx = canvas.getContext("2d");
const DEBOUNCE_MS = 250; // live preview: after a pause this long ...
const MAX_WAIT_MS = 1000; // ... or at the latest this long after the first change
const HISTORY_BYTES = 256 * 2 ** 20;
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

const S = {
  models: [], model: null, palette: null, rgba: null,
  W: 0, H: 0, buf: null, // Uint16Array of class indices
  cls: 0, tool: "brush", paintTool: "brush", size: 8, stamp: [],
  undo: [], redo: [], op: null,
  result: null, selected: 0,
  seq: 0, inflight: null, timer: null, firstChange: 0, retry: null,
  layoutSeed: Math.floor(Math.random() * 100000), stem: "layout",
};

// ------------------------------------------------------------------ API

async function api(path, options = {}) {
  const r = await fetch(path, options);
  let body = null;
  try { body = await r.json(); } catch { body = null; }
  if (!r.ok) {
    const e = new Error(body && body.error ? body.error : `HTTP ${r.status}`);
    e.status = r.status;
    e.retryAfter = Number(r.headers.get("Retry-After")) || 1;
    throw e;
  }
  return body;
}

function idsFromJSON(j) { // base64 of little-endian uint16
  const b = Uint8Array.from(atob(j.ids), (c) => c.charCodeAt(0));
  const ids = new Uint16Array(j.width * j.height);
  for (let i = 0; i < ids.length; i++) ids[i] = b[2 * i] | (b[2 * i + 1] << 8);
  return ids;
}

function setStatus(text) { $("status").textContent = text; }
function showError(text) { const e = $("error"); e.textContent = text; e.hidden = !text; }

// ------------------------------------------------------------------ models and palette

async function init() {
  const j = await api("/api/models");
  S.models = j.models;
  const sel = $("model");
  for (const m of S.models) {
    const o = document.createElement("option");
    o.value = m.name;
    o.textContent = `${m.name} (${m.kind.toUpperCase()}, ${m.label_space}, ${m.width}×${m.height})`;
    sel.append(o);
  }
  sel.addEventListener("change", () => selectModel(sel.value).catch((e) => showError(e.message)));
  await selectModel(S.models[0].name);
}

async function selectModel(name) {
  const m = S.models.find((x) => x.name === name);
  const pal = await api(`/api/models/${encodeURIComponent(name)}/palette`);
  const sameSpace = S.palette && S.palette.label_space === pal.label_space && S.palette.void === pal.void;
  S.model = m;
  S.palette = pal;
  S.rgba = new Uint32Array(pal.classes.length + 1);
  pal.classes.forEach((c, i) => { S.rgba[i] = pack(c.color); });
  S.rgba[pal.void] = pack([0, 0, 0]);
  buildPalette();
  const k = $("k");
  k.max = m.k;
  k.value = m.default_k;
  $("procedural").disabled = !m.procedural;
  $("procedural").title = m.procedural ? "a new procedural street layout per click"
    : `procedural layouts are Cityscapes street scenes; ${m.name} uses ${m.label_space}`;
  $("tools").querySelector('[data-tool="eraser"]').disabled = pal.void_id === null;
  if (S.cls >= pal.classes.length) setClass(0);
  if (S.buf && sameSpace) {
    if (S.W !== m.width || S.H !== m.height) setBuffer(resample(S.buf, S.W, S.H, m.width, m.height), m.width, m.height);
    else changed();
  } else if (m.procedural) {
    await newStreet();
  } else {
    setBuffer(new Uint16Array(m.width * m.height).fill(pal.void), m.width, m.height);
  }
}

function pack([r, g, b]) {
  return (LITTLE_ENDIAN ? (255 << 24) | (b << 16) | (g << 8) | r : (r << 24) | (g << 16) | (b << 8) | 255) >>> 0;
}

function buildPalette() {
  const ul = $("palette");
  ul.replaceChildren();
  S.palette.classes.forEach((c, i) => {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.dataset.index = i;
    b.title = `class ${i} (file id ${c.id})`;
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.backgroundColor = `rgb(${c.color.join(",")})`;
    b.append(sw, document.createTextNode(c.name));
    b.addEventListener("click", () => { setClass(i); if (S.tool === "eraser" || S.tool === "picker") setTool(S.paintTool); });
    li.append(b);
    ul.append(li);
  });
  filterPalette();
  setClass(S.cls);
}

function filterPalette() {
  const q = $("filter").value.trim().toLowerCase();
  for (const li of $("palette").children) {
    const name = S.palette.classes[li.firstChild.dataset.index].name.toLowerCase();
    li.hidden = q !== "" && !name.includes(q);
  }
}

function setClass(i) {
  S.cls = i;
  for (const b of $("palette").querySelectorAll("button")) b.classList.toggle("on", Number(b.dataset.index) === i);
}

function setTool(t) {
  if (t === "eraser" && S.palette && S.palette.void_id === null) return;
  if (["brush", "line", "rect", "fill"].includes(t)) S.paintTool = t;
  S.tool = t;
  for (const b of $("tools").querySelectorAll("button")) b.classList.toggle("on", b.dataset.tool === t);
}

function setSize(n) {
  S.size = Math.max(1, Math.min(64, n));
  $("size").value = S.size;
  $("sizeval").textContent = S.size;
  const r = S.size / 2;
  const R = Math.ceil(r);
  S.stamp = [];
  for (let dy = -R; dy <= R; dy++) {
    for (let dx = -R; dx <= R; dx++) {
      // pixel centres inside a disc of diameter `size` centred on the pixel (size 1: that pixel)
      if (S.size === 1 ? dx === 0 && dy === 0 : dx * dx + dy * dy <= r * r) S.stamp.push([dx, dy]);
    }
  }
}

// ------------------------------------------------------------------ the buffer

function setBuffer(buf, W, H) {
  S.buf = buf;
  if (W !== S.W || H !== S.H) {
    S.W = W; S.H = H;
    canvas.width = W; canvas.height = H;
    S.undo = []; S.redo = []; // snapshots of another size cannot come back
  }
  render();
  historyButtons();
  changed();
}

function resample(src, w0, h0, w1, h1) { // nearest, at pixel centres
  const out = new Uint16Array(w1 * h1);
  for (let y = 0; y < h1; y++) {
    const sy = Math.min(h0 - 1, Math.floor((y + 0.5) * h0 / h1));
    for (let x = 0; x < w1; x++) out[y * w1 + x] = src[sy * w0 + Math.min(w0 - 1, Math.floor((x + 0.5) * w0 / w1))];
  }
  return out;
}

function render(buf = S.buf) {
  const img = ctx.createImageData(S.W, S.H);
  const px = new Uint32Array(img.data.buffer);
  for (let i = 0; i < buf.length; i++) px[i] = S.rgba[buf[i]];
  ctx.putImageData(img, 0, 0);
}

function stampAt(buf, x, y, c) {
  for (const [dx, dy] of S.stamp) {
    const u = x + dx, v = y + dy;
    if (u >= 0 && v >= 0 && u < S.W && v < S.H) buf[v * S.W + u] = c;
  }
}

function strokeLine(buf, a, b, c) {
  const n = Math.max(Math.abs(b.x - a.x), Math.abs(b.y - a.y));
  for (let t = 0; t <= n; t++) {
    const f = n ? t / n : 0;
    stampAt(buf, Math.round(a.x + (b.x - a.x) * f), Math.round(a.y + (b.y - a.y) * f), c);
  }
}

function fillRect(buf, a, b, c) {
  const [x0, x1] = [Math.min(a.x, b.x), Math.max(a.x, b.x)];
  const [y0, y1] = [Math.min(a.y, b.y), Math.max(a.y, b.y)];
  for (let y = y0; y <= y1; y++) buf.fill(c, y * S.W + x0, y * S.W + x1 + 1);
}

function floodFill(buf, p, c) { // 4-connected, scanline
  const W = S.W, H = S.H, target = buf[p.y * W + p.x];
  if (target === c) return;
  const stack = [p.x, p.y];
  while (stack.length) {
    const y = stack.pop();
    let x = stack.pop();
    while (x > 0 && buf[y * W + x - 1] === target) x--;
    let up = false, down = false;
    for (; x < W && buf[y * W + x] === target; x++) {
      buf[y * W + x] = c;
      if (y > 0) {
        const t = buf[(y - 1) * W + x] === target;
        if (t && !up) stack.push(x, y - 1);
        up = t;
      }
      if (y < H - 1) {
        const t = buf[(y + 1) * W + x] === target;
        if (t && !down) stack.push(x, y + 1);
        down = t;
      }
    }
  }
}

function same(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function commit(before) {
  if (same(before, S.buf)) return;
  S.undo.push(before);
  S.redo = [];
  const limit = Math.max(10, Math.floor(HISTORY_BYTES / (2 * S.buf.length)));
  if (S.undo.length > limit) S.undo.shift();
  historyButtons();
  changed();
}

function undo() { step(S.undo, S.redo); }
function redo() { step(S.redo, S.undo); }
function step(from, to) {
  if (!from.length || S.op) return;
  to.push(S.buf);
  S.buf = from.pop();
  render();
  historyButtons();
  changed();
}
function historyButtons() { $("undo").disabled = !S.undo.length; $("redo").disabled = !S.redo.length; }

// ------------------------------------------------------------------ pointer tools

function pixel(e) {
  const r = canvas.getBoundingClientRect();
  return {
    x: Math.max(0, Math.min(S.W - 1, Math.floor((e.clientX - r.left) * S.W / r.width))),
    y: Math.max(0, Math.min(S.H - 1, Math.floor((e.clientY - r.top) * S.H / r.height))),
  };
}

function paintClass() { return S.tool === "eraser" ? S.palette.void : S.cls; }

canvas.addEventListener("pointerdown", (e) => {
  if (e.button !== 0 || !S.buf) return;
  canvas.setPointerCapture(e.pointerId);
  const p = pixel(e);
  const before = S.buf.slice();
  if (S.tool === "picker") {
    const c = S.buf[p.y * S.W + p.x];
    if (c === S.palette.void) setTool("eraser"); else { setClass(c); setTool(S.paintTool); }
  } else if (S.tool === "fill") {
    floodFill(S.buf, p, S.cls);
    render();
    commit(before);
  } else {
    S.op = { tool: S.tool, start: p, last: p, before, c: paintClass() };
    if (S.tool === "brush" || S.tool === "eraser") { stampAt(S.buf, p.x, p.y, S.op.c); render(); changed(); }
  }
});

canvas.addEventListener("pointermove", (e) => {
  if (!S.buf) return;
  const p = pixel(e);
  const c = S.buf[p.y * S.W + p.x];
  $("cursor").textContent = `${p.x}, ${p.y}: ${c === S.palette.void ? "void" : S.palette.classes[c].name}`;
  const op = S.op;
  if (!op) return;
  if (op.tool === "brush" || op.tool === "eraser") {
    strokeLine(S.buf, op.last, p, op.c);
    render();
    changed();
  } else { // line / rectangle: drawn on a copy of the layout as it was, until released
    const preview = op.before.slice();
    (op.tool === "line" ? strokeLine : fillRect)(preview, op.start, p, op.c);
    S.buf = preview;
    render();
  }
  op.last = p;
});

function endOp() {
  const op = S.op;
  if (!op) return;
  S.op = null;
  commit(op.before);
}
canvas.addEventListener("pointerup", endOp);
canvas.addEventListener("pointercancel", endOp);
canvas.addEventListener("pointerleave", () => { $("cursor").textContent = "layout"; });

// ------------------------------------------------------------------ layouts from the server

async function newStreet() {
  const m = S.model;
  S.layoutSeed += 1;
  const j = await api(`/api/layout?model=${encodeURIComponent(m.name)}&seed=${S.layoutSeed}`);
  replaceLayout(idsFromJSON(j), j.width, j.height);
  S.stem = `street-${S.layoutSeed}`;
  setStatus(`procedural street layout, seed ${S.layoutSeed}`);
}

function replaceLayout(ids, W, H) {
  const before = S.buf && S.W === W && S.H === H ? S.buf : null;
  setBuffer(ids, W, H);
  if (before) { S.undo.push(before); S.redo = []; historyButtons(); }
  showError("");
}

async function upload(file) {
  const fd = new FormData();
  fd.append("label", file, file.name);
  fd.append("model", S.model.name);
  try {
    const j = await api("/api/decode", { method: "POST", body: fd });
    replaceLayout(idsFromJSON(j), j.width, j.height);
    S.stem = file.name.replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9_-]+/g, "_") || "layout";
    setStatus(`${file.name}: ${j.source_width}×${j.source_height}, shown at ${j.width}×${j.height}`);
  } catch (e) {
    showError(e.message);
  }
}

// ------------------------------------------------------------------ synthesis

async function layoutPNG(buf) { // grey ids in the label space's own file encoding
  const pal = S.palette;
  const table = pal.classes.map((c) => c.id);
  table[pal.void] = pal.void_id === null ? -1 : pal.void_id;
  const raw = new Uint32Array(buf.length);
  let max = 0;
  for (let i = 0; i < buf.length; i++) {
    const v = table[buf[i]];
    if (v < 0) throw new Error(`${pal.label_space} has no file id for void: paint over the black areas`);
    raw[i] = v;
    if (v > max) max = v;
  }
  return encodeGreyPNG(raw, S.W, S.H, max > 255 ? 16 : 8);
}

function changed() {
  if (!$("live").checked || !S.buf) return;
  const now = performance.now();
  if (!S.firstChange) S.firstChange = now;
  clearTimeout(S.timer);
  S.timer = setTimeout(synthesize, Math.max(0, Math.min(DEBOUNCE_MS, S.firstChange + MAX_WAIT_MS - now)));
}

function intField(id, lo, hi) {
  const v = Math.round(Number($(id).value));
  const ok = Number.isFinite(v) ? Math.max(lo, Math.min(hi, v)) : lo;
  $(id).value = ok;
  return ok;
}

async function synthesize() {
  clearTimeout(S.timer);
  clearTimeout(S.retry);
  S.firstChange = 0;
  const seq = ++S.seq;
  if (S.inflight) S.inflight.abort(); // a newer request supersedes an older one
  const ctl = new AbortController();
  S.inflight = ctl;
  const m = S.model;
  const settings = { model: m.name, k: intField("k", 1, m.k), seed: intField("seed", 0, 2 ** 31 - 1) };
  const layout = S.buf.slice();
  const t0 = performance.now();
  setStatus("synthesizing…");
  try {
    const fd = new FormData();
    fd.append("label", await layoutPNG(layout), "layout.png");
    for (const [key, v] of Object.entries(settings)) fd.append(key, String(v));
    const j = await api("/api/synthesize", { method: "POST", body: fd, signal: ctl.signal });
    if (seq !== S.seq) return; // superseded while the answer was on its way
    S.result = { ...j, layout, W: S.W, H: S.H, palette: S.palette, modelInfo: m, stem: S.stem, seq };
    showResult(Math.min(S.selected, j.images.length - 1));
    showError("");
    setStatus(`${j.images.length} image(s) in ${Math.round(performance.now() - t0)} ms`);
  } catch (e) {
    if (e.name === "AbortError" || seq !== S.seq) return;
    if (e.status === 429) {
      setStatus(`server busy, retrying in ${e.retryAfter} s`);
      S.retry = setTimeout(() => { if (seq === S.seq) synthesize(); }, e.retryAfter * 1000);
      return;
    }
    setStatus("");
    showError(e.message);
  } finally {
    if (S.inflight === ctl) S.inflight = null;
  }
}

function showResult(i) {
  const r = S.result;
  S.selected = Math.max(0, i);
  const photo = $("photo");
  photo.src = r.images[S.selected];
  photo.hidden = false;
  photo.dataset.seq = r.seq;
  $("nophoto").hidden = true;
  $("caption").textContent = `${r.model}, variant ${S.selected + 1} of ${r.images.length}, ${r.width}×${r.height}`;
  const g = $("gallery");
  g.replaceChildren();
  r.images.forEach((src, n) => {
    const im = document.createElement("img");
    im.src = src;
    im.alt = `variant ${n + 1}`;
    im.className = n === S.selected ? "on" : "";
    im.addEventListener("click", () => showResult(n));
    g.append(im);
  });
  for (const id of ["dl-photo", "dl-layout", "dl-settings"]) $(id).classList.remove("disabled");
}

// ------------------------------------------------------------------ downloads

function names(r) { // as `semsynth synthesize` names its outputs
  const k = r.images.length;
  const outs = k === 1 ? [`${r.stem}.png`] : r.images.map((_, i) => `${r.stem}_k${i}.png`);
  return { layout: `${r.stem}_layout.png`, outs, settings: `${r.stem}.json` };
}

function quote(s) { return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`; }

function settingsJSON(r) {
  const m = r.modelInfo;
  const n = names(r);
  let cmd = `semsynth synthesize ${quote(m.source)} ${quote(n.layout)} -o out/ --k ${r.images.length}`;
  if (m.bank) cmd += ` --bank ${quote(m.bank)}`;
  const outputs = r.images.length === 1 ? [`out/${r.stem}_layout.png`]
    : r.images.map((_, i) => `out/${r.stem}_layout_k${i}.png`);
  return {
    model: r.model, source: m.source, kind: m.kind, bank: m.bank, label_space: m.label_space,
    k: r.images.length, seed: r.seed, precision: m.precision, width: r.width, height: r.height,
    layout: n.layout, command: cmd, outputs,
    note: m.kind === "crn" ? "CRN is deterministic: the command writes these images again (seed unused)"
      : "SIMS draws its canvases and variants with the seed; the command reproduces seed 0",
  };
}

function save(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

$("dl-photo").addEventListener("click", async (e) => {
  e.preventDefault();
  if (!S.result) return;
  const b64 = S.result.images[S.selected].split(",", 2)[1]; // fetch() of a data: URL is not 'self'
  save(new Blob([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], { type: "image/png" }),
    names(S.result).outs[S.selected]);
});
$("dl-layout").addEventListener("click", async (e) => {
  e.preventDefault();
  if (!S.result) return;
  save(await layoutPNG(S.result.layout), names(S.result).layout);
});
$("dl-settings").addEventListener("click", (e) => {
  e.preventDefault();
  if (!S.result) return;
  save(new Blob([JSON.stringify(settingsJSON(S.result), null, 1)], { type: "application/json" }),
    names(S.result).settings);
});

// ------------------------------------------------------------------ controls

for (const b of $("tools").querySelectorAll("button")) b.addEventListener("click", () => setTool(b.dataset.tool));
$("size").addEventListener("input", () => setSize(Number($("size").value)));
$("undo").addEventListener("click", undo);
$("redo").addEventListener("click", redo);
$("clear").addEventListener("click", () => {
  const before = S.buf.slice();
  S.buf.fill(S.palette.void);
  render();
  commit(before);
});
$("procedural").addEventListener("click", () => newStreet().catch((e) => showError(e.message)));
$("upload").addEventListener("change", async () => {
  const f = $("upload").files[0];
  $("upload").value = ""; // choosing the same file again fires `change` again
  if (f) await upload(f);
});
$("filter").addEventListener("input", filterPalette);
$("filter").addEventListener("keydown", (e) => { // Enter picks the first class shown, Escape leaves
  if (e.key === "Enter") {
    const b = $("palette").querySelector("li:not([hidden]) button");
    if (b) b.click();
  }
  if (e.key === "Enter" || e.key === "Escape") $("filter").blur();
});
$("synth").addEventListener("click", synthesize);
for (const id of ["k", "seed"]) $(id).addEventListener("change", changed);
$("live").addEventListener("change", changed);

document.addEventListener("keydown", (e) => {
  // text fields keep their own keys (Ctrl+Z undoes typing there)
  if (e.target.closest('textarea, select, input:not([type="range"]):not([type="checkbox"])')) return;
  const mod = e.ctrlKey || e.metaKey;
  const key = e.key.toLowerCase();
  if (mod && key === "z") { e.preventDefault(); if (e.shiftKey) redo(); else undo(); return; }
  if (mod && key === "y") { e.preventDefault(); redo(); return; }
  if (mod || e.altKey) return;
  const tools = { b: "brush", e: "eraser", l: "line", r: "rect", g: "fill", i: "picker" };
  if (tools[key]) setTool(tools[key]);
  else if (key === "[") setSize(S.size - 1);
  else if (key === "]") setSize(S.size + 1);
  else if (key === "enter" && !e.target.closest("button")) synthesize(); // a button's Enter clicks it
});

// For tests and the console: read-only views of the layout and the shown result.
window.semsynth = {
  layout: () => ({ width: S.W, height: S.H, void: S.palette.void, ids: Array.from(S.buf) }),
  requests: () => S.seq,
  result: () => (S.result ? { seq: S.result.seq, model: S.result.model, images: S.result.images.slice() } : null),
  classIndex: (name) => S.palette.classes.findIndex((c) => c.name === name),
};

setSize(8);
setTool("brush");
init().then(() => { document.body.dataset.ready = "1"; }).catch((e) => showError(`cannot start: ${e.message}`));
