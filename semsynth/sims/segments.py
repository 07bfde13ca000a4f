"""Connected-component segments of a label map (SIMS B.1 step 1-5, and its test-time twin).

Both the memory bank (training images) and retrieval (query layouts) cut a layout into the same
kind of segments, so this is one function, `extract_segments`.

For every class c and the label map at the bank resolution (256x512 in the original):

1. `class pixels` = pixels of class c.
2. Thin-structure merge: for c not itself thin (pole, traffic light, traffic sign), the thin
   pixels are added to the mask, so a building cut in two by a pole stays one component.
3. Connected components with 8-connectivity.
4. For non-thin c, a component is dropped when it holds at least as many thin pixels as class-c
   pixels (this is how the original gets rid of pure-pole components).
5. Each kept component gives one segment: its class pixels (`mask`), and inside the bounding
   box of those, the component including the merged thin pixels (`pole_mask`).

Deliberate differences from the MATLAB code: no all-zero "background" slot is produced for thin
classes (B.1 quirk ii), and masks are stored cropped to their bounding box instead of full frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..labels import LabelSpace

__all__ = [
    "REFERENCE_SIZE",
    "REFERENCE_MIN_AREA",
    "SegmentSet",
    "extract_segments",
    "class_roles",
    "ClassRoles",
    "scaled_area",
    "grid_index",
    "downsample_coverage",
    "layout_grid",
]

#: Resolution at which the original cuts segments, retrieves and orders (H, W).
REFERENCE_SIZE = (256, 512)
#: "area > 1000" of the original, in pixels at REFERENCE_SIZE.
REFERENCE_MIN_AREA = 1000

_EIGHT = np.ones((3, 3), dtype=bool)


def scaled_area(area_at_reference: float, size: tuple[int, int]) -> float:
    """An area threshold given at 256x512 expressed in pixels at `size`."""
    return area_at_reference * (size[0] * size[1]) / (REFERENCE_SIZE[0] * REFERENCE_SIZE[1])


# ----------------------------------------------------------------------------- class roles

_SYN = {
    "thin": {
        "pole",
        "polegroup",
        "traffic light",
        "traffic sign",
        "sign symbol",
        "signsymbol",
        "street light",
        "streetlight",
        "signboard",
    },
    # context classes of the canvas (B.5): ground, sky and "stuff" that is re-filled when uncovered
    "context": {"road", "sidewalk", "pavement", "wall", "fence", "vegetation", "tree", "terrain", "sky", "grass"},
    "ground": {"road", "sidewalk", "pavement"},  # shadow removal + outer-elision context
    "vegetation": {"vegetation", "tree"},
    "vehicle": {"car", "truck", "bus", "train"},  # whose shadows are cut out of road/sidewalk
    "planar": {"road", "sidewalk", "terrain", "pavement", "grass"},
    # objects of the order override of train_generate_order.m (l.22-23): in front of planar
    # classes. Unlike the canvas' object classes, building is not one.
    "thing": {
        "pole",
        "traffic light",
        "traffic sign",
        "person",
        "rider",
        "car",
        "truck",
        "bus",
        "train",
        "motorcycle",
        "bicycle",
        "pedestrian",
        "bicyclist",
        "sign symbol",
        "polegroup",
    },
}


@dataclass(frozen=True)
class ClassRoles:
    """Which class indices play which role in SIMS (found by class name, so other label spaces
    with the usual names work too). `object` is every class that is not `context` (the canvas'
    object classes, building included); `thing` are the objects of the order override (planar
    classes are behind them); `thin` are merged into neighbouring segments."""

    thin: tuple[int, ...]
    context: tuple[int, ...]
    ground: tuple[int, ...]
    vegetation: tuple[int, ...]
    vehicle: tuple[int, ...]
    planar: tuple[int, ...]
    object: tuple[int, ...]
    thing: tuple[int, ...] = ()


def class_roles(space: LabelSpace) -> ClassRoles:
    names = [n.lower() for n in space.names]
    pick = {k: tuple(i for i, n in enumerate(names) if n in s) for k, s in _SYN.items()}
    obj = tuple(i for i in range(space.num_classes) if i not in pick["context"])
    return ClassRoles(object=obj, **pick)


# ----------------------------------------------------------------------------- grids


def grid_index(size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """(H, W) int map pixel -> cell index of a gh x gw grid laid over the image (cells of
    floor-spaced boundaries, so sizes need not divide)."""
    h, w = size
    gh, gw = grid
    ry = (np.arange(h) * gh) // h
    rx = (np.arange(w) * gw) // w
    return (ry[:, None] * gw + rx[None, :]).astype(np.int64)


def downsample_coverage(
    comp: np.ndarray,
    n: int,
    cells: np.ndarray,
    grid: tuple[int, int],
    select: np.ndarray | None = None,
    cell_area: np.ndarray | None = None,
) -> np.ndarray:
    """Coverage signatures of components 1..n of `comp` (0 = none): (n, gh, gw) uint8, the
    fraction of each grid cell covered by the component, times 255, rounded. `comp` and `cells`
    may be a crop of the image when `cell_area` (pixels per cell of the whole image) is given."""
    gh, gw = grid
    ncell = gh * gw
    m = comp > 0 if select is None else (comp > 0) & select
    ids = comp[m].astype(np.int64) - 1
    counts = np.bincount(ids * ncell + cells[m], minlength=n * ncell).reshape(n, ncell)
    if cell_area is None:
        cell_area = np.bincount(cells.ravel(), minlength=ncell)
    sig = np.rint(counts * (255.0 / np.maximum(cell_area, 1))).astype(np.uint8)
    return sig.reshape(n, gh, gw)


def layout_grid(
    label: np.ndarray, num_classes: int, grid: tuple[int, int], cells: np.ndarray | None = None
) -> np.ndarray:
    """Majority class (void = num_classes included) of each grid cell: (gh, gw) uint8/uint16.
    Ties go to the lower class index."""
    gh, gw = grid
    if cells is None:
        cells = grid_index(label.shape, grid)
    k = num_classes + 1
    counts = np.bincount(cells.ravel() * k + label.ravel().astype(np.int64), minlength=gh * gw * k).reshape(gh * gw, k)
    dtype = np.uint8 if k <= 256 else np.uint16
    return counts.argmax(1).astype(dtype).reshape(gh, gw)


# ----------------------------------------------------------------------------- segments


@dataclass
class SegmentSet:
    """The segments of one label map. Arrays have one row per segment.

    cls: class index; bbox: (y0, x0, y1, x1), end-exclusive, of the class pixels; area: number of
    class pixels; masks / pole_masks: bool crops of the bounding box (class pixels / component
    including merged thin-structure pixels); sig: (n, gh, gw) uint8 coverage signatures in image
    coordinates; size: (H, W) of the label map."""

    size: tuple[int, int]
    cls: np.ndarray
    bbox: np.ndarray
    area: np.ndarray
    masks: list[np.ndarray] = field(repr=False)
    pole_masks: list[np.ndarray] = field(repr=False)
    sig: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.cls)

    def full_mask(self, i: int, which: str = "mask") -> np.ndarray:
        """The i-th segment's mask as a full-frame (H, W) bool array."""
        out = np.zeros(self.size, dtype=bool)
        y0, x0, y1, x1 = self.bbox[i]
        out[y0:y1, x0:x1] = (self.masks if which == "mask" else self.pole_masks)[i]
        return out

    def select(self, keep: np.ndarray) -> SegmentSet:
        idx = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep)
        return SegmentSet(
            self.size,
            self.cls[idx],
            self.bbox[idx],
            self.area[idx],
            [self.masks[i] for i in idx],
            [self.pole_masks[i] for i in idx],
            None if self.sig is None else self.sig[idx],
        )


