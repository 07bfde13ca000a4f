"""The fidelity cost of bf16: PSNR of bf16 vs fp32 outputs of the bundled models on real layouts,
and `evaluate`'s segmentation scores under both precisions. With --winograd instead: PSNR of the
fp32 outputs with Winograd convolutions (the default) against direct ones (`direct_convolutions`).

    python scripts/precision_fidelity.py --bank /tmp/bank --layouts 5 --eval-layouts 10 -o /tmp/prec
    python scripts/precision_fidelity.py --winograd --bank /tmp/bank --layouts 5 -o /tmp/wino

--bank: a SIMS bank for sims-cityscapes (`semsynth sims build-bank --data ../shared/data/cityscapes
--size 128 256 --rgb-scale 1 --out /tmp/bank`); without it the SIMS model is left out. Layouts:
Cityscapes val (gtFine, frankfurt) for the Cityscapes models, CamVid val for `camvid`. The
evaluation synthesizes the first --eval-layouts Cityscapes val layouts with `default` in each
precision and scores them with ESPNet in each precision (segmentation only: these layouts have
no photos). Prints Markdown tables and writes OUT/precision.json.

bf16 runs as the pipelines run it (`semsynth.precision.bf16_mode`: torch.autocast, or fp32
arithmetic on bf16-rounded operands where the CPU has no bf16 kernels); --autocast forces
torch.autocast everywhere, to compare the two (slow on such a CPU: keep the sets small).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from semsynth import precision
from semsynth.checkpoint import BUNDLED, read_metadata
from semsynth.data import list_label_files, resize_label
from semsynth.evaluate import evaluate
from semsynth.models.layers import direct_convolutions
from semsynth.pipelines import SIMSPipeline, load_pipeline, pipeline_class
from semsynth.utils import shared_dir

LAYOUTS = {"cityscapes": "data/cityscapes/gtFine/val/frankfurt", "camvid": "data/camvid/valannot"}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def layout_files(space: str, n: int) -> list[Path]:
    files = list_label_files([shared_dir() / LAYOUTS[space]])
    if space == "cityscapes":
        files = [f for f in files if f.name.endswith("_labelIds.png")]
    return files[:n]


# variant -> (precision, context): the reference first
PRECISIONS = {"fp32": ("fp32", contextlib.nullcontext), "bf16": ("bf16", contextlib.nullcontext)}
CONVOLUTIONS = {"direct": ("fp32", direct_convolutions), "winograd": ("fp32", contextlib.nullcontext)}


def fidelity(name: str, n: int, bank, variants=PRECISIONS) -> dict | None:
    if not (BUNDLED[name] / "model.safetensors").is_file():
        print(f"{name}: not installed, skipped", file=sys.stderr)
        return None
    sims = pipeline_class(read_metadata(name)["task"]) is SIMSPipeline
    if sims and bank is None:
        print(f"{name}: no --bank, skipped", file=sys.stderr)
        return None
    opts = {"bank": bank} if sims else {}
    pipes = {p: load_pipeline(name, device="cpu", precision=p, **opts) for p, _ in variants.values()}
    ref, other = variants
    first = next(iter(pipes.values()))
    space = first.space
    files = layout_files(space.name, n)
    k = 2 if sims else first.k
    out, secs = {}, {}
    for v, (p, ctx) in variants.items():
        pipe = pipes[p]
        ids = [resize_label(space.read(f), tuple(pipe.size)) for f in files]
        t = time.perf_counter()
        with ctx():
            out[v] = pipe(ids, k=k, batch_size=1)
        secs[v] = round((time.perf_counter() - t) / len(files), 2)
    vals = [psnr(a, b) for A, B in zip(out[ref], out[other]) for a, b in zip(A, B)]
    diff = max(int(np.abs(A.astype(int) - B.astype(int)).max()) for A, B in zip(out[ref], out[other]))
    return {
        "model": name,
        "layouts": len(files),
        "images": len(vals),
        "size": list(first.size),
        "psnr_mean": round(float(np.mean(vals)), 2),
        "psnr_min": round(float(np.min(vals)), 2),
        "max_abs_diff": diff,
        "seconds_per_layout": secs,
    }


def scores(n: int, out: Path) -> list[dict]:
    """default synthesized and judged in each precision, on the first n Cityscapes val layouts."""
    files = layout_files("cityscapes", n)
    labels = out / "eval_labels"
    labels.mkdir(parents=True, exist_ok=True)
    for f in files:
        (labels / f.name).unlink(missing_ok=True)
        (labels / f.name).symlink_to(f.resolve())
    rows = []
    for synth in ("fp32", "bf16"):
        images = out / f"eval_{synth}"
        load_pipeline("default", device="cpu", precision=synth).synthesize_files(
            [labels], images, k=1, overwrite=True, progress=False
        )
        for judge in ("fp32", "bf16"):
            t = time.perf_counter()
            rep = evaluate(images, labels, precision=judge, device="cpu", bootstrap=200, thumbnails=0)
            s = rep.data["segmentation"][next(iter(rep.data["segmentation"]))]
            ci = s.get("intervals", {}).get("miou")
            rows.append(
                {
                    "synthesis": synth,
                    "segmenter": judge,
                    "layouts": s["layouts"],
                    "miou": round(s["miou"], 4),
                    "miou_interval": ci,
                    "pixel_accuracy": round(s["pixel_accuracy"], 4),
                    "seconds": round(time.perf_counter() - t, 1),
                }
            )
    # bf16 end to end against fp32 end to end, paired on the same layouts (the shared
    # layout-to-layout variation cancels): the mIoU difference and its bootstrap interval
    rep = evaluate(
        {"fp32": out / "eval_fp32", "bf16": out / "eval_bf16"},
        labels,
        precision="fp32",
        device="cpu",
        bootstrap=1000,
        thumbnails=0,
    )
    c = rep.data["comparisons"][0]["miou"]
    rows.append({"paired": "bf16 images - fp32 images (ESPNet fp32)", "diff": c["diff"], "interval": c["interval"]})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bank", help="SIMS memory bank for sims-cityscapes")
    ap.add_argument("--layouts", type=int, default=5, help="layouts per model for the PSNR")
    ap.add_argument("--eval-layouts", type=int, default=10, help="Cityscapes val layouts for the evaluation (0: none)")
    ap.add_argument("--autocast", action="store_true", help="bf16 by torch.autocast even without bf16 kernels")
    ap.add_argument("--winograd", action="store_true", help="compare Winograd against direct convolutions (fp32)")
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args()
    if a.autocast:
        precision.bf16_kernels = lambda: True  # what `precision.autocast` consults
    print(f"bf16 runs as: {precision.bf16_mode('cpu')}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    variants = CONVOLUTIONS if a.winograd else PRECISIONS
    ref, other = variants
    models = ("default", "camvid", "sims-cityscapes")
    fid = [r for r in (fidelity(m, a.layouts, a.bank, variants) for m in models) if r]
    print(
        f"| model | size | layouts (images) | PSNR {other} vs {ref}, mean (min) | max abs diff | s/layout {ref}, {other} |"
    )
    print("|---|---|---|---|---|---|")
    for r in fid:
        print(
            f"| {r['model']} | {r['size'][0]}x{r['size'][1]} | {r['layouts']} ({r['images']}) | "
            f"{r['psnr_mean']:.1f} dB ({r['psnr_min']:.1f}) | {r['max_abs_diff']} | "
            f"{r['seconds_per_layout'][ref]}, {r['seconds_per_layout'][other]} |"
        )
    ev = scores(a.eval_layouts, out) if a.eval_layouts and not a.winograd else []
    if ev:
        print("\n| synthesis | segmenter | layouts | mIoU [95% interval] | pixel accuracy | s |")
        print("|---|---|---|---|---|---|")
        for r in ev:
            if "paired" in r:
                continue
            ci = r["miou_interval"]
            ci = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if isinstance(ci, (list, tuple)) else ""
            print(
                f"| {r['synthesis']} | {r['segmenter']} | {r['layouts']} | {r['miou']:.3f}{ci} | "
                f"{r['pixel_accuracy']:.3f} | {r['seconds']} |"
            )
        for r in ev:
            if "paired" in r:
                print(
                    f"\npaired mIoU difference, {r['paired']}: {r['diff']:+.4f}, 95% interval "
                    f"[{r['interval'][0]:+.4f}, {r['interval'][1]:+.4f}]"
                )
    (out / "precision.json").write_text(json.dumps({"fidelity": fid, "evaluation": ev}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
