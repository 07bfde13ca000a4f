"""Procedural street-scene layouts in the Cityscapes label space (19 trainId classes).

`street_layout(seed, size)` renders a random but plausible urban street as seen from a car: a
pinhole camera `hc` metres above a flat ground plane, looking along a straight street. Every
object is a planar patch in that 3-D world (the ground; building facades as boxes along both
sides; frontal "billboards" for persons, poles, signs, lights and tree crowns; two visible faces
for each vehicle), rasterised with numpy masks over coordinate grids and composited with a depth
buffer, so perspective, sizes and occlusion are consistent: things shrink towards the vanishing
point, cars further away are hidden by nearer ones, facades converge to the horizon.

The random scene depends only on the seed (not on `size`), so the same seed rendered at
256x512 and 512x1024 gives the same street at two resolutions. Classes are drawn from
`get_space("cityscapes")`: road, sidewalk, building, wall, fence, pole, traffic light, traffic
sign, vegetation, terrain, sky, person, car, truck, bus (rider, train, motorcycle and bicycle are
not generated).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError, OutputExistsError
from .labels import get_space, save_label

__all__ = ["street_layout", "street_layouts", "write_layouts", "CLASSES"]

_NAMES = get_space("cityscapes").names
CLASSES = {n: i for i, n in enumerate(_NAMES)}
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE = (
    CLASSES[n] for n in ("road", "sidewalk", "building", "wall", "fence", "pole")
)
LIGHT, SIGN, VEGETATION, TERRAIN, SKY = (
    CLASSES[n] for n in ("traffic light", "traffic sign", "vegetation", "terrain", "sky")
)
PERSON, CAR, TRUCK, BUS = (CLASSES[n] for n in ("person", "car", "truck", "bus"))

_EPS = 0.02  # depth bias (m) so attached parts (sign on pole, feet on ground) win depth ties


class _Canvas:
    """Label + depth buffers and the camera: pixel (col, row) sees the ray through
    X = (col + .5 - xv) Z / f, Y = hc - (row + .5 - yh) Z / f (Y up from the ground)."""

    def __init__(self, size, f, hc, yh, xv):
        H, W = size
        self.H, self.W, self.f, self.hc, self.yh, self.xv = H, W, f, hc, yh, xv
        self.label = np.full((H, W), SKY, dtype=np.int64)
        self.depth = np.full((H, W), np.inf)
        self.u = np.arange(W) + 0.5 - xv  # horizontal pixel offset from the vanishing point
        self.v = np.arange(H) + 0.5 - yh  # vertical offset from the horizon (down positive)

    # -- projection helpers
    def _bbox(self, xs, ys, zs):
        """Pixel slices covering the 3-D box corners (clipped to the image); None if empty."""
        X, Y, Z = np.meshgrid(xs, ys, np.maximum(zs, 0.05), indexing="ij")
        cols = self.xv + self.f * X / Z
        rows = self.yh + self.f * (self.hc - Y) / Z
        c0, c1 = int(np.floor(max(cols.min(), 0))), int(np.ceil(min(cols.max(), self.W)))
        r0, r1 = int(np.floor(max(rows.min(), 0))), int(np.ceil(min(rows.max(), self.H)))
        if c0 >= c1 or r0 >= r1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def paint(self, rows, cols, mask, depth, cls):
        """Where `mask` and nearer than what is there: write `cls` (scalar or per pixel)."""
        d = self.depth[rows, cols]
        depth = np.broadcast_to(depth, mask.shape)
        win = mask & (depth < d)
        if not win.any():
            return
        self.depth[rows, cols] = np.where(win, depth, d)
        self.label[rows, cols] = np.where(win, cls, self.label[rows, cols])

    # -- primitives
    def frontal(self, Z, x0, x1, y0, y1, shape, cls, bias=0.0):
        """A patch facing the camera at depth Z; shape(X, Y) -> bool on world coordinates
        (X: (1, w) metres, Y: (h, 1) metres above ground)."""
        if Z <= 0.3:
            return
        box = self._bbox([x0, x1], [y0, y1], [Z])
        if box is None:
            return
        rows, cols = box
        X = (self.u[cols] * Z / self.f)[None, :]
        Y = (self.hc - self.v[rows] * Z / self.f)[:, None]
        mask = np.broadcast_to(
            shape(X, Y) & (X >= x0) & (X <= x1) & (Y >= y0) & (Y <= y1),
            (rows.stop - rows.start, cols.stop - cols.start),
        )
        self.paint(rows, cols, mask, Z - bias, cls)

    def lateral(self, Xs, z0, z1, y0, y1, shape, cls, bias=0.0):
        """A patch in the plane X = Xs (parallel to the street) for Z in [z0, z1];
        shape(dZ, Y) -> bool with dZ = Z - z0 ((1, w)) and Y ((h, 1))."""
        z0 = max(z0, 0.3)
        if z1 <= z0 or Xs == 0:
            return
        box = self._bbox([Xs], [y0, y1], [z0, z1])
        if box is None:
            return
        rows, cols = box
        u = self.u[cols]
        with np.errstate(divide="ignore", invalid="ignore"):
            Z = np.where(np.sign(u) == np.sign(Xs), self.f * Xs / u, -1.0)[None, :]
        Y = self.hc - self.v[rows][:, None] * Z / self.f
        mask = (Z >= z0) & (Z <= z1) & (Y >= y0) & (Y <= y1) & shape(Z - z0, Y)
        self.paint(rows, cols, mask, np.broadcast_to(Z, mask.shape) - bias, cls)

    def horizontal(self, Yh, x0, x1, z0, z1, shape, cls, bias=0.0):
        """A horizontal patch at height Yh < hc seen from above (a car's boot or bonnet) for
        X in [x0, x1], Z in [z0, z1]; shape(X, dZ) -> bool with dZ = Z - z0."""
        z0 = max(z0, 0.3)
        if Yh >= self.hc or z1 <= z0:
            return
        box = self._bbox([x0, x1], [Yh], [z0, z1])
        if box is None:
            return
        rows, cols = box
        v = self.v[rows][:, None]
        with np.errstate(divide="ignore"):
            Z = np.where(v > 0, self.f * (self.hc - Yh) / np.where(v > 0, v, 1), -1.0)
        X = self.u[cols][None, :] * Z / self.f
        mask = (Z >= z0) & (Z <= z1) & (X >= x0) & (X <= x1) & shape(X, Z - z0)
        self.paint(rows, cols, mask, np.broadcast_to(Z, mask.shape) - bias, cls)


def _uniform(rng, lo, hi):
    return float(rng.uniform(lo, hi))


def _bumpy(rng, base, amp):
    """A height profile h(t) = base + amp * (sum of 3 random sines), vectorised over t."""
    k = rng.uniform(0.3, 1.6, 3)
    ph = rng.uniform(0, 2 * np.pi, 3)
    w = rng.uniform(0.3, 1.0, 3)
    w = w / w.sum()
    return lambda t: base + amp * sum(wi * np.sin(ki * t + pi) for wi, ki, pi in zip(w, k, ph))


# ---------------------------------------------------------------------- scene elements


def _blob(cx, cy, r, rng):
    """Tree crown: a noisy disc around (cx, cy) in world metres."""
    ph = rng.uniform(0, 2 * np.pi, 2)
    ry = r * _uniform(rng, 0.8, 1.15)

    def shape(X, Y):
        dx, dy = X - cx, (Y - cy) * r / ry
        ang = np.arctan2(dy, dx)
        rad = r * (1 + 0.12 * np.sin(5 * ang + ph[0]) + 0.08 * np.sin(11 * ang + ph[1]))
        return dx * dx + dy * dy <= rad * rad

    return shape


def _tree(cv, X, Z, rng):
    trunk_h = _uniform(rng, 2.0, 3.5)
    r = _uniform(rng, 1.3, 2.8)
    cy = trunk_h + 0.7 * r
    tw = _thick(cv, Z, 0.3) / 2
    cv.frontal(Z, X - tw, X + tw, 0, trunk_h + 0.2, lambda x, y: np.abs(x - X) <= tw, VEGETATION, bias=_EPS)
    cv.frontal(Z, X - 1.3 * r, X + 1.3 * r, cy - 1.4 * r, cy + 1.4 * r, _blob(X, cy, r, rng), VEGETATION, bias=_EPS)


def _thick(cv, Z, w):
    """A thickness of at least one pixel at depth Z, so thin things (legs, poles) never break up."""
    return max(w, 1.05 * Z / cv.f)


def _pole(cv, X, Z, height, width=0.18):
    width = _thick(cv, Z, width)
    cv.frontal(Z, X - width / 2, X + width / 2, 0, height, lambda x, y: np.abs(x - X) <= width / 2, POLE, bias=_EPS)


def _sign(cv, X, Z, y, size, kind):
    """A sign plate centred at (X, y): 0 = disc, 1 = rectangle, 2 = triangle."""
    s = size / 2
    if kind == 0:
        shape = lambda x, yy: (x - X) ** 2 + (yy - y) ** 2 <= s * s  # noqa: E731
    elif kind == 1:
        shape = lambda x, yy: (np.abs(x - X) <= s * 1.2) & (np.abs(yy - y) <= s * 0.8)  # noqa: E731
    else:
        shape = lambda x, yy: np.abs(x - X) <= (y + s - yy) * 0.6  # noqa: E731  (apex up)
    cv.frontal(Z, X - 1.3 * s, X + 1.3 * s, y - s, y + s, shape, SIGN, bias=2 * _EPS)


def _traffic_light(cv, X, Z, y_top, rng):
    """A light housing (0.35 x 0.95 m) hanging from y_top."""
    w, h = 0.35, 0.95 * _uniform(rng, 0.9, 1.1)
    cv.frontal(Z, X - w / 2, X + w / 2, y_top - h, y_top, lambda x, y: np.ones_like(x + y, bool), LIGHT, bias=2 * _EPS)


def _person(cv, X, Z, rng):
    s = _uniform(rng, 1.55, 1.92) / 1.75
    stride = _uniform(rng, 0.0, 0.12)
    bag = rng.random() < 0.3
    lw = _thick(cv, Z, 0.14) / 2  # leg half-width

    def shape(x, y):
        v = x - X
        head = (v / 0.1) ** 2 + ((y - 1.62 * s) / 0.12) ** 2 <= 1
        shoulder = 0.21 - 0.05 * np.clip((1.45 * s - y) / (0.55 * s), 0, 1)
        torso = (y >= 0.86 * s) & (y <= 1.53 * s) & (np.abs(v) <= shoulder)  # up to the chin
        arms = (y >= 0.78 * s) & (y <= 1.45 * s) & (np.abs(v) > shoulder) & (np.abs(v) <= shoulder + 0.07)
        t = np.clip((0.9 * s - y) / (0.9 * s), 0, 1)  # 0 at the hips, 1 at the feet
        spread = 0.085 + stride * t
        legs = (y <= 0.9 * s) & ((np.abs(v + spread) <= lw) | (np.abs(v - spread) <= lw))
        out = head | torso | arms | legs
        if bag:
            out |= (y >= 0.75 * s) & (y <= 1.05 * s) & (v >= shoulder) & (v <= shoulder + 0.25)
        return out

    cv.frontal(Z, X - 0.6, X + 0.6, 0, 1.8 * s, shape, PERSON, bias=_EPS)


def _vehicle(cv, Xc, Z0, kind, rng):
    """A car / bus / truck with its near end at depth Z0 and centre line X = Xc, as boxes:
    the near end face, the long side facing the camera (if any) and, for cars, the top of the
    body (boot) below the camera and a narrower cabin box set back from the near end."""
    solid = lambda a, b: np.ones(np.broadcast(a, b).shape, bool)  # noqa: E731
    if kind == CAR:
        w, L = _uniform(rng, 1.7, 1.95), _uniform(rng, 4.0, 4.9)
        top, belt, r = _uniform(rng, 1.4, 1.6), _uniform(rng, 0.85, 1.0), 0.32
        c0, c1 = _uniform(rng, 0.12, 0.3) * L, _uniform(rng, 0.68, 0.8) * L  # cabin extent
    else:
        w = 2.55 if kind == BUS else _uniform(rng, 2.3, 2.5)
        L = _uniform(rng, 11, 13) if kind == BUS else _uniform(rng, 7, 9)
        top, belt, r = (_uniform(rng, 3.0, 3.3) if kind == BUS else _uniform(rng, 2.9, 3.6)), None, 0.5
    half = w / 2
    clear = 0.6 * r  # ground clearance of the body
    side_sign = -1 if Xc > half else 1 if Xc < -half else 0  # side facing the camera
    w1, w2 = (0.85, L - 0.9) if kind == CAR else (1.6, L - 2.0)

    def wheels_end(x, y):
        v = np.abs(x - Xc)
        return (y < clear + 0.02) & (v >= half - 0.33) & (v <= half - 0.03)

    def wheels_side(dz, y):
        return ((dz - w1) ** 2 + (y - r) ** 2 <= r * r) | ((dz - w2) ** 2 + (y - r) ** 2 <= r * r)

    body_top = belt if belt is not None else top
    # near end (rear or front); no rounded corners: they would notch the silhouette where the side shows
    cv.frontal(
        Z0,
        Xc - half,
        Xc + half,
        0,
        body_top,
        lambda x, y: ((y >= clear) & (np.abs(x - Xc) <= half)) | wheels_end(x, y),
        kind,
        bias=_EPS,
    )
    if side_sign:
        sx = Xc + side_sign * half

        def prof(dz, y):
            body = y >= clear
            if kind == TRUCK:  # cargo box at the near end, a lower cab at the far end
                body = body & ((dz <= L - 2.2) | (y <= top - 0.6))
            return body | wheels_side(dz, y)

        cv.lateral(sx, Z0, Z0 + L, 0, body_top, prof, kind, bias=_EPS)
    if belt is None:
        return
    cv.horizontal(belt, Xc - half, Xc + half, Z0, Z0 + L, solid, CAR, bias=_EPS)  # boot and bonnet
    ch = half - 0.1
    rise = lambda y: np.clip((y - belt) / (top - belt), 0, 1)  # noqa: E731
    cv.frontal(Z0 + c0, Xc - ch, Xc + ch, belt, top, solid, CAR, bias=_EPS)  # rear window
    if side_sign:  # side windows, the windscreen slanting back at the far end
        cv.lateral(
            Xc + side_sign * ch,
            Z0 + c0,
            Z0 + c1,
            belt,
            top,
            lambda dz, y: dz <= c1 - c0 - 0.6 * rise(y),
            CAR,
            bias=_EPS,
        )
    if top < cv.hc:  # a roof seen from above (high camera, low car)
        cv.horizontal(top, Xc - ch + 0.25, Xc + ch - 0.25, Z0 + c0 + 0.35, Z0 + c1 - 0.45, solid, CAR, bias=_EPS)


# ---------------------------------------------------------------------- the street


def _side_blocks(rng, z_end):
    """Blocks along one side of the street: (z0, z1, kind, height profile, setback)."""
    blocks, z = [], 0.3
    while z < z_end:
        length = _uniform(rng, 8, 35)
        r = rng.random()
        kind = "building" if r < 0.62 else "park" if r < 0.82 else "hedge"
        if kind == "building":
            height = _uniform(rng, 5, 24)
            prof = lambda t, h=height: np.full_like(t, h)  # noqa: E731
        elif kind == "park":
            prof = _bumpy(rng, _uniform(rng, 6, 13), _uniform(rng, 1, 3))
        else:
            prof = _bumpy(rng, _uniform(rng, 2.5, 6), _uniform(rng, 0.3, 1.2))
        setback = _uniform(rng, 0, 2.5) if kind == "building" else _uniform(rng, 0.5, 4)
        barrier = int(rng.integers(0, 3)) if kind == "park" else 0  # none / fence / wall
        blocks.append((z, min(z + length, z_end), kind, prof, setback, barrier))
        z += length
    return blocks


def _draw_blocks(cv, blocks, edge, sign, rng):
    """Facades of one side. `edge` = |X| of the sidewalk's outer edge, `sign` = -1 left, +1 right.
    Returns (z starts, ground class beyond the sidewalk per block) for the ground pass."""
    starts, ground = [], []
    for z0, z1, kind, prof, setback, barrier in blocks:
        X = sign * (edge + setback)
        starts.append(z0)
        ground.append(SIDEWALK if kind == "building" else TERRAIN)
        top = float(prof(np.linspace(z0, z1, 64)).max()) + 0.1
        cls = BUILDING if kind == "building" else VEGETATION
        if kind == "park":  # trees further back, a low fence or wall at the front
            Xt = X + sign * _uniform(rng, 2, 8)
            cv.lateral(Xt, z0, z1, 0, top, lambda dz, y, p=prof, a=z0: y <= p(dz + a), VEGETATION)
            cv.frontal(
                z0,
                min(X, Xt + sign * 30),
                max(X, Xt + sign * 30),
                0,
                top,
                lambda x, y, p=prof, a=z0: y <= p(np.full_like(x, a)),
                VEGETATION,
            )
            if barrier:
                bh = _uniform(rng, 0.9, 1.6)
                bcls = FENCE if barrier == 1 else WALL
                cv.lateral(X, z0, z1, 0, bh, lambda dz, y: np.ones_like(dz + y, bool), bcls)
            continue
        cv.lateral(X, z0, z1, 0, top, lambda dz, y, p=prof, a=z0: y <= p(dz + a), cls)
        # the end face of the block (visible where the previous block is set back or lower)
        cv.frontal(
            z0,
            min(X, X + sign * 30),
            max(X, X + sign * 30),
            0,
            top,
            lambda x, y, p=prof, a=z0: y <= p(np.full_like(x, a)),
            cls,
        )
    return np.array(starts), np.array(ground)


def street_layout(seed: int, size: tuple[int, int] = (256, 512)) -> np.ndarray:
    """An (H, W) int64 map of Cityscapes class indices: a random street scene for `seed`.

    Deterministic per seed; the scene (not the pixels) is independent of `size`."""
    H, W = int(size[0]), int(size[1])
    if H < 8 or W < 8:
        raise InputError(f"layout size {H}x{W} is too small (at least 8x8)")
    rng = np.random.default_rng(seed)
    # camera
    f = W * _uniform(rng, 1.0, 1.2)
    hc = _uniform(rng, 1.2, 1.5)
    yh = H * _uniform(rng, 0.38, 0.48)
    xv = W * _uniform(rng, 0.42, 0.58)
    cv = _Canvas((H, W), f, hc, yh, xv)
    # street cross-section (X: metres to the right of the camera)
    lanes = int(rng.integers(2, 5))
    lane_w = _uniform(rng, 3.0, 3.5)
    ego_lane = int(rng.integers(0, lanes))
    lane_l = (ego_lane + _uniform(rng, 0.35, 0.65)) * lane_w  # travel lanes from X = -lane_l to lane_r
    lane_r = lanes * lane_w - lane_l
    park_l, park_r = (2.2 if rng.random() < 0.65 else 0.0 for _ in range(2))  # parking strips
    left, right = lane_l + park_l, lane_r + park_r  # the road: X from -left to right
    sw_l, sw_r = _uniform(rng, 2.0, 4.5), _uniform(rng, 2.0, 4.5)
    z_end = _uniform(rng, 120, 260)
    blocks_l, blocks_r = _side_blocks(rng, z_end), _side_blocks(rng, z_end)

    # ground: road, sidewalks, and beyond them sidewalk or terrain depending on the block
    starts_l, ground_l = _draw_blocks(cv, blocks_l, left + sw_l, -1, rng)
    starts_r, ground_r = _draw_blocks(cv, blocks_r, right + sw_r, +1, rng)
    below = cv.v > 0
    rows = slice(int(np.argmax(below)), H) if below.any() else slice(H, H)
    v = cv.v[rows][:, None]
    Zg = f * hc / v * np.ones((1, W))
    Xg = cv.u[None, :] * hc / v
    beyond_l = ground_l[np.clip(np.searchsorted(starts_l, Zg, side="right") - 1, 0, len(ground_l) - 1)]
    beyond_r = ground_r[np.clip(np.searchsorted(starts_r, Zg, side="right") - 1, 0, len(ground_r) - 1)]
    cls = np.where(Xg < -left - sw_l, beyond_l, np.where(Xg > right + sw_r, beyond_r, SIDEWALK))
    cls = np.where((Xg >= -left) & (Xg <= right), ROAD, cls)
    cv.paint(rows, slice(0, W), np.ones(cls.shape, bool), Zg + _EPS, cls)

    # far end of the street: a row of buildings or trees closing the view (sometimes open)
    if rng.random() < 0.6:
        x = -left - sw_l - 40
        while x < right + sw_r + 40:
            wdt = _uniform(rng, 8, 25)
            kind = BUILDING if rng.random() < 0.75 else VEGETATION
            h = _uniform(rng, 6, 30) if kind == BUILDING else _uniform(rng, 5, 12)
            cv.frontal(z_end, x, x + wdt, 0, h, lambda X, Y, h=h: Y <= h, kind)
            x += wdt

    # kerbside furniture: street lamps, sign posts, trees; a traffic-light crossing
    for sign_, curb in ((-1, left + 0.45), (+1, right + 0.45)):
        z = _uniform(rng, 7, 18)
        while z < min(z_end, 110):
            X = sign_ * curb
            r = rng.random()
            if r < 0.4:  # street lamp: tall pole with an arm over the road
                h = _uniform(rng, 6, 9)
                _pole(cv, X, z, h, width=_uniform(rng, 0.16, 0.26))
                arm = _uniform(rng, 1.0, 2.2)
                xs = sorted((X, X - sign_ * arm))
                cv.frontal(
                    z, xs[0], xs[1], h - _thick(cv, z, 0.15), h, lambda x, y: np.ones_like(x + y, bool), POLE, bias=_EPS
                )
            elif r < 0.7:  # sign post
                h = _uniform(rng, 2.4, 3.4)
                _pole(cv, X, z, h, width=0.1)
                _sign(cv, X, z, h - 0.35, _uniform(rng, 0.55, 0.85), int(rng.integers(0, 3)))
                if rng.random() < 0.4:
                    _sign(cv, X, z, h - 1.1, _uniform(rng, 0.45, 0.7), 1)
            else:  # tree on the sidewalk
                _tree(cv, sign_ * (curb + _uniform(rng, 0.3, 1.2)), z, rng)
            z += _uniform(rng, 9, 28)
    z_light = _uniform(rng, 14, 45)
    for sign_, curb in ((-1, left + 0.5), (+1, right + 0.5)):
        if sign_ == 1 and rng.random() < 0.3:
            continue
        X = sign_ * curb
        h = _uniform(rng, 3.2, 4.2)
        _pole(cv, X, z_light, h + 0.1)
        _traffic_light(cv, X, z_light, h + 0.1, rng)
        if rng.random() < 0.5:  # a mast arm over the road with hanging lights
            ha = _uniform(rng, 5.3, 6.2)
            reach = _uniform(rng, 3, min(7, lanes * lane_w - 1))
            _pole(cv, X, z_light, ha + 0.1)
            xs = sorted((X, X - sign_ * reach))
            cv.frontal(
                z_light,
                xs[0],
                xs[1],
                ha + 0.05 - _thick(cv, z_light, 0.17),
                ha + 0.05,
                lambda x, y: np.ones_like(x + y, bool),
                POLE,
                bias=_EPS,
            )
            for t in rng.uniform(0.5, 1.0, int(rng.integers(1, 3))):
                _traffic_light(cv, X - sign_ * reach * t, z_light, ha - 0.1, rng)

    # vehicles: parked in the parking strips along the kerbs, traffic in the lanes
    for sign_, edge, strip in ((-1, left, park_l), (+1, right, park_r)):
        if strip:
            z = _uniform(rng, 6, 16)
            while z < 90:
                if rng.random() < 0.6:
                    _vehicle(cv, sign_ * (edge - 1.1 - _uniform(rng, 0, 0.15)), z, CAR, rng)
                z += _uniform(rng, 4.8, 9) if rng.random() < 0.8 else _uniform(rng, 10, 25)
    for lane in range(lanes):
        Xc = -lane_l + (lane + 0.5) * lane_w + _uniform(rng, -0.3, 0.3)
        z = _uniform(rng, 8, 25) if lane != ego_lane else _uniform(rng, 10, 30)
        while z < 100 and rng.random() < 0.75:
            r = rng.random()
            kind = CAR if r < 0.92 else BUS if r < 0.96 else TRUCK
            _vehicle(cv, Xc, z, kind, rng)
            z += _uniform(rng, 14, 40)

    # pedestrians on the sidewalks
    for _ in range(int(rng.integers(2, 8))):
        sign_ = -1 if rng.random() < 0.5 else 1
        edge, sw = (left, sw_l) if sign_ < 0 else (right, sw_r)
        _person(cv, sign_ * (edge + _uniform(rng, 0.6, sw - 0.3)), 8 + 40 * float(rng.random()) ** 1.5, rng)
    return cv.label


def street_layouts(n: int, seed: int = 0, size: tuple[int, int] = (256, 512)) -> np.ndarray:
    """(n, H, W) layouts for seeds seed, seed+1, ..."""
    return np.stack([street_layout(seed + i, size) for i in range(n)])


def write_layouts(
    out: str | Path,
    n: int = 4,
    seed: int = 0,
    size: tuple[int, int] = (256, 512),
    color: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Write layouts as grey trainId maps `layout_<seed>_trainIds.png` (255 = void; read back
    with `get_space("cityscapes").read(p)` or encoding "index"), plus `layout_<seed>_color.png`
    previews when `color`. Existing files are refused (before anything is written) unless
    `overwrite`. Returns the written paths."""
    from .data import check_size
    from .utils import check_writable_dir

    if n < 1:
        raise InputError(f"-n must be at least 1 (got {n})")
    size = check_size(size, "--size")
    space = get_space("cityscapes")
    out = Path(out)
    kinds = [("trainIds", False)] + ([("color", True)] if color else [])
    plan = [(s, out / f"layout_{s:05d}_{kind}.png", c) for s in range(seed, seed + n) for kind, c in kinds]
    existing = [p for _, p, _ in plan if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{len(existing)} layout file(s) already exist, e.g. {existing[0]}; pass --overwrite to replace them"
        )
    check_writable_dir(out)
    written, ids = [], None
    for s, path, c in plan:
        if not c:  # the trainIds file comes first for each seed; its colour preview reuses the map
            ids = street_layout(s, size)
        save_label(path, ids, space, color=c)
        written.append(path)
    return written
