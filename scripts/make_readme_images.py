#!/usr/bin/env python
"""Regenerate the README's pictures from the bundled model: docs/images/*.png.

    python scripts/make_readme_images.py            # after replacing semsynth/assets/default

Writes
  docs/images/procedural.png   procedural street layouts (semsynth.layouts): layout | k outputs
  docs/images/cityscapes.png   held-out real Cityscapes label maps (not seen in training, see
                               semsynth/configs/default-cityscapes.yaml): layout | k outputs | the
                               real photo (downscaled) where one exists
  docs/images/sims_cityscapes.png  the same held-out layouts through the bundled SIMS model:
                               layout | canvas | SIMS output | CRN default | real photo; its bank
                               is built here from ../shared without the held-out frames (the
                               command in semsynth/assets/sims-cityscapes/MODEL_CARD.md)
  docs/images/images.json      what was drawn: model step and sha256, inputs, file sizes

The real label maps and photos are read from the shared folder (`SEMSYNTH_SHARED`, default
../shared); without it only procedural.png is made. Each figure is a palette PNG (256 colours,
dithered) so it stays well under 300 KB. Everything is deterministic for a given model file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import semsynth
from semsynth.checkpoint import read_metadata, resolve
from semsynth.data import resize_image, resize_label, save_image
from semsynth.labels import colorize
from semsynth.layouts import street_layout
from semsynth.utils import atomic_path, shared_dir

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)  # the first layouts of `semsynth demo`
# Held out of the default model's training data (data.exclude: seq0005_*, aachen_000005_*) or
# from the validation split (frankfurt, label maps only): (caption, label map, photo or None).
HELD_OUT = (
    (
        "aachen, ground truth",
        "data/cityscapes/gtFine/train/aachen/aachen_000005_000019_gtFine_labelIds.png",
        "data/cityscapes/leftImg8bit/train/aachen/aachen_000005_000019_leftImg8bit.png",
    ),
    (
        "seq0005, pseudo-label",
        "data/cityscapes_sequences/labels/seq0005_aachen_000005_000006.png",
        "data/cityscapes_sequences/images/seq0005_aachen_000005_000006.jpg",
    ),
    (
        "frankfurt val, ground truth",
        "data/cityscapes/gtFine/val/frankfurt/frankfurt_000000_000576_gtFine_labelIds.png",
        None,
    ),
    (
        "frankfurt val, ground truth",
        "data/cityscapes/gtFine/val/frankfurt/frankfurt_000001_055387_gtFine_labelIds.png",
        None,
    ),
)
GAP, HEAD = 4, 22
MAX_BYTES = 300_000


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _tag(tile: np.ndarray, text: str) -> np.ndarray:
    """Write a small caption in the tile's bottom-left corner, on a dark band."""
    im = Image.fromarray(tile).convert("RGBA")
    band = Image.new("RGBA", im.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(band)
    font = _font(11)
    x0, y0, x1, y1 = d.textbbox((0, 0), text, font=font)
    h = y1 - y0 + 6
    d.rectangle((0, im.height - h, x1 - x0 + 8, im.height), fill=(0, 0, 0, 150))
    d.text((4 - x0, im.height - h + 3 - y0), text, font=font, fill=(255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(im, band).convert("RGB"))


def _blank(size, text: str) -> np.ndarray:
    im = Image.new("RGB", (size[1], size[0]), (235, 235, 235))
    d = ImageDraw.Draw(im)
    font = _font(12)
    x0, y0, x1, y1 = d.textbbox((0, 0), text, font=font)
    d.text(((size[1] - (x1 - x0)) / 2 - x0, (size[0] - (y1 - y0)) / 2 - y0), text, font=font, fill=(120, 120, 120))
    return np.asarray(im)


def figure(rows: list[list[np.ndarray]], header: list[str], size) -> Image.Image:
    """A white sheet: a header line, then one row of equally sized tiles per layout."""
    h, w = size
    cols = len(header)
    sheet = Image.new("RGB", (cols * w + (cols - 1) * GAP, HEAD + len(rows) * (h + GAP) - GAP), "white")
    d = ImageDraw.Draw(sheet)
    font = _font(13)
    for c, title in enumerate(header):
        d.text((c * (w + GAP) + 2, 4), title, font=font, fill=(40, 40, 40))
    for r, tiles in enumerate(rows):
        for c, t in enumerate(tiles):
            sheet.paste(Image.fromarray(t), (c * (w + GAP), HEAD + r * (h + GAP)))
    return sheet


def save_small(img: Image.Image, path: Path) -> int:
    """Palette PNG (dithered), fewer colours until it fits MAX_BYTES; returns the size."""
    for colors in (256, 192, 128, 96, 64):
        q = img.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
        save_image(path, q, optimize=True)
        n = path.stat().st_size
        if n <= MAX_BYTES:
            return n
    raise RuntimeError(f"{path}: {n} bytes even with {colors} colours; draw fewer rows")


# The bank of the bundled SIMS model's card: every Cityscapes-domain frame in ../shared except the
# held-out ones, cut at the model's 128x256 with photos at the same size.
SIMS_BANK_DATA = ("data/cityscapes", "data/cityscapes_sequences")
SIMS_BANK_EXCLUDE = ("seq0005_*", "aachen_000005_*")


def sims_bank(shared: Path, folder: Path):
    from semsynth.sims.bank import build_bank_from_paths

    return build_bank_from_paths(
        [shared / d for d in SIMS_BANK_DATA],
        folder,
        size=(128, 256),
        rgb_scale=1,
        exclude=SIMS_BANK_EXCLUDE,
        progress=False,
    )


def sims_figure(crn, present, shared: Path, out: Path, record: dict, args) -> None:
    """layout | canvas | SIMS output | CRN default (output 1) | real photo, for the held-out maps."""
    from semsynth.sims.pipeline import SIMSPipeline

    bank = sims_bank(shared, Path(args.bank))
    sims = SIMSPipeline.from_pretrained(args.sims_model, bank=bank, device=args.device)
    size, space = tuple(sims.size), sims.space
    rows = []
    for caption, lab, photo in present:
        ids = resize_label(space.read(lab), size)
        res = sims.run(ids)
        real = (
            resize_image(np.asarray(Image.open(photo).convert("RGB")), size)
            if photo is not None and photo.is_file()
            else _blank(size, "no photo (label map only)")
        )
        crn_out = crn([resize_label(ids, tuple(crn.size))])[0][0]
        rows.append([_tag(colorize(ids, space), caption), res.canvas.rgb, res.image, resize_image(crn_out, size), real])
    path = out / "sims_cityscapes.png"
    n = save_small(
        figure(rows, ["layout (held out)", "SIMS canvas", "SIMS output", "CRN default", "real photo"], size), path
    )
    model_file = resolve(args.sims_model)
    record["figures"]["sims_cityscapes.png"] = {
        "bytes": n,
        "inputs": [str(lab.relative_to(shared)) for _, lab, _ in present],
        "sims_model": str(args.sims_model),
        "sims_step": read_metadata(model_file)["step"],
        "sims_sha256": hashlib.sha256(model_file.read_bytes()).hexdigest(),
        "bank": f"{bank.num_images} images, {len(bank)} indexed segments",
    }
    print(f"wrote {path} ({n / 1000:.0f} KB)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default", help="bundled model name or checkpoint (default: default)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "images"), help="output folder (default: docs/images)")
    ap.add_argument("--sims-model", default="sims-cityscapes", help="SIMS synthesis model (default: sims-cityscapes)")
    ap.add_argument(
        "--bank",
        default=str(ROOT / "runs" / "bank-sims-cityscapes"),
        help="where the SIMS figure's bank is built (reused when present)",
    )
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    out = Path(args.out)
    pipe = semsynth.CRNPipeline.from_pretrained(args.model, device=args.device)
    size, k, space = tuple(pipe.size), pipe.k, pipe.space
    model_file = resolve(args.model)
    meta = read_metadata(model_file)
    record = {
        "model": str(args.model),
        "step": meta["step"],
        "sha256": hashlib.sha256(model_file.read_bytes()).hexdigest(),
        "size": list(size),
        "k": k,
        "figures": {},
    }
    outputs = [f"output {i + 1}" for i in range(k)]

    # procedural layouts
    rows = []
    for s in SEEDS:
        ids = street_layout(s, size)
        rows.append([_tag(colorize(ids, space), f"procedural, seed {s}"), *pipe([ids])[0]])
    path = out / "procedural.png"
    n = save_small(figure(rows, ["layout", *outputs], size), path)
    record["figures"]["procedural.png"] = {"bytes": n, "inputs": [f"street_layout({s}, {size})" for s in SEEDS]}
    print(f"wrote {path} ({n / 1000:.0f} KB)")

    # held-out real label maps
    shared = shared_dir()
    present = [(c, shared / lab, shared / ph if ph else None) for c, lab, ph in HELD_OUT if (shared / lab).is_file()]
    if not present:
        print(f"skipped cityscapes.png: the shared data is not at {shared} (set SEMSYNTH_SHARED)", file=sys.stderr)
    else:
        rows = []
        for caption, lab, photo in present:
            ids = resize_label(space.read(lab), size)
            real = (
                resize_image(np.asarray(Image.open(photo).convert("RGB")), size)
                if photo is not None and photo.is_file()
                else _blank(size, "no photo (label map only)")
            )
            rows.append([_tag(colorize(ids, space), caption), *pipe([ids])[0], real])
        path = out / "cityscapes.png"
        n = save_small(figure(rows, ["layout (held out)", *outputs, "real photo"], size), path)
        record["figures"]["cityscapes.png"] = {
            "bytes": n,
            "inputs": [str(lab.relative_to(shared)) for _, lab, _ in present],
        }
        print(f"wrote {path} ({n / 1000:.0f} KB)")

        sims_figure(pipe, present, shared, out, record, args)

    with atomic_path(out / "images.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    print(f"model {args.model}: step {meta['step']}, sha256 {record['sha256'][:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
