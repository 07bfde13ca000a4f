"""Canvas composition (SPEC B.5, `test_generate_canvas.m`): retrieved segments pasted back to front.

`compose_canvas(bank, retrieval)` turns a `Retrieval` into the canvas the synthesis network
refines. At the canvas size (default: the bank's RGB size, 512x1024 for a 256x512 bank), in the
class-order prior (back-most class first; within a class, segment order):

* a query segment with a retrieved bank segment (its top-1 by default):
  a. the layout is cleared (void) on the query mask and the candidate's pole-extended mask;
  b. the candidate may be warped by an affine `theta` (transform network); the warp is kept only
     if it overlaps the query mask more than the unwarped candidate does (ties: unwarped);
  c. where it overlaps an already pasted segment that the pairwise order says is in front, the
     new segment is cut away (the *intended* behaviour of B.4.4; the released code used the wrong
     key and an inverted mask, which made it nearly inactive), and (a) leaves the layout of that
     front segment alone (the original cleared it, leaving void under visible content);
  d. its class is painted into the layout on its support (the final layout follows the
     retrieved shapes);
  e. road / sidewalk: pixels in a band around the vehicles of the *source* image (its car,
     truck, bus, train boundary dilated by 30 px at 512) are emptied (no carried-over shadows);
  f. vegetation: a band inside its own boundary (20 px) is emptied (trees often hold sky);
  g. inner elision: a random 50 % of the pixels in a 17 px band (0.035 x height) inside its
     boundary are set to white (1.0);
  h. pasted: the canvas on its support is replaced (emptied pixels become holes, value 0).
* a query segment without one (area <= 1000 px at 256x512 or nothing retrieved): its class is
  painted into the layout and the canvas emptied there.

Then uncovered void pixels whose original class is a context class (road, sidewalk, wall, fence,
vegetation, terrain, sky) get it back, and the outer elision empties the canvas on road,
sidewalk or void in a 40 px band around every object component, inside a box extended downwards
and sideways by 0.125 of its size (so the network can paint shadows and contacts).

Band sizes are given at a canvas height of 512 and scale with it.

Output (`Canvas`): RGB uint8, the **support mask** (pixels that hold pasted content, white
elision pixels included: the synthesis network's 4th input channel; the original recomputed it as
RGB > 0, which also drops genuinely black photo pixels), the revised layout, and `owner` (which
query segment last wrote each pixel, -1 none).

Affine warps (`theta`): a 2x3 matrix per query segment in **normalised coordinates with
align_corners=False** (the `torch.nn.functional.affine_grid` convention): it maps an output
position (x, y) in [-1, 1] (pixel centres at (2i + 1)/W - 1) to the source position it samples.
Identity = [[1, 0, 0], [0, 1, 0]]. `pixel_theta_to_normalized` converts the original spatial
transformer's pixel-space theta (B.3.3).

Deliberate differences: e/f are applied in the segment's source frame before warping (the band
moves with the segment); the outer-elision box uses the width for its right extension (B.8.11);
`owner` is the explicit record that `fill_region` was meant to be.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..models.sims import jitter_theta, warp
from ..ops import dilate, edge
from .bank import Bank
from .color_transfer import mkl_map
from .order import full_order, order_rank
from .retrieval import Retrieval
from .segments import class_roles

__all__ = [
    "Canvas",
    "CanvasConfig",
    "compose_canvas",
    "training_canvas",
    "query_masks",
    "render_segment",
    "pixel_theta_to_normalized",
    "normalized_theta_to_pixel",
    "IDENTITY_THETA",
    "elision_band",
    "warp_crop",
]

IDENTITY_THETA = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


@dataclass
class CanvasConfig:
    """Canvas hyper-parameters (B.5); band sizes in pixels at a canvas height of 512."""

    elision: float = 0.035 * 512  # inner elision band (square side): floor(0.035 * 512) = 17
    elision_ratio: float = 0.5  # fraction of band pixels set to white
    elision_outside: bool = False  # training canvases (B.6.1) whiten both sides of the boundary
    road_band: float = 30  # se_road: around source vehicles, cut from road/sidewalk
    tree_band: float = 20  # se_tree: inside vegetation boundaries
    outer_band: float = 40  # se_outer: outer elision around objects
    extension: float = 0.125  # outer-elision box extension (fraction of the object size)
    shadow_removal: bool = True
    vegetation_trim: bool = True
    outer_elision: bool = True
    context_fill: bool = True
    # Not in SIMS (off by default): paste each retrieved segment only inside its query segment and
    # keep the given layout, instead of letting the retrieved shape overwrite its neighbours (the
    # released canvas follows the retrieved shapes, so e.g. a retrieved tree can cover the sky).
    clip_to_query: bool = False
    white: int = 255

    def px(self, value: float, height: int) -> int:
        """A band size at `height` (odd, >= 1): floor(value * height / 512), made odd."""
        n = max(1, int(np.floor(value * height / 512.0)))
        return n if n % 2 else n + 1


@dataclass
class Canvas:
    rgb: np.ndarray  # (H, W, 3) uint8
    support: np.ndarray  # (H, W) bool: pixels holding pasted content
    label: np.ndarray  # (H, W) int64 revised layout (void = C)
    owner: np.ndarray  # (H, W) int32 query segment that last wrote the pixel, -1 none
    order: list[int] = field(default_factory=list)  # query segments in visiting order
    bank_ids: np.ndarray | None = None  # (Q,) bank segment pasted per query, -1
    warped: np.ndarray | None = None  # (Q,) bool: the warp was kept

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(canvas (3, H, W) float in [0, 1], support (1, H, W) float) for the synthesis net."""
        rgb = torch.from_numpy(self.rgb).permute(2, 0, 1).float().div_(255.0)
        return rgb, torch.from_numpy(self.support).float().unsqueeze(0)


