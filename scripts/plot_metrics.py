"""Plot a run's loss curve from its metrics.jsonl as a PNG (Pillow only, no plotting library).

    python scripts/plot_metrics.py runs/default -o docs/images/default_loss.png [--key loss]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw


def plot(run: Path, out: Path, key: str = "loss", size=(640, 320)) -> None:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    xs = [r["step"] for r in recs if key in r]
    ys = [r[key] for r in recs if key in r]
    if len(xs) < 2:
        raise SystemExit(f"{run}/metrics.jsonl has fewer than two '{key}' entries")
    W, H = size
    left, right, top, bottom = 60, 15, 25, 35
    lo, hi = min(ys), max(ys)
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)

    def px(x, y):
        return (left + (x - xs[0]) / (xs[-1] - xs[0]) * (W - left - right),
                top + (hi - y) / (hi - lo or 1) * (H - top - bottom))

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
    d.line([px(x, y) for x, y in zip(xs, ys)], fill=(200, 30, 30), width=2)
    d.text((left, 5), f"{run.name}: {key} (mean over each logging interval) vs. step", fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--key", default="loss")
    a = ap.parse_args()
    plot(a.run, a.out, a.key)
    print(a.out)
