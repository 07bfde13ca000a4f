"""Distribution distances: Fréchet distance and KID between synthesized images and real photos,
at matched sample sizes, next to the real photos' own split-half floor.

FD is biased upwards for small sets, by an amount that depends on the set sizes; comparing a
fake-vs-real FD on 24 vs 8 images with a real-vs-real FD on 4 vs 4 photos compares two biases.
So every distance here is taken between two sets of the same size m, drawn the same way:
the layouts that have a real photo (and images from every model) are split into two disjoint
random halves A and B of m layouts each;

* the **floor** is FD(real photos of A, real photos of B);
* a **model**'s distance is FD(its images of A — one random variant per layout —, real photos of B):
  the floor with A's photos replaced by the model's pictures of the same layouts.

Both are averaged over many such splits (the spread over splits is reported), so a model whose
images were indistinguishable from photos would score the floor. KID is the unbiased MMD² of
the same two sets per split (on random subsets of `kid_subset_size` when m is larger), so its
subsets differ from split to split and its spread is real. When m is below the feature
dimension the covariances are rank-deficient and FD is dominated by its bias; the report then
says so and leads with KID."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .common import EvaluationError, _resize
from .segmenters import ESPNetSegmenter, Segmenter


class FeatureNet:
    """images (B, 3, H, W) in [0, 1] -> (B, D) float64 features for Fréchet distance / KID."""

    def __init__(self, key: str, label: str, standard: bool, dims: int, fn: Callable):
        self.key, self.label, self.standard, self.dims, self._fn = key, label, standard, dims, fn

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return self._fn(images).double().cpu().numpy()

    def describe(self) -> dict:
        return {"key": self.key, "name": self.label, "standard": self.standard, "dims": self.dims}


def _find_fid_weights(path) -> Path | None:
    """The user's FID Inception file: `path`, else the standard file name in semsynth's weight
    folders (never downloaded)."""
    from ..models.inception import FID_WEIGHTS_FILE

    if path:
        return Path(path).expanduser()
    try:
        from ..weights import resolve

        return resolve(FID_WEIGHTS_FILE, download=False)
    except (FileNotFoundError, ValueError, ImportError):
        return None


def build_feature_net(key: str, device, inception_path=None, segmenter: Segmenter | None = None) -> FeatureNet:
    """`inception` (standard FID), `squeezenet1_1` or `espnet` (non-standard)."""
    device = torch.device(device)
    if key == "inception":
        from ..models.inception import load_fid_inception

        net = load_fid_inception(inception_path).to(device)
        return FeatureNet(
            "inception",
            "FID (Inception-v3 pt_inception-2015-12-05, pool3 2048-d)",
            True,
            2048,
            lambda x: net(x.to(device)),
        )
    if key == "squeezenet1_1":
        from ..models.backbones import build_backbone

        sq = build_backbone("squeezenet1_1", layers=["fire9"]).to(device)
        return FeatureNet(
            "squeezenet1_1",
            "FD-SqueezeNet1.1 (fire9 pooled, 512-d; non-standard, not comparable to published FID)",
            False,
            512,
            lambda x: sq(_resize(x.to(device), (299, 299)))["fire9"].mean((2, 3)),
        )
    if key == "espnet":
        seg = segmenter if isinstance(segmenter, ESPNetSegmenter) else ESPNetSegmenter("espnet-cityscapes", device)
        return FeatureNet(
            "espnet",
            f"FD-ESPNet ({seg.name} encoder b3 pooled, 256-d; non-standard, not comparable to published FID)",
            False,
            256,
            lambda x: seg.features(x)["b3"].mean((2, 3)),
        )
    raise EvaluationError(f"unknown feature network {key!r}; choose inception, squeezenet1_1 or espnet")


def _splits(n: int, m: int, draws: int, rng: np.random.Generator) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """Up to `draws` distinct ordered pairs (A, B) of disjoint m-subsets of range(n), and how many
    such pairs exist: all of them when there are no more than `draws`, else random ones."""
    total = math.comb(n, m) * math.comb(n - m, m)
    if total <= draws:
        out = []
        for a in itertools.combinations(range(n), m):
            rest = [i for i in range(n) if i not in a]
            out += [(np.array(a), np.array(b)) for b in itertools.combinations(rest, m)]
        return out, total
    seen: set = set()
    out = []
    while len(out) < draws:
        p = rng.permutation(n)
        key = (tuple(sorted(p[:m].tolist())), tuple(sorted(p[m : 2 * m].tolist())))
        if key not in seen:
            seen.add(key)
            out.append((np.array(key[0]), np.array(key[1])))
    return out, total


def _spread(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std())}


def matched_distances(
    fn: FeatureNet,
    models: dict[str, tuple[np.ndarray, list[str]]],
    real: tuple[np.ndarray, list[str]],
    draws: int = 50,
    seed: int = 0,
    kid_subset_size: int = 1000,
    fid_method: str = "auto",
) -> dict:
    """FD and KID of every model against the real photos at matched sizes, and the real
    split-half floor (see the module docstring for the design).

    models: name -> (features (N, D), the layout stem of each row; k variants = k rows per stem);
    real: (features, stems), one photo per layout. Returns {network description, "layouts",
    "n_per_set", "draws", "distinct_splits", "kid_subset_size", "fd_method", "fd_reliable",
    "note", "real_split_half": {"fd", "fd_std", "kid": {"mean", "std"}, "n"}, "models": {name:
    {"fd", "fd_std", "kid", "n", "fd_excess", "fd_unmatched", "n_unmatched"}}}; FD/KID values are
    means over the splits, "*_std" / "std" their spread over the splits."""
    from ..models.inception import frechet_distance_features, polynomial_mmd

    # "auto": scipy's sqrtm as in the FID code when the covariances have full rank (n >= D),
    # else the exact low-rank formula; non-standard distances use the faster eigen-solution.
    method = fid_method if fn.standard else ("eigh" if fid_method in ("auto", "sqrtm") else fid_method)
    used: set[str] = set()

    def fd(a, b):
        m = method if method != "eigh" or min(len(a), len(b)) >= a.shape[1] else "lowrank"
        v, m = frechet_distance_features(a, b, m)
        used.add(m)
        return v

    rfeat, rstems = real
    real_row = {s: i for i, s in enumerate(rstems)}
    rows: dict[str, dict[str, list[int]]] = {}
    for name, (_, stems) in models.items():
        rows[name] = {}
        for i, s in enumerate(stems):
            rows[name].setdefault(s, []).append(i)
    layouts = sorted(set(real_row).intersection(*(set(r) for r in rows.values())))
    n, m = len(layouts), len(layouts) // 2
    out = {
        **fn.describe(),
        "layouts": n,
        "n_per_set": m,
        "draws": 0,
        "distinct_splits": 0,
        "kid_subset_size": None,
        "fd_method": None,
        "fd_reliable": False,
        "note": None,
        "real_split_half": None,
        "models": {},
    }
    if m < 2:
        out["note"] = (
            f"too few layouts for distances: {n} have a real photo and images from every "
            f"model; matched sets of at least 2 vs 2 need 4"
        )
        return out
    rng = np.random.default_rng(seed)
    splits, total = _splits(n, m, draws, rng)
    s = min(m, kid_subset_size)
    ridx = np.array([real_row[x] for x in layouts])
    floor_fd, floor_kid = [], []
    vals = {name: {"fd": [], "kid": []} for name in models}
    for a, b in splits:
        pick_a, pick_b = (np.sort(rng.choice(m, s, replace=False)) if s < m else np.arange(m) for _ in range(2))
        ra, rb = rfeat[ridx[a]], rfeat[ridx[b]]
        floor_fd.append(fd(ra, rb))
        floor_kid.append(polynomial_mmd(ra[pick_a], rb[pick_b]))
        for name, (feats, _) in models.items():
            fa = feats[[int(rng.choice(rows[name][layouts[i]])) for i in a]]
            vals[name]["fd"].append(fd(fa, rb))
            vals[name]["kid"].append(polynomial_mmd(fa[pick_a], rb[pick_b]))
    floor = _spread(floor_fd)
    out.update(draws=len(splits), distinct_splits=int(total), kid_subset_size=int(s), fd_reliable=m >= fn.dims)
    out["real_split_half"] = {"fd": floor["mean"], "fd_std": floor["std"], "kid": _spread(floor_kid), "n": [m, m]}
    for name, (feats, stems) in models.items():
        f = _spread(vals[name]["fd"])
        entry = {
            "fd": f["mean"],
            "fd_std": f["std"],
            "kid": _spread(vals[name]["kid"]),
            "n": [m, m],
            "fd_excess": _spread(np.subtract(vals[name]["fd"], floor_fd)),
            "fd_unmatched": None,
            "n_unmatched": [int(len(feats)), int(len(rfeat))],
        }
        if len(feats) >= 2 and len(rfeat) >= 2:
            entry["fd_unmatched"] = fd(feats, rfeat)
        out["models"][name] = entry
    out["fd_method"] = "/".join(sorted(used))
    if not out["fd_reliable"]:
        out["note"] = (
            f"{m} images per set is below the {fn.dims} feature dimensions: the covariances have "
            f"rank {m - 1} at most, so FD is dominated by its small-sample bias and means "
            f"something only next to the floor at the same size; KID (unbiased) leads"
        )
    return out
