"""A synthetic paired dataset for the tests: procedural street layouts (`semsynth.layouts`) and
photos painted from them, written in the folder layouts `open_dataset` detects.

The photos are consistent with their layouts the way real ones are: every class has its own
colour (darkened palette colour) and its own texture (oriented stripes of a class-specific
frequency), every image its own tint and texture phase, so a segment's pixels identify its class
and its source image. Nothing is pure black (a bank's RGB support is "any channel > 0")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from semsynth.labels import get_space
from semsynth.layouts import street_layout

SPACE = get_space("cityscapes")
_LABEL_IDS = SPACE.file_ids("labelId")  # class index (void last) -> Cityscapes labelId


def street_photo(ids: np.ndarray, seed: int) -> np.ndarray:
    """(H, W, 3) uint8 photo of the class-index layout `ids`: per-class colour and texture."""
    rng = np.random.default_rng(10_000 + seed)
    H, W = ids.shape
    n = SPACE.num_classes + 1
    colours = np.vstack([SPACE.colors, [[60, 60, 60]]]).astype(np.float64) * 0.75 + 20
    cls = np.arange(n)
    fx, fy = 0.15 + 0.11 * (cls % 5), 0.1 + 0.13 * (cls % 3)  # stripe frequency per class (1/px)
    amp = 12 + 3 * (cls % 4)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64) * (512.0 / W)  # the same street at any size
    phase = rng.uniform(0, 2 * np.pi, 2)
    tex = amp[ids] * np.sin(xx * fx[ids] + yy * fy[ids] + phase[0])
    tint = rng.uniform(-20, 20, 3)
    rgb = colours[ids] + tint + tex[..., None] * np.array([1.0, 0.8, 0.6]) + rng.normal(0, 3, (H, W, 3))
    return np.clip(rgb, 1, 255).astype(np.uint8)


def street(seed: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(class indices, photo) of procedural street `seed` at `size` (H, W)."""
    ids = street_layout(seed, size)
    return ids, street_photo(ids, seed)


def _save(path: Path, arr: np.ndarray, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)


def write_cityscapes(
    root: Path, n_train: int = 8, n_val: int = 15, size=(512, 1024), val_size=(256, 512), seed: int = 0
) -> Path:
    """The shape of the Cityscapes sample in ../shared: `n_train` pairs at `size`
    (`leftImg8bit/train/synth/*_leftImg8bit.png` + `gtFine/train/synth/*_gtFine_labelIds.png`)
    and `n_val` validation label maps without photos at `val_size` (queries need no more)."""
    root = Path(root)
    for split, n, first, hw in (("train", n_train, seed, size), ("val", n_val, seed + 1000, val_size)):
        for i in range(n):
            ids, rgb = street(first + i, hw)
            stem = f"synth_{first + i:06d}_000019"
            _save(root / "gtFine" / split / "synth" / f"{stem}_gtFine_labelIds.png", _LABEL_IDS[ids].astype(np.uint8))
            if split == "train":
                _save(root / "leftImg8bit" / split / "synth" / f"{stem}_leftImg8bit.png", rgb)
    return root


def write_paired(root: Path, n: int = 4, size=(128, 256), seed: int = 100) -> Path:
    """`images/<stem>.jpg` + `labels/<stem>.png` (grey Cityscapes labelIds), as the
    cityscapes_sequences sample in ../shared."""
    root = Path(root)
    for i in range(n):
        ids, rgb = street(seed + i, size)
        stem = f"street_{seed + i:04d}"
        _save(root / "images" / f"{stem}.jpg", rgb, quality=95)
        _save(root / "labels" / f"{stem}.png", _LABEL_IDS[ids].astype(np.uint8))
    return root


def write_labelids(path: Path, seed: int = 300, size=(64, 128)) -> Path:
    """A grey Cityscapes labelIds map (name it `*_gtFine_labelIds.png`) of procedural street `seed`."""
    _save(Path(path), _LABEL_IDS[street_layout(seed, size)].astype(np.uint8))
    return Path(path)


def write_paletted_labelids(path: Path, seed: int = 200, size=(64, 128)) -> Path:
    """A paletted ("P") PNG whose palette indices are Cityscapes labelIds and whose palette colours
    are the Cityscapes colours: the format of the official CRN repository's GTA label map."""
    ids = street_layout(seed, size)
    lid = _LABEL_IDS[ids].astype(np.uint8)
    pal = np.zeros((256, 3), np.uint8)
    for c in range(SPACE.num_classes):
        pal[_LABEL_IDS[c]] = SPACE.colors[c]
    im = Image.fromarray(lid)  # mode L; a palette makes it P, indices unchanged
    im.putpalette(pal.reshape(-1).tolist())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path
