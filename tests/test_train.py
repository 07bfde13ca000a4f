"""The shared trainer end to end on a tiny synthetic dataset (tests/synthetic.py): overfitting, exact resume, checkpoints,
synthesize on a folder, and two-process DDP on CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import tiny_cfg  # noqa: E402  (tiny_data, the fixture, comes from conftest too)
from PIL import Image
from safetensors.torch import load_file
from synthetic import write_labelids, write_paletted_labelids  # noqa: E402

from semsynth import checkpoint as ckpt
from semsynth.cli import main as cli
from semsynth.labels import get_space
from semsynth.pipelines import CRNPipeline
from semsynth.train import train


def test_overfits_a_few_images(tiny_data, tmp_path):
    # 2 images, pixel-space loss: after 120 Adam steps the loss must fall below 45 % of the first
    # logged value (measured: ~25 %); a broken gradient path or data pairing would stay near 100 %.
    cfg = tiny_cfg(tiny_data, steps=120, **{"optim.lr": 3e-3, "optim.batch_size": 2})
    train(cfg, tmp_path / "run", progress=False)
    losses = [json.loads(l)["loss"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 120
    assert np.mean(losses[-5:]) < 0.45 * losses[0]


@pytest.mark.parametrize("adversarial", [False, True])
def test_resume_is_exact(tiny_data, tmp_path, adversarial):
    # N steps straight == N/2, stop, resume, N/2 more: bitwise equal weights (CPU, fixed seed),
    # with shuffling and random flips in play so RNG and data-order restore are exercised; with a
    # discriminator, its weights and optimiser must come back too or the generator would diverge.
    over = {"steps": 6, "save_every": 3, "data.flip": True, "optim.batch_size": 1}
    if adversarial:
        over["loss.adversarial"] = {"weight": 1.0, "feature_matching": 10.0, "width": 8, "scales": 2}
    train(tiny_cfg(tiny_data, **over), tmp_path / "straight", progress=False)
    train(tiny_cfg(tiny_data, **{**over, "steps": 3}), tmp_path / "split", progress=False)
    train(tiny_cfg(tiny_data, **over), tmp_path / "split", progress=False)
    a = load_file(str(ckpt.resolve(tmp_path / "straight")))
    b = load_file(str(ckpt.resolve(tmp_path / "split")))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the resumed metrics log has each step exactly once
    steps = [json.loads(l)["step"] for l in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))


def test_logged_values_are_interval_means(tiny_data, tmp_path):
    # every logged value (loss and the loss's own logs) is the mean over its logging interval,
    # not the last step's sample: logging every 2 steps gives the pairwise means of every step
    train(tiny_cfg(tiny_data, steps=4, log_every=1), tmp_path / "each", progress=False)
    train(tiny_cfg(tiny_data, steps=4, log_every=2), tmp_path / "pairs", progress=False)
    each = [json.loads(l) for l in (tmp_path / "each" / "metrics.jsonl").read_text().splitlines()]
    pairs = [json.loads(l) for l in (tmp_path / "pairs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in pairs] == [2, 4]
    keys = [k for k in each[0] if k not in ("step", "time")]
    assert "loss" in keys and any(k.startswith("layer/") for k in keys)
    for i, r in enumerate(pairs):
        for k in keys:
            assert r[k] == pytest.approx((each[2 * i][k] + each[2 * i + 1][k]) / 2, rel=1e-6), k
    assert each[0]["loss"] != pytest.approx(each[1]["loss"], rel=1e-3)  # the steps do differ


def test_checkpoint_is_self_describing_and_atomic(tiny_data, tmp_path):
    train(tiny_cfg(tiny_data, steps=2, save_every=1, keep=1), tmp_path / "run", progress=False)
    folders = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert [f.name for f in folders] == ["step_0000002"]  # pruned to keep=1, no temp folders left
    meta = ckpt.read_metadata(tmp_path / "run")
    assert meta["task"] == "crn" and meta["step"] == 2
    assert meta["model"]["arch"] == "crn" and meta["model"]["num_classes"] == 19
    assert get_space(meta["label_space"]).names == get_space("cityscapes").names
    model, _ = ckpt.load_model(tmp_path / "run")  # rebuilt from the file alone
    assert model.config.k == 3


def test_synthesize_folder_via_cli(tiny_data, tmp_path):
    train(tiny_cfg(tiny_data, steps=1), tmp_path / "run", progress=False)
    labels = tmp_path / "labels"
    # mixed formats in one folder: a Cityscapes labelIds map and a paletted map in the GTA
    # sample's format (palette indices = labelIds, palette colours = Cityscapes colours)
    write_labelids(labels / "a_gtFine_labelIds.png", size=(128, 256))
    write_paletted_labelids(labels / "gta.png", size=(64, 128))
    out = tmp_path / "out"
    assert (
        cli(
            [
                "synthesize",
                str(tmp_path / "run"),
                str(labels),
                "-o",
                str(out),
                "--grid",
                "--size",
                "32",
                "64",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [f"{s}_k{i}.png" for s in ("a_gtFine_labelIds", "gta") for i in range(3)]
        + ["a_gtFine_labelIds_grid.png", "gta_grid.png"]
    )
    assert Image.open(out / "gta_k0.png").size == (64, 32)
    before = (out / "gta_k0.png").read_bytes()
    # refuses to overwrite, and writes nothing when refusing
    assert cli(["synthesize", str(tmp_path / "run"), str(labels), "-o", str(out), "--size", "32", "64"]) == 2
    assert (out / "gta_k0.png").read_bytes() == before
    assert (
        cli(["synthesize", str(tmp_path / "run"), str(labels), "-o", str(out), "--size", "32", "64", "--overwrite"])
        == 0
    )


def test_pipeline_python_api_matches_model(tiny_data, tmp_path):
    train(tiny_cfg(tiny_data, steps=1), tmp_path / "run", progress=False)
    pipe = CRNPipeline.from_pretrained(tmp_path / "run", device="cpu")
    ids = np.full((32, 64), 10)
    ids[16:] = 0  # sky over road
    (imgs,) = pipe([ids], size=(32, 64))
    assert imgs.shape == (3, 32, 64, 3) and imgs.dtype == np.uint8
    # same layout twice in a batch gives the same images: inference is deterministic
    a, b = pipe([ids, ids], size=(32, 64))
    assert np.array_equal(a, b)


def test_init_from_previous_stage_and_train_only(tiny_data, tmp_path):
    train(tiny_cfg(tiny_data, steps=1), tmp_path / "low", progress=False)
    # next stage: one more module on top, new head; only the top module + head train
    cfg = tiny_cfg(
        tiny_data,
        steps=2,
        init_from=str(tmp_path / "low"),
        model={"arch": "crn", "levels": 6, "k": 1, "width_mult": 1 / 32},
        train_only=["blocks.g_128.", "head."],
        **{"data.size": [64, 128]},
    )
    train(cfg, tmp_path / "high", progress=False)
    low = load_file(str(ckpt.resolve(tmp_path / "low")))
    high = load_file(str(ckpt.resolve(tmp_path / "high")))
    assert torch.equal(low["blocks.g_4.conv1.weight"], high["blocks.g_4.conv1.weight"])  # copied + frozen
    assert high["head.weight"].shape[0] == 3 and low["head.weight"].shape[0] == 9


def test_missing_data_is_a_clear_error(tmp_path):
    assert cli(["train", "crn-tiny", "--out", str(tmp_path / "r"), "--data", str(tmp_path / "nope")]) == 2


def test_ddp_two_processes_gloo(tiny_data, tmp_path):
    # torchrun, 2 CPU processes, gloo: each rank sees half of each global batch; DDP averages the
    # gradients, so 2x1 images per step must match a single process with batch 2 on the same data
    # order... up to float reduction order. We check it runs, rank 0 alone writes, and the weights
    # agree with the single-process run to 1e-5.
    # The adversarial term's discriminator is averaged across ranks the same way.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SEMSYNTH_OFFLINE": "1"}
    sets = [
        f"data.path={tiny_data}",
        "data.size=[32,64]",
        "loss.preset=pixel",
        "data.flip=false",
        "loss.adversarial={width: 8, scales: 2}",
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "semsynth.cli",
        "train",
        "crn-tiny",
        "--out",
        str(tmp_path / "ddp"),
        "--steps",
        "2",
        "--batch-size",
        "1",
        "--set",
        *sets,
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    single = tmp_path / "single"
    cli(["train", "crn-tiny", "--out", str(single), "--steps", "2", "--batch-size", "2", "--set", *sets])
    a = load_file(str(ckpt.resolve(tmp_path / "ddp")))
    b = load_file(str(ckpt.resolve(single)))
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_info_lists_presets_with_official_totals(capsys):
    assert cli(["info"]) == 0
    out = capsys.readouterr().out
    for total in ("97,875,483", "98,622,851", "98,674,531"):
        assert total in out
    assert "cityscapes" in out and "camvid" in out
    assert "by Winograd F(4x4, 3x3): on" in out


def test_info_says_when_winograd_is_off(capsys, monkeypatch):
    monkeypatch.setenv("SEMSYNTH_WINOGRAD", "0")
    assert cli(["info"]) == 0
    assert "Winograd F(4x4, 3x3): off (SEMSYNTH_WINOGRAD=0)" in capsys.readouterr().out
