"""`evaluate`: one pass over every image folder (segmentation, features, diversity, thumbnails),
then the scores, intervals, paired comparisons and matched distances, gathered in a `Report`."""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..labels import LabelSpace, colorize, get_space
from ..precision import autocast, resolve_precision
from ..utils import pick_device
from .common import EvaluationError, _resize
from .consistency import (
    LayoutCounts,
    bootstrap_intervals,
    confusion_counts,
    confusion_matrix,
    evaluation_space,
    paired_bootstrap,
    segmentation_scores,
)
from .distribution import FeatureNet, _find_fid_weights, build_feature_net, matched_distances
from .diversity import PerceptualDistance, _between_layouts, _pick_chain, _squeezenet_available
from .pairing import Group, pair_files
from .report import Report
from .segmenters import Segmenter, available_segmenters, build_segmenter, default_segmenter

REPORT_VERSION = 2


@dataclass
class _SetResult:
    conf: np.ndarray
    layout_counts: dict = field(default_factory=dict)  # stem -> (tp, gt, pred), variants summed
    per_image_accuracy: dict = field(default_factory=dict)
    features: dict = field(default_factory=dict)  # feature-net key -> (N, D)
    feature_stems: list = field(default_factory=list)  # the layout of each feature row
    diversity: dict = field(default_factory=dict)  # stem -> mean pairwise distance
    thumbs: dict = field(default_factory=dict)  # stem -> {"images": [uint8], "segmentation": uint8}
    count: int = 0
    size_warnings: list = field(default_factory=list)
    kept: dict = field(default_factory=dict)  # stem -> first image at the feature size


def _load(path: Path) -> torch.Tensor:
    from ..data import load_image

    return load_image(path).unsqueeze(0)


