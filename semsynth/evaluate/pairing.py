"""Pairing files: a layout ``<stem>.*`` with synthesized images ``<stem>.*`` / ``<stem>_k<i>.*`` and
a real photo ``<stem>.*``; Cityscapes suffixes are ignored and sub-folders searched."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..data import _scan, cityscapes_frame, list_label_files
from .common import EvaluationError

_VARIANT = re.compile(r"^(?P<stem>.+)_k(?P<k>\d+)$")


def _key(path: Path) -> str:
    """Pairing key: the file name without extension and without Cityscapes name suffixes; only
    the name counts, so layouts in city/ sub-folders pair with flat image folders."""
    return cityscapes_frame(path.stem)


@dataclass
class Group:
    """One layout and the images evaluated against it."""

    stem: str
    label: Path
    images: list[Path] = field(default_factory=list)  # synthesized variants, by k
    real: Path | None = None


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: no such folder")
    return _scan(folder)


def _examples(items: Sequence[str], n: int = 5) -> str:
    s = ", ".join(items[:n])
    return s + (f", … ({len(items) - n} more)" if len(items) > n else "")


def pair_files(label_dir, images_dir=None, real_dir=None) -> tuple[list[Group], dict]:
    """Match layouts with synthesized images (``<stem>.*`` or ``<stem>_k<i>.*``) and real photos
    (``<stem>.*``). Returns the groups that have images (sorted by stem) and notes (counts of
    layouts without images, real photos without layouts). Raises EvaluationError for images
    without a layout, duplicate names, or when nothing pairs."""
    label_dir = Path(label_dir)
    if not label_dir.exists():
        raise EvaluationError(f"{label_dir}: label folder not found")
    labels: dict[str, Path] = {}
    for f in list_label_files(label_dir):
        k = _key(f)
        if k in labels:
            raise EvaluationError(f"{label_dir}: layouts {labels[k]} and {f} have the same name {k!r}")
        labels[k] = f
    groups = {k: Group(k, p) for k, p in labels.items()}
    notes: dict = {"layouts_found": len(labels)}

    if images_dir is not None:
        images_dir = Path(images_dir)
        variants: dict[str, dict[int, Path]] = {}
        orphans, grids = [], 0
        for f in _image_files(images_dir):
            k, idx = _key(f), 0
            if k not in labels:
                m = _VARIANT.match(f.stem)
                if m and cityscapes_frame(m["stem"]) in labels:
                    k, idx = cityscapes_frame(m["stem"]), int(m["k"])
                elif f.stem.endswith("_grid") and cityscapes_frame(f.stem[:-5]) in labels:
                    grids += 1  # `semsynth synthesize --grid` previews: not evaluated
                    continue
                else:
                    orphans.append(f.relative_to(images_dir).as_posix())
                    continue
            if idx in variants.setdefault(k, {}):
                raise EvaluationError(
                    f"{images_dir}: {variants[k][idx].name} and {f.name} are both variant {idx} of layout {k!r}"
                )
            variants[k][idx] = f
        if orphans:
            raise EvaluationError(
                f"{len(orphans)} image(s) in {images_dir} have no layout in {label_dir}: "
                f"{_examples(orphans)}. Images must be named after their layout: <stem>.png or "
                f"<stem>_k<i>.png (layouts there look like {_examples(sorted(labels)[:3], 3)})."
            )
        for k, v in variants.items():
            groups[k].images = [v[i] for i in sorted(v)]
        if grids:
            notes["grid_previews_ignored"] = grids
        if not variants:
            raise EvaluationError(f"{images_dir}: no images found")

    if real_dir is not None:
        real_dir = Path(real_dir)
        found, unpaired = 0, []
        for f in _image_files(real_dir):
            k = _key(f)
            if k in groups:
                if groups[k].real is not None:
                    raise EvaluationError(
                        f"{real_dir}: {groups[k].real.name} and {f.name} are both photos of layout {k!r}"
                    )
                groups[k].real = f
                found += 1
            else:
                unpaired.append(f.name)
        if not found:
            raise EvaluationError(
                f"no real photo in {real_dir} matches a layout in {label_dir} by "
                f"name (photos: {_examples(unpaired, 3)}; layouts: "
                f"{_examples(sorted(labels)[:3], 3)})"
            )
        notes["real_without_layout"] = len(unpaired)

    if images_dir is not None:
        out = [g for g in groups.values() if g.images]
        notes["layouts_without_images"] = len(groups) - len(out)
        if real_dir is not None:
            notes["real_ignored_no_synthesized"] = sum(1 for g in groups.values() if g.real and not g.images)
            notes["layouts_without_real"] = sum(1 for g in out if g.real is None)
    else:
        out = [g for g in groups.values() if g.real]
        notes["layouts_without_images"] = len(groups) - len(out)
    return sorted(out, key=lambda g: g.stem), notes
