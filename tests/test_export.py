"""`semsynth export`: ONNX (run in onnxruntime) and TorchScript files agree with PyTorch, for a CRN
model and the SIMS synthesis network, and carry the label space in their metadata."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semsynth import checkpoint as ckpt
from semsynth.cli import main as cli
from semsynth.export import export_model, read_export_metadata
from semsynth.labels import get_space, one_hot
from semsynth.models import build_model, model_config

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _checkpoint(tmp_path, preset: str, task: str):
    cfg = model_config(preset, num_classes=19)
    torch.manual_seed(0)
    m = build_model(cfg)
    with torch.no_grad():  # move the identity-like init away from trivial outputs
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return ckpt.save_model(tmp_path / preset / "model.safetensors", m, cfg, get_space("cityscapes"), task).parent


def test_crn_onnx_matches_pytorch_in_onnxruntime(tmp_path, capsys):
    model = _checkpoint(tmp_path, "crn-tiny", "crn")
    out = tmp_path / "crn.onnx"
    assert cli(["export", str(model), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "onnxruntime" in printed and "max abs diff" in printed
    # independent of the command's own check: batch 3, another random layout
    net, _ = ckpt.load_model(model)
    ids = torch.randint(0, 20, (3, 64, 128), generator=torch.Generator().manual_seed(5))
    x = one_hot(ids, 19)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"layout": x.numpy()})[0]
    with torch.no_grad():
        ref = net(x).numpy()
    assert got.shape == ref.shape == (3, 3, 3, 64, 128)
    assert np.abs(got - ref).max() < 1e-4
    meta = read_export_metadata(out)
    assert meta["task"] == "crn" and get_space(meta["label_space"]).names == get_space("cityscapes").names
    assert cli(["export", str(model), "-o", str(out)]) == 2  # no silent overwrite


def test_sims_synthesis_onnx_and_torchscript(tmp_path):
    model = _checkpoint(tmp_path, "sims-tiny", "sims-synthesis")
    for name in ("sims.onnx", "sims.pt"):
        r = export_model(model, tmp_path / name)
        assert r["verified"] and r["inputs"] == ["layout", "canvas", "support"], r
        assert r["max_abs_diff"] < 1e-4, r
    assert read_export_metadata(tmp_path / "sims.pt")["outputs"] == ["image", "logits"]


def test_crn_torchscript_at_another_size(tmp_path):
    model = _checkpoint(tmp_path, "crn-tiny", "crn")
    r = export_model(model, tmp_path / "crn.pt", size=(32, 64))
    assert r["size"] == [32, 64] and r["max_abs_diff"] < 1e-5
    loaded = torch.jit.load(str(tmp_path / "crn.pt"))
    assert loaded(torch.zeros(1, 20, 32, 64)).shape == (1, 3, 3, 32, 64)
