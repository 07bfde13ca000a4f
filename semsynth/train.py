"""The one trainer shared by every semsynth model.

A run is described by a config file (see `semsynth/configs/*.yaml`): which *task* (what a batch
means and how the loss is computed: `crn`, SIMS networks, ...), which model preset, label space,
data, loss and optimiser. `train(cfg, out)` reads top to bottom: set up -> resume -> loop -> save.

Exact resume: the data order comes from `ResumableSampler` (a permutation per epoch seeded by
(seed, epoch), so position = step), augmentation draws from the trainer's own generator, and
every RNG state is saved with the optimizer. N steps straight equal N/2 + resume + N/2.
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from torch.utils.data import DataLoader, Sampler

from . import checkpoint as ckpt
from .config import load_config, parse_overrides, validate  # noqa: F401  (load_config: public here too)
from .errors import ConfigError, TrainingError
from .labels import LabelSpace, colorize, get_space, one_hot
from .models import build_model, model_config
from .utils import atomic_path, check_writable_dir, pick_device, seed_everything

TASKS: dict[str, type] = {}


def register_task(name: str):
    def deco(cls):
        TASKS[name] = cls
        cls.name = name
        return cls
    return deco


# --------------------------------------------------------------------------- tasks


@register_task("crn")
class CRNTask:
    """Layout -> k images, perceptual (or per-class min-over-k diversity) loss against the photo,
    plus an optional adversarial term (`loss.adversarial`, not part of CRN; see losses.py)."""

    def __init__(self, cfg: dict, space: LabelSpace, device: torch.device):
        from .losses import build_adversarial, build_loss

        self.space = space
        self.model_config = model_config(cfg["model"], num_classes=space.num_classes,
                                         **cfg.get("model_overrides", {}))
        self.model = build_model(self.model_config)
        loss_cfg = cfg.get("loss", {})
        self.loss_fn = build_loss({k: v for k, v in loss_cfg.items() if k not in ("backbone_path", "adversarial")},
                                  loss_cfg.get("backbone_path")).to(device)
        self.adversarial = build_adversarial(loss_cfg.get("adversarial"), space.num_classes + 1)
        if self.adversarial is not None:
            self.adversarial.to(device)

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        """The generator's loss. With an adversarial term this first takes the discriminator's
        step on the detached outputs (the usual alternating update)."""
        label = one_hot(batch["label"], self.space.num_classes)
        fake = model(label)
        loss, logs = self.loss_fn(fake, batch["image"], label)
        if self.adversarial is not None:
            logs.update(self.adversarial.discriminator_step(fake, batch["image"], label))
            adv, adv_logs = self.adversarial.generator_loss(fake, batch["image"], label)
            logs.update(adv_logs, **{"loss/perceptual": loss.detach()})
            loss = loss + adv
        return loss, logs

    def state_dict(self) -> dict:
        """Trainable state outside the model (the discriminator and its optimiser) for resume."""
        return {"adversarial": self.adversarial.state_dict()} if self.adversarial is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.adversarial is not None:
            if "adversarial" not in state:
                raise ConfigError("this run has loss.adversarial but its checkpoint holds no discriminator; "
                                 "start a new run folder (init_from the old one) instead of resuming")
            self.adversarial.load_state_dict(state["adversarial"])

    @torch.no_grad()
    def samples(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """One row per example: layout colours | photo | k outputs."""
        label = one_hot(batch["label"], self.space.num_classes)
        fake = model(label).clamp(0, 1)
        rows = []
        for b in range(fake.shape[0]):
            lay = torch.from_numpy(colorize(batch["label"][b], self.space)).permute(2, 0, 1).float() / 255
            tiles = [lay.to(fake.device), batch["image"][b]] + list(fake[b])
            rows.append(torch.cat(tiles, dim=2))
        return torch.cat(rows, dim=1)


# --------------------------------------------------------------------------- data order


class ResumableSampler(Sampler):
    """Endless sample indices: a fresh permutation per epoch, seeded by (seed, epoch), starting at
    global sample position `start`; with `world` ranks, rank r takes every world-th index."""

    def __init__(self, n: int, seed: int, start: int = 0, rank: int = 0, world: int = 1, shuffle=True):
        self.n, self.seed, self.start, self.rank, self.world, self.shuffle = n, seed, start, rank, world, shuffle

    def __iter__(self) -> Iterator[int]:
        pos = self.start
        while True:
            epoch, offset = divmod(pos, self.n)
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
                perm = torch.randperm(self.n, generator=g).tolist()
            else:
                perm = list(range(self.n))
            for i in range(offset, self.n):
                if (pos - self.start) % self.world == self.rank:
                    yield perm[i]
                pos += 1

    def __len__(self):  # endless; DataLoader only needs it for len(), which we never call
        return 2 ** 62


def _flip_batch(batch: dict, gen: torch.Generator) -> dict:
    """Random horizontal flips drawn from the trainer's generator (its state is checkpointed)."""
    flip = torch.rand(batch["label"].shape[0], generator=gen) < 0.5
    for key in ("label", "image"):
        if key in batch:
            x = batch[key]
            batch[key] = torch.where(flip.view(-1, *[1] * (x.dim() - 1)), x.flip(-1), x)
    return batch


