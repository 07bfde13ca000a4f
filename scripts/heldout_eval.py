#!/usr/bin/env python
"""Score bundled models (or checkpoints) on the held-out Cityscapes-domain frames, the protocol of
the model cards: the 30 layouts of sequence seq0005 (from ../shared, never in training or in the
bank), 3 outputs per layout, ESPNet at 1024x512, real photos at the models' resolution beside them.

    python scripts/heldout_eval.py --out runs/heldout default sims-cityscapes=runs/sims-cityscapes \\
        --bank runs/bank-cs128

Writes OUT/labels, OUT/real (photos resized to 128x256), OUT/<name>/ (synthesized images) and
runs `semsynth evaluate` on each into OUT/report-<name>/, then prints the reports' headline rows.
A model given as NAME=PATH is written to OUT/NAME; SIMS models need --bank.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from semsynth.checkpoint import read_metadata
from semsynth.data import load_image, save_image
from semsynth.pipelines import SIMSPipeline, pipeline_class
from semsynth.utils import shared_dir


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", help="bundled name or NAME=checkpoint")
    ap.add_argument("--out", required=True)
    ap.add_argument("--bank", help="SIMS memory bank (built without the held-out frames)")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--size", type=int, nargs=2, default=(128, 256))
    ap.add_argument("--evaluate", action="store_true", help="also run semsynth evaluate on each")
    a = ap.parse_args()
    out = Path(a.out)
    seq = shared_dir() / "data" / "cityscapes_sequences"
    labels, real = out / "labels", out / "real"
    labels.mkdir(parents=True, exist_ok=True)
    real.mkdir(parents=True, exist_ok=True)
    for lab in sorted((seq / "labels").glob("seq0005_*.png")):
        link = labels / lab.name
        if not link.exists():
            link.symlink_to(lab.resolve())
        photo = real / f"{lab.stem}.png"
        if not photo.exists():
            save_image(photo, load_image(seq / "images" / f"{lab.stem}.jpg", size=tuple(a.size)))
    for spec in a.models:
        name, _, path = spec.partition("=")
        path = path or name
        dest = out / name
        cmd = ["semsynth", "synthesize", path, str(labels), "-o", str(dest), "--k", str(a.k), "--overwrite"]
        if pipeline_class(read_metadata(path)["task"]) is SIMSPipeline:  # SIMS needs the bank
            if not a.bank:
                raise SystemExit(f"{spec}: a SIMS model needs --bank")
            cmd += ["--bank", a.bank]
        print(" ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True)
        if a.evaluate:
            subprocess.run(
                [
                    "semsynth",
                    "evaluate",
                    str(dest),
                    "--labels",
                    str(labels),
                    "--real",
                    str(real),
                    "-o",
                    str(out / f"report-{name}"),
                ],
                check=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
