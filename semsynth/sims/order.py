"""The coarse class-order prior of SIMS (SPEC B.4.1) and the statistics it is computed from.

``counts[i, j]`` = how many times (adjacent segments of) class i were found **behind** class j.
The original's `generate_coarse_order.m` turns such a matrix into an order:

    back_ratio[i] = rowsum[i] / (rowsum[i] + colsum[i])
    order = classes sorted by decreasing back ratio      (back-most first; stable: ties keep
                                                          class-index order, like MATLAB's sort)

With the released `order_frequency.mat` this reproduces `order.mat` exactly
(sky, building, terrain, wall, sidewalk, road, fence, vegetation, motorcycle, bicycle, truck, car,
bus, train, person, pole, rider, traffic sign, traffic light). That order is the back-to-front
pasting order of canvases.

The script that filled `order_frequency.mat` is not in the SIMS repository. `occlusion_counts`
derives the same kind of matrix from any labelled dataset, following the pair enumeration of
`train_generate_order.m` (B.4.2): pairs of segments of different classes, both larger than
1000 px at 256x512, that touch (the 3x3-dilated boundary of one meets the other); their boundary
band is the intersection of both boundaries dilated by 11x11. Which one is in front:

* with a disparity (or inverse-depth) map: the one with the larger median positive disparity
  inside the band (B.4.2 step 3-4);
* with the layout alone (no depth): the *lower* one (larger mean row of its band pixels), the
  "lower region" figure-ground cue: in street scenes the surface or object lower in the image
  along a shared boundary is usually the nearer one (building below sky, sidewalk below
  building, car below building). This is our cue; the original had none without disparity.

In both cases a planar class (road, sidewalk, terrain) is behind a "thing" (person, vehicle, pole,
sign, light), as the original's override (which it applied in one orientation only; here in
both). Without depth, thin structures (pole, traffic light, traffic sign) are also taken to be in
front of the non-thin class they touch, which is what the released counts show (traffic light is
never behind anything, pole 53 times behind vs 506 in front).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import loadmat
from tqdm import tqdm

from ..data import resize_label
from ..errors import InputError, MissingFileError, UnknownNameError
from ..labels import LabelSpace, get_space
from ..ops import dilate, edge
from ..utils import atomic_path, shared_dir
from .segments import REFERENCE_MIN_AREA, ClassRoles, SegmentSet, class_roles, extract_segments, scaled_area

__all__ = [
    "ORIGINAL_ORDER_IDS",
    "full_order",
    "back_ratio",
    "order_from_counts",
    "original_order",
    "coarse_order",
    "load_order_frequency",
    "occlusion_counts",
    "pair_relations",
    "save_prior",
    "load_prior",
    "order_rank",
    "adjacent_pairs",
    "band_median",
    "object_override",
]

#: `order.mat` of SIMS: 1-based Cityscapes train ids, back-most first.
ORIGINAL_ORDER_IDS = (11, 3, 10, 4, 2, 1, 5, 9, 18, 19, 15, 14, 16, 17, 12, 6, 13, 8, 7)


def back_ratio(counts: np.ndarray) -> np.ndarray:
    """rowsum / (rowsum + colsum) per class; classes never seen get 0.5 (no evidence either way;
    MATLAB would give NaN and sort them first)."""
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise InputError(f"order counts must be a square (C, C) matrix, got shape {c.shape}")
    back, front = c.sum(1), c.sum(0)
    tot = back + front
    return np.where(tot > 0, back / np.where(tot > 0, tot, 1), 0.5)


def order_from_counts(counts: np.ndarray) -> np.ndarray:
    """Class indices (0-based), back-most first (`generate_coarse_order.m`)."""
    return np.argsort(-back_ratio(counts), kind="stable")


def order_rank(order) -> np.ndarray:
    """rank[c] = position of class c in `order` (0 = back-most)."""
    order = np.asarray(order, dtype=np.int64)
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


def original_order() -> np.ndarray:
    """The released `order.mat` as 0-based Cityscapes train ids."""
    return np.asarray(ORIGINAL_ORDER_IDS, dtype=np.int64) - 1


def _is_cityscapes19(space: LabelSpace) -> bool:
    return tuple(n.lower() for n in space.names) == tuple(get_space("cityscapes").names)


def load_order_frequency(path: str | Path | None = None) -> np.ndarray:
    """The 19x19 `order_frequency.mat` (rows: behind, columns: in front), from `path` or
    `<shared>/reference/sims_priors/order_frequency.mat`."""
    p = Path(path) if path is not None else shared_dir() / "reference" / "sims_priors" / "order_frequency.mat"
    if not p.is_file():
        raise MissingFileError(f"{p}: SIMS order_frequency.mat not found")
    try:
        m = loadmat(p)
    except Exception as e:  # scipy raises several types for broken files
        raise InputError(f"{p}: cannot read .mat file ({e})") from e
    if "frequency" not in m or m["frequency"].shape != (19, 19):
        raise InputError(f"{p}: expected a 19x19 variable 'frequency'")
    return m["frequency"].astype(np.int64)


def full_order(space: LabelSpace | str, order=None) -> list[int]:
    """Every class index of `space` back to front: `order` (default: the class-order prior,
    `coarse_order`, where the space has one), then the remaining classes in index order. The
    pasting order of canvases and the orientation of order pairs; `order_rank` of it ranks them."""
    sp = get_space(space) if isinstance(space, str) else space
    if order is not None:
        out = [int(c) for c in order]
    else:
        try:
            out = [int(c) for c in coarse_order(sp)]
        except KeyError:
            out = []
    seen = set(out)
    return out + [c for c in range(sp.num_classes) if c not in seen]


def coarse_order(
    space: LabelSpace | str = "cityscapes", counts: np.ndarray | None = None, prior: str | Path | None = None
) -> list[int]:
    """Back-to-front class order for `space`: from `counts` if given, else from a prior file
    written by `save_prior`, else the original SIMS order for the 19-class Cityscapes space.
    Raises KeyError for other spaces without counts (compute them with `occlusion_counts`, or
    `semsynth sims order-prior --data ...`)."""
    space = get_space(space)
    if counts is not None:
        counts = np.asarray(counts)
        if counts.shape != (space.num_classes, space.num_classes):
            raise InputError(
                f"order counts are {counts.shape}, label space {space.name!r} has {space.num_classes} classes"
            )
        return order_from_counts(counts).tolist()
    if prior is not None:
        return load_prior(prior, space)["order"]
    if _is_cityscapes19(space):
        return original_order().tolist()
    raise UnknownNameError(
        f"no class-order prior for label space {space.name!r}; compute one from "
        f"labelled data with `semsynth sims order-prior --data DATA -o prior.json`"
    )


def save_prior(path: str | Path, counts: np.ndarray, space: LabelSpace) -> Path:
    counts = np.asarray(counts, dtype=np.int64)
    order = order_from_counts(counts)
    obj = {
        "space": space.name,
        "classes": list(space.names),
        "counts": counts.tolist(),
        "back_ratio": [round(float(v), 6) for v in back_ratio(counts)],
        "order": order.tolist(),
        "order_names": [space.names[i] for i in order],
    }
    path = Path(path)
    with atomic_path(path) as p:
        p.write_text(json.dumps(obj, indent=1))
    return path


def load_prior(path: str | Path, space: LabelSpace | None = None) -> dict:
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise MissingFileError(f"{path}: class-order prior not found") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read class-order prior ({e})") from e
    if space is not None and list(obj.get("classes", [])) != list(space.names):
        raise InputError(f"{path}: prior is for classes {obj.get('classes')}, not those of {space.name!r}")
    return obj


# ----------------------------------------------------------------------------- statistics


def adjacent_pairs(segs: SegmentSet, visit, adjacency: int = 3, band: int = 11):
    """The pair enumeration of `train_generate_order.m` (B.4.2 steps 1-2), over segments `visit`
    (indices into `segs`, in the order pairs are oriented): every (a, b), a before b, of
    different classes where the adjacency x adjacency-dilated edge of a touches b. Yields
    (a, b, in_a, in_b): the pixels of a and of b inside the boundary band, the intersection of
    both edges dilated by band x band."""
    visit = [int(i) for i in visit]
    if len(visit) < 2:
        return
    masks = np.stack([segs.full_mask(i) for i in visit])
    edges = edge(masks)
    near, bands = dilate(edges, adjacency), dilate(edges, band)
    cls = segs.cls[visit]
    for x in range(len(visit)):
        for y in range(x + 1, len(visit)):
            if cls[x] == cls[y] or not (near[x] & masks[y]).any():
                continue
            bd = bands[x] & bands[y]
            yield visit[x], visit[y], bd & masks[x], bd & masks[y]


def band_median(values: np.ndarray, where: np.ndarray) -> float | None:
    """Median of the positive, finite `values` (disparity or nearness) at `where` (B.4.2 step 3);
    None when there are none."""
    v = values[where]
    v = v[np.isfinite(v) & (v > 0)]
    return float(np.median(v)) if len(v) else None


def object_override(ca: int, cb: int, roles: ClassRoles) -> int | None:
    """The planar/object rule of B.4.2 step 4: a planar class (road, sidewalk, terrain) is behind
    a thing (`roles.thing`). Returns the front class of (ca, cb), or None when the rule does not
    decide. The original applied it in one orientation only; here in both."""
    if ca in roles.planar and cb in roles.thing:
        return cb
    if cb in roles.planar and ca in roles.thing:
        return ca
    return None


def pair_relations(
    label: np.ndarray,
    space: LabelSpace,
    disparity: np.ndarray | None = None,
    min_area: float = REFERENCE_MIN_AREA,
    band: int = 11,
    adjacency: int = 3,
    roles=None,
) -> list[tuple[int, int, int, int]]:
    """Front/back relations of adjacent segment pairs of one layout, for the order statistics.

    Returns (segment a, segment b, class behind, class in front) for each decided pair, segment
    indices into `extract_segments(label, ...)`. `min_area` is in pixels at 256x512 (scaled to
    the label size); `band` and `adjacency` are square sizes at 256x512 (scaled too). Decided by,
    in turn: the object override, thin-in-front, the larger band median of the disparity (ties
    undecided), the lower side (module docstring)."""
    label = np.asarray(label).astype(np.int64)
    H, W = label.shape
    f = H / 256.0
    band_px = max(1, int(round(band * f)) | 1)
    adj_px = max(3, int(round(adjacency * f)) | 1)
    roles = roles or class_roles(space)
    segs = extract_segments(label, space.num_classes, roles.thin, sig_grid=None)
    big = np.flatnonzero(segs.area > scaled_area(min_area, (H, W)))
    thin = set(roles.thin)
    disp = None if disparity is None else np.asarray(disparity, dtype=np.float64)
    if disp is not None and disp.shape != (H, W):
        raise InputError(f"disparity map is {disp.shape[1]}x{disp.shape[0]}, layout is {W}x{H}")
    out = []
    for a, b, ina, inb in adjacent_pairs(segs, big, adj_px, band_px):
        ca, cb = int(segs.cls[a]), int(segs.cls[b])
        over = object_override(ca, cb, roles)
        if over is not None:
            front = a if over == ca else b
        elif (ca in thin) != (cb in thin):
            front = a if ca in thin else b
        elif disp is not None:
            ma, mb = band_median(disp, ina), band_median(disp, inb)
            if ma is None or mb is None or ma == mb:
                continue
            front = a if ma > mb else b  # larger disparity = nearer
        else:
            ya, yb = np.nonzero(ina)[0], np.nonzero(inb)[0]
            if len(ya) == 0 or len(yb) == 0 or ya.mean() == yb.mean():
                continue
            front = a if ya.mean() > yb.mean() else b  # the lower side is nearer
        back = b if front == a else a
        out.append((int(a), int(b), int(segs.cls[back]), int(segs.cls[front])))
    return out


def occlusion_counts(
    layouts, space: LabelSpace | str = "cityscapes", disparities=None, size=(256, 512), progress: bool = False, **kwargs
) -> np.ndarray:
    """(C, C) counts[i, j] = times class i was behind class j, over `layouts` (class-index maps;
    a LayoutDataset works too). disparities: matching maps or None. Layouts are resized to `size`
    (nearest) first, as the original works at 256x512."""
    space = get_space(space)
    C = space.num_classes
    counts = np.zeros((C, C), np.int64)
    roles = class_roles(space)
    if hasattr(layouts, "arrays") and hasattr(layouts, "names"):
        ds = layouts
        layouts = (ds.arrays(i)[0] for i in range(len(ds)))
        total = len(ds)
    else:
        total = len(layouts) if hasattr(layouts, "__len__") else None
    disp_iter = iter(disparities) if disparities is not None else None
    if progress:
        layouts = tqdm(layouts, total=total, desc="order statistics", unit="layout")
    for lab in layouts:
        lab = np.asarray(lab.numpy() if hasattr(lab, "numpy") else lab)
        d = next(disp_iter) if disp_iter is not None else None
        if size is not None and lab.shape != tuple(size):
            lab = resize_label(lab, size)
            if d is not None:
                d = np.asarray(
                    Image.fromarray(np.asarray(d, np.float32)).resize((size[1], size[0]), Image.Resampling.NEAREST)
                )
        for _, _, back, front in pair_relations(lab, space, d, roles=roles, **kwargs):
            counts[back, front] += 1
    return counts
