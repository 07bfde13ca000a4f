"""Tests that exist to check REAL files of ../shared: the original SIMS class-order prior, the
released ESPNet and SqueezeNet weights on real photos, training on real JPEG pairs. They skip,
with the reason, where the shared folder is absent. Everything else that needs a dataset runs on
the synthetic one of tests/synthetic.py (trainer, SIMS and evaluation tests never skip)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from semsynth.cli import main as cli
from semsynth.evaluate import Segmenter, evaluate
from semsynth.labels import get_space
from semsynth.sims.order import (
    back_ratio,
    coarse_order,
    load_order_frequency,
    load_prior,
    order_from_counts,
    original_order,
)
from semsynth.utils import shared_dir

SPACE = get_space("cityscapes")
MAT = shared_dir() / "reference" / "sims_priors" / "order_frequency.mat"
needs_mat = pytest.mark.skipif(not MAT.is_file(), reason=f"SIMS priors not found at {MAT} (set SEMSYNTH_SHARED)")


# ----------------------------------------------------------------------------- SIMS order prior


@needs_mat
def test_prior_order_from_order_frequency_equals_the_original_order():
    freq = load_order_frequency()
    assert freq.shape == (19, 19) and freq[0, 13] == 4949 and freq[10, 2] == 2472
    order = order_from_counts(freq)
    assert order.tolist() == original_order().tolist()
    assert [SPACE.names[c] for c in order[:3]] == ["sky", "building", "terrain"]
    assert back_ratio(freq)[6] == 0.0 and order[-1] == 6  # traffic light last
    assert coarse_order(SPACE) == original_order().tolist()


@needs_mat
def test_cli_order_prior(capsys, tmp_path):
    assert cli(["sims", "order-prior", "-o", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "sky" in out[1] and "building" in out[2] and "traffic light" in out[19]
    assert load_prior(tmp_path / "p.json")["order"] == original_order().tolist()


# ----------------------------------------------------------------------------- evaluation judges


@pytest.mark.parametrize("lab, flags", [("lab", ["--label-space", "camvid"]), ("valannot", [])])
def test_builtin_espnet_on_two_camvid_photos(data, tmp_path, lab, flags):
    """`semsynth evaluate <photos> --labels <annot> --label-space camvid` with the built-in judge;
    a SegNet-style `valannot/` folder is recognised as CamVid without the flag."""
    if not (data.parent / "weights" / "decoder_espnet_p_2_q_8_camvid.pth").is_file():
        pytest.skip("CamVid ESPNet weights not found")
    for stem in sorted(p.stem for p in (data / "camvid" / "val").glob("*.jpg"))[:2]:
        (tmp_path / "img").mkdir(exist_ok=True)
        (tmp_path / lab).mkdir(exist_ok=True)
        shutil.copy(data / "camvid" / "val" / f"{stem}.jpg", tmp_path / "img")
        shutil.copy(data / "camvid" / "valannot" / f"{stem}.png", tmp_path / lab)
    rc = cli(
        [
            "evaluate",
            str(tmp_path / "img"),
            "--labels",
            str(tmp_path / lab),
            *flags,
            "-o",
            str(tmp_path / "rep"),
            "--thumbnails",
            "0",
        ]
    )
    assert rc == 0
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["protocol"]["segmenter"]["name"] == "espnet-camvid"
    assert rep["segmentation"]["images"]["pixel_accuracy"] > 0.9


class _Road(Segmenter):
    """A judge that sees road everywhere (the segmentation is not what this test looks at)."""

    def __init__(self):
        super().__init__("road", "cityscapes")

    def predict(self, images):
        return torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.long)


def test_floor_below_flat_colours_against_photos(tmp_path, shared):
    """End to end with SqueezeNet features: flat class colours vs Cityscapes photos are clearly
    different, so the matched fake-vs-real FD and KID sit above the real split-half floor."""
    from semsynth.evaluate.diversity import _squeezenet_available
    from semsynth.labels import colorize

    if not _squeezenet_available():
        pytest.skip("SqueezeNet weights not found in the shared weights")
    cs = SPACE
    city = shared / "data" / "cityscapes"
    for lab in sorted((city / "gtFine" / "train").rglob("*_labelIds.png")):
        stem = lab.name.replace("_gtFine_labelIds.png", "")
        ids = cs.read(lab)[::16, ::16]
        (tmp_path / "labels").mkdir(exist_ok=True)
        Image.fromarray(np.where(ids == cs.void, 255, ids).astype(np.uint8)).save(
            tmp_path / "labels" / f"{stem}_gtFine_trainIds.png"
        )
        for d, arr in (
            ("flat", colorize(ids, cs)),
            ("real", Image.open(next(city.rglob(f"{stem}_leftImg8bit.png"))).resize((128, 64))),
        ):
            (tmp_path / d).mkdir(exist_ok=True)
            Image.fromarray(np.asarray(arr)).save(tmp_path / d / f"{stem}.png")
    rep = evaluate(
        tmp_path / "flat",
        tmp_path / "labels",
        tmp_path / "real",
        segmenter=_Road(),
        fd_network="squeezenet1_1",
        thumbnails=0,
        bootstrap=50,
    )
    (d,) = rep["distribution"]
    floor, flat = d["real_split_half"], d["models"]["synthesized"]
    assert d["n_per_set"] == 4 and flat["n"] == floor["n"] == [4, 4]
    assert floor["fd"] < flat["fd"] and floor["kid"]["mean"] < flat["kid"]["mean"]
    assert floor["kid"]["std"] > 0


# ----------------------------------------------------------------------------- training on real pairs


def test_trains_on_real_jpeg_pairs(data, tmp_path):
    """The trainer on 4 real Cityscapes-sequence pairs (1024x512 JPEG photos, labelIds maps):
    real photos decode, resize and pair, and the pixel loss falls over a few steps."""
    from conftest import tiny_cfg

    from semsynth.train import train

    src = data / "cityscapes_sequences"
    stems = sorted(p.stem for p in (src / "labels").glob("*.png"))[:4]
    for sub, ext in (("images", ".jpg"), ("labels", ".png")):
        (tmp_path / "data" / sub).mkdir(parents=True)
        for s in stems:
            shutil.copy(src / sub / f"{s}{ext}", tmp_path / "data" / sub)
    cfg = tiny_cfg(tmp_path / "data", steps=20, **{"optim.lr": 3e-3, "optim.batch_size": 2})
    train(cfg, tmp_path / "run", progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 20 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < losses[0]