def _thumb(arr: np.ndarray, height: int = 128, nearest: bool = False) -> np.ndarray:
    from PIL import Image

    h, w = arr.shape[:2]
    size = (max(1, round(w * height / h)), height)
    mode = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(arr).resize(size, mode))


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    return img.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def _run_set(
    entries: list[tuple[Group, list[Path]]],
    seg: Segmenter,
    space: LabelSpace,
    encoding,
    feature_nets: list[FeatureNet],
    feat_size,
    perceptual: PerceptualDistance | None,
    batch_size: int,
    thumb_stems: set,
    device,
    keep_stems: set = frozenset(),
) -> _SetResult:
    """One pass over an image set: segmentation confusion (in total and per layout), pooled
    features, within-layout diversity, thumbnails. Images are streamed in batches; only small
    results are kept."""
    c = space.num_classes
    res = _SetResult(conf=np.zeros((c + 1, c + 1), dtype=np.int64))
    seg_size = seg.input_size
    buf_img, buf_lab, buf_meta = [], [], []
    feats = {fn.key: [] for fn in feature_nets}

    def flush():
        if not buf_img:
            return
        x = torch.cat(buf_img).to(device)
        y = torch.stack(buf_lab).to(device)
        pred = seg.segment(x)
        for b, (stem, name) in enumerate(buf_meta):
            cm = confusion_matrix(pred[b], y[b], c).cpu().numpy()
            res.conf += cm
            tp, gt, pr = confusion_counts(cm, c)
            if stem in res.layout_counts:
                prev = res.layout_counts[stem]
                tp, gt, pr = tp + prev[0], gt + prev[1], pr + prev[2]
            res.layout_counts[stem] = (tp, gt, pr)
            res.per_image_accuracy[name] = float(np.trace(cm[:c, :c]) / cm[:c].sum()) if cm[:c].sum() else None
            th = res.thumbs.get(stem)
            if th is not None and "segmentation" not in th:
                th["segmentation"] = _thumb(colorize(pred[b], space), nearest=True)
        buf_img.clear()
        buf_lab.clear()
        buf_meta.clear()

    fbuf: list[torch.Tensor] = []

    def flush_feats():
        if fbuf:
            x = torch.cat(fbuf).to(device)
            for fn in feature_nets:
                feats[fn.key].append(fn(x))
            fbuf.clear()

    for group, paths in entries:
        ids = space.read(group.label, encoding)
        lab_full = torch.from_numpy(np.ascontiguousarray(ids))
        loaded = []
        if group.stem in thumb_stems:
            res.thumbs[group.stem] = {"images": []}
        for i, p in enumerate(paths):
            img = _load(p)
            h, w = img.shape[-2:]
            if abs(h / w - ids.shape[0] / ids.shape[1]) > 0.02 * (ids.shape[0] / ids.shape[1]):
                res.size_warnings.append(f"{p.name} is {w}x{h} but its layout is {ids.shape[1]}x{ids.shape[0]}")
            size = seg_size or (h, w)
            lab = lab_full
            if tuple(lab.shape) != tuple(size):
                lab = F.interpolate(lab[None, None].float(), size=size, mode="nearest")[0, 0].long()
            xs = img if seg_size is None else _resize(img, size, antialias=False)
            if seg_size is None and buf_img and tuple(buf_img[0].shape[-2:]) != tuple(size):
                flush()
            buf_img.append(xs)
            buf_lab.append(lab)
            buf_meta.append((group.stem, p.name))
            keep = i == 0 and group.stem in keep_stems
            if feature_nets or keep:
                small = _resize(img, feat_size) if feat_size else img  # once for both uses
                if feature_nets:
                    fbuf.append(small)
                    res.feature_stems.append(group.stem)
                if keep:
                    res.kept[group.stem] = small
            if group.stem in thumb_stems and i < 3:
                res.thumbs[group.stem]["images"].append(_thumb(_to_uint8(img[0])))
            if perceptual is not None and len(paths) > 1:
                loaded.append(img)
            res.count += 1
            if len(buf_img) >= batch_size:
                flush()
            if len(fbuf) >= batch_size:
                flush_feats()
        if loaded:
            same = all(t.shape == loaded[0].shape for t in loaded)
            batch = torch.cat(loaded if same else [_resize(t, loaded[0].shape[-2:]) for t in loaded])
            res.diversity[group.stem] = perceptual.pairwise_mean(batch)[0]
    flush()
    flush_feats()
    res.features = {k: np.concatenate(v) if v else np.zeros((0, 1)) for k, v in feats.items()}
    return res


def _tile(images: list[np.ndarray], segmentation: np.ndarray | None, gap: int = 4) -> np.ndarray:
    """The variants side by side, the segmentation of the first one below them."""
    h = max(a.shape[0] for a in images)
    w = sum(a.shape[1] for a in images) + gap * (len(images) - 1)
    rows = h + (gap + segmentation.shape[0] if segmentation is not None else 0)
    canvas = np.full((rows, max(w, segmentation.shape[1] if segmentation is not None else 0), 3), 255, np.uint8)
    x = 0
    for a in images:
        canvas[: a.shape[0], x : x + a.shape[1]] = a[..., :3]
        x += a.shape[1] + gap
    if segmentation is not None:
        canvas[h + gap :, : segmentation.shape[1]] = segmentation[..., :3]
    return canvas


