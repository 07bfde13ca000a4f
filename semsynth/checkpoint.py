"""Self-describing, self-checking, atomically written checkpoints.

A checkpoint is a folder::

    step_0001000/
      model.safetensors   weights; its metadata holds the model config, the label space, the task,
                          the step, the sha256 of its own content and that of train_state.pt, so
                          `load_model(folder)` needs nothing else and notices any damage
      train_state.pt      optimizer, step, RNG states: what resuming needs (absent in exports)
      KEEP                (optional) retention never deletes this folder; written when a resume
                          had to skip a damaged newer checkpoint, so a known-good one survives

A training run folder keeps `checkpoints/step_*/` plus `latest.json` naming the newest one. The
folder is written under a temporary name and renamed into place, and `latest.json` is replaced
only afterwards, so an interrupted save never leaves a half-written "latest" checkpoint.

Integrity: the content hash (`sha256` in the metadata) covers every tensor's name, dtype, shape
and bytes and every other metadata entry; it is recomputed whenever weights are read (resume,
synthesize, init_from, converted models). Files from before hashes existed are checked for
non-finite weights instead. Resuming walks the step folders newest first and takes the first
intact one (a missing latest.json does not mean "start over"); damaged ones are reported by path
and moved to `checkpoints/damaged/`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from . import __version__
from .errors import CheckpointError, MissingFileError
from .labels import LabelSpace, get_space
from .models import build_model
from .utils import atomic_path

FORMAT = "semsynth-checkpoint-1"
KEEP_MARK = "KEEP"
STEP_GLOB = "step_*"


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)  # DDP / compiled wrappers


def content_hash(state: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """sha256 over the metadata (except the hash itself) and every tensor (name, dtype, shape,
    bytes), in name order: independent of how safetensors lays the file out."""
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def save_model(
    path: str | Path,
    model: torch.nn.Module,
    model_config: dict,
    space: LabelSpace,
    task: str,
    step: int = 0,
    extra: dict | None = None,
    companions: dict[str, str] | None = None,
) -> Path:
    """Write weights + description to `path` (a .safetensors file), atomically, with the content
    hash; `companions` maps file names next to it (train_state.pt) to their sha256."""
    state = {k: v.detach().contiguous().cpu() for k, v in _unwrap(model).state_dict().items()}
    meta = {
        "format": FORMAT,
        "semsynth_version": __version__,
        "task": task,
        "model": json.dumps(model_config),
        "label_space": json.dumps(space.to_dict()),
        "step": str(step),
        "extra": json.dumps(extra or {}),
        "companions_sha256": json.dumps(companions or {}),
    }
    meta["sha256"] = content_hash(state, meta)
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def _raw_metadata(f: Path) -> dict:
    try:
        with safe_open(str(f), framework="pt") as sf:
            meta = dict(sf.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for truncated/garbage files
        raise CheckpointError(
            f"{f}: cannot read as a semsynth checkpoint: the file is damaged, truncated "
            f"or not a .safetensors file ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
        ) from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{f}: not a semsynth checkpoint (metadata format={meta.get('format')!r})")
    return meta


def _decode(meta: dict, f: Path) -> dict:
    meta = dict(meta)
    try:
        for key in ("model", "label_space", "extra", "companions_sha256"):
            meta[key] = json.loads(meta.get(key) or "{}")
        meta["step"] = int(meta.get("step", 0))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{f}: damaged checkpoint metadata ({e})") from None
    return meta


def read_metadata(path: str | Path) -> dict:
    """Metadata of a checkpoint (folder, run folder or .safetensors file), JSON fields decoded.
    Reads only the header; `load_state` checks the content."""
    f = resolve(path)
    return _decode(_raw_metadata(f), f)


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, metadata) of a checkpoint, verified against its recorded content hash
    (CheckpointError naming the file when it does not match)."""
    f = resolve(path)
    raw = _raw_metadata(f)
    try:
        state = load_file(str(f))
    except Exception as e:
        raise CheckpointError(
            f"{f}: damaged checkpoint: its tensors cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
        ) from None
    recorded = raw.get("sha256")
    if recorded:
        now = content_hash(state, raw)
        if now != recorded:
            raise CheckpointError(
                f"{f}: damaged checkpoint: content hash {now[:12]}... does not match the "
                f"recorded {recorded[:12]}... (the file changed after it was written)"
            )
    else:  # written before hashes existed: the one damage we can still see is non-finite weights
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise CheckpointError(f"{f}: damaged checkpoint: non-finite values in {len(bad)} tensor(s), e.g. {bad[0]}")
    return state, _decode(raw, f)


ASSETS = Path(__file__).parent / "assets"
# Models shipped inside the package, usable by name wherever a checkpoint path is taken.
BUNDLED = {
    "default": ASSETS / "default",
    "camvid": ASSETS / "camvid",
    "sims-cityscapes": ASSETS / "sims-cityscapes",
}  # SIMS: needs a bank the user builds


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A bundled model's folder for its name (an error when it is not installed), else the path."""
    p = BUNDLED.get(str(name_or_path), Path(name_or_path))
    if str(name_or_path) in BUNDLED and not p.exists():
        raise MissingFileError(f"bundled model {name_or_path!r} is not installed ({p} missing)")
    return p


