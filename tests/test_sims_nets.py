"""SIMS networks (transformation, ordering, synthesis) and their training tasks.

Everything runs on tiny synthetic street scenes written in the official Cityscapes layout
(labelIds, photos and disparity maps), so no shared data is needed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from semsynth.labels import get_space
from semsynth.models import build_model, count_parameters
from semsynth.models.sims import (
    front_probability,
    invert_theta,
    jitter_theta,
    normalized_to_pixel,
    pair_input,
    pixel_to_normalized,
    snap_theta,
    tf_pool,
    warp,
)

SPACE = get_space("cityscapes")
C = SPACE.num_classes
# Cityscapes labelIds and trainIds used by the synthetic scenes
LID = {"road": 7, "sidewalk": 8, "building": 11, "pole": 17, "vegetation": 21, "sky": 23, "person": 24, "car": 26}
TID = {n: SPACE.names.index(n) for n in LID}


def make_scene(rng: np.random.Generator, H: int, W: int):
    """(labelIds, RGB uint8, disparity float; 0 = unknown) of a simple street: sky, a building and
    a tree at the horizon, sidewalk and road below, cars on the road, a person and a pole."""
    lab = np.full((H, W), LID["sky"], np.uint8)
    disp = np.zeros((H, W))
    hz = int(H * rng.uniform(0.4, 0.5))
    rows = np.arange(H)[:, None].repeat(W, 1).astype(float)
    b0, b1 = int(W * rng.uniform(0.0, 0.2)), int(W * rng.uniform(0.5, 0.7))
    lab[int(H * 0.12) : hz, b0:b1] = LID["building"]
    disp[int(H * 0.12) : hz, b0:b1] = 3
    v0 = int(W * rng.uniform(0.72, 0.8))
    lab[int(H * 0.25) : hz, v0:] = LID["vegetation"]
    disp[int(H * 0.25) : hz, v0:] = 3.5
    sw = hz + max(2, int(H * 0.08))
    lab[hz:sw] = LID["sidewalk"]
    lab[sw:] = LID["road"]
    ground = 4 + 60 * (rows - hz) / (H - hz)
    disp[hz:] = ground[hz:]
    for _ in range(int(rng.integers(1, 3))):  # cars: on the road, nearer than what is behind
        h, w = int(H * rng.uniform(0.14, 0.22)), int(W * rng.uniform(0.14, 0.22))
        y1 = int(rng.integers(sw + h // 2, H))
        x0 = int(rng.integers(0, W - w))
        lab[max(y1 - h, 0) : y1, x0 : x0 + w] = LID["car"]
        disp[max(y1 - h, 0) : y1, x0 : x0 + w] = 4 + 60 * (y1 - hz) / (H - hz) + 3
    px = int(rng.integers(b0 + 2, max(b0 + 3, b1 - 6)))
    ph = int(H * 0.3)
    lab[hz + 2 - ph : hz + 2, px : px + max(2, W // 40)] = LID["person"]
    disp[hz + 2 - ph : hz + 2, px : px + max(2, W // 40)] = 30
    lab[int(H * 0.2) : sw, int(W * 0.65) : int(W * 0.65) + 2] = LID["pole"]
    disp[int(H * 0.2) : sw, int(W * 0.65) : int(W * 0.65) + 2] = 20
    # photo: class colour plus a smooth texture that differs per image
    ids = SPACE.decode_ids(lab, "labelId")
    pal = np.vstack([SPACE.colors, [[0, 0, 0]]]).astype(float)
    yy, xx = np.mgrid[0:H, 0:W].astype(float)
    ph1, ph2 = rng.uniform(0, 6, 2)
    tex = 35 * np.sin(xx / 3.1 + ph1)[..., None] * np.cos(yy / 4.3 + ph2)[..., None] * np.array([1.0, 0.6, -0.8])
    rgb = np.clip(pal[ids] * 0.8 + 25 + tex, 0, 255).astype(np.uint8)
    return lab, rgb, disp


def make_cityscapes(root, n: int = 4, size=(64, 128), seed: int = 0, disparity: bool = True, split="train"):
    """A Cityscapes-layout folder (gtFine labelIds, leftImg8bit, disparity) of synthetic scenes."""
    rng = np.random.default_rng(seed)
    H, W = size
    for i in range(n):
        lab, rgb, disp = make_scene(rng, H, W)
        stem = f"synth_{i:06d}_000019"
        for sub, arr, suffix in (("gtFine", lab, "_gtFine_labelIds"), ("leftImg8bit", rgb, "_leftImg8bit")):
            p = root / sub / split / "synth" / f"{stem}{suffix}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(p)
        if disparity:
            p = root / "disparity" / split / "synth" / f"{stem}_disparity.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            raw = np.where(disp > 0, disp * 256 + 1, 0).astype(np.uint16)
            Image.fromarray(raw).save(p)
    return root


@pytest.fixture(scope="module")
def cs(tmp_path_factory):
    return make_cityscapes(tmp_path_factory.mktemp("sims_cs"), n=4, size=(64, 128))


# ----------------------------------------------------------------------------- architectures


def _count(name: str) -> int:
    with torch.device("meta"):  # parameter counts without allocating 56M floats
        return count_parameters(build_model(name))


def test_official_parameter_counts_match_the_spec():
    n256, n512, n1024 = (_count(f"sims-synthesis-{r}") for r in ("256p", "512p", "1024p"))
    assert n256 == 55_671_319 and abs(n256 - 55.7e6) < 0.05e6  # spec B.6.3: ~55.7M
    assert n512 == 56_138_903 and abs(n512 - 56.1e6) < 0.05e6  # ~56.1M
    assert n1024 - n512 == 27 * 3 + 3  # one 1x1 conv 27 -> 3
    # transformation: 5-stage encoder on 24 channels + 512 -> 6; ordering: on 6 channels + 1024 + 20
    assert _count("sims-transform") == 14_734_086
    assert _count("sims-order") == 15_267_476


def test_synthesis_shapes_and_channels():
    with torch.device("meta"):
        m = build_model("sims-synthesis-256p")
    first = m.encoder[0][0].conv
    assert first.in_channels == 24 and first.out_channels == 64  # 20 label + 3 canvas + 1 mask
    assert [b[0].conv.in_channels for b in m.decoder] == [536, 1048, 1048, 792, 664, 600]
    assert m.final[0].conv.in_channels == 280 and m.sem_256.out_channels == 20
    m = build_model("sims-tiny")
    y, s = m(torch.zeros(2, 20, 32, 64), torch.rand(2, 3, 32, 64))
    assert y.shape == (2, 3, 32, 64) and s.shape == (2, 20, 32, 64)
    m = build_model({"arch": "sims-synthesis", "stages": 2, "levels": 2, "width_mult": 1 / 16})
    y, s = m(torch.zeros(1, 20, 64, 128), torch.rand(1, 3, 64, 128))
    assert y.shape == (1, 3, 64, 128) and s.shape == (1, 20, 32, 64)  # semantic head at half size
    with pytest.raises(ValueError, match="divisible"):
        m(torch.zeros(1, 20, 40, 128), torch.rand(1, 3, 40, 128))


@pytest.mark.parametrize("stages", [0, 1, 2])
def test_canvas_skip_starts_as_the_canvas_and_learns_a_correction(stages):
    """canvas_skip (not in SIMS): output = canvas + correction where the canvas holds photo pixels;
    the correction starts at zero, so known pixels pass through and the rest start grey."""
    torch.manual_seed(0)
    m = build_model(
        {"arch": "sims-synthesis", "stages": stages, "levels": 2, "width_mult": 1 / 16, "canvas_skip": True}
    )
    H, W = 32 * 2**stages, 64 * 2**stages
    canvas = torch.rand(1, 3, H, W)
    canvas[..., : H // 4, :] = 1.0  # elision white: not "known"
    canvas[..., H // 4 : H // 2, :] = 0.0  # a hole
    support = (canvas.sum(1, keepdim=True) > 0).float()
    label = F.one_hot(torch.randint(0, 20, (1, H, W)), 20).permute(0, 3, 1, 2).float()
    out, _ = m(label, canvas, support)
    known = (support > 0) & ~(canvas == 1).all(1, keepdim=True)
    assert torch.equal(out[known.expand_as(out)], canvas[known.expand_as(canvas)])
    assert torch.allclose(out[~known.expand_as(out)], torch.tensor(0.5))
    out.mean().backward()  # the head learns from step 1
    head = m.rgb_256 if stages == 0 else m.rgb_512 if stages == 1 else m.rgb_1024
    assert head.weight.grad.abs().sum() > 0
    plain = build_model({"arch": "sims-synthesis", "stages": stages, "levels": 2, "width_mult": 1 / 16})
    assert not torch.allclose(
        plain(label, canvas, support)[0][known.expand_as(out)], canvas[known.expand_as(canvas)], atol=0.05
    )  # off: the original net


def test_progressive_stages_share_parameter_names():
    shapes = {
        s: {
            k: v.shape
            for k, v in build_model({"arch": "sims-synthesis", "stages": s, "levels": 3, "width_mult": 1 / 16})
            .state_dict()
            .items()
        }
        for s in (0, 1, 2)
    }
    backbone = {k for k in shapes[0] if not k.startswith(("rgb_256", "sem_256"))}
    assert backbone and all(shapes[1].get(k) == shapes[0][k] for k in backbone)
    assert all(shapes[2].get(k) == v for k, v in shapes[1].items())  # 512 -> 1024: everything carries
    assert set(shapes[2]) - set(shapes[1]) == {"rgb_1024.weight", "rgb_1024.bias"}


def test_tf_same_pooling():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # windows start at 0, 2; the last one covers rows/cols 2..3 plus one padded row/col
    assert torch.equal(tf_pool(x, "max"), torch.tensor([[[[10.0, 11.0], [14.0, 15.0]]]]))
    avg = tf_pool(x, "avg")
    assert torch.allclose(avg[0, 0, 1, 1], x[0, 0, 2:, 2:].mean())  # padding not counted
    assert torch.allclose(tf_pool(torch.ones(1, 2, 6, 10), "avg"), torch.ones(1, 2, 3, 5))


# ----------------------------------------------------------------------------- spatial transformer


def _smooth(H, W):
    yy, xx = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    img = torch.stack(
        [
            0.5 + 0.4 * torch.sin(xx / 5 + yy / 7),
            0.5 + 0.4 * torch.cos(yy / 4 - xx / 9),
            0.5 + 0.4 * torch.sin((xx + yy) / 6),
        ]
    )[None]
    return img, yy, xx


def test_warp_identity_and_coordinates_are_pixel_exact():
    img = torch.rand(2, 3, 7, 10)
    ident = torch.eye(2, 3).expand(2, 2, 3)
    assert torch.allclose(warp(img, ident), img, atol=1e-6)  # last row/column included
    # a whole-pixel shift in pixel space is an exact roll with zero fill
    th = pixel_to_normalized(torch.tensor([[[1.0, 0, 2], [0, 1, -1]]]), 7, 10)  # src = dst + (2, -1)
    out = warp(img[:1], th)
    assert torch.allclose(out[0, :, 1:, :8], img[0, :, :6, 2:], atol=1e-5)
    assert out[0, :, 0].abs().max() < 1e-5 and out[0, :, :, 8:].abs().max() < 1e-5
    p = torch.randn(3, 2, 3, dtype=torch.float64)
    assert torch.allclose(normalized_to_pixel(pixel_to_normalized(p, 7, 10), 7, 10), p)


def test_snap_gives_identity_linear_part_and_whole_pixel_shifts():
    H, W = 12, 20
    th = pixel_to_normalized(torch.tensor([[[0.99, -0.01, 4.45], [0.003, 0.998, -0.7]]], dtype=torch.float64), H, W)
    px = normalized_to_pixel(snap_theta(th, H, W), H, W)[0]
    assert torch.allclose(px[:, :2], torch.eye(2, dtype=torch.float64))
    assert torch.allclose(px[:, 2], torch.tensor([4.0, -1.0], dtype=torch.float64))  # param.mat's +4, -1
    img = torch.rand(1, 3, H, W)
    out = warp(img, snap_theta(th, H, W).float())
    assert torch.allclose(out[0, :, 1:, : W - 4], img[0, :, : H - 1, 4:], atol=1e-5)  # no resampling blur


def test_jitter_then_inverse_restores_the_segment():
    H, W = 48, 96
    img, yy, xx = _smooth(H, W)
    mask = ((((xx - 45) / 22) ** 2 + ((yy - 24) / 13) ** 2) < 1).float()[None, None]
    J = jitter_theta(
        torch.tensor([[45.5, 24.5]]),
        torch.tensor([1.08]),
        torch.tensor([math.radians(4.0)]),
        torch.tensor([[3.0, -2.0]]),
        H,
        W,
    )
    moved = warp(img * mask, J)
    assert (moved - img * mask).abs().mean() > 0.02
    back = warp(moved, invert_theta(J))
    inner = F.max_pool2d(1 - mask, 5, 1, 2) == 0  # away from the segment border
    assert (back - img).abs()[inner.expand_as(img)].max() < 0.05


def test_stn_recovers_a_known_jitter():
    """Gradient descent on the original's masked L1 through the warp finds the inverse of a known
    scale + rotation + shift (to a fraction of a pixel), directly and through the tiny network."""
    from semsynth.tasks.sims import transform_loss

    torch.manual_seed(0)
    H, W = 32, 64
    img, yy, xx = _smooth(H, W)
    mask = ((((xx - 30) / 15) ** 2 + ((yy - 16) / 9) ** 2) < 1).float()[None, None]
    J = jitter_theta(
        torch.tensor([[30.5, 16.5]]),
        torch.tensor([1.06]),
        torch.tensor([math.radians(4.0)]),
        torch.tensor([[1.5, -1.0]]),
        H,
        W,
    )
    seg = warp(img * mask, J)  # the "retrieved", misplaced segment
    owner = torch.zeros(1, dtype=torch.long)
    pts = torch.stack([xx[mask[0, 0] > 0] + 0.5, yy[mask[0, 0] > 0] + 0.5, torch.ones(int(mask.sum()))])
    target = normalized_to_pixel(invert_theta(J), H, W)[0] @ pts

    def px_error(theta):
        return float((normalized_to_pixel(theta.detach(), H, W)[0] @ pts - target).norm(dim=0).max())

    assert px_error(torch.eye(2, 3)[None]) > 2.5
    theta = torch.eye(2, 3)[None].clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=8e-3)
    for _ in range(60):
        loss, _ = transform_loss(theta, seg, mask, img, owner)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert px_error(theta) < 0.6  # max over the segment; bilinear blur floor ~0.4

    net = build_model("sims-transform-tiny")
    label = F.one_hot(torch.zeros(1, H, W, dtype=torch.long), 20).permute(0, 3, 1, 2).float()
    assert px_error(net(seg, mask, label)) > 2.5  # identity at initialisation
    opt = torch.optim.Adam(net.parameters(), lr=4e-3)
    for _ in range(40):
        loss, _ = transform_loss(net(seg, mask, label), seg, mask, img, owner)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert px_error(net(seg, mask, label)) < 1.0


# ----------------------------------------------------------------------------- ordering


def test_pair_input_and_front_probability():
    lab = torch.full((1, 4, 6), C, dtype=torch.long)
    lab[0, :, :3] = TID["car"]
    lab[0, :, 3:] = TID["road"]
    ma, mb = (lab == TID["car"]), (lab == TID["road"])
    ma[0, 0, 0] = False
    pair, layout = pair_input(lab, ma, mb, torch.as_tensor(SPACE.colors))
    assert pair.shape == layout.shape == (1, 3, 4, 6)
    assert torch.equal(pair[0, :, 0, 0], torch.zeros(3))
    assert torch.allclose(pair[0, :, 1, 1] * 255, torch.tensor([0.0, 0, 142]))  # car colour
    logits = torch.zeros(2, 20)
    logits[:, TID["car"]] = 2.0
    a = torch.tensor([TID["car"], TID["road"]])
    b = torch.tensor([TID["road"], TID["car"]])
    p = front_probability(logits, a, b)
    assert p[0] > 0.85 and torch.allclose(p[0] + p[1], torch.tensor(1.0))


def test_order_pairs_from_disparity(cs):
    from semsynth.data import open_dataset
    from semsynth.tasks.sims import OrderPairs, _depth_index

    base = open_dataset(cs, space=SPACE, size=(64, 128))
    index = _depth_index(cs / "disparity" / "train")
    files = [index[n] for n in base.names]
    ds = OrderPairs(base, SPACE, files)
    seen = {}
    for i in range(len(ds)):
        pairs, segs = ds.pairs(i, ds.arrays(i)[0])
        for a, b, front in pairs:
            key = frozenset((int(segs.cls[a]), int(segs.cls[b])))
            seen.setdefault(key, set()).add(front)
    car, road, bld, veg, side = (TID[n] for n in ("car", "road", "building", "vegetation", "sidewalk"))
    assert seen[frozenset((car, road))] == {car}  # object beats planar
    assert seen[frozenset((bld, side))] == {side}  # sidewalk nearer than building
    assert frozenset((bld, TID["sky"])) not in seen  # sky has no disparity: no label
    ex = ds[0]
    assert ex["mask_a"].shape == (10, 64, 128) and ex["target"].dtype == torch.long
    valid = ex["target"] != -100
    assert valid.any() and not (ex["mask_a"][~valid].any() or ex["mask_b"][~valid].any())


# ----------------------------------------------------------------------------- training data


def test_jittered_segments(cs):
    from semsynth.data import open_dataset
    from semsynth.tasks.sims import JitteredSegments

    ds = JitteredSegments(open_dataset(cs, space=SPACE, size=(64, 128)), SPACE, draws=2)
    assert len(ds) == 8
    a, b = ds[1], ds[1]
    assert torch.equal(a["jitter"], b["jitter"])  # deterministic per (image, draw)
    assert not torch.equal(ds[1]["jitter"], ds[5]["jitter"])  # draw 2 of the same image
    n = int(a["valid"].sum())
    assert n >= 3 and not a["masks"][n:].any()
    px = normalized_to_pixel(a["jitter"][:n].double(), 64, 128)
    scale = torch.linalg.det(px[:, :, :2]).abs().sqrt()  # warp's map is the inverse jitter
    assert ((1 / scale > 0.9 - 1e-4) & (1 / scale < 1.1 + 1e-4)).all()


def test_synthesis_canvases_follow_the_recipe(cs, tmp_path):
    from semsynth.data import open_dataset
    from semsynth.tasks.sims import SynthesisCanvases, training_bank

    base = open_dataset(cs, space=SPACE, size=(64, 128))
    bank = training_bank(base, SPACE, tmp_path / "bank", (64, 128), progress=False)
    ds = SynthesisCanvases(base, SPACE, bank, draws=2, pool=2, colour_transfer=0.0, progress=False)
    assert len(ds) == 2 * len(base)
    for i in range(len(base)):  # retrieved from 2 *other* images only
        for d in range(2):
            got = ds._ids[i, d][ds._ids[i, d] >= 0]
            src = set(bank.image[got].tolist())
            assert len(got) and ds.bank_of[i] not in src and len(src) <= 2
    assert any(not np.array_equal(ds._ids[i, 0], ds._ids[i, 1]) for i in range(len(base)))  # draws differ
    a = ds[0]
    canvas, img = a["canvas"], a["image"]
    white = (canvas == 1).all(0)
    empty = (canvas == 0).all(0)
    same = (canvas - img).abs().amax(0) < 1e-6
    assert (white | empty | same).all()  # the photo's own pixels only
    assert same.float().mean() > 0.2 and white.float().mean() > 0.02
    assert torch.equal(a["support"][0] > 0, ~empty)
    changed = a["label"] != a["label_gt"]
    assert changed.any() and (a["label"][changed] == SPACE.void).all()  # corruption only voids
    assert torch.equal(ds[0]["canvas"], canvas)  # reproducible
    ds1 = SynthesisCanvases(base, SPACE, bank, draws=1, pool=2, colour_transfer=1.0, progress=False)
    b = ds1[0]
    pasted = ~((b["canvas"] == 1).all(0) | (b["canvas"] == 0).all(0))
    assert (b["canvas"] - b["image"]).abs().amax(0)[pasted].mean() > 0.01  # recoloured
    assert b["canvas"].min() >= 0 and b["canvas"].max() <= 1


def test_1024_variant_loss_keeps_the_pixel_term_at_full_size(cs):
    """VGG layers on half-size images, the pixel term at full size; CE against the layout
    nearest-resized to the semantic head's half size (synthesis_1024_2048.py:251-264)."""
    from semsynth.tasks.sims import SynthesisTask
    from semsynth.train import load_config

    cfg = load_config("sims-tiny", {"data.path": str(cs), "loss.pretrained": False, "data.size": [64, 128]})
    cfg["model_overrides"] = {"native": [64, 128], "stages": 2, "levels": 2}
    task = SynthesisTask(cfg, SPACE, torch.device("cpu"))
    batch = torch.utils.data.default_collate([task.dataset(cfg)[0]])
    loss, logs = task.loss(task.model, batch)
    canvas, label = batch["canvas"], batch["label"]
    with torch.no_grad():
        rgb, sem = task.model(F.one_hot(label, 20).permute(0, 3, 1, 2).float(), canvas, batch["support"])
        prep = task.loss_fn.backbone.prepare
        full = (prep(rgb) - prep(batch["image"])).abs().mean()
    assert sem.shape[-2:] == (32, 64) and torch.isfinite(loss)
    assert float(logs["layer/input"]) == pytest.approx(float(full), rel=1e-4)


