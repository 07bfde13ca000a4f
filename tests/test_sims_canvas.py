"""SIMS class-order prior, MKL colour transfer and canvas composition.

The canvas tests use a tiny synthetic bank (32x64 segments, 64x128 photos) whose shapes are known,
so the invariants can be checked exactly: the support mask is the set of pixels holding pasted
content, and where retrieved segments overlap the later one in the class order (or the one the
pairwise order puts in front) owns the pixels."""

from __future__ import annotations

import numpy as np
import pytest

from semsynth.labels import get_space, save_label
from semsynth.sims.bank import build_bank
from semsynth.sims.canvas import (
    CanvasConfig,
    compose_canvas,
    elision_band,
    normalized_theta_to_pixel,
    pixel_theta_to_normalized,
    warp_crop,
)
from semsynth.sims.color_transfer import mkl_transfer, mkl_transfer_image
from semsynth.sims.order import (
    back_ratio,
    coarse_order,
    load_prior,
    occlusion_counts,
    order_from_counts,
    original_order,
    pair_relations,
    save_prior,
)
from semsynth.sims.retrieval import Retriever

SPACE = get_space("cityscapes")
ROAD, SIDEWALK, BUILDING, POLE, VEG, SKY, CAR = 0, 1, 2, 5, 8, 10, 13
VOID = 19


# ----------------------------------------------------------------------------- order prior


def test_order_from_counts_rules_and_other_spaces(tmp_path):
    counts = np.zeros((19, 19), np.int64)
    counts[SKY, BUILDING] = 10  # sky behind building
    counts[BUILDING, CAR] = 5
    counts[ROAD, CAR] = 7
    order = order_from_counts(counts)
    r = {c: int(np.flatnonzero(order == c)[0]) for c in (SKY, BUILDING, CAR, ROAD)}
    assert r[SKY] < r[BUILDING] < r[CAR] and r[ROAD] < r[CAR]
    # never-seen classes sit in the middle (ratio 0.5), in index order
    assert back_ratio(counts)[VEG] == 0.5
    with pytest.raises(KeyError, match="order-prior"):
        coarse_order("camvid")
    cam = get_space("camvid")
    c2 = np.zeros((11, 11), np.int64)
    c2[0, 1] = 3  # camvid sky behind building
    assert coarse_order(cam, counts=c2)[0] == 0
    p = save_prior(tmp_path / "prior.json", c2, cam)
    assert load_prior(p, cam)["order"] == coarse_order(cam, prior=p)
    with pytest.raises(ValueError, match="classes"):
        load_prior(p, SPACE)


def _street(h=256, w=512):
    lab = np.full((h, w), SKY, np.int64)
    lab[60:150, :] = BUILDING
    lab[150:180, :] = SIDEWALK
    lab[180:, :] = ROAD
    lab[140:200, 300:400] = CAR
    return lab


def test_occlusion_statistics_from_layouts_and_disparity():
    lab = _street()
    counts = occlusion_counts([lab], SPACE)
    assert counts[SKY, BUILDING] == 1 and counts[BUILDING, SKY] == 0  # lower side in front
    # (the car cuts the sidewalk into two segments)
    assert counts[BUILDING, SIDEWALK] == 2 and counts[SIDEWALK, BUILDING] == 0
    assert counts[ROAD, CAR] == 1 and counts[SIDEWALK, CAR] == 2  # planar behind things
    assert counts[BUILDING, CAR] == 1 and counts[CAR].sum() == 0
    assert counts.sum() == len(pair_relations(lab, SPACE))
    # with disparity the nearer (larger disparity) side is in front, even if it is higher
    disp = np.ones(lab.shape)
    disp[lab == SKY] = 50.0
    counts = occlusion_counts([lab], SPACE, disparities=[disp])
    assert counts[BUILDING, SKY] == 1 and counts[SKY, BUILDING] == 0
    assert counts[ROAD, CAR] == 1  # override still holds


# ----------------------------------------------------------------------------- colour transfer