# --------------------------------------------------------------------------- the loop


def _setup_distributed() -> tuple[int, int, torch.device | None]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, None
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    rank = dist.get_rank()
    device = None
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    return rank, world, device


def _data_path(p: str) -> Path:
    """'shared:data/x' names a folder under the shared data dir (SEMSYNTH_SHARED, ../shared)."""
    from .utils import shared_dir

    return shared_dir() / p[len("shared:"):] if str(p).startswith("shared:") else Path(p)


def open_training_data(cfg: dict, space: LabelSpace):
    """The `data` section as one dataset: `data.path` is a folder, `shared:<folder>` or a list of
    them (their samples joined, each folder's layout detected on its own), with `split`, `size`,
    `cache`, `label_encoding`, `exclude` (names or globs) and `vivid` applied to all."""
    from .data import LayoutDataset, open_dataset

    d = cfg.get("data", {})
    if not d.get("path"):
        raise ConfigError("no training data: pass --data PATH (or set data.path in the config)")
    paths = d["path"] if isinstance(d["path"], list) else [d["path"]]
    parts = [open_dataset(_data_path(p), space=space, split=d.get("split", "train"),
                          size=tuple(d["size"]) if d.get("size") else None,
                          cache=d.get("cache", True), label_encoding=d.get("label_encoding"),
                          exclude=d.get("exclude"), vivid=d.get("vivid", False)) for p in paths]
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return LayoutDataset([it for p in parts for it in p.items], space, size=first.size, cache=d.get("cache", True),
                         label_encoding=d.get("label_encoding"), layout="joined", vivid=first.vivid)


def _load_partial(model: nn.Module, path: str | Path) -> list[str]:
    """Initialise from another stage's checkpoint (256p -> 512p -> 1024p): copy every tensor whose
    name and shape match; new modules and a changed head keep their fresh init, as in the original."""
    src, _ = ckpt.load_state(path)  # content hash checked
    own = model.state_dict()
    taken = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(taken, strict=False)
    return sorted(set(own) - set(taken))