def extract_segments(
    label: np.ndarray,
    num_classes: int,
    thin: tuple[int, ...] = (),
    sig_grid: tuple[int, int] | None = (32, 64),
    cells: np.ndarray | None = None,
) -> SegmentSet:
    """Cut an (H, W) class-index map (void = num_classes) into SIMS segments (module docstring).

    Segments come ordered by class, then by component label (raster order of each component's
    first pixel), which is the original's visiting order. `sig_grid` adds coverage signatures
    (None: none)."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise InputError(f"extract_segments expects an (H, W) label map, got shape {label.shape}")
    size = label.shape
    thin_set = np.zeros(num_classes + 2, dtype=bool)
    thin_set[list(thin)] = True
    lab = label.astype(np.int64, copy=False)
    thin_px = thin_set[np.clip(lab, 0, num_classes + 1)]
    has_thin = bool(thin_px.any())
    cell_area = None
    if sig_grid is not None:
        if cells is None:
            cells = grid_index(size, sig_grid)
        cell_area = np.bincount(cells.ravel(), minlength=sig_grid[0] * sig_grid[1])
    # Each class is labelled inside its own region only (the work is proportional to the
    # pixels labelled): the bounding box of its pixels, grown for non-thin classes to cover
    # every thin component touching that box grown by 1 px. A component holding class pixels
    # consists of those (inside the box) and the thin components 8-adjacent to them (which
    # touch the grown box), so it lies entirely in the region and comes out the same as when
    # labelling the whole frame; components cut by the region's border hold no class pixels
    # and are dropped in either case. Raster order inside a region is the frame's.
    if has_thin:
        thin_lab, n_thin_comp = ndimage.label(thin_px, structure=_EIGHT)
        tb = ndimage.find_objects(thin_lab)
        thin_box = np.array([(s[0].start, s[1].start, s[0].stop, s[1].stop) for s in tb], np.int64).reshape(-1, 4)
    class_box = ndimage.find_objects((lab + 1).astype(np.int32))[:num_classes]  # void and beyond: no segments

    cls_l, box_l, area_l, masks, poles, sigs = [], [], [], [], [], []
    for c, sl in enumerate(class_box):
        if sl is None:
            continue
        y0, x0, y1, x1 = sl[0].start, sl[1].start, sl[0].stop, sl[1].stop
        merge = has_thin and not thin_set[c]
        if merge:
            near = thin_lab[max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1]
            t = np.flatnonzero(np.bincount(near.ravel(), minlength=n_thin_comp + 1)[1:])
            if len(t):
                y0, x0 = min(y0, int(thin_box[t, 0].min())), min(x0, int(thin_box[t, 1].min()))
                y1, x1 = max(y1, int(thin_box[t, 2].max())), max(x1, int(thin_box[t, 3].max()))
        reg = np.s_[y0:y1, x0:x1]
        cm = lab[reg] == c
        tp = thin_px[reg] if merge else None
        comp, n = ndimage.label(cm | tp if merge else cm, structure=_EIGHT)
        if n == 0:
            continue
        n_cls = np.bincount(comp[cm], minlength=n + 1)
        if merge:
            n_thin = np.bincount(comp[tp], minlength=n + 1)
            keep = n_cls > n_thin  # dropped when thin pixels >= class pixels (also drops label 0)
        else:
            keep = n_cls > 0
        keep[0] = False
        if not keep.any():
            continue
        # relabel kept components 1..k (order preserved), class-pixel map and component map
        remap = np.zeros(n + 1, dtype=np.int32)
        kept = np.flatnonzero(keep)
        remap[kept] = np.arange(1, len(kept) + 1)
        comp = remap[comp]
        comp_cls = np.where(cm, comp, 0)
        boxes = ndimage.find_objects(comp_cls, max_label=len(kept))
        for j, (ys, xs) in enumerate(boxes, start=1):
            masks.append(comp_cls[ys, xs] == j)
            poles.append(comp[ys, xs] == j)
            box_l.append((y0 + ys.start, x0 + xs.start, y0 + ys.stop, x0 + xs.stop))
        cls_l.append(np.full(len(kept), c, dtype=np.int64))
        area_l.append(n_cls[kept])
        if sig_grid is not None:
            sigs.append(downsample_coverage(comp_cls, len(kept), cells[reg], sig_grid, cell_area=cell_area))
    if cls_l:
        cls = np.concatenate(cls_l)
        area = np.concatenate(area_l).astype(np.int64)
        bbox = np.asarray(box_l, dtype=np.int64).reshape(-1, 4)
        sig = np.concatenate(sigs) if sig_grid is not None else None
    else:
        cls = np.zeros(0, np.int64)
        area = np.zeros(0, np.int64)
        bbox = np.zeros((0, 4), np.int64)
        sig = np.zeros((0, *sig_grid), np.uint8) if sig_grid is not None else None
    return SegmentSet(size, cls, bbox, area, masks, poles, sig)