# ----------------------------------------------------------------------------- geometry


def pixel_theta_to_normalized(theta_px, size: tuple[int, int]) -> np.ndarray:
    """The original STN's pixel-space theta (B.3.3: coordinates are pixel offsets from
    (floor(W/2), floor(H/2)); theta[:, 2] are translations in pixels) -> the normalised
    align_corners=False theta used here. Exact for even H and W.

    With x_t = (W u - 1) / 2 (pixel offset of the output centre at normalised u) and
    u_s = (2 x_s + 1) / W, the map u_s = a u + b (H/W) v + (2 tx + 1 - a - b) / W follows
    (and likewise for v)."""
    t = np.asarray(theta_px, dtype=np.float64).reshape(-1, 2, 3)
    H, W = size
    a, b, tx = t[:, 0, 0], t[:, 0, 1], t[:, 0, 2]
    c, d, ty = t[:, 1, 0], t[:, 1, 1], t[:, 1, 2]
    out = np.empty_like(t)
    out[:, 0] = np.stack([a, b * H / W, (2 * tx + 1 - a - b) / W], 1)
    out[:, 1] = np.stack([c * W / H, d, (2 * ty + 1 - c - d) / H], 1)
    return out.reshape(np.shape(theta_px))


def normalized_theta_to_pixel(theta, size: tuple[int, int]) -> np.ndarray:
    """Inverse of `pixel_theta_to_normalized`."""
    t = np.asarray(theta, dtype=np.float64).reshape(-1, 2, 3)
    H, W = size
    a, c = t[:, 0, 0], t[:, 1, 0] * H / W
    b, d = t[:, 0, 1] * W / H, t[:, 1, 1]
    tx = (t[:, 0, 2] * W - 1 + a + b) / 2
    ty = (t[:, 1, 2] * H - 1 + c + d) / 2
    out = np.empty_like(t)
    out[:, 0] = np.stack([a, b, tx], 1)
    out[:, 1] = np.stack([c, d, ty], 1)
    return out.reshape(np.shape(theta))


def _is_identity(theta) -> bool:
    return theta is None or np.allclose(np.asarray(theta, dtype=np.float64), IDENTITY_THETA, atol=1e-9)


