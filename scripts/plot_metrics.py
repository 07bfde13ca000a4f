"""Plot the loss curve of one run, or of consecutive stages (run 2 init_from run 1), from their
metrics.jsonl files as a PNG (Pillow only, no plotting library). Later stages continue the step
axis after the previous one, with a grey line at each stage boundary.

    python scripts/plot_metrics.py runs/default -o loss.png [--key loss]
    python scripts/plot_metrics.py runs/default runs/default-gan -o docs/images/default_loss.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw


def load(runs: list[Path], keys: list[str]) -> tuple[list[float], list[float], list[float]]:
    """(steps, values, stage boundaries); one key per run, or one key for all."""
    if len(keys) not in (1, len(runs)):
        raise SystemExit(f"give one --key, or one per run ({len(runs)})")
    keys = keys * len(runs) if len(keys) == 1 else keys
    xs, ys, bounds, offset = [], [], [], 0
    for run, key in zip(runs, keys):
        recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
        recs = [r for r in recs if key in r]
        if not recs:
            raise SystemExit(f"{run}/metrics.jsonl has no '{key}' entries")
        if xs:
            bounds.append(offset)
        xs += [offset + r["step"] for r in recs]
        ys += [r[key] for r in recs]
        offset = xs[-1]
    if len(xs) < 2:
        raise SystemExit("fewer than two points to plot")
    return xs, ys, bounds


def plot(runs: list[Path], out: Path, keys: list[str], size=(640, 320)) -> None:
    xs, ys, bounds = load(runs, keys)
    W, H = size
    left, right, top, bottom = 60, 15, 25, 35
    lo, hi = min(ys), max(ys)
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)

    def px(x, y):
        return (
            left + (x - xs[0]) / (xs[-1] - xs[0]) * (W - left - right),
            top + (hi - y) / (hi - lo or 1) * (H - top - bottom),
        )

    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for i in range(5):  # y grid with values
        y = lo + (hi - lo) * i / 4
        _, yy = px(xs[0], y)
        d.line([left, yy, W - right, yy], fill=(225, 225, 225))
        d.text((5, yy - 6), f"{y:.3g}", fill="black")
    for i in range(5):
        x = xs[0] + (xs[-1] - xs[0]) * i / 4
        xx, _ = px(x, lo)
        d.text((xx - 10, H - bottom + 5), f"{int(x)}", fill="black")
    for b in bounds:
        xx, _ = px(b, lo)
        d.line([xx, top, xx, H - bottom], fill=(150, 150, 150), width=1)
    d.line([px(x, y) for x, y in zip(xs, ys)], fill=(200, 30, 30), width=2)
    title = " + ".join(r.name for r in runs)
    d.text((left, 5), f"{title}: {' / '.join(dict.fromkeys(keys))} (mean per logging interval) vs. step", fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+", help="run folders, in stage order")
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--key", nargs="+", default=["loss"], help="metric to plot (one, or one per run)")
    a = ap.parse_args()
    plot(a.runs, a.out, a.key)
    print(a.out)