def test_lr_schedules():
    from semsynth.tasks.sims import schedule_lr
    from semsynth.train import load_config

    s256 = load_config("sims-256p")["optim"]
    lr = lambda e: schedule_lr(s256["schedule"], e, s256["lr"])  # noqa: E731
    assert lr(1) == pytest.approx(1e-6) and lr(73) < 1e-3 and lr(74) == pytest.approx(1e-3)
    assert lr(112) == pytest.approx(1e-3) and lr(113) == pytest.approx(1e-4) and lr(800) == pytest.approx(1e-4)
    so = load_config("sims-order")["optim"]
    assert schedule_lr(so["schedule"], 25, so["lr"]) < 1e-5 and schedule_lr(so["schedule"], 26, so["lr"]) == 1e-5
    st = load_config("sims-transform")["optim"]
    assert schedule_lr(st.get("schedule"), 50, st["lr"]) == 1e-5


# ----------------------------------------------------------------------------- tiny training runs


@pytest.mark.parametrize(
    "preset,overrides",
    [
        ("sims-tiny", {"loss.pretrained": False}),
        ("sims-transform", {"model": "sims-transform-tiny", "data.size": [64, 128]}),
        ("sims-order", {"model": "sims-order-tiny", "data.size": [64, 128]}),
    ],
)
def test_tiny_training_runs(cs, tmp_path, preset, overrides):
    from semsynth.checkpoint import load_model, read_metadata
    from semsynth.train import load_config, train

    cfg = load_config(
        preset,
        {
            "data.path": str(cs),
            "steps": 2,
            "optim.batch_size": 2,
            "data.workers": 0,
            "log_every": 1,
            "sample_every": 2,
            "save_every": 2,
            "device": "cpu",
            **overrides,
        },
    )
    if preset == "sims-tiny":
        cfg["data"]["size"] = [64, 128]
        cfg["model_overrides"] = {"native": [64, 128]}
    folder = train(cfg, tmp_path / "run", progress=False)
    model, meta = load_model(folder)
    assert meta["task"] == cfg["task"] and read_metadata(tmp_path / "run")["step"] == 2
    assert (tmp_path / "run" / "samples" / "step_0000002.png").is_file()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(np.isfinite(__import__("json").loads(ln)["loss"]) for ln in lines)


