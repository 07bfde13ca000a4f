"""Checkpoints that protect themselves: content hashes checked on every read, damaged newest
checkpoints skipped on resume (reported, moved aside, the intact one kept), a missing latest.json,
non-finite losses stopped before saving, and a training process killed with SIGKILL resuming to
the same weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_cfg
from safetensors.torch import load_file

from semsynth import checkpoint as ckpt
from semsynth.cli import main as cli
from semsynth.errors import CheckpointError, TrainingError
from semsynth.labels import get_space
from semsynth.models import build_model
from semsynth.train import CRNTask, train


def _flip_bytes(path: Path, n: int = 40) -> None:
    """Overwrite n bytes in the tensor data (past the header) with 0xFF, as the issue's check does."""
    b = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(b[:8], "little")
    span = len(b) - header
    for i in range(n):
        b[header + (i * 997) % span] = 0xFF
    path.write_bytes(bytes(b))


def _steps(run: Path) -> list[str]:
    return [f.name for f in ckpt.step_folders(run)]


@pytest.fixture
def model_file(tmp_path):
    m = build_model("crn-tiny")
    return ckpt.save_model(
        tmp_path / "m" / "model.safetensors",
        m,
        {"arch": "crn", "levels": 5, "k": 3, "width_mult": 1 / 32},
        get_space("cityscapes"),
        "crn",
    )


def test_content_hash_catches_flipped_bytes_and_truncation(model_file, tmp_path):
    model, meta = ckpt.load_model(model_file)  # intact: loads, hash recorded
    assert len(meta["sha256"]) == 64
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(model_file.read_bytes())
    _flip_bytes(bad, n=1)  # a single byte is enough
    with pytest.raises(CheckpointError, match=r"flipped.safetensors: damaged checkpoint: content hash"):
        ckpt.load_model(bad)
    short = tmp_path / "short.safetensors"
    short.write_bytes(model_file.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="short.safetensors"):
        ckpt.load_model(short)
    # a file written before hashes existed is still checked for non-finite weights
    from safetensors.torch import save_file

    state = {k: v.clone() for k, v in model.state_dict().items()}
    old_meta = {
        k: (json.dumps(v) if isinstance(v, (dict, list)) else str(v))
        for k, v in meta.items()
        if k not in ("sha256", "companions_sha256", "label_space")
    }
    old_meta["label_space"] = json.dumps(meta["label_space"].to_dict())
    state["head.bias"][0] = float("nan")
    save_file(state, str(tmp_path / "old.safetensors"), metadata=old_meta)
    with pytest.raises(CheckpointError, match="non-finite values in 1 tensor"):
        ckpt.load_model(tmp_path / "old.safetensors")


