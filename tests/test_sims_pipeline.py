"""SIMS inference end to end: memory bank -> retrieval -> alignment -> ordering -> canvas ->
synthesis, step by step and in one call, on tiny synthetic scenes and untrained tiny networks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_sims_nets import make_cityscapes

from semsynth.checkpoint import save_model
from semsynth.labels import get_space, save_label
from semsynth.models import build_model, model_config
from semsynth.models.sims import normalized_to_pixel
from semsynth.precision import holds_bf16

SPACE = get_space("cityscapes")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A bank of 6 synthetic scenes (segments at 32x64, RGB at 64x128), tiny checkpoints of the
    three networks, and two query label maps."""
    from semsynth.data import open_dataset
    from semsynth.sims.bank import build_bank

    root = tmp_path_factory.mktemp("sims_pipe")
    cs = make_cityscapes(root / "cs", n=6, size=(64, 128), seed=1)
    build_bank(open_dataset(cs, space=SPACE), root / "bank", size=(32, 64), rgb_scale=2, progress=False)
    torch.manual_seed(0)
    ckpts = {}
    for name, preset, task, extra in (
        ("synthesis", "sims-tiny", "sims-synthesis", {"native": [64, 128]}),
        ("transform", "sims-transform-tiny", "sims-transform", {}),
        ("order", "sims-order-tiny", "sims-order", {}),
    ):
        cfg = model_config(preset, num_classes=SPACE.num_classes, **extra)
        model = build_model(cfg)
        if name == "transform":  # a transformation net that moves every segment by (+2, -1) px
            with torch.no_grad():  # (the preset's theta is in the original's pixel units)
                model.fc.bias.copy_(torch.tensor([1.0, 0, 2.0, 0, 1, -1.0]))
        if name == "order":  # an order net sure that cars are in front
            with torch.no_grad():
                model.fc2.bias[SPACE.names.index("car")] = 20.0
        ckpts[name] = save_model(root / name / "model.safetensors", model, cfg, SPACE, task)
    queries = []
    q_root = make_cityscapes(root / "queries", n=2, size=(64, 128), seed=7, disparity=False)
    for i, p in enumerate(sorted((q_root / "gtFine").rglob("*_labelIds.png"))):
        save_label(root / "labels" / f"query{i}.png", SPACE.read(p), SPACE)  # colour maps
        queries.append(root / "labels" / f"query{i}.png")
    return {"root": root, "bank": root / "bank", "queries": queries, **ckpts}


def test_step_by_step(world):
    from semsynth.sims.pipeline import PairwiseOrder, SIMSPipeline

    pipe = SIMSPipeline.from_pretrained(
        world["synthesis"], bank=world["bank"], transform=world["transform"], order=world["order"], device="cpu"
    )
    assert pipe.size == (64, 128)
    label = SPACE.read(world["queries"][0])
    r = pipe.retrieve(label)
    assert r.searched.any() and (r.ids[r.searched, 0] >= 0).all()
    theta = pipe.align(r)
    assert theta.shape == (len(r.query), 2, 3)
    px = normalized_to_pixel(torch.from_numpy(theta[r.searched]), 64, 128)
    assert torch.allclose(px[:, :, :2], torch.eye(2, dtype=torch.float64).expand(len(px), 2, 2))
    assert torch.allclose(px[:, :, 2], torch.tensor([2.0, -1.0], dtype=torch.float64))  # snapped shift
    front = pipe.order(r)
    assert isinstance(front, PairwiseOrder)
    cls = r.query.cls
    car = SPACE.names.index("car")
    cars, others = np.flatnonzero(r.searched & (cls == car)), np.flatnonzero(r.searched & (cls != car))
    assert len(cars) and len(others)
    i, j = int(cars[0]), int(others[0])
    assert front(i, j) and not front(j, i) and front.prob(i, j) == pytest.approx(1 - front.prob(j, i))
    canvas = pipe.compose_canvas(r, theta, front)
    assert canvas.rgb.shape == (64, 128, 3) and canvas.rgb.dtype == np.uint8
    assert canvas.support.mean() > 0.2 and canvas.label.shape == (64, 128)
    img = pipe.synthesize(canvas)
    assert img.shape == (64, 128, 3) and img.dtype == np.uint8
    # without the optional networks: unmoved segments in the class-order prior
    plain = SIMSPipeline.from_pretrained(world["synthesis"], bank=world["bank"], device="cpu")
    assert plain.align(r) is None and plain.order(r) is None
    assert plain.synthesize(plain.compose_canvas(r)).shape == (64, 128, 3)