def _model_folders(images, with_real: bool) -> list[tuple[str, Path]]:
    """(column name, folder) for `images`: a folder, a sequence of folders or ``name=folder``
    strings, or a mapping name -> folder. One unnamed folder keeps the historical column name
    ("synthesized" next to real photos, else "images"); several are named after their folders."""
    if images is None:
        return []
    if isinstance(images, Mapping):
        items = [(str(k), Path(v)) for k, v in images.items()]
    else:
        seq = [images] if isinstance(images, (str, Path)) else list(images)
        items = []
        for it in seq:
            s = str(it)
            name, sep, folder = s.partition("=")
            if isinstance(it, str) and sep and name and "/" not in name and not Path(s).exists():
                items.append((name, Path(folder)))
            else:
                items.append((None, Path(it)))
        if len(items) == 1 and items[0][0] is None:
            items = [("synthesized" if with_real else "images", items[0][1])]
        elif any(n is None for n, _ in items):
            base = [p.resolve().name or str(p) for _, p in items]
            two = [p.resolve().parent.name + "/" + b for (_, p), b in zip(items, base)]
            auto = base if len(set(base)) == len(base) else two
            items = [(n if n is not None else a, p) for (n, p), a in zip(items, auto)]
    names = [n for n, _ in items]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise EvaluationError(
            f"two image folders are both named {dup[0]!r}: name them, e.g. crn={items[0][1]} sims={items[-1][1]}"
        )
    if with_real and "real" in names:
        raise EvaluationError("'real' names the --real photos; give the image folder another name (name=folder)")
    return items


