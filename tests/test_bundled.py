"""Every model shipped in semsynth/assets loads by name and synthesizes a layout.

The SIMS model needs a memory bank, which semsynth never ships (the Cityscapes terms forbid
redistributing its photos): here it is built from synthetic scenes, so the test runs anywhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_sims_nets import make_cityscapes

from semsynth.checkpoint import ASSETS, BUNDLED, read_metadata
from semsynth.layouts import street_layout
from semsynth.pipelines import load_pipeline
from semsynth.sims.bank import build_bank

SHIPPED = sorted(p.name for p in ASSETS.iterdir() if (p / "model.safetensors").is_file())


def test_the_bundled_models_are_there_and_named():
    assert {"default", "sims-cityscapes"} <= set(SHIPPED)
    for name in SHIPPED:
        assert name in BUNDLED and (ASSETS / name / "MODEL_CARD.md").is_file()
        assert (ASSETS / name / "model.safetensors").stat().st_size <= 25_000_000


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    from semsynth.data import open_dataset

    root = make_cityscapes(tmp_path_factory.mktemp("bundled_cs"), n=3, size=(64, 128), disparity=False)
    return build_bank(
        open_dataset(root, space="cityscapes"),
        tmp_path_factory.mktemp("bundled_bank") / "bank",
        size=(64, 128),
        rgb_scale=2,
        progress=False,
    )  # photos at the model size


@pytest.mark.parametrize("name", SHIPPED)
def test_each_bundled_model_synthesizes_a_layout(name, bank):
    sims = read_metadata(name)["task"] == "sims-synthesis"
    pipe = load_pipeline(name, device="cpu", **({"bank": bank} if sims else {}))
    H, W = pipe.size
    ids = street_layout(3, (H, W))
    imgs = pipe([ids], k=2 if sims else None)[0]  # every pipeline: (k, H, W, 3)
    assert imgs.shape == (2 if sims else pipe.k, H, W, 3) and imgs.dtype == np.uint8
    road, sky = ids == 0, ids == 10  # Cityscapes trainIds
    assert road.any() and sky.any()
    for im in imgs:  # a picture, not a flat field
        assert im.std() > 10
        assert np.abs(im[road].mean(0) - im[sky].mean(0)).max() > 10


def test_sims_variants_paste_other_candidates(bank, tmp_path):
    from semsynth.labels import save_label

    pipe = load_pipeline("sims-cityscapes", device="cpu", bank=bank)
    ids = street_layout(5, pipe.size)
    save_label(tmp_path / "lay.png", ids, pipe.space)
    written = pipe.synthesize_files([tmp_path / "lay.png"], tmp_path / "out", k=3, grid=True, progress=False)
    assert sorted(p.name for p in written) == ["lay_grid.png", "lay_k0.png", "lay_k1.png", "lay_k2.png"]
    r = pipe.retrieve(ids)
    assert (pipe.choice(r, 0) is None) and ((r.ids[:, 1] >= 0) & r.searched).any()
    picks = [pipe.choice(r, v) for v in (1, 2)]
    assert all(((c >= 0) & (c < 3)).all() for c in picks)
    assert all((r.ids[np.arange(len(c)), c][r.searched] >= 0).all() for c in picks)  # only real candidates
    canvases = [pipe.run(ids, variant=v, retrieval=r).canvas.bank_ids for v in range(3)]
    assert any(not np.array_equal(canvases[0], c) for c in canvases[1:])
    with pytest.raises(FileExistsError):
        pipe.synthesize_files([tmp_path / "lay.png"], tmp_path / "out", k=3, progress=False)


def test_demo_shows_sims_beside_crn(bank, tmp_path):
    from semsynth.demo import run_demo

    index = run_demo(tmp_path / "demo", n=2, model="default", bank=bank.path, progress=False)
    page = index.read_text()
    assert "SIMS canvas" in page and "SIMS output" in page and "output 3" in page
    for name in ("street_0000_sims.png", "street_0000_sims_canvas.png", "street_0001_sims.png"):
        assert (tmp_path / "demo" / "outputs" / name).is_file(), name


# Block means (8x8 pixels, x100) of the bundled models' outputs for street layout 3, computed
# with the code before the pipelines were unified (fp32); refactors must keep these pixels.
PIXELS = Path(__file__).parent / "data" / "bundled_pixels.npz"


@pytest.mark.parametrize("name,k", [("default", None), ("sims-cityscapes", 2)])
def test_bundled_models_keep_their_pixels(name, k, bank):
    if name not in SHIPPED:
        pytest.skip(f"bundled model {name!r} is not installed")
    ref = np.load(PIXELS)[name].astype(np.float64) / 100
    pipe = load_pipeline(name, device="cpu", precision="fp32", **({"bank": bank} if k else {}))
    imgs = pipe([street_layout(3, pipe.size)], k=k)[0]
    n, H, W, _ = imgs.shape
    got = imgs.reshape(n, H // 8, 8, W // 8, 8, 3).astype(np.float64).mean((2, 4))
    assert got.shape == ref.shape
    # a pixel off by one level moves its block mean by 1/64: at most a few such per block
    assert np.abs(got - ref).max() < 0.1 and np.abs(got - ref).mean() < 0.01