def resolve(path: str | Path) -> Path:
    """Find the model.safetensors of a bundled model name, run folder (via latest.json, else its
    newest step folder), step folder, or file."""
    p = resolve_checkpoint(path)
    if p.is_file():
        return p
    if (p / "latest.json").is_file():
        try:
            latest = json.loads((p / "latest.json").read_text())["path"]
        except (ValueError, KeyError, TypeError):
            raise CheckpointError(
                f"{p / 'latest.json'}: damaged (not the JSON semsynth writes); delete it to use the newest step folder"
            ) from None
        target = p / latest
        if not (target / "model.safetensors").is_file():
            raise CheckpointError(f"{p / 'latest.json'} names {latest}, which has no model.safetensors")
        return target / "model.safetensors"
    if (p / "model.safetensors").is_file():
        return p / "model.safetensors"
    steps = step_folders(p)
    if steps:
        return steps[-1] / "model.safetensors"
    if p.exists():
        raise MissingFileError(f"{p}: no model.safetensors, latest.json or checkpoints/step_* inside")
    raise MissingFileError(f"{p}: checkpoint not found")


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, metadata) from any checkpoint path, content verified."""
    state, meta = load_state(path)
    model = build_model(meta["model"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"{resolve(path)}: weights do not fit the model described in its metadata ({str(e).splitlines()[0][:160]})"
        ) from None
    meta["label_space"] = get_space(meta["label_space"])
    return model.to(device).eval(), meta


# --------------------------------------------------------------------------- training runs


def step_folders(run_dir: str | Path) -> list[Path]:
    """The complete checkpoint folders of a run (or of its checkpoints/ folder), oldest first."""
    d = Path(run_dir)
    d = d / "checkpoints" if (d / "checkpoints").is_dir() else d
    return sorted(f for f in d.glob(STEP_GLOB) if f.is_dir() and (f / "model.safetensors").is_file())


def load_training(folder: Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(model state, metadata, train_state) of one step folder, every file checked."""
    state, meta = load_state(folder / "model.safetensors")
    ts = folder / "train_state.pt"
    if not ts.is_file():
        raise CheckpointError(f"{ts}: missing (the folder holds weights only; resuming needs it)")
    recorded = meta["companions_sha256"].get("train_state.pt")
    if recorded and file_sha256(ts) != recorded:
        raise CheckpointError(f"{ts}: damaged: its sha256 does not match the one recorded in model.safetensors")
    try:
        train_state = torch.load(ts, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{ts}: damaged, cannot be read ({type(e).__name__}: {str(e)[:120]})") from None
    return state, meta, train_state


def _quarantine(folder: Path) -> Path:
    dest_dir = folder.parent / "damaged"
    dest_dir.mkdir(exist_ok=True)
    dest, n = dest_dir / folder.name, 2
    while dest.exists():
        dest, n = dest_dir / f"{folder.name}-{n}", n + 1
    os.replace(folder, dest)
    return dest


def latest_train_state(
    run_dir: str | Path, report: Callable[[str], None] = print, repair: bool = True
) -> tuple[Path, dict, dict[str, torch.Tensor]] | None:
    """(step folder, train_state, model state) of the newest intact checkpoint of a run, or None
    when there is none. Damaged newer ones are reported, moved to checkpoints/damaged/, and the
    intact one used instead is marked KEEP so retention never deletes it. Raises when checkpoints
    exist but none is intact: starting over silently would lose the run. With `repair=False`
    (DDP ranks other than 0) nothing is moved or marked."""
    run_dir = Path(run_dir)
    folders = step_folders(run_dir)
    if not folders:
        return None
    if not (run_dir / "latest.json").is_file():
        report(f"{run_dir / 'latest.json'} is missing; resuming from the newest intact checkpoint folder")
    damaged = []
    for folder in reversed(folders):
        try:
            state, meta, train_state = load_training(folder)
        except CheckpointError as e:
            damaged.append(str(e))
            if repair:
                dest = _quarantine(folder)
                report(f"{e}; moved {folder.name} to {dest.relative_to(run_dir)}")
            continue
        if damaged and repair:
            (folder / KEEP_MARK).write_text(
                "kept by semsynth: the newest intact checkpoint when a resume found damaged newer ones:\n"
                + "\n".join(damaged)
                + "\nDelete this file to let retention prune the folder.\n"
            )
            report(f"resuming from {folder} (intact; marked {KEEP_MARK}, never pruned)")
        return folder, train_state, state
    raise CheckpointError(
        f"{run_dir}: every checkpoint is damaged ({len(damaged)}; moved to "
        f"checkpoints/damaged/): {damaged[0]}. Start a new --out (or --no-resume)"
    )


def save_training(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    model_config: dict,
    space: LabelSpace,
    task: str,
    train_state: dict,
    keep: int = 3,
    extra: dict | None = None,
) -> Path:
    """Write `run_dir/checkpoints/step_<step>/` atomically, verify it, point latest.json at it,
    then prune old folders: never a KEEP one, never the one just verified."""
    run_dir = Path(run_dir)
    ckpts = run_dir / "checkpoints"
    final = ckpts / f"step_{step:07d}"
    tmp = ckpts / f".step_{step:07d}.tmp"
    for stale in ckpts.glob(".step_*.tmp"):  # left by a process killed mid-save
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(train_state, tmp / "train_state.pt")
    save_model(
        tmp / "model.safetensors",
        model,
        model_config,
        space,
        task,
        step,
        extra,
        companions={"train_state.pt": file_sha256(tmp / "train_state.pt")},
    )
    load_state(tmp / "model.safetensors")  # read back: what was written is what will be resumed
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    with atomic_path(run_dir / "latest.json") as t:
        t.write_text(json.dumps({"path": f"checkpoints/{final.name}", "step": step}))
    if keep:
        for old in [f for f in step_folders(ckpts) if f != final][: -(keep - 1) or None]:
            if not (old / KEEP_MARK).exists():
                shutil.rmtree(old, ignore_errors=True)
    return final
