"""Segmentation consistency: confusion matrices, the scores derived from them, and bootstrap
confidence intervals over layouts (one model, or two models paired on the same layouts).

Every score here comes from three per-class pixel counts over the labelled layout pixels: true
positives `tp`, layout pixels `gt` (predicted void included) and predictions `pred` (void
predictions excluded). Summing those counts over a resample of layouts and recomputing the
scores is the bootstrap: the layout is the unit that is resampled, because a layout's pixels are
not independent of each other."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..labels import LabelSpace

SCALAR_SCORES = ("miou", "miou_union", "pixel_accuracy", "mean_class_accuracy")
POLEGROUP_CHOICES = ("pole", "ignore")


def confusion_matrix(pred: torch.Tensor, gt: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C+1)x(C+1) int64 counts, rows = layout class, columns = predicted class (index C = void),
    by one `bincount`."""
    n = num_classes + 1
    idx = gt.reshape(-1).long() * n + pred.reshape(-1).long()
    return torch.bincount(idx, minlength=n * n).reshape(n, n)


def confusion_counts(conf: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tp, gt, pred) per class from a (C+1)x(C+1) confusion matrix: rows whose layout is void are
    dropped; `gt` includes labelled pixels predicted void, `pred` excludes void predictions."""
    c = num_classes
    lab = np.asarray(conf, dtype=np.int64)[:c]
    return np.diag(lab[:, :c]).copy(), lab.sum(1), lab[:, :c].sum(0)


def scores_from_counts(tp, gt, pred) -> dict[str, np.ndarray]:
    """The scores of :func:`segmentation_scores` from per-class counts (..., C); leading axes are
    kept (one row per bootstrap resample). Undefined values are NaN."""
    tp, gt, pred = (np.asarray(a, dtype=np.float64) for a in (tp, gt, pred))
    union = gt + pred - tp
    present = gt > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        recall = np.where(present, tp / gt, np.nan)
        n_present = present.sum(-1)
        total = gt.sum(-1)
        defined = union > 0
        return {
            "iou": iou,
            "pixel_accuracy": np.where(total > 0, tp.sum(-1) / total, np.nan),
            "miou": np.where(n_present > 0, np.where(present, iou, 0).sum(-1) / n_present, np.nan),
            "miou_union": np.where(defined.any(-1), np.where(defined, iou, 0).sum(-1) / defined.sum(-1), np.nan),
            "mean_class_accuracy": np.where(n_present > 0, np.where(present, recall, 0).sum(-1) / n_present, np.nan),
        }


def _opt(v) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def segmentation_scores(conf: np.ndarray, names: Sequence[str]) -> dict:
    """Scores from a (C+1)x(C+1) confusion matrix (last row/column void).

    Pixels whose *layout* is void are ignored; a void *prediction* on a labelled pixel is an error.

    * ``pixel_accuracy``: correct / labelled pixels;
    * ``per_class_iou[c]`` = TP / (TP + FP + FN), None where class c is neither in the layouts nor
      predicted;
    * ``miou``: mean IoU over the classes present in the layouts (the definition behind the
      accuracies quoted for the shared ESPNet weights); ``miou_union``: mean over classes in the
      layouts *or* the predictions (the Cityscapes scripts' nan-mean, which also charges classes
      that were only hallucinated);
    * ``mean_class_accuracy``: mean recall over classes present in the layouts."""
    conf = np.asarray(conf, dtype=np.int64)
    c = len(names)
    tp, gt, pred = confusion_counts(conf, c)
    s = scores_from_counts(tp, gt, pred)
    total = int(gt.sum())
    return {
        **{k: _opt(s[k]) for k in SCALAR_SCORES},
        "per_class_iou": {n: _opt(v) for n, v in zip(names, s["iou"])},
        "classes_present": int((gt > 0).sum()),
        "labelled_pixels": total,
        "predicted_void_fraction": float(conf[:c, c].sum() / total) if total else None,
    }


# ---------------------------------------------------------------------------- per-layout counts


@dataclass
class LayoutCounts:
    """Per-layout (tp, gt, pred) class counts, rows in the order of `stems` (all variants of a
    layout summed into its row)."""

    stems: list[str]
    tp: np.ndarray  # (L, C) int64
    gt: np.ndarray
    pred: np.ndarray

    @classmethod
    def from_dict(
        cls,
        counts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
        num_classes: int,
        stems: Sequence[str] | None = None,
    ) -> LayoutCounts:
        stems = list(counts if stems is None else stems)
        if not stems:
            z = np.zeros((0, num_classes), dtype=np.int64)
            return cls([], z, z.copy(), z.copy())
        tp, gt, pred = (np.stack([counts[s][i] for s in stems]) for i in range(3))
        return cls(stems, tp, gt, pred)

    def subset(self, stems: Sequence[str]) -> LayoutCounts:
        row = {s: i for i, s in enumerate(self.stems)}
        idx = np.array([row[s] for s in stems], dtype=np.int64)
        return LayoutCounts(list(stems), self.tp[idx], self.gt[idx], self.pred[idx])

    def scores(self, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Scores of the summed counts; `weights` (R, L) = how often each layout is drawn in each
        of R resamples."""
        if weights is None:
            return scores_from_counts(self.tp.sum(0), self.gt.sum(0), self.pred.sum(0))
        w = weights.astype(np.float64)
        return scores_from_counts(w @ self.tp, w @ self.gt, w @ self.pred)