def test_synthesize_refuses_damaged_weights(model_file, tmp_path, png):
    _flip_bytes(model_file)
    lab = png(tmp_path / "l" / "a_trainIds.png", torch.zeros(64, 128, dtype=torch.uint8).numpy())
    assert cli(["synthesize", str(model_file.parent), str(lab), "-o", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_resume_skips_damaged_newest_and_keeps_the_intact_one(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    over = {"save_every": 2, "keep": 2, "optim.batch_size": 1}
    train(tiny_cfg(tiny_data, steps=4, **over), run, progress=False)
    straight = tmp_path / "straight"
    train(tiny_cfg(tiny_data, steps=6, **over), straight, progress=False)
    assert _steps(run) == ["step_0000002", "step_0000004"]
    _flip_bytes(run / "checkpoints/step_0000004/model.safetensors")
    capsys.readouterr()
    train(tiny_cfg(tiny_data, steps=6, **over), run, progress=False)
    err = capsys.readouterr().err
    assert "step_0000004/model.safetensors: damaged checkpoint" in err  # reported by path
    assert (run / "checkpoints/damaged/step_0000004").is_dir()  # moved aside, not deleted
    assert (run / "checkpoints/step_0000002/KEEP").is_file()
    assert _steps(run) == ["step_0000002", "step_0000004", "step_0000006"]  # keep=2, plus the KEEP one
    # resuming from step 2 instead of the damaged 4 still reproduces the straight run exactly
    a, b = load_file(str(ckpt.resolve(run))), load_file(str(ckpt.resolve(straight)))
    assert all(torch.equal(a[k], b[k]) for k in a)
    for f in ckpt.step_folders(run):
        ckpt.load_training(f)  # every kept checkpoint is intact


def test_missing_latest_json_resumes_from_newest_step(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    over = {"save_every": 2, "keep": 3}
    train(tiny_cfg(tiny_data, steps=4, **over), run, progress=False)
    (run / "latest.json").unlink()
    capsys.readouterr()
    train(tiny_cfg(tiny_data, steps=6, **over), run, progress=False)
    out = capsys.readouterr()
    assert "resuming" in out.out and "from step 4" in out.out and "latest.json is missing" in out.err
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # never restarted from 0
    assert _steps(run) == ["step_0000002", "step_0000004", "step_0000006"]


def test_every_checkpoint_damaged_refuses_to_start_over(tiny_data, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg(tiny_data, steps=2, save_every=2), run, progress=False)
    (run / "checkpoints/step_0000002/model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="every checkpoint is damaged"):
        train(tiny_cfg(tiny_data, steps=4, save_every=2), run, progress=False)


def test_damaged_train_state_is_caught_by_its_recorded_hash(tiny_data, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg(tiny_data, steps=2, save_every=2), run, progress=False)
    ts = run / "checkpoints/step_0000002/train_state.pt"
    b = bytearray(ts.read_bytes())
    b[len(b) // 2] ^= 0x01
    ts.write_bytes(bytes(b))
    with pytest.raises(CheckpointError, match="train_state.pt: damaged"):
        ckpt.load_training(ts.parent)


def test_non_finite_loss_stops_before_saving(tiny_data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(tiny_cfg(tiny_data, steps=2, save_every=2), run, progress=False)
    good = load_file(str(ckpt.resolve(run)))
    calls = {"n": 0}
    real = CRNTask.loss

    def nan_at_step_4(self, model, batch):
        calls["n"] += 1
        loss, logs = real(self, model, batch)
        return (loss * float("nan") if calls["n"] == 2 else loss), logs  # resumed at 2: 2nd call = step 4

    monkeypatch.setattr(CRNTask, "loss", nan_at_step_4)
    with pytest.raises(TrainingError, match=r"step 4: the loss is not finite.*step_0000002"):
        train(tiny_cfg(tiny_data, steps=6, save_every=2, log_every=10), run, progress=False)
    assert _steps(run) == ["step_0000002"]  # step 4 (NaN weights) never saved; step 2 kept
    now = load_file(str(ckpt.resolve(run)))
    assert all(torch.equal(good[k], now[k]) for k in good)


def test_retention_keeps_the_newest_and_marked(tiny_data, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg(tiny_data, steps=4, save_every=1, keep=2), run, progress=False)
    assert _steps(run) == ["step_0000003", "step_0000004"]
    (run / "checkpoints/step_0000003/KEEP").write_text("mine")
    train(tiny_cfg(tiny_data, steps=7, save_every=1, keep=2), run, progress=False)
    assert _steps(run) == ["step_0000003", "step_0000006", "step_0000007"]


def _train_cmd(data: Path, out: Path, steps: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "semsynth.cli",
        "train",
        "crn-tiny",
        "--data",
        str(data),
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--save-every",
        "1",
        "--set",
        "data.size=[32,64]",
        "loss.preset=pixel",
        "optim.batch_size=1",
        "keep=0",
        "log_every=1",
        "data.flip=true",
    ]


def test_kill_9_and_resume_gives_identical_weights(tiny_data, tmp_path):
    # A real process, killed with SIGKILL once a checkpoint exists (and possibly mid-save), then
    # re-run: the result equals an uninterrupted run bit for bit and no temporary files remain.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SEMSYNTH_OFFLINE": "1"}
    steps = 12
    straight, run = tmp_path / "straight", tmp_path / "run"
    subprocess.run(_train_cmd(tiny_data, straight, steps), env=env, check=True, capture_output=True, timeout=600)
    kills = 0
    for _ in range(3):
        p = subprocess.Popen(
            _train_cmd(tiny_data, run, steps), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        before = len(ckpt.step_folders(run))
        deadline = time.time() + 300
        while p.poll() is None and len(ckpt.step_folders(run)) < before + 2 and time.time() < deadline:
            time.sleep(0.05)
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            kills += 1
        p.wait()
    assert kills >= 1
    r = subprocess.run(_train_cmd(tiny_data, run, steps), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = load_file(str(ckpt.resolve(straight))), load_file(str(ckpt.resolve(run)))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    leftovers = [f for f in run.rglob("*") if ".semsynth-tmp" in f.name or f.name.endswith(".tmp")]
    assert leftovers == []