def warp_crop(planes: np.ndarray, box: tuple[int, int, int, int], theta, size: tuple[int, int]):
    """Warp content that lives in `box` (y0, x0, y1, x1) of a `size` frame by a normalised
    align_corners=False theta (output -> source). planes: (k, h, w) float32, channel 0 = the
    mask; the other channels are premultiplied-resampled (bilinear, divided by the bilinear mask)
    and the mask nearest-resampled. Returns (planes (k, h', w'), new box); an empty box if the
    content leaves the frame."""
    H, W = size
    th = np.asarray(theta, dtype=np.float64).reshape(2, 3)
    A, t = th[:, :2], th[:, 2]
    y0, x0, y1, x1 = box
    # forward map of the source box corners: source = A out + t  ->  out = A^-1 (source - t)
    try:
        Ainv = np.linalg.inv(A)
    except np.linalg.LinAlgError:
        return np.zeros((planes.shape[0], 0, 0), np.float32), (0, 0, 0, 0)
    xs = np.array([x0, x1, x0, x1], np.float64)
    ys = np.array([y0, y0, y1, y1], np.float64)
    u, v = 2 * xs / W - 1, 2 * ys / H - 1
    out = Ainv @ (np.stack([u, v]) - t[:, None])
    ox = (out[0] + 1) * W / 2
    oy = (out[1] + 1) * H / 2
    bx0 = int(np.clip(np.floor(ox.min()) - 1, 0, W))
    bx1 = int(np.clip(np.ceil(ox.max()) + 1, 0, W))
    by0 = int(np.clip(np.floor(oy.min()) - 1, 0, H))
    by1 = int(np.clip(np.ceil(oy.max()) + 1, 0, H))
    if bx1 <= bx0 or by1 <= by0:
        return np.zeros((planes.shape[0], 0, 0), np.float32), (0, 0, 0, 0)
    # output pixel centres (normalised) -> source normalised -> normalised within the crop
    gx = (2 * np.arange(bx0, bx1) + 1) / W - 1
    gy = (2 * np.arange(by0, by1) + 1) / H - 1
    U, V = np.meshgrid(gx, gy)
    su = A[0, 0] * U + A[0, 1] * V + t[0]
    sv = A[1, 0] * U + A[1, 1] * V + t[1]
    px = ((su + 1) * W - 1) / 2 - x0  # source pixel coordinate within the crop
    py = ((sv + 1) * H - 1) / 2 - y0
    h, w = y1 - y0, x1 - x0
    grid = torch.from_numpy(np.stack([(2 * px + 1) / w - 1, (2 * py + 1) / h - 1], -1)).float()[None]
    src = torch.from_numpy(np.ascontiguousarray(planes, dtype=np.float32))[None]
    m = src[:, :1]
    near = F.grid_sample(src, grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]
    bil = F.grid_sample(
        torch.cat([m, src[:, 1:] * m], 1), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )[0]
    res = near.clone()
    res[1:] = torch.where(near[:1] > 0.5, bil[1:] / bil[:1].clamp_min(1e-6), near[1:])
    return res.numpy(), (by0, bx0, by1, bx1)


# ----------------------------------------------------------------------------- morphology


def elision_band(mask: np.ndarray, size: int, inside_only: bool = True) -> np.ndarray:
    """The boundary of `mask` dilated by a size x size square (restricted to the mask)."""
    band = dilate(edge(mask), size)
    return band & mask if inside_only else band


# ----------------------------------------------------------------------------- composition