def amp_dtype(cfg: dict, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run: `amp: bf16 | fp16 | null`, used where it is fast: on CUDA,
    and for bf16 on CPUs with native bf16 (AVX512-BF16 or AMX, as oneDNN reports). Elsewhere
    bf16 is emulated and slower than fp32, so the run stays fp32."""
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.get("amp", "bf16"))
    if dt is None or device.type == "cuda":
        return dt
    if device.type == "cpu" and dt == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return dt
    return None


class TrainStep:
    """One optimisation step of a task, as `train` runs it (and `benchmarks/train_step.py`
    times it): autocast (`amp`), memory format (`channels_last`), Adam (`optim.*`, the fused
    kernel unless `optim.fused: false`), optional `torch.compile` of the loss (`compile: true`;
    not in the official presets), loss scaling for fp16. `__call__(batch, step)` -> (loss, logs)."""

    def __init__(self, task, cfg: dict, device: torch.device, net: nn.Module | None = None, verbose: bool = True):
        self.task, self.device = task, device
        model = task.model
        self.net = net if net is not None else model
        self.dtype = amp_dtype(cfg, device)
        if verbose and cfg.get("amp", "bf16") and self.dtype is None and device.type != "cuda":
            print(f"amp {cfg.get('amp', 'bf16')!r}: not used on this {device.type} (no native support); training in fp32")
        self.channels_last = bool(cfg.get("channels_last", False))
        if self.channels_last:
            for m in (model, getattr(task, "loss_fn", None)):
                if m is not None:
                    m.to(memory_format=torch.channels_last)
        o = cfg.get("optim", {})
        fused = bool(o.get("fused", True)) and device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                          lr=float(o.get("lr", 1e-4)), betas=tuple(o.get("betas", (0.9, 0.999))),
                                          eps=float(o.get("eps", 1e-8)), fused=fused)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.loss = torch.compile(task.loss) if cfg.get("compile") else task.loss

    def __call__(self, batch: dict, step: int = 0):
        if self.channels_last:
            batch = {k: v.contiguous(memory_format=torch.channels_last) if torch.is_tensor(v) and v.dim() == 4 else v
                     for k, v in batch.items()}
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            loss, logs = self.loss(self.net, batch)
        if hasattr(self.task, "lr_at"):  # per-step schedules (the SIMS warm-ups)
            for g in self.optimizer.param_groups:
                g["lr"] = self.task.lr_at(step)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss, logs


def train(cfg: dict, out: str | Path, resume: bool = True, progress: bool = True) -> Path:
    """Train according to `cfg` into run folder `out`; returns the final checkpoint folder."""
    out = Path(out)
    cfg = validate(cfg)  # API callers pass dicts too; unknown keys and bad values stop here
    rank, world, dev = _setup_distributed()
    device = dev or pick_device(cfg.get("device"))
    if rank == 0:
        check_writable_dir(out, "run folder")
    seed = int(cfg.get("seed", 0))
    seed_everything(seed)

    space = get_space(cfg.get("label_space", "cityscapes"))
    if str(cfg.get("task", "crn")).startswith("sims-"):
        from .sims import tasks as _sims_tasks  # noqa: F401  (registers the sims-* tasks)
    if cfg["task"] not in TASKS:
        raise ConfigError(f"config key task: unknown task {cfg['task']!r}; known: {', '.join(sorted(TASKS))}")
    state = ckpt.latest_train_state(out, report=_warn if rank == 0 else _quiet, repair=rank == 0) if resume else None
    _check_previous_stage(cfg, state)
    task = TASKS[cfg.get("task", "crn")](cfg, space, device)
    model = task.model.to(device)
    if hasattr(model, "config") and cfg.get("grad_checkpoint") and device.type == "cuda":
        model.config.grad_checkpoint = True

    d = cfg.get("data", {})
    dataset = task.dataset(cfg, out) if hasattr(task, "dataset") else open_training_data(cfg, space)
    B = int(cfg.get("optim", {}).get("batch_size", 1))
    steps_per_epoch = math.ceil(len(dataset) / (B * world))
    total = int(cfg["steps"]) if cfg.get("steps") else int(cfg.get("epochs", 1)) * steps_per_epoch

    step = 0
    gen = torch.Generator().manual_seed(seed)
    if state is None and cfg.get("init_from"):
        fresh = _load_partial(model, cfg["init_from"])
        if rank == 0 and fresh:
            print(f"init_from {cfg['init_from']}: {len(fresh)} tensors start fresh ({fresh[0]} ...)")
    only = cfg.get("train_only")  # e.g. the 1024p stage trains only g_512, g_1024 and the head
    for name, p in model.named_parameters():
        p.requires_grad_(not only or any(name.startswith(prefix) for prefix in only))
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    train_step = TrainStep(task, cfg, device, net=net, verbose=rank == 0)
    optimizer = train_step.optimizer
    if state is not None:
        folder, st, weights = state
        model.load_state_dict(weights, strict=True)
        optimizer.load_state_dict(st["optimizer"])
        step = st["step"]
        gen.set_state(st["gen"])
        torch.set_rng_state(st["torch_rng"])
        np.random.set_state(st["numpy_rng"])
        random.setstate(st["python_rng"])
        if hasattr(task, "load_state_dict"):
            task.load_state_dict(st.get("task", {}))
        if rank == 0:
            print(f"resuming {out} from step {step}")

    sampler = ResumableSampler(len(dataset), seed, start=step * B * world, rank=rank, world=world)
    workers = int(d.get("workers", 0))
    loader = DataLoader(dataset, batch_size=B, sampler=sampler, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)

    writer = _writer(out) if rank == 0 else None
    metrics_path = out / "metrics.jsonl"
    if rank == 0:
        with atomic_path(out / "config.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
        _truncate_metrics(metrics_path, step)
    log_every, sample_every = int(cfg.get("log_every", 50)), int(cfg.get("sample_every", 1000))
    save_every = int(cfg.get("save_every", 1000))

    def save(at: int):
        train_state = {"optimizer": optimizer.state_dict(), "step": at, "gen": gen.get_state(),
                       "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
                       "python_rng": random.getstate(), "config": cfg}
        if hasattr(task, "state_dict"):
            train_state["task"] = task.state_dict()
        return ckpt.save_training(out, at, model, task.model_config, space, task.name, train_state,
                                  keep=int(cfg.get("keep", 3)))

    bar = None
    if rank == 0 and progress:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=step, desc=f"train {cfg.get('preset', '')}", dynamic_ncols=True)
    it = iter(loader)
    model.train()
    t0, interval = time.time(), {}  # every logged value, averaged over the logging interval
    folder = None
    # The first step whose loss was not finite, tracked on the device (no host sync per step) and
    # checked before anything is logged, drawn or saved, so NaN weights never reach a checkpoint.
    guard = _FiniteGuard(device, step, world)
    last_good = state[0] if state is not None else None
    while step < total:
        batch = next(it)
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        if d.get("flip"):
            batch = _flip_batch(batch, gen)
        loss, logs = train_step(batch, step)
        guard.record(loss)
        step += 1
        if step % log_every == 0 or step % sample_every == 0 or step % save_every == 0 or step == total:
            guard.check(last_good)
        if rank == 0:
            # kept as tensors until the log line: one host sync per step (the bar), not per value
            for k, v in {"loss": loss, **logs}.items():
                interval.setdefault(k, []).append(v.detach() if torch.is_tensor(v) else v)
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.4g}")
            if step % log_every == 0 or step == total:
                rec = {"step": step, "time": time.time() - t0,
                       **{k: float(np.mean([float(x) for x in v])) for k, v in interval.items()}}
                interval = {}
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                if writer:
                    for k, v in rec.items():
                        if k != "step":
                            writer.add_scalar(f"train/{k}", v, step)
            if step % sample_every == 0 or step == total:
                model.eval()
                grid = task.samples(model, batch).clamp(0, 1).cpu()
                model.train()
                _save_grid(out / "samples" / f"step_{step:07d}.png", grid)
                if writer:
                    writer.add_image("samples", grid, step)
            if step % save_every == 0 or step == total:
                folder = last_good = save(step)
    if bar:
        bar.close()
    if writer:
        writer.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return folder or Path(out)


class _FiniteGuard:
    """Remembers, on the device, the first step with a non-finite loss; `check` (at log, sample
    and save points, on every rank) raises TrainingError naming it and the last good checkpoint."""

    def __init__(self, device: torch.device, step: int, world: int):
        self.world = world
        self.step = torch.full((), step, dtype=torch.long, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def record(self, loss: torch.Tensor) -> None:
        self.step += 1
        bad = ~torch.isfinite(loss.detach()).all()
        self.first_bad = torch.where(bad & (self.first_bad < 0), self.step, self.first_bad)

    def check(self, last_good: Path | None) -> None:
        first = self.first_bad.clone()
        if self.world > 1:  # every rank stops together, or the others would wait forever
            dist.all_reduce(first, op=dist.ReduceOp.MAX)
        first = int(first)
        if first >= 0:
            where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written"
            raise TrainingError(
                f"step {first}: the loss is not finite (nan or inf); training stopped and nothing from "
                f"that step on was saved ({where}). Lower optim.lr, check the data, or set amp: null")


def _quiet(msg: str) -> None:
    pass


def _warn(msg: str) -> None:
    print(f"semsynth: warning: {msg}", file=sys.stderr, flush=True)


def _check_previous_stage(cfg: dict, state) -> None:
    """A progressive stage (crn-512p fine-tunes crn-256p, ...) without its previous stage would
    silently train from scratch, or train top modules on random frozen lower ones: refuse."""
    prev = cfg.get("previous_stage")
    if not prev or state is not None or cfg.get("init_from"):
        return
    name = cfg.get("preset", "this preset")
    raise ConfigError(
        f"{name} fine-tunes {prev}: pass --init-from with a {prev} run, e.g. first "
        f"`semsynth train {prev} --data DATA --out runs/{prev}`, then "
        f"`semsynth train {name} --data DATA --out runs/{name} --init-from runs/{prev}` "
        f"(or --set previous_stage=null to train from scratch on purpose)")


def _writer(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional; metrics.jsonl is always written
        return None
    return SummaryWriter(str(out / "tb"))


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop log lines past the resumed step so the curve has no duplicates, and a line
    torn by a kill mid-write."""
    if not path.is_file():
        return

    def step_of(line: str) -> float:
        try:
            return json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            return math.inf

    keep = [ln for ln in path.read_text().splitlines() if ln and step_of(ln) <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(ln + "\n" for ln in keep))


def _save_grid(path: Path, grid: torch.Tensor) -> None:
    from PIL import Image

    arr = (grid.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
