"""Self-describing, atomically written checkpoints.

A checkpoint is a folder::

    step_0001000/
      model.safetensors   weights; its metadata holds the model config, the label space, the task
                          and the step, so `load_model(folder)` needs nothing else
      train_state.pt      optimizer, step, RNG states: what `--resume` needs (absent in exports)

A training run folder keeps `checkpoints/step_*/` plus `latest.json` naming the newest one. The
folder is written under a temporary name and renamed into place, and `latest.json` is replaced
only afterwards, so an interrupted save never leaves a half-written "latest" checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .labels import LabelSpace, get_space
from .utils import atomic_path

FORMAT = "semsynth-checkpoint-1"


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)  # DDP / compiled wrappers


def save_model(path: str | Path, model: torch.nn.Module, model_config: dict, space: LabelSpace,
               task: str, step: int = 0, extra: dict | None = None) -> Path:
    """Write weights + description to `path` (a .safetensors file), atomically."""
    from . import __version__

    state = {k: v.detach().contiguous().cpu() for k, v in _unwrap(model).state_dict().items()}
    meta = {
        "format": FORMAT,
        "semsynth_version": __version__,
        "task": task,
        "model": json.dumps(model_config),
        "label_space": json.dumps(space.to_dict()),
        "step": str(step),
        "extra": json.dumps(extra or {}),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def read_metadata(path: str | Path) -> dict:
    """Metadata of a checkpoint (folder, run folder or .safetensors file), JSON fields decoded."""
    f = resolve(path)
    with safe_open(str(f), framework="pt") as sf:
        meta = dict(sf.metadata() or {})
    if meta.get("format") != FORMAT:
        raise ValueError(f"{f}: not a semsynth checkpoint (metadata format={meta.get('format')!r})")
    for key in ("model", "label_space", "extra"):
        meta[key] = json.loads(meta.get(key) or "{}")
    meta["step"] = int(meta.get("step", 0))
    return meta


def resolve(path: str | Path) -> Path:
    """Find the model.safetensors of a run folder (via latest.json), step folder, or file."""
    p = Path(path)
    if p.is_file():
        return p
    if (p / "latest.json").is_file():
        latest = json.loads((p / "latest.json").read_text())["path"]
        return resolve(p / latest)
    if (p / "model.safetensors").is_file():
        return p / "model.safetensors"
    if p.exists():
        raise FileNotFoundError(f"{p}: no model.safetensors or latest.json inside")
    raise FileNotFoundError(f"{p}: checkpoint not found")


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, metadata) from any checkpoint path."""
    from safetensors.torch import load_file

    from .models import build_model

    meta = read_metadata(path)
    model = build_model(meta["model"])
    model.load_state_dict(load_file(str(resolve(path))), strict=True)
    meta["label_space"] = get_space(meta["label_space"])
    return model.to(device).eval(), meta


def save_training(run_dir: str | Path, step: int, model: torch.nn.Module, model_config: dict,
                  space: LabelSpace, task: str, train_state: dict, keep: int = 3,
                  extra: dict | None = None) -> Path:
    """Write `run_dir/checkpoints/step_<step>/` atomically, point latest.json at it, prune old."""
    run_dir = Path(run_dir)
    ckpts = run_dir / "checkpoints"
    final = ckpts / f"step_{step:07d}"
    tmp = ckpts / f".step_{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(tmp / "model.safetensors", model, model_config, space, task, step, extra)
    torch.save(train_state, tmp / "train_state.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    with atomic_path(run_dir / "latest.json") as t:
        t.write_text(json.dumps({"path": f"checkpoints/{final.name}", "step": step}))
    for old in sorted(ckpts.glob("step_*"))[:-keep] if keep else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_train_state(run_dir: str | Path) -> tuple[Path, dict] | None:
    """(step folder, train_state) of the newest checkpoint in a run folder, or None."""
    run_dir = Path(run_dir)
    if not (run_dir / "latest.json").is_file():
        return None
    folder = run_dir / json.loads((run_dir / "latest.json").read_text())["path"]
    return folder, torch.load(folder / "train_state.pt", map_location="cpu", weights_only=False)
