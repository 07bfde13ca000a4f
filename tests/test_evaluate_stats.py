"""The statistics behind the evaluation report: bootstrap intervals over layouts, paired
comparisons, and FD/KID at matched sample sizes with the real split-half floor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semsynth.evaluate import (
    FeatureNet,
    LayoutCounts,
    bootstrap_intervals,
    confusion_matrix,
    matched_distances,
    paired_bootstrap,
    segmentation_scores,
)
from semsynth.evaluate.consistency import confusion_counts, scores_from_counts
from semsynth.evaluate.distribution import _splits

NAMES = ("a", "b", "c", "d")


def _layouts(n, quality, seed):
    """n layouts of 4 classes; a model that gets each pixel right with probability `quality`
    (varying from layout to layout), its errors spread over the other classes."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        gt = rng.integers(50, 400, size=4) * (rng.random(4) > 0.2)
        q = np.clip(quality + rng.normal(0, 0.15), 0.05, 0.99)
        tp = rng.binomial(gt, q)
        wrong = gt - tp
        pred = tp + np.roll(wrong, 1)
        out[f"s{i:03d}"] = (tp, gt, pred)
    return LayoutCounts.from_dict(out, 4)


def _width(iv):
    return iv[1] - iv[0]


def test_scores_from_counts_match_confusion_scores():
    rng = np.random.default_rng(0)
    gt, pr = torch.from_numpy(rng.integers(0, 5, 500)), torch.from_numpy(rng.integers(0, 5, 500))
    conf = confusion_matrix(pr, gt, 4).numpy()
    s = segmentation_scores(conf, NAMES)
    t = scores_from_counts(*confusion_counts(conf, 4))
    for k in ("miou", "miou_union", "pixel_accuracy", "mean_class_accuracy"):
        assert s[k] == pytest.approx(float(t[k]))


def test_intervals_contain_the_estimate_and_shrink_with_more_layouts():
    few, many = _layouts(10, 0.6, 0), _layouts(200, 0.6, 0)
    a, b = bootstrap_intervals(few, NAMES), bootstrap_intervals(many, NAMES)
    for key in ("miou", "pixel_accuracy", "mean_class_accuracy"):
        est = float(few.scores()[key])
        assert a[key][0] <= est <= a[key][1]
        assert _width(b[key]) < 0.6 * _width(a[key])  # ~ 1/sqrt(20) of it in theory
    assert _width(b["per_class_iou"]["a"]) < _width(a["per_class_iou"]["a"])
    assert bootstrap_intervals(few, NAMES) == a  # fixed seed: reproducible
    assert bootstrap_intervals(few, NAMES, seed=1) != a
    assert bootstrap_intervals(_layouts(1, 0.6, 0), NAMES)["miou"] is None


def test_paired_comparison():
    m = _layouts(40, 0.6, 1)
    same = paired_bootstrap(m, m, NAMES)
    assert same["miou"]["diff"] == 0 and same["miou"]["interval"] == [0.0, 0.0]
    assert same["miou"]["ratio"] == 1.0 and same["layouts"] == 40
    # the same model measured twice (independent pixel errors) -> an interval around 0
    again = paired_bootstrap(_layouts(40, 0.6, 2), _layouts(40, 0.6, 3), NAMES)
    lo, hi = again["miou"]["interval"]
    assert lo < 0 < hi
    better = paired_bootstrap(_layouts(40, 0.75, 4), m, NAMES)
    assert better["miou"]["interval"][0] > 0 and better["per_class_iou"]["a"]["diff"] > 0
    # only the layouts both have are compared
    part = paired_bootstrap(m.subset(m.stems[:10]), m, NAMES)
    assert part["layouts"] == 10


def test_splits_are_distinct_and_disjoint():
    rng = np.random.default_rng(0)
    sp, total = _splits(8, 4, 50, rng)
    assert total == 70 and len(sp) == 50
    assert len({(tuple(a), tuple(b)) for a, b in sp}) == 50
    assert all(not set(a) & set(b) and len(a) == len(b) == 4 for a, b in sp)
    allsp, total = _splits(4, 2, 50, rng)
    assert total == len(allsp) == 6  # all of them when there are fewer


def _net(dims):
    return FeatureNet("test", "test features", False, dims, None)


def _features(n_layouts, k, shift, dims=8, seed=0):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(n_layouts, dims))
    fake = rng.normal(shift, 1.0, size=(n_layouts * k, dims))
    stems = [f"s{i}" for i in range(n_layouts)]
    return {"m": (fake, [s for s in stems for _ in range(k)])}, (real, stems)


def test_matched_floor_and_kid_spread():
    models, real = _features(8, 3, 1.5)
    d = matched_distances(_net(8), models, real, draws=50, seed=0)
    m = d["models"]["m"]
    assert d["n_per_set"] == 4 and m["n"] == [4, 4] and d["real_split_half"]["n"] == [4, 4]
    assert d["draws"] == 50 and d["distinct_splits"] == 70 and d["kid_subset_size"] == 4
    assert d["real_split_half"]["fd"] < m["fd"] and m["fd_excess"]["mean"] > 0
    assert d["real_split_half"]["kid"]["std"] > 0 and m["kid"]["std"] > 0  # subsets that differ
    assert d["real_split_half"]["fd_std"] > 0
    assert not d["fd_reliable"] and "below the 8 feature dimensions" in d["note"]
    assert m["n_unmatched"] == [24, 8]
    # the same distribution as the photos -> KID around 0, at the floor
    same = matched_distances(_net(8), *_features(40, 1, 0.0, seed=1), draws=50)
    k = same["models"]["m"]["kid"]
    assert abs(k["mean"]) < 3 * k["std"] / np.sqrt(50) + abs(same["real_split_half"]["kid"]["mean"]) + 0.05
    big = matched_distances(_net(4), *_features(40, 1, 1.0), draws=10, kid_subset_size=8)
    assert big["fd_reliable"] and big["note"] is None and big["kid_subset_size"] == 8


def test_matched_needs_four_layouts():
    d = matched_distances(_net(8), *_features(3, 2, 1.0))
    assert d["real_split_half"] is None and d["models"] == {} and "need 4" in d["note"]