def evaluate(
    images_dir=None,
    labels_dir=None,
    real_dir=None,
    *,
    segmenter: str | Segmenter | None = None,
    segmenter_size: tuple[int, int] | None = None,
    label_space: str | LabelSpace | None = None,
    label_encoding: str | None = None,
    polegroup: str = "pole",
    inception: str | Path | None = None,
    fid_method: str = "auto",
    fd_network: str = "auto",
    device=None,
    precision: str | None = "auto",
    batch_size: int = 4,
    draws: int = 50,
    kid_subset_size: int = 1000,
    bootstrap: int = 1000,
    confidence: float = 0.95,
    diversity_network: str = "auto",
    thumbnails: int = 4,
    between_pairs: int = 20,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Evaluate image folders against the layouts in `labels_dir`, with the `real_dir` photos of
    the same layouts side by side as the ceiling.

    images_dir: one folder (synthesized images, or real photos scored alone), several folders or
    ``name=folder`` strings, or a mapping name -> folder — one report column per model, all scored
    on the layouts every folder has. segmenter: a registered name, ``module:attribute`` or a
    `Segmenter` (default: the label space's, espnet-cityscapes / espnet-camvid), run at
    `segmenter_size` (H, W) when given; label_space: how the layouts are read (default: the
    segmenter's; must match it); polegroup: "pole" (default: as the generators read it) or
    "ignore" (void, as the official Cityscapes evaluation) — see `evaluation_space`.
    inception: the user's ``pt_inception-2015-12-05`` file for the standard FID (default: looked
    up, never downloaded); fid_method: see `frechet_distance_features`. fd_network: "auto"
    (SqueezeNet 1.1, else ESPNet), "squeezenet1_1", "espnet" or "none" for the non-standard
    distance; diversity_network likewise. FD/KID need `real_dir` and are taken on matched sets
    over `draws` splits (`matched_distances`); diversity needs k > 1 variants. Intervals: a
    percentile bootstrap over layouts with `bootstrap` resamples, seed `seed`, level `confidence`.
    precision: auto | fp32 | bf16 of the segmenter and feature networks (`semsynth.precision`;
    the statistics are computed in float64 either way).

    Returns a :class:`Report` (``report.data`` is the JSON document described in
    docs/evaluate-report.md). Raises EvaluationError (a ValueError) for unusable inputs."""
    t0 = time.perf_counter()
    log = progress or (lambda s: None)
    if labels_dir is None:
        raise EvaluationError("--labels (the layouts folder) is required")
    folders = _model_folders(images_dir, real_dir is not None)
    if not folders and real_dir is None:
        raise EvaluationError("nothing to evaluate: give an images folder and/or real photos")
    device = pick_device(device)
    precision = resolve_precision(precision, device)  # of the segmenter and the feature networks

    # -- label space and judge
    space = get_space(label_space) if label_space is not None else None
    if space is None and segmenter is None and Path(labels_dir).name in ("trainannot", "valannot", "testannot"):
        space = get_space("camvid")  # the SegNet CamVid layout, as data.py detects it
        log(f"{Path(labels_dir).name}/: reading the layouts as CamVid (give --label-space to override)")
    if segmenter is None:
        segmenter = default_segmenter(space.name if space else "cityscapes")
        if segmenter is None:
            raise EvaluationError(
                f"no default segmenter for label space {space.name!r}; "
                f"give --segmenter (registered: {available_segmenters()})"
            )
    seg = build_segmenter(segmenter, device=device, input_size=segmenter_size)
    if space is None:
        space = seg.space
    if seg.space.name != space.name or seg.space.num_classes != space.num_classes:
        raise EvaluationError(
            f"segmenter {seg.name!r} predicts the {seg.space.name!r} label space "
            f"({seg.space.num_classes} classes) but the layouts are read as {space.name!r} "
            f"({space.num_classes}); choose a matching --segmenter or --label-space"
        )
    space = evaluation_space(space, polegroup)
    warnings: list[str] = []

    # -- pairing: every model column is scored on the layouts all of them have
    notes: dict = {}
    per_model: dict[str, dict[str, Group]] = {}
    for name, folder in folders:
        groups, n = pair_files(labels_dir, folder)
        per_model[name] = {g.stem: g for g in groups}
        notes.setdefault("layouts_found", n["layouts_found"])
        if n.get("grid_previews_ignored"):
            notes.setdefault("grid_previews_ignored", {})[name] = n["grid_previews_ignored"]
    real_of: dict[str, Path] = {}
    if real_dir is not None:
        rgroups, n = pair_files(labels_dir, None, real_dir)
        real_of = {g.stem: g.real for g in rgroups}
        notes.setdefault("layouts_found", n["layouts_found"])
        notes["real_without_layout"] = n["real_without_layout"]
    if per_model:
        common = sorted(set.intersection(*(set(g) for g in per_model.values())))
        if not common:
            raise EvaluationError(
                f"no layout in {labels_dir} has images in every folder ({', '.join(str(f) for _, f in folders)})"
            )
        for name, g in per_model.items():
            if len(g) > len(common):
                warnings.append(
                    f"{name}: {len(g) - len(common)} layout(s) with images are left out because "
                    f"another folder has none for them; every column uses the same {len(common)}"
                )
        label_of = {s: per_model[folders[0][0]][s].label for s in common}
    else:
        common = sorted(real_of)
        label_of = {g.stem: g.label for g in rgroups}
    if real_dir is not None and per_model:
        notes["layouts_without_real"] = sum(1 for s in common if s not in real_of)
    notes["layouts_without_images"] = notes.get("layouts_found", len(common)) - len(common)

    sets: dict[str, list[tuple[Group, list[Path]]]] = {}
    for name in per_model:
        sets[name] = [(per_model[name][s], per_model[name][s].images) for s in common]
    if real_dir is not None:
        sets["real"] = [(Group(s, label_of[s], real=real_of[s]), [real_of[s]]) for s in common if s in real_of]
        if not sets["real"]:
            raise EvaluationError(f"no real photo in {real_dir} belongs to a layout with images")
    log(
        f"{len(common)} layouts; "
        + ", ".join(f"{k}: {sum(len(p) for _, p in v)} images" for k, v in sets.items())
        + f"; segmenter {seg.name} on {device}"
    )

    # -- distribution networks: only with models and real photos to compare
    feature_nets: list[FeatureNet] = []
    fid_note = None
    feat_size = None
    if per_model and real_dir is not None:
        # every set is brought to the smallest model resolution, so no model is judged sharper
        # or blurrier than another by resizing alone
        sizes = [tuple(_load(v[0][1][0]).shape[-2:]) for k, v in sets.items() if k != "real"]
        feat_size = min(sizes, key=lambda s: (s[0] * s[1], s))
        wpath = _find_fid_weights(inception)
        if wpath is not None:
            feature_nets.append(build_feature_net("inception", device, wpath))
        else:
            from ..models.inception import FID_WEIGHTS_FILE, FID_WEIGHTS_URL

            fid_note = (
                f"standard FID not computed: the Inception weights {FID_WEIGHTS_FILE} were not "
                f"given (--inception PATH) nor found; they are at {FID_WEIGHTS_URL}"
            )
        key = fd_network
        auto = key == "auto"
        if auto:
            key = "squeezenet1_1" if _squeezenet_available() else "espnet"
        if key != "none":
            try:
                feature_nets.append(build_feature_net(key, device, segmenter=seg))
            except FileNotFoundError as e:
                if not auto:
                    raise
                warnings.append(f"no non-standard Fréchet distance: no feature network available ({e})")
    elif sets:
        feat_size = tuple(_load(next(iter(sets.values()))[0][1][0]).shape[-2:])

    multi = {name for name in per_model if any(len(g.images) > 1 for g, _ in sets[name])}
    perceptual = None
    if per_model and (multi or real_dir is not None):
        try:
            perceptual = PerceptualDistance(device, seg, backbone=diversity_network)
        except FileNotFoundError as e:
            if diversity_network != "auto":
                raise
            warnings.append(f"diversity not computed: no perceptual network available ({e})")

    thumb_stems = set(common[:thumbnails])
    chain = (
        _pick_chain([s for s in common if real_dir is None or s in real_of], between_pairs, seed)
        if perceptual is not None
        else []
    )
    results: dict[str, _SetResult] = {}
    timing = {}
    for name, entries in sets.items():
        t = time.perf_counter()
        log(f"evaluating {name} ({sum(len(p) for _, p in entries)} images)")
        with autocast(device, precision):
            results[name] = _run_set(
                entries,
                seg,
                space,
                label_encoding,
                feature_nets,
                feat_size,
                perceptual if name in multi else None,
                batch_size,
                thumb_stems,
                device,
                set(chain),
            )
        timing[name] = round(time.perf_counter() - t, 2)

    # -- segmentation: scores, intervals over layouts, paired comparisons
    names = list(space.names)
    counts = {
        k: LayoutCounts.from_dict(r.layout_counts, space.num_classes, [g.stem for g, _ in sets[k]])
        for k, r in results.items()
    }
    segmentation = {}
    for k, r in results.items():
        s = segmentation_scores(r.conf, names)
        s["layouts"] = len(counts[k].stems)
        s["intervals"] = bootstrap_intervals(counts[k], names, bootstrap, seed, confidence)
        s["confusion"] = r.conf.tolist()
        s["per_image_pixel_accuracy"] = r.per_image_accuracy
        segmentation[k] = s
        warnings += r.size_warnings[:20]
    models = list(per_model)
    comparisons = []
    for i, base in enumerate(models):
        for other in models[i + 1 :]:
            comparisons.append(
                {
                    "model": other,
                    "baseline": base,
                    **paired_bootstrap(counts[other], counts[base], names, bootstrap, seed, confidence),
                }
            )
    if "real" in results:
        for m in models:
            comparisons.append(
                {
                    "model": m,
                    "baseline": "real",
                    **paired_bootstrap(counts[m], counts["real"], names, bootstrap, seed, confidence),
                }
            )
    if fid_note:
        warnings.append(fid_note)

    # -- distances at matched sizes
    distribution = []
    t = time.perf_counter()
    for fn in feature_nets:
        distribution.append(
            matched_distances(
                fn,
                {m: (results[m].features[fn.key], results[m].feature_stems) for m in models},
                (results["real"].features[fn.key], results["real"].feature_stems),
                draws,
                seed,
                kid_subset_size,
                fid_method,
            )
        )
    if feature_nets:
        timing["distribution"] = round(time.perf_counter() - t, 2)

    # -- diversity
    diversity = None
    if perceptual is not None:
        t = time.perf_counter()
        per = {}
        for m in models:
            vals = np.array(list(results[m].diversity.values()), dtype=np.float64)
            per[m] = {
                "layouts": int(len(vals)),
                "mean": float(vals.mean()) if len(vals) else None,
                "std": float(vals.std()) if len(vals) else None,
                "per_layout": results[m].diversity,
            }
        with autocast(device, precision):
            between = {k: _between_layouts(perceptual, r.kept, chain) for k, r in results.items()}
        diversity = {
            "network": perceptual.name,
            "definition": "mean pairwise distance among the k outputs of a layout; distance = mean over "
            "layers of the mean |a-b| of channel-normalised (unit-RMS) features",
            "models": per,
            "between_layouts": between,
            "between_layouts_pairs": max(0, len(chain) - 1),
        }
        timing["diversity_between"] = round(time.perf_counter() - t, 2)
    timing["total"] = round(time.perf_counter() - t0, 2)

    present = [n for n, g in zip(names, sum(c.gt.sum(0) for c in counts.values())) if g > 0]
    cityscapes = space.name == "cityscapes"
    data = {
        "semsynth_evaluate": REPORT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "protocol": {
            "segmenter": seg.describe(),
            "segmentation_resolution": list(seg.input_size) if seg.input_size else "native",
            "label_decoding": {
                "label_space": space.name,
                "encoding": label_encoding or f"auto (by file name, else {space.default_encoding})",
                "polegroup": polegroup if cityscapes else None,
                "polegroup_note": (
                    (
                        "polegroup (labelId 18) is scored as pole, as the generators read it "
                        "(default); --polegroup ignore makes it void as the official evaluation does"
                    )
                    if polegroup == "pole"
                    else (
                        "polegroup (labelId 18) is void (ignored), as the official Cityscapes "
                        "evaluation; the default, --polegroup pole, scores it as pole"
                    )
                )
                if cityscapes
                else None,
            },
            "classes_averaged": {
                "miou": "mean IoU over the classes present in the evaluated layouts",
                "miou_union": "mean IoU over the classes in the layouts or the predictions (Cityscapes "
                "scripts' nan-mean)",
                "classes": present,
            },
            "distance_networks": [fn.describe() for fn in feature_nets],
            "distance_resolution": list(feat_size) if feature_nets and feat_size else None,
            "matched_sets": {
                "draws": draws,
                "kid_subset_size": kid_subset_size,
                "design": "disjoint halves A, B of the layouts with a real photo; floor = "
                "FD(real A, real B); model = FD(model's images of A, real B)",
            },
            "bootstrap": {
                "resamples": bootstrap,
                "seed": seed,
                "level": confidence,
                "unit": "layout",
                "method": "percentile",
            },
            "diversity_network": perceptual.name if perceptual is not None else None,
        },
        "inputs": {
            "labels": str(labels_dir),
            "real": str(real_dir) if real_dir is not None else None,
            "label_space": space.name,
            "layouts": len(common),
            "models": {
                m: {
                    "folder": str(f),
                    "images": results[m].count,
                    "variants_per_layout": sorted({len(g.images) for g, _ in sets[m]}),
                }
                for m, f in folders
            },
            "real_photos": results["real"].count if "real" in results else 0,
            **notes,
        },
        "columns": [{"name": k, "kind": "real" if k == "real" and real_dir is not None else "images"} for k in results],
        "segmentation": segmentation,
        "comparisons": comparisons,
        "distribution": distribution,
        "diversity": diversity,
        "warnings": warnings,
        "timing_s": timing,
        "device": str(device),
        "precision": precision,
    }

    # thumbnails: one row per layout, one cell per column (variants, their segmentation below)
    thumbs = {}
    for s in common[:thumbnails]:
        row = {"layout": _thumb(colorize(space.read(label_of[s], label_encoding), space), nearest=True)}
        for k, r in results.items():
            th = r.thumbs.get(s)
            if th and th["images"]:
                row[k] = _tile(th["images"], th.get("segmentation"))
        thumbs[s] = row
    return Report(data, thumbs)