def test_one_call_and_files(world, tmp_path):
    from semsynth.pipelines import load_pipeline

    pipe = load_pipeline(
        world["synthesis"], device="cpu", bank=world["bank"], transform=world["transform"], order=world["order"]
    )
    images = pipe([SPACE.read(q) for q in world["queries"]])
    assert len(images) == 2 and all(im.shape == (1, 64, 128, 3) for im in images)  # k = 1 by default
    assert np.array_equal(pipe(world["queries"][0])[0], images[0])  # deterministic
    out = pipe(world["queries"][0], k=2, return_intermediates=True)  # the one output shape, + steps
    assert out.images[0].shape == (2, 64, 128, 3) and np.array_equal(out.images[0][0], images[0][0])
    assert [r.image.shape for r in out.intermediates[0]] == [(64, 128, 3)] * 2
    assert np.array_equal(out.intermediates[0][1].image, out.images[0][1])
    other = pipe(world["queries"][0], k=2, seed=5)[0]  # seed: of canvases and variants
    assert np.array_equal(other, pipe(world["queries"][0], k=2, seed=5)[0]) and pipe.seed == 0
    out = tmp_path / "out"
    written = pipe.synthesize_files([world["root"] / "labels"], out, save_intermediates=True, progress=False)
    names = {p.name for p in written}
    for stem in ("query0", "query1"):
        assert {
            f"{stem}.png",
            f"{stem}_canvas.png",
            f"{stem}_layout.png",
            f"{stem}_segments.png",
            f"{stem}_segments.json",
        } <= names
    info = json.loads((out / "query0_segments.json").read_text())
    chosen = [s for s in info["segments"] if s["bank_segment"] >= 0]
    assert chosen and all(s["source_image"].startswith("synth_") for s in chosen)
    with pytest.raises(FileExistsError):
        pipe.synthesize_files([world["queries"][0]], out, progress=False)


def test_wrong_inputs_say_why(world):
    from semsynth.sims.pipeline import SIMSPipeline

    with pytest.raises(ValueError, match="memory bank"):
        SIMSPipeline.from_pretrained(world["synthesis"])
    with pytest.raises(ValueError, match="'sims-order' checkpoint, expected 'sims-synthesis'"):
        SIMSPipeline.from_pretrained(world["order"], bank=world["bank"])


def test_cli_synthesize_with_a_bank(world, tmp_path):
    from semsynth.cli import main

    out = tmp_path / "cli"
    assert (
        main(
            [
                "synthesize",
                str(world["synthesis"]),
                "--bank",
                str(world["bank"]),
                str(world["queries"][1]),
                "-o",
                str(out),
                "--save-intermediates",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert {p.name for p in out.iterdir()} >= {"query1.png", "query1_canvas.png", "query1_segments.png"}
    assert (
        main(["synthesize", str(world["synthesis"]), str(world["queries"][1]), "-o", str(out / "x"), "--device", "cpu"])
        == 2
    )  # no --bank: one clear error


def test_precision_of_all_three_networks(world):
    """bf16 runs the synthesis, transformation and ordering networks in bf16 (their convolutions
    return bf16 values: `precision.holds_bf16`), and
    agrees with fp32 within a tolerance; the thetas stay exact enough to snap identically."""
    from semsynth.sims.pipeline import SIMSPipeline

    def load(prec):
        return SIMSPipeline.from_pretrained(
            world["synthesis"],
            bank=world["bank"],
            transform=world["transform"],
            order=world["order"],
            device="cpu",
            precision=prec,
        )

    fp32, bf16 = load("fp32"), load("bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    seen = {n: set() for n in bf16.networks}
    hooks = [
        next(m for m in getattr(bf16, n).modules() if isinstance(m, torch.nn.Conv2d)).register_forward_hook(
            lambda m, i, o, n=n: seen[n].add(holds_bf16(o))
        )
        for n in bf16.networks
    ]
    label = SPACE.read(world["queries"][0])
    r = bf16.retrieve(label)
    bf16.order(r).matrix()
    b = bf16(label)[0]
    for h in hooks:
        h.remove()
    assert seen == {n: {True} for n in bf16.networks}
    a = fp32(label)[0]
    assert np.array_equal(fp32.align(r), bf16.align(r))  # snapped: same placement
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 3  # bf16 ~ 3 significant digits
