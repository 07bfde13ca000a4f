"""`semsynth demo`: the bundled model at work, in one command and one web page.

    run_demo()                          # procedural street layouts -> ./semsynth-demo/index.html
    run_demo("out", inputs=["labels/"]) # your own label maps (any format the model's space reads)

The output folder holds::

    index.html                 layout | k outputs per row, model facts, a legend of class colours
    layouts/<name>.png         each layout as a colour map, at the size the model saw it
    outputs/<name>_k<i>.png    the k synthesized photos (`<name>.png` when k = 1)

The page links its images relatively, so the folder can be moved or zipped as a whole. Colour
layouts decode exactly, so `semsynth evaluate DIR/outputs --labels DIR/layouts` scores a demo.
"""

from __future__ import annotations

import html
import platform
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import torch

from . import __version__
from .checkpoint import BUNDLED, read_metadata, resolve_checkpoint
from .data import list_label_files, resize_label, save_image
from .errors import InputError, OutputExistsError
from .labels import layout_reader, save_label
from .layouts import street_layout
from .pipelines import CRNPipeline, SIMSPipeline, output_names, pipeline_class
from .utils import atomic_path, check_writable_dir

__all__ = ["run_demo", "DEFAULT_OUT", "fresh_folder"]

DEFAULT_OUT = "semsynth-demo"


def fresh_folder(base: str | Path) -> Path:
    """`base` if it is missing or empty, else the first missing/empty `base-2`, `base-3`, ..."""
    base = Path(base)
    cand, i = base, 1
    while cand.exists() and (not cand.is_dir() or any(cand.iterdir())):
        i += 1
        cand = base.with_name(f"{base.name}-{i}")
    return cand


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder; choose another output folder with -o")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{out} already exists and is not empty; choose another folder with -o, "
            "or pass --overwrite (overwrite=True) to replace the demo files in it"
        )


def _unique(names: list[str]) -> list[str]:
    """Make names unique by suffixing _2, _3, ... to repeats (two folders holding `a.png`)."""
    seen: dict[str, int] = {}
    taken = set(names)
    out = []
    for n in names:
        if n not in seen:
            seen[n] = 1
            out.append(n)
            continue
        while True:
            seen[n] += 1
            cand = f"{n}_{seen[n]}"
            if cand not in taken:
                break
        taken.add(cand)
        out.append(cand)
    return out


def _layouts(inputs, n: int, seed: int, space, size, read=None) -> list[tuple[str, str, np.ndarray]]:
    """(name, caption, class-index map at `size`) for each layout; everything is decoded before
    anything is written, so a bad label map stops the demo with nothing half done. `read` decodes
    a file (default `space.read`; see `labels.layout_reader`)."""
    if inputs:
        files = list_label_files([inputs] if isinstance(inputs, (str, Path)) else inputs)
        names = _unique([f.stem for f in files])
        read = read or space.read
        return [(nm, f.name, resize_label(read(f), size)) for nm, f in zip(names, files)]
    if n < 1:
        raise InputError(f"the demo needs at least one layout (n={n})")
    if space.name != "cityscapes" or space.num_classes != 19:
        raise InputError(
            f"procedural layouts are Cityscapes street scenes, but this model uses the "
            f"{space.name!r} label space; pass label maps of that space to the demo"
        )
    return [(f"street_{s:04d}", f"procedural street, seed {s}", street_layout(s, size)) for s in range(seed, seed + n)]


