"""Faithful presets: the original's vivid tone mapping, the transformation network's theta in the
original's pixel units, and SIMS refusing to upsample bank photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import spsolve

from semsynth.models import build_model
from semsynth.models.sims import warp
from semsynth.vivid import TONE_MAPS, srgb_to_lab, vivid, wls_filter, wls_matrix


def test_wls_filter_solves_the_original_system():
    rng = np.random.default_rng(0)
    L = np.clip(np.cumsum(rng.normal(0, 3, (24, 40)), 1) + 50, 1, 100)
    exact = spsolve(wls_matrix(L, 0.5, 1.2).tocsc(), L.ravel()).reshape(L.shape)  # the original's direct solve
    got = wls_filter(L, 0.5, 1.2)
    assert np.abs(got - exact).max() < 1e-3
    assert got.std() < L.std()  # it smooths


def test_vivid_brightens_and_saturates_like_the_original(shared):
    from semsynth.data import _read_rgb, resize_image

    photo = next((shared / "data" / "cityscapes" / "leftImg8bit" / "train").rglob("*.png"))
    rgb = resize_image(_read_rgb(photo), (64, 128))
    out = vivid(rgb)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    lab_in, lab_out = srgb_to_lab(rgb / 255.0), srgb_to_lab(out / 255.0)
    chroma = lambda lab: np.hypot(lab[..., 1], lab[..., 2]).mean()  # noqa: E731
    assert lab_out[..., 0].mean() > lab_in[..., 0].mean() + 3  # the 0.75 gamma lifts the dull photos
    assert chroma(lab_out) > 1.05 * chroma(lab_in)  # saturation 1.1 in every tone map
    assert all(t[4] == 1.1 for t in TONE_MAPS)


def test_dataset_applies_vivid_after_resizing_and_caches_it(shared, tmp_path):
    from semsynth.data import open_dataset

    root = shared / "data" / "cityscapes"
    plain = open_dataset(root, size=(32, 64), cache="disk", cache_dir=tmp_path)
    viv = open_dataset(root, size=(32, 64), cache="disk", cache_dir=tmp_path, vivid=True)
    a, b = plain.arrays(0)[1], viv.arrays(0)[1]
    assert np.array_equal(np.asarray(b), vivid(np.asarray(a)))
    assert np.array_equal(np.asarray(viv.arrays(0)[1]), np.asarray(b))  # second read: from the cache


def test_transform_theta_is_in_the_original_pixel_units():
    net = build_model("sims-transform-tiny")
    assert net.config.theta_units == "pixels"
    with torch.no_grad():
        net.fc.bias.copy_(torch.tensor([1.0, 0, 4.0, 0, 1.0, -2.0]))  # +4 px in x, -2 px in y
    seg = torch.zeros(1, 3, 32, 64)
    seg[..., 10, 20] = 1
    with torch.no_grad():
        moved = warp(seg, net(seg, torch.ones(1, 1, 32, 64), torch.zeros(1, 20, 32, 64)))[0, 0]
    # output pixel (y, x) samples input (y - 2, x + 4): the dot at (10, 20) lands at (12, 16)
    assert moved[12, 16] == pytest.approx(1.0, abs=1e-5) and float(moved.sum()) == pytest.approx(1.0, abs=1e-4)
    old = build_model({"arch": "sims-transform", "work_size": [32, 64], "width_mult": 1 / 16})
    assert old.config.theta_units == "normalised"  # checkpoints from before keep their meaning


def test_sims_pipeline_refuses_to_upsample_bank_photos(shared, tmp_path):
    from semsynth.data import open_dataset
    from semsynth.errors import InputError
    from semsynth.labels import get_space
    from semsynth.sims.bank import build_bank
    from semsynth.sims.pipeline import SIMSPipeline

    build_bank(
        open_dataset(shared / "data" / "cityscapes", space="cityscapes"),
        tmp_path / "bank",
        size=(16, 32),
        rgb_scale=1,
        progress=False,
    )
    net = build_model("sims-tiny")  # native 32x64: twice the bank's 16x32 photos
    with pytest.raises(InputError, match=r"--rgb-scale 2"):
        SIMSPipeline(net, get_space("cityscapes"), tmp_path / "bank", device=torch.device("cpu"))
    pipe = SIMSPipeline(
        net, get_space("cityscapes"), tmp_path / "bank", device=torch.device("cpu"), allow_upsampled_bank=True
    )
    assert pipe.size == (32, 64)