def test_mkl_matches_mean_and_covariance():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(5000, 3)) @ np.array([[1.0, 0.2, 0.0], [0.0, 0.5, 0.1], [0.3, 0.0, 0.2]]) + 0.3
    tgt = rng.normal(size=(4000, 3)) @ np.array([[0.2, 0.0, 0.1], [0.1, 0.9, 0.0], [0.0, 0.3, 0.4]]) + 0.6
    out = mkl_transfer(src, tgt)
    assert np.allclose(out.mean(0), tgt.mean(0), atol=1e-9)
    assert np.allclose(np.cov(out, rowvar=False), np.cov(tgt, rowvar=False), atol=1e-6)
    assert np.allclose(mkl_transfer(src, src), src, atol=1e-6)  # same stats: unchanged
    flat = np.full((100, 3), 0.5)
    assert np.isfinite(mkl_transfer(flat, tgt)).all() and np.isfinite(mkl_transfer(src, flat)).all()
    img = (rng.random((8, 9, 3)) * 255).astype(np.uint8)
    ref = (rng.random((5, 5, 3)) * 100).astype(np.uint8)
    res = mkl_transfer_image(img, ref)
    assert res.dtype == np.uint8 and res.shape == img.shape and abs(res.mean() - ref.mean()) < 8


# ----------------------------------------------------------------------------- geometry


def test_theta_conventions():
    H, W = 64, 128
    ident = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    assert np.allclose(pixel_theta_to_normalized(ident, (H, W)), ident)
    px = np.array([[0.99172, -0.01177, 4.4514], [0.00348, 0.99770, -0.70064]])  # param.mat
    assert np.allclose(normalized_theta_to_pixel(pixel_theta_to_normalized(px, (H, W)), (H, W)), px)
    # the original's [1 0 4; 0 1 -1] samples 4 px to the right and 1 px up: content moves left/down
    t = pixel_theta_to_normalized(np.array([[1.0, 0, 4], [0, 1.0, -1]]), (H, W))
    planes = np.zeros((2, 10, 10), np.float32)
    planes[0, 2:8, 2:8] = 1
    planes[1] = np.arange(100, dtype=np.float32).reshape(10, 10)
    out, box = warp_crop(planes, (20, 40, 30, 50), t, (H, W))
    full_in = np.zeros((H, W))
    full_in[20:30, 40:50] = planes[1] * planes[0]
    full_out = np.zeros((H, W))
    y0, x0, y1, x1 = box
    full_out[y0:y1, x0:x1] = out[1] * (out[0] > 0.5)
    expect = np.zeros((H, W))
    expect[1:, :-4] = full_in[:-1, 4:]  # out(y, x) = in(y-1, x+4)
    assert np.allclose(full_out, expect)


# ----------------------------------------------------------------------------- synthetic bank

BH, BW = 32, 64  # bank size; photos at 2x


def _photo(label_bank, tint):
    """A 2x photo: class colour + per-image tint + texture (never pure black)."""
    rng = np.random.default_rng(tint)
    lab = np.repeat(np.repeat(label_bank, 2, 0), 2, 1)
    base = SPACE.colors[np.minimum(lab, 18)].astype(np.int64) // 2 + 40 + tint
    return np.clip(base + rng.integers(0, 30, base.shape), 1, 255).astype(np.uint8), lab


def _samples():
    a = np.full((BH, BW), SKY, np.int64)
    a[4:20, 0:44] = BUILDING
    a[20:, :] = ROAD
    b = np.full((BH, BW), SKY, np.int64)
    b[20:, :] = ROAD
    b[14:26, 30:50] = CAR
    out = []
    for name, lab, tint in (("a", a, 10), ("b", b, 60)):
        rgb, big = _photo(lab, tint)
        out.append({"name": name, "label": big, "image": rgb})
    return out


