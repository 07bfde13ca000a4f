"""`semsynth export`: a trained CRN model or SIMS synthesis network as ONNX or TorchScript.

The exported graph is the network alone, at a fixed spatial size (the model's native one unless
`size` says otherwise) with a dynamic batch axis:

* CRN: input ``layout`` (B, C+1, H, W) float one-hot (void last, `labels.one_hot`), output
  ``images`` (B, k, 3, H, W) in ~[0, 1] (clip, then x 255 for 8-bit).
* SIMS synthesis: inputs ``layout`` (B, C+1, H, W), ``canvas`` (B, 3, H, W) RGB in [0, 1] and
  ``support`` (B, 1, H, W) in {0, 1}; outputs ``image`` (B, 3, H, W) and ``logits``.

The label space (class names, colours), the model config and the input convention travel in the
file's metadata (ONNX `metadata_props`, TorchScript extra file `semsynth.json`). After writing,
the file is run (onnxruntime or `torch.jit.load`) on a random layout and compared with PyTorch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from .data import check_size
from .errors import InputError
from .labels import one_hot
from .models.layers import reference_ops
from .utils import atomic_path

FORMATS = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript"}
EXPORTABLE = ("crn", "sims-synthesis")


class _SIMSGraph(torch.nn.Module):
    """SIMS synthesis with `support` as an explicit input (its default is computed in Python)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, layout, canvas, support):
        return self.net(layout, canvas, support)


def _inputs(task: str, model, size, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A random one-hot layout (and, for SIMS, a random canvas with its support) of `size`."""
    g = torch.Generator().manual_seed(seed)
    C = model.config.num_classes
    ids = torch.randint(0, C + 1, (batch, *size), generator=g)
    layout = one_hot(ids, C)
    if task == "crn":
        return (layout,)
    support = (torch.rand(batch, 1, *size, generator=g) > 0.3).float()
    return layout, torch.rand(batch, 3, *size, generator=g) * support, support


def _names(task: str) -> tuple[list[str], list[str]]:
    return (["layout"], ["images"]) if task == "crn" else (["layout", "canvas", "support"], ["image", "logits"])


def export_model(
    checkpoint: str | Path, out: str | Path, fmt: str | None = None, size=None, verify: bool = True
) -> dict:
    """Export `checkpoint` to `out` (.onnx, or .pt/.ts for TorchScript); returns a summary with
    the agreement figures when `verify` (max and mean absolute difference against PyTorch)."""
    out = Path(out)
    fmt = fmt or FORMATS.get(out.suffix.lower())
    if fmt not in ("onnx", "torchscript"):
        raise InputError(
            f"{out}: cannot tell the format from the suffix; use .onnx or .pt (TorchScript), "
            f"or --format onnx|torchscript"
        )
    model, meta = ckpt.load_model(checkpoint, "cpu")  # bundled names resolve there
    task = meta["task"]
    if task not in EXPORTABLE:
        raise InputError(f"{checkpoint}: a {task!r} checkpoint; export supports {', '.join(EXPORTABLE)}")
    model = model.float().eval()
    size = check_size(size, "--size") or tuple(model.config.size)
    net = model if task == "crn" else _SIMSGraph(model).eval()
    example = _inputs(task, model, size, batch=1)
    with torch.no_grad():  # fail here, with the model's own message, on a size it cannot take
        net(*example)
    in_names, out_names = _names(task)
    info = {
        "format": "semsynth-export-1",
        "task": task,
        "model": meta["model"],
        "label_space": meta["label_space"].to_dict(),
        "size": list(size),
        "inputs": in_names,
        "outputs": out_names,
        "step": meta["step"],
    }
    # The graph is traced from the plain ops: the in-place CPU fast path (models/layers.py) is
    # shape-specialised Python that exporters would bake in.
    with reference_ops():
        if fmt == "onnx":
            _export_onnx(net, example, out, in_names, out_names, info)
        else:
            _export_torchscript(net, example, out, info)
    summary = {
        "path": str(out),
        "format": fmt,
        "task": task,
        "size": list(size),
        "bytes": out.stat().st_size,
        "inputs": in_names,
        "outputs": out_names,
    }
    if verify:
        summary.update(check_export(out, net, task, model, size, fmt))
    return summary


def _export_onnx(net, example, out: Path, in_names, out_names, info: dict) -> None:
    try:
        import onnx
        import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)
    except ImportError as e:
        raise InputError(
            f"ONNX export needs the onnx and onnxscript packages ({e.name} is missing): pip install 'semsynth[export]'"
        ) from None

    batch = torch.export.Dim("batch", min=1, max=1024)
    shapes = tuple({0: batch} for _ in example)
    params = sum(p.numel() for p in net.parameters()) * 4
    with atomic_path(out) as tmp:
        prog = torch.onnx.export(
            net,
            example,
            dynamo=True,
            input_names=in_names,
            output_names=out_names,
            dynamic_shapes=shapes,
            external_data=False,
            verbose=False,
        )
        proto = prog.model_proto
        for key, value in (("semsynth", json.dumps(info)),):
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        if params > 1.8e9:  # protobuf's 2 GB limit: weights go to a side file
            onnx.save_model(proto, str(tmp), save_as_external_data=True, location=out.name + ".data")
        else:
            onnx.save_model(proto, str(tmp))


def _export_torchscript(net, example, out: Path, info: dict) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on the static size checks, jit deprecation
        traced = torch.jit.trace(net, example, check_trace=False)
    with atomic_path(out) as tmp:
        torch.jit.save(traced, str(tmp), _extra_files={"semsynth.json": json.dumps(info)})


def check_export(path: str | Path, net, task: str, model, size, fmt: str, batch: int = 2) -> dict:
    """Run the exported file and the PyTorch network on the same random inputs (batch 2, so the
    dynamic batch axis is exercised); max / mean absolute difference of every output."""
    x = _inputs(task, model, size, batch=batch, seed=1)
    with torch.no_grad():
        ref = net(*x)
    ref = [ref] if torch.is_tensor(ref) else list(ref)
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            return {"verified": False, "why": "onnxruntime is not installed (pip install onnxruntime)"}
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), x)}
        got = sess.run(None, feed)
        runner = f"onnxruntime {ort.__version__}"
    else:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = torch.jit.load(str(path))
        with torch.no_grad():
            got = loaded(*x)
        got = [t.numpy() for t in ([got] if torch.is_tensor(got) else got)]
        runner = f"torch.jit {torch.__version__}"
    diffs = [np.abs(np.asarray(g).reshape(r.shape) - r.numpy()) for g, r in zip(got, ref)]
    return {
        "verified": True,
        "runner": runner,
        "batch": batch,
        "max_abs_diff": float(max(d.max() for d in diffs)),
        "mean_abs_diff": float(np.mean([d.mean() for d in diffs])),
    }


def read_export_metadata(path: str | Path) -> dict:
    """The semsynth metadata of an exported file (label space, model config, inputs)."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        return json.loads({p.key: p.value for p in proto.metadata_props}["semsynth"])
    files = {"semsynth.json": ""}
    torch.jit.load(str(path), _extra_files=files)
    return json.loads(files["semsynth.json"])


__all__ = ["export_model", "check_export", "read_export_metadata", "FORMATS"]
