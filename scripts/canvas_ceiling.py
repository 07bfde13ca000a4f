#!/usr/bin/env python
"""Diagnostics for a SIMS model's held-out score: what the canvas alone gives, and what a perfect
filling of its holes would give.

    python scripts/canvas_ceiling.py runs/heldout/labels --real runs/heldout/real --bank BANK \\
        --model sims-cityscapes -o runs/heldout

Writes OUT/canvas-MODE (the composed canvases: retrieved photo pixels, holes black, elision white) and
OUT/oracle-MODE (the canvas's photo pixels, everything else from the real photo: the synthesis network
at its best, given retrieval), ready for `semsynth evaluate ... --labels LABELS`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from semsynth.data import list_label_files, load_image, save_image
from semsynth.sims.pipeline import SIMSPipeline


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("labels")
    ap.add_argument("--real", required=True)
    ap.add_argument("--bank", required=True)
    ap.add_argument("--model", default="sims-cityscapes")
    ap.add_argument("--mode", default="iou", choices=["iou", "context"], help="retrieval score")
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args()
    pipe = SIMSPipeline.from_pretrained(a.model, bank=a.bank, device="cpu", retrieval_mode=a.mode)
    out = Path(a.out)
    cover = []
    for f in list_label_files([a.labels]):
        cv = pipe.compose_canvas(pipe.retrieve(f))
        real = (load_image(Path(a.real) / f"{f.stem}.png", size=pipe.size).permute(1, 2, 0).numpy() * 255 + 0.5).astype(
            np.uint8
        )
        known = cv.support & ~(cv.rgb == 255).all(-1)
        cover.append(known.mean())
        save_image(out / f"canvas-{a.mode}" / f"{f.stem}.png", cv.rgb)
        save_image(out / f"oracle-{a.mode}" / f"{f.stem}.png", np.where(known[..., None], cv.rgb, real))
    print(f"{len(cover)} canvases; photo pixels cover {100 * np.mean(cover):.1f} % of the canvas on average")


if __name__ == "__main__":
    main()