def _query(car_x=32):
    q = np.full((BH, BW), SKY, np.int64)
    q[4:18, 0:40] = BUILDING
    q[20:, :] = ROAD
    q[16:26, car_x : car_x + 18] = CAR
    q[0:2, 60:62] = VOID
    return q


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = tmp_path_factory.mktemp("toybank") / "bank"
    bank = build_bank(_samples(), out, space=SPACE, size=(BH, BW), rgb_scale=2, shard_images=1, progress=False)
    return bank, Retriever(bank)


PLAIN = CanvasConfig(elision_ratio=0, shadow_removal=False, vegetation_trim=False, outer_elision=False)


def _placed_mask(bank, b, size=(2 * BH, 2 * BW)):
    m = bank.full_mask(int(b))
    return np.repeat(np.repeat(m, size[0] // BH, 0), size[1] // BW, 1)


def _expected_owner(bank, res, cv, front=None):
    """Replay the painter's algorithm: later segments overwrite earlier ones, except where the
    pairwise order says the earlier one is in front; segments without a match erase."""
    exp = np.full(cv.owner.shape, -1)
    for j in cv.order:
        if cv.bank_ids[j] >= 0:
            t = _placed_mask(bank, cv.bank_ids[j])
            if front is not None:
                for p in np.unique(exp[t & (exp >= 0)]):
                    if front[p, j]:
                        t &= exp != p
            exp[t] = j
        else:
            qm = np.repeat(np.repeat(res.query.full_mask(j), 2, 0), 2, 1)
            exp[qm] = -1
    return exp


def test_canvas_support_is_pasted_content_and_order_is_respected(toy):
    bank, r = toy
    res = r.search(_query(), k=2)
    q = res.query
    cv = compose_canvas(bank, res, config=PLAIN)
    assert cv.rgb.shape == (64, 128, 3) and cv.rgb.dtype == np.uint8
    assert cv.support.shape == (64, 128) and cv.support.dtype == bool
    # support = pixels covered by pasted segments; content = the bank photo there; 0 elsewhere
    assert (cv.support == (cv.owner >= 0)).all()
    assert (cv.rgb[~cv.support] == 0).all() and (cv.rgb[cv.support] > 0).all()
    for j in np.flatnonzero(cv.bank_ids >= 0):
        s = bank.segment(cv.bank_ids[j])
        y0, x0, y1, x1 = (2 * v for v in s.bbox)
        mine = cv.owner[y0:y1, x0:x1] == j
        assert (cv.rgb[y0:y1, x0:x1][mine] == s.rgb[mine]).all()
    # back to front: visiting order follows the prior; overlaps belong to the later segment
    ranks = [list(original_order()).index(c) for c in q.cls[cv.order]]
    assert ranks == sorted(ranks)
    assert (cv.owner == _expected_owner(bank, res, cv)).all()
    j_car = int(np.flatnonzero(q.cls == CAR)[0])
    j_bld = int(np.flatnonzero(q.cls == BUILDING)[0])
    overlap = _placed_mask(bank, cv.bank_ids[j_car]) & _placed_mask(bank, cv.bank_ids[j_bld])
    assert overlap.sum() > 20 and (cv.owner[overlap] == j_car).all()
    # the revised layout follows the retrieved shapes (retrieved car box is 14..26 x 30..50)
    assert (cv.label[28:52, 60:100] == CAR).all()
    # pairwise override: the building is predicted in front of the car -> car cut away there
    front = np.zeros((len(q), len(q)), bool)
    front[j_bld, j_car] = True
    cv2 = compose_canvas(bank, res, config=PLAIN, front=front)
    assert (cv2.owner[overlap] == j_bld).all() and (cv2.owner == _expected_owner(bank, res, cv2, front)).all()
    assert (cv2.label[overlap] == BUILDING).all()
    cv3 = compose_canvas(bank, res, config=PLAIN, front=lambda prev, new: prev == j_bld and new == j_car)
    assert (cv3.owner == cv2.owner).all()
    # tensors for the synthesis network
    x, m = cv.tensors()
    assert x.shape == (3, 64, 128) and m.shape == (1, 64, 128) and float(x.max()) <= 1.0


def test_unmatched_segments_erase_and_context_fill(toy):
    bank, r = toy
    res = r.search(_query(), k=1)
    j_bld = int(np.flatnonzero(res.query.cls == BUILDING)[0])
    choice = np.zeros(len(res.query), np.int64)
    choice[j_bld] = -1  # as if nothing had been retrieved
    cv = compose_canvas(bank, res, config=PLAIN, choice=choice)
    qm = np.repeat(np.repeat(res.query.full_mask(j_bld), 2, 0), 2, 1)
    later = cv.order[cv.order.index(j_bld) + 1 :]
    assert np.isin(cv.owner[qm], [-1] + later).all()  # erased, unless pasted later
    empty = qm & (cv.owner == -1)
    assert empty.sum() > 0.8 * qm.sum()
    assert not cv.support[empty].any() and (cv.rgb[empty] == 0).all() and (cv.label[empty] == BUILDING).all()
    # the layout follows what was pasted; void only where nothing was
    own = cv.owner >= 0
    assert (cv.label[own] == res.query.cls[cv.owner[own]]).all()
    assert not own[cv.label == VOID].any()
    assert set(np.unique(cv.label)) <= {SKY, BUILDING, ROAD, CAR, VOID}


def test_elision_bands_and_outer_elision(toy):
    bank, r = toy
    res = r.search(_query(), k=1)
    plain = compose_canvas(bank, res, config=PLAIN)
    el = compose_canvas(
        bank, res, config=CanvasConfig(shadow_removal=False, vegetation_trim=False, outer_elision=False), rng=1
    )
    white = (el.rgb == 255).all(-1) & ~(plain.rgb == 255).all(-1)
    assert (el.support == plain.support).all()  # white pixels are support
    # the band of one segment alone: white pixels are a random half of its inner boundary band
    j_car = int(np.flatnonzero(res.query.cls == CAR)[0])
    only = np.full(len(res.query), -1)
    only[j_car] = 0
    one = compose_canvas(
        bank,
        res,
        choice=only,
        config=CanvasConfig(shadow_removal=False, vegetation_trim=False, outer_elision=False),
        rng=3,
    )
    car = _placed_mask(bank, one.bank_ids[j_car])
    band = elision_band(car, CanvasConfig().px(CanvasConfig().elision, 64))
    w1 = (one.rgb == 255).all(-1)
    assert w1.any() and not (w1 & ~band).any() and 0.3 < w1.sum() / band.sum() < 0.7
    assert (one.support == car).all()
    changed = (el.rgb != plain.rgb).any(-1)
    assert (changed == white).all()
    # same seed, same canvas
    assert (
        compose_canvas(bank, res, config=CanvasConfig(outer_elision=False), rng=1).rgb
        == compose_canvas(bank, res, config=CanvasConfig(outer_elision=False), rng=1).rgb
    ).all()
    # outer elision: canvas emptied on road/void around the car, within its extended box
    out = compose_canvas(bank, res, config=CanvasConfig(elision_ratio=0, shadow_removal=False))
    gone = plain.support & ~out.support
    assert gone.any()
    ys, xs = np.nonzero(gone)
    assert np.isin(out.label[gone], [ROAD, SIDEWALK, VOID]).all()
    from scipy import ndimage

    objects = np.isin(out.label, [BUILDING, CAR])
    se = CanvasConfig().px(CanvasConfig().outer_band, 64)
    near = ndimage.maximum_filter(objects.astype(np.uint8), se + 2).astype(bool)
    assert not (gone & ~near).any()  # in the band around objects
    assert ys.min() >= np.nonzero(objects)[0].min()  # not above them
    assert (out.rgb[gone] == 0).all()


def test_shadow_removal_cuts_source_vehicles_from_road(toy):
    bank, r = toy
    res = r.search(_query(), k=1)
    j_road = int(np.flatnonzero(res.query.cls == ROAD)[0])
    src = bank.image_names[bank.image[res.ids[j_road, 0]]]
    plain = compose_canvas(bank, res, config=PLAIN)
    sh = compose_canvas(bank, res, config=CanvasConfig(elision_ratio=0, vegetation_trim=False, outer_elision=False))
    lost = plain.support & ~sh.support
    assert src == "b"  # the road comes from the image with a car: a band around it is emptied
    assert lost.any() and (plain.owner[lost] == j_road).all()
    ys, xs = np.nonzero(lost)
    se = CanvasConfig().px(CanvasConfig().road_band, 64)
    assert xs.min() >= 60 - se and xs.max() < 100 + se and ys.min() >= 28 - se


def test_warp_is_kept_only_when_it_fits_the_query_better(toy):
    bank, r = toy
    res = r.search(_query(car_x=36), k=1)  # query car 4 bank px right of the bank car
    q = res.query
    j_car = int(np.flatnonzero(q.cls == CAR)[0])
    theta = np.tile(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (len(q), 1, 1))
    theta[j_car, 0, 2] = -2 * 8 / 128  # content moves 8 canvas px to the right
    cv = compose_canvas(bank, res, config=PLAIN, theta=theta)
    assert cv.warped[j_car] and cv.warped.sum() == 1
    base = compose_canvas(bank, res, config=PLAIN)
    s = bank.segment(cv.bank_ids[j_car])
    y0, x0, y1, x1 = (2 * v for v in s.bbox)
    assert (cv.owner[y0:y1, x0 + 8 : x1 + 8] == j_car).all()
    assert (cv.rgb[y0:y1, x0 + 8 : x1 + 8] == s.rgb).all()  # integer shift is exact
    assert (base.owner[y0:y1, x0:x1] == j_car).all()
    theta[j_car, 0, 2] = +2 * 8 / 128  # moving away fits worse: not used
    cv2 = compose_canvas(bank, res, config=PLAIN, theta=theta)
    assert not cv2.warped.any() and (cv2.owner == base.owner).all()
    with pytest.raises(ValueError, match="theta"):
        compose_canvas(bank, res, theta=np.zeros((2, 2, 3)))


def test_training_canvas_pastes_the_photo_where_retrieved_and_query_agree(toy):
    from semsynth.sims.canvas import training_canvas
    from semsynth.sims.segments import extract_segments

    bank, r = toy
    sample = _samples()[1]  # image "b" (id 1), left out of retrieval
    res = r.search(_query(), k=1, exclude_images=[1])
    plain = dict(rng=0, elision_ratio=0, recolor_p=0, corrupt_deg=0)
    cv = training_canvas(bank, res, sample["image"], **plain)
    got = cv.bank_ids[cv.bank_ids >= 0]
    assert len(got) and (bank.image[got] == 0).all()
    assert cv.support.any() and (cv.rgb[cv.support] == sample["image"][cv.support]).all()
    assert (cv.rgb[~cv.support] == 0).all() and (cv.support == (cv.owner >= 0)).all()
    q = extract_segments(_query(), 19, bank.thin)  # the query segments, same order
    up = lambda m: np.repeat(np.repeat(m, 2, 0), 2, 1)  # noqa: E731  (bank frame -> photo frame)
    void = np.zeros(cv.label.shape, bool)
    for j in np.flatnonzero(cv.bank_ids >= 0):  # pasted = retrieved mask ∧ query mask
        placed, qm = _placed_mask(bank, cv.bank_ids[j]), up(q.full_mask(j))
        assert not (cv.owner == j)[~(placed & qm)].any()
        void |= placed & ~qm
    assert (cv.label[void] == SPACE.void).all()  # the retrieved shape spills: void there
    base = up(_query())
    assert (cv.label[~void] == base[~void]).all()  # and nowhere else without corruption
    rec = training_canvas(bank, res, sample["image"], **{**plain, "recolor_p": 1})
    assert (rec.support == cv.support).all() and (rec.rgb != cv.rgb).any()
    other = _samples()[0]["image"]  # colours of the retrieved photo's box
    ref = training_canvas(
        bank, res, sample["image"], ref_image=lambda i: _samples()[i]["image"], **{**plain, "recolor_p": 1}
    )
    assert i_differs(ref.rgb, rec.rgb) and other.shape == sample["image"].shape
    wh = training_canvas(bank, res, sample["image"], **{**plain, "elision_ratio": 0.5})
    white = (wh.rgb == 255).all(-1) & ~(cv.rgb == 255).all(-1)
    assert white.any() and (wh.support >= cv.support).all()
    assert (white & ~cv.support).any()  # the band reaches outside the support too
    cor = training_canvas(bank, res, sample["image"], **{**plain, "corrupt_deg": 2.5})
    changed = cor.label != cv.label
    assert (cor.label[changed] == SPACE.void).all()  # corruption only voids


def i_differs(a: np.ndarray, b: np.ndarray) -> bool:
    return bool((a != b).any())


def test_cli_canvas_writes_inspection_images(toy, tmp_path, capsys):
    from PIL import Image

    from semsynth.cli import main

    bank, _ = toy
    f = tmp_path / "layout_001.png"
    save_label(f, _query(), SPACE)
    out = tmp_path / "out"
    assert main(["sims", "canvas", "--bank", str(bank.path), str(f), "-o", str(out), "--mode", "context"]) == 0
    assert "segments retrieved" in capsys.readouterr().out
    for kind in ("canvas", "support", "layout"):
        im = Image.open(out / f"layout_001_{kind}.png")
        assert im.size == (128, 64)


def test_canvas_from_a_bank_of_the_cityscapes_sample(cityscapes_sample, tmp_path):
    from semsynth.data import LayoutDataset, open_dataset
    from semsynth.sims.canvas import query_masks, render_segment

    root = cityscapes_sample  # the real sample in ../shared, or its synthetic stand-in
    ds = open_dataset(root, space=SPACE, size=(256, 512), cache=False)
    small = LayoutDataset(ds.items[:3], SPACE, size=(256, 512), cache=False)  # 3 pairs is enough
    bank = build_bank(small, tmp_path / "b", size=(128, 256), rgb_scale=2, progress=False)
    val = open_dataset(root, split="val", space=SPACE, require_images=False, cache=False)
    res = Retriever(bank).search(val.arrays(0)[0], mode="context")
    cv = compose_canvas(bank, res)
    assert cv.rgb.shape == (256, 512, 3) and 0.3 < cv.support.mean() < 1.0
    assert (cv.rgb[~cv.support] == 0).all()
    # network-side helpers: full-frame query masks and retrieved segments at the canvas size
    qm = query_masks(res, (256, 512))
    assert qm.shape == (len(res.query), 256, 512) and (qm.sum((1, 2)) >= res.query.area).all()
    j = int(np.flatnonzero(res.searched)[0])
    rgb, m = render_segment(bank, res.ids[j, 0], (256, 512))
    assert m.sum() == 4 * bank.area[res.ids[j, 0]] and (rgb[~m] == 0).all() and (rgb[m] > 0).any()


def test_clip_to_query_keeps_the_layout_and_pastes_inside_each_query(toy):
    from dataclasses import replace

    from semsynth.sims.segments import extract_segments

    bank, r = toy
    res = r.search(_query(car_x=40), k=1)
    free = compose_canvas(bank, res, config=PLAIN)
    clip = compose_canvas(bank, res, config=replace(PLAIN, clip_to_query=True, context_fill=False))
    up = lambda m: np.repeat(np.repeat(m, 2, 0), 2, 1)  # noqa: E731  (bank frame -> canvas frame)
    assert (clip.label == up(_query(car_x=40))).all()  # the layout as given
    q = extract_segments(_query(car_x=40), 19, bank.thin)
    for j in np.flatnonzero(clip.bank_ids >= 0):
        assert not (clip.owner == j)[~up(q.full_mask(j))].any()  # nothing outside its query segment
    assert (clip.support <= free.support).all() and (free.label != clip.label).any()