def test_order_task_without_disparity_says_why(tmp_path):
    from semsynth.labels import get_space as gs
    from semsynth.tasks.sims import OrderTask
    from semsynth.train import load_config

    root = make_cityscapes(tmp_path / "cs", n=1, disparity=False)
    cfg = load_config("sims-order", {"data.path": str(root), "model": "sims-order-tiny"})
    task = OrderTask(cfg, gs("cityscapes"), torch.device("cpu"))
    with pytest.raises(FileNotFoundError, match="disparity"):
        task.dataset(cfg)


def test_cli_sims_train(cs, tmp_path):
    from semsynth.checkpoint import read_metadata
    from semsynth.cli import main

    assert (
        main(
            [
                "sims",
                "train",
                "transform",
                "--data",
                str(cs),
                "--out",
                str(tmp_path / "t"),
                "--steps",
                "1",
                "--device",
                "cpu",
                "--set",
                "model=sims-transform-tiny",
                "data.size=[32,64]",
                "data.workers=0",
            ]
        )
        == 0
    )
    assert read_metadata(tmp_path / "t")["task"] == "sims-transform"


def test_sims_tasks_take_the_data_path_forms_crn_takes(tmp_path, monkeypatch):
    # data.path as a list of folders and as 'shared:<folder>', as for crn; the order task finds
    # each folder's own disparity maps
    from semsynth.labels import get_space as gs
    from semsynth.tasks.sims import OrderTask, TransformTask
    from semsynth.train import load_config

    make_cityscapes(tmp_path / "shared" / "a", n=2, seed=1)
    make_cityscapes(tmp_path / "b", n=3, seed=2)
    monkeypatch.setenv("SEMSYNTH_SHARED", str(tmp_path / "shared"))
    paths = ["shared:a", str(tmp_path / "b")]
    cfg = load_config("sims-order", {"data.path": paths, "model": "sims-order-tiny"})
    ds = OrderTask(cfg, gs("cityscapes"), torch.device("cpu")).dataset(cfg)
    assert ds.num_images == 5 and len({p.parent.parent.parent.parent.name for p in ds.depth_files}) == 2
    cfg = load_config("sims-transform", {"data.path": "shared:a", "model": "sims-transform-tiny"})
    assert TransformTask(cfg, gs("cityscapes"), torch.device("cpu")).dataset(cfg).num_images == 2