def _nearest_map(n_out: int, n_in: int) -> np.ndarray:
    """Output index -> input index, nearest at pixel centres."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


class _Frame:
    """Mapping between the bank frame (H, W) and the canvas frame (Hc, Wc)."""

    def __init__(self, bank_size, canvas_size, rgb_size):
        self.bank_size, self.size, self.rgb_size = bank_size, canvas_size, rgb_size
        self.ymap = _nearest_map(canvas_size[0], bank_size[0])
        self.xmap = _nearest_map(canvas_size[1], bank_size[1])
        self.ry = _nearest_map(canvas_size[0], rgb_size[0])
        self.rx = _nearest_map(canvas_size[1], rgb_size[1])

    def box(self, bbox) -> tuple[int, int, int, int]:
        y0, x0, y1, x1 = (int(v) for v in bbox)
        return (
            int(np.searchsorted(self.ymap, y0)),
            int(np.searchsorted(self.xmap, x0)),
            int(np.searchsorted(self.ymap, y1)),
            int(np.searchsorted(self.xmap, x1)),
        )

    def crop(self, crop: np.ndarray, bbox) -> tuple[np.ndarray, tuple]:
        """A bank-frame crop (h, w[, ...]) at `bbox` -> the canvas-frame crop and its box."""
        cb = self.box(bbox)
        ys = self.ymap[cb[0] : cb[2]] - int(bbox[0])
        xs = self.xmap[cb[1] : cb[3]] - int(bbox[1])
        return crop[ys][:, xs], cb

    def rgb_crop(self, rgb: np.ndarray, bbox, scale: int) -> np.ndarray:
        """An RGB-frame crop (bbox * scale) -> canvas-frame crop over `self.box(bbox)`."""
        cb = self.box(bbox)
        if (self.size[0] == self.rgb_size[0]) and (self.size[1] == self.rgb_size[1]):
            return rgb
        ys = self.ry[cb[0] : cb[2]] - int(bbox[0]) * scale
        xs = self.rx[cb[1] : cb[3]] - int(bbox[1]) * scale
        return rgb[np.clip(ys, 0, rgb.shape[0] - 1)][:, np.clip(xs, 0, rgb.shape[1] - 1)]


def _band_in_frame(mask: np.ndarray, box, size, se: int) -> np.ndarray:
    """The boundary band (dilated by se x se) of a crop at `box` of a `size` frame, as if computed
    on the full frame: outside the box is empty, but the frame border is not a boundary."""
    p = se // 2 + 2
    y0, x0, y1, x1 = box
    padded = np.pad(mask, p, mode="edge")
    if y0 > 0:
        padded[:p] = False
    if y1 < size[0]:
        padded[-p:] = False
    if x0 > 0:
        padded[:, :p] = False
    if x1 < size[1]:
        padded[:, -p:] = False
    return elision_band(padded, se, inside_only=False)[p:-p, p:-p]


def _pad_box(box, pad, size):
    y0, x0, y1, x1 = box
    return (max(0, y0 - pad), max(0, x0 - pad), min(size[0], y1 + pad), min(size[1], x1 + pad))


def _front_fn(front, n: int) -> Callable[[int, int], bool] | None:
    if front is None:
        return None
    if callable(front):
        return lambda prev, new: bool(front(prev, new))
    arr = np.asarray(front)
    if arr.shape != (n, n):
        raise ValueError(f"pairwise front matrix must be ({n}, {n}) for {n} query segments, got {arr.shape}")
    return lambda prev, new: bool(arr[prev, new] > (0.5 if arr.dtype.kind == "f" else 0))


def compose_canvas(
    bank: Bank,
    retrieval: Retrieval,
    size: tuple[int, int] | None = None,
    choice: np.ndarray | None = None,
    theta=None,
    order=None,
    front=None,
    config: CanvasConfig | None = None,
    rng=None,
) -> Canvas:
    """Compose the canvas of one layout (see the module docstring).

    choice: (Q,) which column of `retrieval.ids` to paste per query segment (default 0 = top-1;
    -1 = none). theta: None, a (Q, 2, 3) array (normalised, align_corners=False; rows of
    non-searched segments are ignored) or {query index: 2x3}. order: back-to-front class list
    (default: `coarse_order(bank.space)`, else class-index order). front: pairwise order
    override, a callable front(prev, new) -> True when the already pasted query segment `prev`
    is in front of `new`, or a (Q, Q) matrix with front[i, j] true/probability > 0.5 when i is in
    front of j. rng: numpy Generator or seed for the elision (default seed 0: reproducible)."""
    cfg = config or CanvasConfig()
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0 if rng is None else rng)
    space = bank.space
    C = space.num_classes
    roles = class_roles(space)
    size = tuple(size) if size is not None else bank.rgb_size
    Hc, Wc = size
    fr = _Frame(bank.size, size, bank.rgb_size)
    q = retrieval.query
    Q = len(q)
    rank = order_rank(full_order(space, order))
    front_fn = _front_fn(front, Q)
    thetas = _thetas(theta, Q)

    base = retrieval.label[fr.ymap][:, fr.xmap]  # layout at the canvas size
    label = base.copy()
    canvas = np.zeros((Hc, Wc, 3), np.uint8)
    support = np.zeros((Hc, Wc), bool)
    owner = np.full((Hc, Wc), -1, np.int32)
    bank_ids = np.full(Q, -1, np.int64)
    warped = np.zeros(Q, bool)

    se_in = cfg.px(cfg.elision, Hc)
    se_road = cfg.px(cfg.road_band, Hc)
    se_tree = cfg.px(cfg.tree_band, Hc)
    ground, veg, vehicles = set(roles.ground), set(roles.vegetation), np.asarray(roles.vehicle, np.int64)

    visit = sorted(range(Q), key=lambda j: (rank[q.cls[j]], j))
    col = np.zeros(Q, np.int64) if choice is None else np.asarray(choice, np.int64)
    for j in visit:
        c = int(q.cls[j])
        qcrop, qbox = fr.crop(q.masks[j], q.bbox[j])
        b = -1
        if retrieval.searched[j] and 0 <= col[j] < retrieval.ids.shape[1]:
            b = int(retrieval.ids[j, col[j]])
        if b < 0:
            # no segment: paint the class, nothing known about the pixels
            y0, x0, y1, x1 = qbox
            label[y0:y1, x0:x1][qcrop] = c
            canvas[y0:y1, x0:x1][qcrop] = 0
            support[y0:y1, x0:x1][qcrop] = False
            owner[y0:y1, x0:x1][qcrop] = -1
            continue
        seg = bank.segment(b)
        bank_ids[j] = b
        m, sbox = fr.crop(seg.mask, seg.bbox)
        pole, _ = fr.crop(seg.pole_mask, seg.bbox)
        rgb = fr.rgb_crop(seg.rgb, seg.bbox, seg.rgb_scale)
        # e/f: pixels to empty, in the segment's source frame
        empty = np.zeros_like(m)
        if cfg.shadow_removal and c in ground and len(vehicles):
            pad = se_road // 2 + 2
            pb = _pad_box(sbox, pad, size)
            src = bank.source_label(seg.image)
            src_c = src[fr.ymap[pb[0] : pb[2]]][:, fr.xmap[pb[1] : pb[3]]]
            veh = np.isin(src_c, vehicles)
            if veh.any():
                band = dilate(edge(veh), se_road)
                empty |= band[sbox[0] - pb[0] : sbox[2] - pb[0], sbox[1] - pb[1] : sbox[3] - pb[1]] & m
        if cfg.vegetation_trim and c in veg:
            empty |= _band_in_frame(m, sbox, size, se_tree) & m
        # b: optional warp, kept only if it overlaps the query better
        th = thetas.get(j)
        if th is not None and not _is_identity(th):
            stack = np.concatenate(
                [m[None].astype(np.float32), rgb.transpose(2, 0, 1).astype(np.float32), pole[None], empty[None]], 0
            )
            wp, wbox = warp_crop(stack, sbox, th, size)
            if wp.shape[1] > 0:
                wm = wp[0] > 0.5
                ov_w = _overlap(wm, wbox, qcrop, qbox)
                ov_0 = _overlap(m, sbox, qcrop, qbox)
                if ov_w > ov_0:
                    warped[j] = True
                    m, sbox = wm, wbox
                    rgb = np.clip(wp[1:4].transpose(1, 2, 0) + 0.5, 0, 255).astype(np.uint8)
                    pole, empty = wp[4] > 0.5, (wp[5] > 0.5) & wm
        # c: earlier segments that the pairwise order puts in front of this one: the overlap
        # with them is cut away from this segment, and their layout is left alone in (a)
        fronts = []
        if front_fn is not None:
            for region, box in ((qcrop, qbox), (m | pole, sbox)):
                prev = owner[box[0] : box[2], box[1] : box[3]][region]
                fronts += [int(p) for p in np.unique(prev[prev >= 0]) if int(p) not in fronts and front_fn(int(p), j)]
        keep_front = np.zeros(Q + 1, bool)
        keep_front[fronts] = True  # index -1 (nothing) maps to the last entry, False
        # a: clear the layout on query mask and the (placed) pole-extended mask
        for region, box in ((qcrop, qbox), (pole, sbox)):
            lab_r = label[box[0] : box[2], box[1] : box[3]]
            lab_r[region & ~keep_front[owner[box[0] : box[2], box[1] : box[3]]]] = C
        y0, x0, y1, x1 = sbox
        t = m & ~keep_front[owner[y0:y1, x0:x1]]
        if cfg.clip_to_query:
            t &= _in_box(qcrop, qbox, sbox)
        # d: paint the class on the support; record the writer
        label[y0:y1, x0:x1][t] = c
        owner[y0:y1, x0:x1][t] = j
        # g: inner elision on what remains of the segment
        content = t & ~empty
        white = np.zeros_like(t)
        if cfg.elision_ratio > 0:
            band = _band_in_frame(content, sbox, size, se_in)
            band &= t if cfg.elision_outside else content
            white = band & (rng.random(band.shape) < cfg.elision_ratio)
        # h: paste
        reg = canvas[y0:y1, x0:x1]
        reg[t] = 0
        reg[content] = rgb[content]
        reg[white] = cfg.white
        support[y0:y1, x0:x1][t] = (content | white)[t]

    # 3: context fill
    if cfg.context_fill:
        ctx = np.zeros(C + 1, bool)
        ctx[list(roles.context)] = True
        refill = (label == C) & ctx[base]
        label[refill] = base[refill]
    if cfg.clip_to_query:  # the layout as given: every pasted pixel already agrees with it
        label = base.copy()
    # 4: outer elision around object components
    if cfg.outer_elision:
        _outer_elision(canvas, support, label, roles, C, cfg, size)
    return Canvas(rgb=canvas, support=support, label=label, owner=owner, order=visit, bank_ids=bank_ids, warped=warped)


def _thetas(theta, Q: int) -> dict[int, np.ndarray]:
    if theta is None:
        return {}
    if isinstance(theta, dict):
        return {int(k): np.asarray(v, np.float64).reshape(2, 3) for k, v in theta.items()}
    if isinstance(theta, torch.Tensor):
        theta = theta.detach().cpu().numpy()
    arr = np.asarray(theta, np.float64)
    if arr.shape != (Q, 2, 3):
        raise ValueError(f"theta must be ({Q}, 2, 3) for {Q} query segments, got {arr.shape}")
    return {j: arr[j] for j in range(Q)}


def _in_box(mask, box, target) -> np.ndarray:
    """A crop `mask` at `box`, re-cut to the frame of `target` (zeros where it does not reach)."""
    out = np.zeros((target[2] - target[0], target[3] - target[1]), bool)
    y0, x0 = max(box[0], target[0]), max(box[1], target[1])
    y1, x1 = min(box[2], target[2]), min(box[3], target[3])
    if y1 > y0 and x1 > x0:
        out[y0 - target[0] : y1 - target[0], x0 - target[1] : x1 - target[1]] = mask[
            y0 - box[0] : y1 - box[0], x0 - box[1] : x1 - box[1]
        ]
    return out


def _overlap(m, box, qm, qbox) -> int:
    y0, x0 = max(box[0], qbox[0]), max(box[1], qbox[1])
    y1, x1 = min(box[2], qbox[2]), min(box[3], qbox[3])
    if y1 <= y0 or x1 <= x0:
        return 0
    a = m[y0 - box[0] : y1 - box[0], x0 - box[1] : x1 - box[1]]
    b = qm[y0 - qbox[0] : y1 - qbox[0], x0 - qbox[1] : x1 - qbox[1]]
    return int(np.count_nonzero(a & b))


def _outer_elision(canvas, support, label, roles, C, cfg: CanvasConfig, size) -> None:
    H, W = size
    ctx_cls = np.zeros(C + 1, bool)
    ctx_cls[list(roles.ground)] = True
    ctx_cls[C] = True
    mask_context = ctx_cls[label]
    se = cfg.px(cfg.outer_band, H)
    pad = se // 2 + 1
    eight = np.ones((3, 3), bool)
    for c in roles.object:
        comp, n = ndimage.label(label == c, structure=eight)
        if n == 0:
            continue
        for k, sl in enumerate(ndimage.find_objects(comp), start=1):
            if sl is None:
                continue
            ys, xs = sl
            h, w = ys.stop - ys.start, xs.stop - xs.start
            by0, by1 = ys.start, min(H, int(np.ceil(ys.stop + cfg.extension * h)))
            bx0 = max(0, int(np.floor(xs.start - cfg.extension * w)))
            bx1 = min(W, int(np.ceil(xs.stop + cfg.extension * w)))  # fixed: width, not height
            # band of the component's boundary, computed on a padded crop around its box
            py0, px0 = max(0, ys.start - pad), max(0, xs.start - pad)
            py1, px1 = min(H, ys.stop + pad), min(W, xs.stop + pad)
            cm = comp[py0:py1, px0:px1] == k
            band = dilate(edge(cm), se)
            # restrict to the extended box
            y0, y1 = max(by0, py0), min(by1, py1)
            x0, x1 = max(bx0, px0), min(bx1, px1)
            if y1 <= y0 or x1 <= x0:
                continue
            sel = band[y0 - py0 : y1 - py0, x0 - px0 : x1 - px0] & mask_context[y0:y1, x0:x1]
            canvas[y0:y1, x0:x1][sel] = 0
            support[y0:y1, x0:x1][sel] = False


# ----------------------------------------------------------------------------- training canvases


def training_canvas(
    bank: Bank,
    retrieval: Retrieval,
    image,
    ref_image=None,
    rng=None,
    recolor_p: float = 0.2,
    elision: float = 0.05 * 512,
    elision_ratio: float = 0.5,
    corrupt_deg: float = 2.5,
    order=None,
    white: int = 255,
) -> Canvas:
    """A synthesis-network training canvas for a real (layout, photo), the original way
    (SPEC B.6.1, `train_generate_synthesis.m`); the `sims-synthesis` task's dataset
    (`semsynth.tasks.sims.SynthesisCanvases`) calls it with retrievals precomputed once per draw.

    `retrieval` is the layout's search against a bank of *other* training images (the original:
    100 random ones), top-1 per segment. For every searched segment q, back to front in the
    class order, with its retrieved shape r (the bank segment, placed where it was in its image):

    2. the photo's **own** pixels are pasted on q ∧ r (shape mismatch without appearance gap);
    3. with probability `recolor_p` they are first recoloured by MKL colour transfer so that the
       query box of the photo matches the colour statistics of the same box of the retrieved
       image (`ref_image(bank_image_id)` -> its photo at the canvas size; without it, the
       retrieved segment's own pixels);
    4. a random `elision_ratio` of the pixels in the pasted support's boundary band (dilated by
       floor(0.05 H), inside **and** outside) are set to white; later segments paste over;
    6. label corruption: the query mask is rotated by U(-corrupt_deg, corrupt_deg) about the image
       centre with a random shift inside MATLAB's 'loose' frame; label pixels outside q but inside
       the rotated mask or inside r become void.

    Segments at or below the retrieval threshold (or without a candidate) are dropped: holes.
    image: (H, W, 3) uint8 (or (3, H, W) float in [0, 1]) at any size; the bank frame is mapped
    onto it. Returns the canvas with the corrupted layout in `label`.
    Deliberate differences: the recoloured pixels are masked with the pasted support, not the
    whole retrieved mask (B.8.12); a segment without any candidate is dropped instead of reusing
    the previous segment's retrieved mask (B.6.1's bug); the corruption shift is the intended one
    (the original's was ~0 by a bug, its random crop gives the shift used here)."""
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.transpose(1, 2, 0)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    size = img.shape[:2]
    H, W = size
    C = bank.space.num_classes
    q = retrieval.query
    Q = len(q)
    fr = _Frame(bank.size, size, bank.rgb_size)
    rank = order_rank(full_order(bank.space, order))
    se = CanvasConfig().px(elision, H)
    canvas = np.zeros((H, W, 3), np.uint8)
    support = np.zeros(size, bool)
    owner = np.full(size, -1, np.int32)
    bank_ids = np.full(Q, -1, np.int64)
    label = retrieval.label[fr.ymap][:, fr.xmap].copy()
    spill = np.zeros(size, bool)  # where a retrieved or perturbed shape leaves its query: void
    qmasks = []  # (j, full-frame query mask) of the pasted segments, for step 6
    visit = sorted(np.flatnonzero(retrieval.searched).tolist(), key=lambda j: (rank[q.cls[j]], j))
    for j in visit:
        b = int(retrieval.ids[j, 0])
        if b < 0:
            continue
        bank_ids[j] = b
        qcrop, qbox = fr.crop(q.masks[j], q.bbox[j])
        rcrop, rbox = fr.crop(bank.mask(b), tuple(bank.bbox[b]))
        qfull = np.zeros(size, bool)
        qfull[qbox[0] : qbox[2], qbox[1] : qbox[3]] = qcrop
        rfull = np.zeros(size, bool)
        rfull[rbox[0] : rbox[2], rbox[1] : rbox[3]] = rcrop
        spill |= rfull & ~qfull
        qmasks.append(qfull)
        t = qfull & rfull
        if not t.any():
            continue
        content = img
        if recolor_p > 0 and rng.random() < recolor_p:
            y0, x0, y1, x1 = qbox
            src = img[y0:y1, x0:x1].reshape(-1, 3).astype(np.float64) / 255.0
            if ref_image is not None:
                ref = np.asarray(ref_image(int(bank.image[b])))[y0:y1, x0:x1].reshape(-1, 3)
            else:
                seg = bank.segment(b)
                ref = seg.rgb[seg.rgb_mask]
            ref = ref.astype(np.float64) / 255.0
            if len(ref) > 1 and len(src) > 1:
                px = np.clip(mkl_map(img[t].astype(np.float64) / 255.0, src, ref), 0, 1)
                content = img.copy()
                content[t] = (px * 255 + 0.5).astype(np.uint8)
        canvas[t] = content[t]
        support[t] = True
        owner[t] = j
        if elision_ratio > 0:
            band = dilate(edge(t), se)
            wsel = band & (rng.random(size) < elision_ratio)
            canvas[wsel] = white
            support[wsel] = True
    if qmasks and corrupt_deg > 0:
        n = len(qmasks)
        a = (2 * rng.random(n) - 1) * np.radians(corrupt_deg)
        slack = (
            np.stack(
                [np.abs(np.cos(a)) * W + np.abs(np.sin(a)) * H - W, np.abs(np.sin(a)) * W + np.abs(np.cos(a)) * H - H],
                1,
            )
            / 2
        )
        shift = (2 * rng.random((n, 2)) - 1) * slack
        t64 = lambda x: torch.as_tensor(x, dtype=torch.float64)  # noqa: E731
        theta = jitter_theta(t64(np.tile([[W / 2, H / 2]], (n, 1))), t64(np.ones(n)), t64(a), t64(shift), H, W)
        qs = np.stack(qmasks)
        moved = warp(torch.from_numpy(qs[:, None].astype(np.float32)), theta.float(), mode="nearest") > 0.5
        spill |= (moved[:, 0].numpy() & ~qs).any(0)
    label[spill] = C
    return Canvas(
        rgb=canvas, support=support, label=label, owner=owner, order=visit, bank_ids=bank_ids, warped=np.zeros(Q, bool)
    )


# ----------------------------------------------------------------------------- helpers for networks


def query_masks(retrieval: Retrieval, size: tuple[int, int]) -> np.ndarray:
    """(Q, H, W) bool masks of the query segments at `size` (nearest-upsampled from the bank
    size, the same mapping `compose_canvas` uses)."""
    q = retrieval.query
    fr = _Frame(q.size, tuple(size), tuple(size))
    out = np.zeros((len(q), *size), bool)
    for j in range(len(q)):
        crop, (y0, x0, y1, x1) = fr.crop(q.masks[j], q.bbox[j])
        out[j, y0:y1, x0:x1] = crop
    return out


def render_segment(bank: Bank, b: int, size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Bank segment `b` placed where it was in its source image, full frame at `size` (default
    the bank's RGB size): (rgb (H, W, 3) uint8, zero outside the mask; mask (H, W) bool). This is
    the "retrieved segment" input of the transformation network."""
    size = tuple(size) if size is not None else bank.rgb_size
    fr = _Frame(bank.size, size, bank.rgb_size)
    seg = bank.segment(int(b))
    m, (y0, x0, y1, x1) = fr.crop(seg.mask, seg.bbox)
    rgb = fr.rgb_crop(seg.rgb, seg.bbox, seg.rgb_scale)
    out = np.zeros((*size, 3), np.uint8)
    mask = np.zeros(size, bool)
    mask[y0:y1, x0:x1] = m
    out[y0:y1, x0:x1][m] = rgb[m]
    return out, mask