def run_demo(
    out: str | Path | None = None,
    inputs=None,
    n: int = 4,
    seed: int = 0,
    k: int | None = None,
    model: str | Path = "default",
    device: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    bank: str | Path | None = None,
    sims_model: str | Path = "sims-cityscapes",
    label_space=None,
    label_encoding: str | None = None,
    precision: str | None = "auto",
) -> Path:
    """Synthesize k photos for each of a few layouts with `model` and write a browsable page.

    out: output folder; None means `./semsynth-demo`, or `semsynth-demo-2`, ... when that one is
    already taken. An explicit folder that exists and is not empty is an error unless `overwrite`
    (then files of the same names are replaced; others are left alone).
    inputs: label-map files/folders (decoded in the model's label space and resized, nearest, to
    its native size); None: `n` procedural street layouts for seeds `seed`, `seed + 1`, ...
    k: variants per layout (default and maximum: the model's k).
    model: a bundled model name ("default") or any checkpoint path (CRN).
    bank: a SIMS memory bank (`semsynth sims build-bank`); with it each row also shows the canvas
    and the output of `sims_model` (bundled name or checkpoint) beside the CRN outputs.
    label_space / label_encoding: how `inputs` are decoded (`labels.layout_reader`).
    precision: auto | fp32 | bf16, for both models (`semsynth.precision`).
    Returns the path of the written index.html."""
    t0 = time.perf_counter()
    out = fresh_folder(DEFAULT_OUT) if out is None else Path(out)
    _check_out(out, overwrite)
    check_writable_dir(out)
    if k is not None and k < 1:
        raise InputError(f"k must be at least 1 (got {k})")

    meta = read_metadata(model)
    if pipeline_class(meta["task"]) is not CRNPipeline:
        raise InputError(
            f"{model}: is a {meta['task']!r} checkpoint; the demo runs CRN models "
            "(SIMS: `semsynth synthesize CHECKPOINT LABELS --bank BANK`, or --bank here)"
        )
    pipe = CRNPipeline.from_pretrained(model, device=device, precision=precision)
    sims = None
    if bank is not None:
        sims = SIMSPipeline.from_pretrained(sims_model, bank=bank, device=device, precision=precision)
    t_load = time.perf_counter() - t0
    space, size = pipe.space, tuple(pipe.size)
    k = min(k or pipe.k, pipe.k)

    rows = _layouts(inputs, n, seed, space, size, layout_reader(space, label_space, label_encoding))
    out.mkdir(parents=True, exist_ok=True)
    written: list[tuple[str, str, str, list[str]]] = []
    it = rows
    if progress:
        from tqdm import tqdm

        it = tqdm(rows, desc="demo", unit="layout", dynamic_ncols=True)
    t1 = time.perf_counter()
    for name, caption, ids in it:
        lay = f"layouts/{name}.png"
        save_label(out / lay, ids, space)
        images = pipe([ids], k=k)[0]
        outs = [f"outputs/{fn}" for fn in output_names(name, k)]
        for arr, rel in zip(images, outs):
            save_image(out / rel, arr)
        if sims is not None:
            res = sims(ids, return_intermediates=True)
            outs += [f"outputs/{name}_sims_canvas.png", f"outputs/{name}_sims.png"]
            save_image(out / outs[-2], res.intermediates[0][0].canvas.rgb)
            save_image(out / outs[-1], res.images[0][0])
        written.append((name, caption, lay, outs))
    t_synth = time.perf_counter() - t1

    present = np.unique(np.concatenate([np.unique(ids) for _, _, ids in rows]))
    facts = {
        "model": f"{model} (bundled)" if str(model) in BUNDLED else str(model),
        "training step": f"{meta.get('step', 0):,}",
        "architecture": (
            f"{meta['model'].get('arch', '?')}, {meta['model'].get('levels', '?')} levels, "
            f"native {size[0]}x{size[1]}, k = {pipe.k}"
        ),
        "label space": f"{space.name} ({space.num_classes} classes + void)",
        "device": (
            f"cpu ({torch.get_num_threads()} threads, {platform.machine()})"
            if pipe.device.type == "cpu"
            else str(pipe.device)
        )
        + f", {pipe.precision}",
        "wall time": (
            f"{time.perf_counter() - t0:.1f} s (model {t_load:.1f} s, {len(rows)} layout(s) "
            f"x {k} image(s) {t_synth:.1f} s)"
        ),
        "semsynth": __version__,
    }
    if sims is not None:
        facts["SIMS model"] = (
            f"{sims_model} (bundled)" if str(sims_model) in BUNDLED else str(sims_model)
        ) + f", bank {bank} ({sims.bank.num_images} images, {len(sims.bank)} segments)"
    columns = [f"output {i + 1}" for i in range(k)] + (["SIMS canvas", "SIMS output"] if sims is not None else [])
    card = resolve_checkpoint(model)
    card = (card if card.is_dir() else card.parent) / "MODEL_CARD.md"
    if card.is_file():
        facts["model card"] = str(card)
    page = _page(written, facts, space, present, size, columns)
    index = out / "index.html"
    with atomic_path(index) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return index


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .4em}
table.facts td{padding:1px 12px 1px 0;font-size:.9em}
table.facts td:first-child{color:#666}
table.grid{border-collapse:collapse;margin-top:1em;width:100%;table-layout:fixed}
table.grid th:first-child{width:140px}
table.grid th{font-weight:600;font-size:.85em;text-align:left;padding:4px}
table.grid td{padding:4px;vertical-align:top}
table.grid td.name{font-size:.8em;color:#444;max-width:12em;word-break:break-all}
table.grid td.layout{border-right:3px solid #ddd;padding-right:10px}
table.grid img{display:block;width:100%;height:auto}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;margin-top:1.2em;font-size:.85em}
.legend span.sw{display:inline-block;width:14px;height:14px;border:1px solid #999;vertical-align:-2px;margin-right:4px}
footer{margin-top:1.5em;font-size:.8em;color:#777}
"""


def _page(rows, facts: dict, space, present, size, columns: list[str]) -> str:
    e = html.escape
    h, w = size
    disp = min(2 * w, max(w, 512))  # at most this wide (small native sizes shown at 2x) ...
    k = len(columns)
    width = (k + 1) * (disp + 8) + 160  # ... and narrower to fit the window (table-layout: fixed)

    def img(rel, alt):
        return (
            f'<a href="{quote(rel)}"><img src="{quote(rel)}" width="{w}" height="{h}" '
            f'alt="{e(alt)}" loading="lazy"></a>'
        )

    head = "<tr><th></th><th>layout</th>" + "".join(f"<th>{e(c)}</th>" for c in columns) + "</tr>"
    body = []
    for name, caption, lay, outs in rows:
        cells = "".join(f"<td>{img(o, f'{name} {c}')}</td>" for c, o in zip(columns, outs))
        body.append(
            f'<tr><td class="name">{e(caption)}</td><td class="layout">{img(lay, name + " layout")}</td>{cells}</tr>'
        )
    legend = []
    for c in (int(x) for x in present):
        rgb = (0, 0, 0) if c == space.void else tuple(int(v) for v in space.colors[c])
        label = "void" if c == space.void else space.names[c]
        legend.append(f'<span><span class="sw" style="background:rgb{rgb}"></span>{e(label)}</span>')
    fact_rows = "".join(f"<tr><td>{e(kk)}</td><td>{e(v)}</td></tr>" for kk, v in facts.items())
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>semsynth demo: {e(facts['model'])}</title><style>{_STYLE}</style></head><body>\n"
        f'<h1>semsynth demo</h1>\n<table class="facts">{fact_rows}</table>\n'
        f'<table class="grid" style="max-width:{width}px">{head}\n' + "\n".join(body) + "</table>\n"
        f'<div class="legend"><b>classes:</b> {"".join(legend)}</div>\n'
        "<footer>Layouts are shown as colour maps at the size the model saw them; each row's outputs "
        "are the model's k variants for that layout (with a bank: then the SIMS canvas of retrieved "
        "photo segments and the SIMS network's photo). Files: <code>layouts/</code>, "
        "<code>outputs/</code>.</footer>\n</body></html>\n"
    )
