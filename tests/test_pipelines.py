"""The one pipeline shape: classes looked up by checkpoint task, the same output type from every
pipeline, `to`, one precision setting (bf16 agrees with fp32), and a public API that imports
lazily and never pulls training code into inference."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from semsynth.checkpoint import save_model
from semsynth.cli import main as cli
from semsynth.errors import InputError
from semsynth.labels import get_space, save_label
from semsynth.layouts import street_layout
from semsynth.models import build_model, model_config
from semsynth.precision import holds_bf16

CS = get_space("cityscapes")


@pytest.fixture(scope="module")
def crn(tmp_path_factory):
    """A tiny CRN checkpoint (32x64, k = 2, random weights) and two layout files."""
    root = tmp_path_factory.mktemp("pipes")
    torch.manual_seed(0)
    cfg = model_config({"arch": "crn", "levels": 4, "k": 2, "width_mult": 1 / 32, "num_classes": CS.num_classes})
    save_model(root / "crn" / "model.safetensors", build_model(cfg), cfg, CS, "crn")
    for i in range(2):
        save_label(root / "labels" / f"lay{i}.png", street_layout(i, (32, 64)), CS)
    return root


def test_pipeline_class_is_looked_up_by_task(crn):
    from semsynth.pipelines import PIPELINES, CRNPipeline, load_pipeline, pipeline_class
    from semsynth.sims.pipeline import SIMSPipeline

    assert PIPELINES["crn"] is CRNPipeline and PIPELINES["sims-synthesis"] is SIMSPipeline
    assert pipeline_class("crn") is CRNPipeline
    with pytest.raises(InputError, match="no pipeline runs 'sims-order' checkpoints"):
        pipeline_class("sims-order")
    pipe = load_pipeline(crn / "crn", device="cpu", precision="fp32", bank=None)  # None options are dropped
    assert isinstance(pipe, CRNPipeline) and pipe.precision == "fp32"
    with pytest.raises(InputError, match=r"crn.*'crn' checkpoint, which takes no bank"):
        load_pipeline(crn / "crn", device="cpu", bank="some/bank")


def test_cpu_batches_by_pixels_unless_told(crn, monkeypatch):
    """Without a batch size a CPU forward takes as many layouts as make 256x512 pixels (1 to
    4); an explicit batch size is kept; results do not depend on the batching (up to the
    convolution kernels' float rounding, which varies with the batch)."""
    from semsynth.pipelines import CRNPipeline

    pipe = CRNPipeline.from_pretrained(crn / "crn", device="cpu")
    assert [pipe.auto_batch(s) for s in ((32, 64), (128, 256), (256, 512), (512, 1024))] == [4, 4, 1, 1]
    assert pipe.auto_batch((192, 256)) == 2
    sizes = []
    run = pipe._run
    monkeypatch.setattr(pipe, "_run", lambda layouts, *a: sizes.append(len(layouts)) or run(layouts, *a))
    ids = [street_layout(i, pipe.size) for i in range(5)]
    auto = pipe(ids)
    one = pipe(ids, batch_size=1)
    pipe.CPU_BATCH_PIXELS = 2 * 32 * 64
    two = pipe(ids)
    assert sizes == [4, 1, 1, 1, 1, 1, 1, 2, 2, 1]
    for a, b, c in zip(auto, one, two):
        assert np.abs(a.astype(int) - b).max() <= 1 and np.abs(a.astype(int) - c).max() <= 1


def test_every_pipeline_returns_k_images_per_layout(crn):
    from semsynth.pipelines import CRNPipeline, PipelineOutput

    pipe = CRNPipeline.from_pretrained(crn / "crn", device="cpu")
    ids = street_layout(0, pipe.size)
    one = pipe(ids)
    assert len(one) == 1 and one[0].shape == (2, 32, 64, 3) and one[0].dtype == np.uint8
    assert pipe([ids, ids], k=1)[1].shape == (1, 32, 64, 3)
    assert pipe(ids, k=5)[0].shape[0] == 2  # at most the model's k
    out = pipe([ids], return_intermediates=True)
    assert isinstance(out, PipelineOutput) and out.intermediates == [None]
    assert np.array_equal(out.images[0], one[0])
    assert pipe.to("cpu") is pipe and pipe.device == torch.device("cpu")


def test_synthesize_files_written_once_for_all(crn, tmp_path):
    from semsynth.pipelines import load_pipeline

    pipe = load_pipeline(crn / "crn", device="cpu")
    written = pipe.synthesize_files([crn / "labels"], tmp_path, grid=True, batch_size=1, progress=False)
    assert sorted(p.name for p in written) == [
        "lay0_grid.png",
        "lay0_k0.png",
        "lay0_k1.png",
        "lay1_grid.png",
        "lay1_k0.png",
        "lay1_k1.png",
    ]
    assert not list(tmp_path.glob(".*"))  # atomic writes left no temp files
    with pytest.raises(InputError, match="--save-intermediates is for SIMS"):
        pipe.synthesize_files([crn / "labels"], tmp_path / "x", save_intermediates=True, progress=False)


def test_bf16_agrees_with_fp32(crn):
    """The same weights in bf16: every convolution returns bf16 values (a bf16 tensor under
    autocast, bf16-rounded fp32 where the CPU has no bf16 kernels), outputs within a few levels."""
    from semsynth.pipelines import CRNPipeline

    ids = street_layout(1, (32, 64))
    fp32 = CRNPipeline.from_pretrained(crn / "crn", device="cpu", precision="fp32")
    bf16 = CRNPipeline.from_pretrained(crn / "crn", device="cpu", precision="bf16")
    seen = {"bf16": set(), "fp32": set()}
    hooks = [
        next(m for m in p.model.modules() if isinstance(m, torch.nn.Conv2d)).register_forward_hook(
            lambda m, i, o, n=n: seen[n].add(holds_bf16(o))
        )
        for n, p in (("bf16", bf16), ("fp32", fp32))
    ]
    b = bf16(ids)[0].astype(np.int64)
    a = fp32(ids)[0].astype(np.int64)
    for h in hooks:
        h.remove()
    assert seen == {"bf16": {True}, "fp32": {False}}
    assert not np.array_equal(a, b)  # it did run differently ...
    assert np.abs(a - b).mean() < 2 and np.abs(a - b).max() < 40  # ... and agrees closely
    bf16.precision = "fp32"  # the setting can change
    assert np.array_equal(bf16(ids)[0], fp32(ids)[0])
    with pytest.raises(InputError, match="precision 'fp16'"):
        CRNPipeline.from_pretrained(crn / "crn", device="cpu", precision="fp16")


def test_synthesize_cli_takes_precision(crn, tmp_path):
    for prec in ("auto", "fp32", "bf16"):
        assert (
            cli(
                [
                    "synthesize",
                    str(crn / "crn"),
                    str(crn / "labels" / "lay0.png"),
                    "-o",
                    str(tmp_path / prec),
                    "--precision",
                    prec,
                    "--k",
                    "1",
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
        assert (tmp_path / prec / "lay0.png").is_file()


def _imports(code: str) -> list[str]:
    r = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return [m for m in r.stdout.split() if m.startswith("semsynth")]


def test_inference_imports_no_training_module():
    mods = _imports("import semsynth.pipelines, semsynth.sims.pipeline, semsynth.demo, semsynth.serve.app")
    assert "semsynth.sims.pipeline" in mods
    assert [m for m in mods if any(w in m for w in ("train", "tasks", "losses"))] == []


def test_public_api_is_lazy_and_complete():
    assert _imports("import semsynth") == ["semsynth"]  # nothing else until asked
    import semsynth

    for name in (
        "CRNPipeline",
        "SIMSPipeline",
        "Pipeline",
        "load_pipeline",
        "train",
        "evaluate",
        "open_dataset",
        "build_model",
        "get_space",
    ):
        assert name in semsynth.__all__ and callable(getattr(semsynth, name)), name
    assert semsynth.build_model("crn-tiny").config.k == 3
    import semsynth.train as train_module
    from semsynth.evaluate import evaluate  # the submodule is imported ...

    assert semsynth.evaluate.evaluate is evaluate  # ... and still callable as the function
    assert train_module.train is semsynth.train.train
    with pytest.raises(AttributeError):
        semsynth.no_such_name