def resample_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) multinomial draw counts: each row a bootstrap resample of n layouts."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)


def _interval(values: np.ndarray, level: float) -> list[float] | None:
    v = values[np.isfinite(values)]
    if not len(v):
        return None
    lo, hi = np.percentile(v, [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]


def bootstrap_intervals(
    counts: LayoutCounts, names: Sequence[str], resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict:
    """Percentile bootstrap intervals over layouts: {score: [lo, hi], "per_class_iou": {name:
    [lo, hi] or None}}. Deterministic for a seed; None everywhere for fewer than 2 layouts.
    A class's IoU interval is taken over the resamples where it is defined."""
    if len(counts.stems) < 2:
        return {**{k: None for k in SCALAR_SCORES}, "per_class_iou": {n: None for n in names}}
    s = counts.scores(resample_weights(len(counts.stems), resamples, seed))
    return {
        **{k: _interval(s[k], level) for k in SCALAR_SCORES},
        "per_class_iou": {n: _interval(s["iou"][:, j], level) for j, n in enumerate(names)},
    }


def paired_bootstrap(
    model: LayoutCounts,
    baseline: LayoutCounts,
    names: Sequence[str],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """`model` − `baseline` on the layouts both have, with the same resamples for both, so the
    layout-to-layout variation they share cancels. Returns {"layouts": n, score: {"model",
    "baseline", "diff", "interval", "ratio", "ratio_interval"}, "per_class_iou": {name: {"diff",
    "interval"}}}; an interval that excludes 0 is a difference these layouts support."""
    have = set(baseline.stems)
    stems = [s for s in model.stems if s in have]
    a, b = model.subset(stems), baseline.subset(stems)
    pa, pb = a.scores(), b.scores()
    w = resample_weights(len(stems), resamples, seed) if len(stems) >= 2 else None
    ra, rb = (a.scores(w), b.scores(w)) if w is not None else (None, None)

    def entry(key, j=None):
        va, vb = (pa[key], pb[key]) if j is None else (pa[key][j], pb[key][j])
        out = {"diff": _opt(va - vb), "interval": None}
        if j is None:
            out = {"model": _opt(va), "baseline": _opt(vb), **out, "ratio": None, "ratio_interval": None}
            with np.errstate(invalid="ignore", divide="ignore"):
                if vb > 0:
                    out["ratio"] = _opt(va / vb)
        if ra is not None and out["diff"] is not None:
            da = ra[key] if j is None else ra[key][:, j]
            db = rb[key] if j is None else rb[key][:, j]
            out["interval"] = _interval(da - db, level)
            if j is None and out["ratio"] is not None:
                with np.errstate(invalid="ignore", divide="ignore"):
                    out["ratio_interval"] = _interval(np.where(db > 0, da / db, np.nan), level)
        return out

    return {
        "layouts": len(stems),
        **{k: entry(k) for k in SCALAR_SCORES},
        "per_class_iou": {n: entry("iou", j) for j, n in enumerate(names)},
    }


# ---------------------------------------------------------------------------- label decoding


def evaluation_space(space: LabelSpace, polegroup: str = "pole") -> LabelSpace:
    """The label space the layouts are scored in. Cityscapes `polegroup` (labelId 18, a group of
    poles too close to separate) is read as `pole` by semsynth everywhere, which is also what the
    generators were given; ``polegroup="ignore"`` makes it void for scoring instead, as the
    official Cityscapes evaluation does (its trainId is 255). Only labelId and instanceId maps can
    tell: colour maps give polegroup the pole colour, and trainId maps already mark it 255."""
    if polegroup not in POLEGROUP_CHOICES:
        raise ValueError(f"polegroup must be one of {POLEGROUP_CHOICES}, got {polegroup!r}")
    if polegroup == "pole" or space.name != "cityscapes" or "labelId" not in space.encodings:
        return space
    enc = dict(space.encodings)
    label = enc["labelId"].copy()
    label[18] = space.void
    enc["labelId"] = label
    if "instanceId" in enc:
        inst = enc["instanceId"].copy()
        inst[18] = space.void
        inst[18000:19000] = space.void
        enc["instanceId"] = inst
    return dataclasses.replace(space, encodings=enc)
