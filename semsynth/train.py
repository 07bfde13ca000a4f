"""The one trainer shared by every semsynth model.

A run is described by a config file (see `semsynth/configs/*.yaml`): which *task*
(`semsynth.tasks`: what a batch means and how the loss is computed: `crn`, SIMS networks, ...),
which model preset, label space, data, loss and optimiser. `train(cfg, out)` reads top to bottom:
set up -> resume -> loop -> save, and its loop shows every update: the discriminator's (tasks with
an adversarial critic), then the generator's.

Exact resume: the data order comes from `ResumableSampler` (a permutation per epoch seeded by
(seed, epoch), so position = step), augmentation draws from the trainer's own generator, and
`TrainState` saves every RNG state with the optimisers. N steps straight equal N/2 + resume + N/2.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from . import checkpoint as ckpt
from .config import load_config, parse_overrides, validate  # noqa: F401  (load_config: public here too)
from .data import save_image
from .errors import ConfigError, TrainingError
from .labels import get_space
from .precision import native_bf16
from .tasks import TASKS, CRNTask, Task, build_task, open_training_data  # noqa: F401  (public here too)
from .utils import atomic_path, check_writable_dir, pick_device, seed_everything


def train(cfg: dict, out: str | Path, resume: bool = True, progress: bool = True) -> Path:
    """Train according to `cfg` into run folder `out`; returns the final checkpoint folder."""
    out, cfg = Path(out), validate(cfg)  # API callers pass dicts too; unknown keys and bad values stop here
    rank, world, device = _setup_distributed(cfg)
    if rank == 0:
        check_writable_dir(out, "run folder")
    seed = int(cfg["seed"])
    seed_everything(seed)
    space = get_space(cfg["label_space"])
    saved = ckpt.latest_train_state(out, report=_warn if rank == 0 else _quiet, repair=rank == 0) if resume else None
    _check_previous_stage(cfg, saved)
    task = build_task(cfg, space, device)
    model = _prepare_model(task, cfg, device, fresh=saved is None, verbose=rank == 0)
    dataset = task.dataset(cfg, out)
    total = _total_steps(cfg, dataset, world)

    ddp = (
        (lambda m: nn.parallel.DistributedDataParallel(m, device_ids=[device.index] if device.type == "cuda" else None))
        if world > 1
        else (lambda m: m)
    )
    train_step = TrainStep(
        task,
        cfg,
        device,
        net=ddp(model),
        critic_net=ddp(task.critic.disc) if task.critic is not None else None,
        verbose=rank == 0,
    )
    gen = torch.Generator().manual_seed(seed)  # flips
    state = TrainState(gen, train_step.optimizers, task)
    step = 0
    if saved is not None:
        model.load_state_dict(saved[2], strict=True)
        step = state.restore(saved[1])
        if rank == 0:
            print(f"resuming {out} from step {step}")
    batches = Batches(dataset, cfg, seed, step, rank, world, device, gen)
    if rank == 0:
        with atomic_path(out / "config.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
    log = MetricsLogger(out, step, total, f"train {cfg.get('preset', '')}", progress, enabled=rank == 0)
    log_every, sample_every, save_every = int(cfg["log_every"]), int(cfg["sample_every"]), int(cfg["save_every"])
    # The first step whose loss was not finite, tracked on the device (no host sync per step) and
    # checked before anything is logged, drawn or saved, so NaN weights never reach a checkpoint.
    guard = _FiniteGuard(device, step, world)
    folder, last_good = None, saved[0] if saved is not None else None
    model.train()
    while step < total:
        batch = batches.next()
        logs = train_step.discriminator(batch) if task.critic is not None else {}  # the critic's update
        loss, g_logs = train_step.generator(batch, step)  # the generator's update
        logs.update(g_logs)
        guard.record(loss)
        step += 1
        due = {
            n: step % every == 0 or step == total
            for n, every in (("log", log_every), ("sample", sample_every), ("save", save_every))
        }
        if any(due.values()):
            guard.check(last_good)
        log.record(loss, logs)
        if due["log"]:
            log.write(step)
        if due["sample"] and rank == 0:
            log.image(step, _sample_grid(task, model, batch))
        if due["save"] and rank == 0:
            folder = last_good = ckpt.save_training(
                out, step, model, task.model_config, space, task.name, state.capture(step, cfg), keep=int(cfg["keep"])
            )
    log.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return folder or out


# --------------------------------------------------------------------------- set-up


def _setup_distributed(cfg: dict) -> tuple[int, int, torch.device]:
    """(rank, world size, device): one process, or one of several under torchrun (gloo/nccl)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, pick_device(cfg.get("device"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if not torch.cuda.is_available():
        return dist.get_rank(), world, pick_device(cfg.get("device"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    return dist.get_rank(), world, torch.device("cuda", local)


def _prepare_model(task: Task, cfg: dict, device: torch.device, fresh: bool, verbose: bool) -> nn.Module:
    """The task's model on `device`: gradient checkpointing (CUDA), `init_from` (a fresh run of a
    later stage), `train_only` (the other parameters frozen)."""
    model = task.model.to(device)
    if cfg["grad_checkpoint"] and device.type == "cuda":
        model.config.grad_checkpoint = True
    if fresh and cfg.get("init_from"):
        new = _load_partial(model, cfg["init_from"])
        if verbose and new:
            print(f"init_from {cfg['init_from']}: {len(new)} tensors start fresh ({new[0]} ...)")
    only = cfg.get("train_only")  # e.g. the 1024p stage trains only g_512, g_1024 and the head
    for name, p in model.named_parameters():
        p.requires_grad_(not only or any(name.startswith(prefix) for prefix in only))
    return model


def _load_partial(model: nn.Module, path: str | Path) -> list[str]:
    """Initialise from another stage's checkpoint (256p -> 512p -> 1024p): copy every tensor whose
    name and shape match; new modules and a changed head keep their fresh init, as in the original."""
    src, _ = ckpt.load_state(path)  # content hash checked
    own = model.state_dict()
    taken = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(taken, strict=False)
    return sorted(set(own) - set(taken))


def _total_steps(cfg: dict, dataset: Dataset, world: int) -> int:
    if cfg.get("steps"):
        return int(cfg["steps"])
    return int(cfg["epochs"]) * math.ceil(len(dataset) / (int(cfg["optim"]["batch_size"]) * world))


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
        f"(or --set previous_stage=null to train from scratch on purpose)"
    )


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
        return 2**62


class Batches:
    """This process's batches from step `step` on, in the resumable order, on the device, with
    random horizontal flips (`data.flip`) drawn from the trainer's generator `gen`."""

    def __init__(
        self,
        dataset: Dataset,
        cfg: dict,
        seed: int,
        step: int,
        rank: int,
        world: int,
        device: torch.device,
        gen: torch.Generator,
    ):
        B, workers = int(cfg["optim"]["batch_size"]), int(cfg["data"]["workers"])
        sampler = ResumableSampler(len(dataset), seed, start=step * B * world, rank=rank, world=world)
        loader = DataLoader(
            dataset,
            batch_size=B,
            sampler=sampler,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
        )
        self.it, self.device, self.flip, self.gen = iter(loader), device, bool(cfg["data"]["flip"]), gen

    def next(self) -> dict:
        batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in next(self.it).items()}
        return _flip_batch(batch, self.gen) if self.flip else batch


def _flip_batch(batch: dict, gen: torch.Generator) -> dict:
    """Random horizontal flips drawn from the trainer's generator (its state is checkpointed)."""
    flip = torch.rand(batch["label"].shape[0], generator=gen) < 0.5
    for key in ("label", "image"):
        if key in batch:
            x = batch[key]
            batch[key] = torch.where(flip.view(-1, *[1] * (x.dim() - 1)), x.flip(-1), x)
    return batch


# --------------------------------------------------------------------------- the updates


def amp_dtype(cfg: dict, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run: `amp: bf16 | fp16 | null`, used where it is fast: on CUDA,
    and for bf16 on CPUs with native bf16 (`precision.native_bf16`). Elsewhere bf16 is emulated
    and slower than fp32, so the run stays fp32."""
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.get("amp", "bf16"))
    if dt is None or device.type == "cuda":
        return dt
    if device.type == "cpu" and dt == torch.bfloat16 and native_bf16(device):
        return dt
    return None


class TrainStep:
    """The optimisation steps of a task, as `train` runs them (and `benchmarks/train_step.py`
    times them). `generator(batch, step)` -> (loss, logs): the task's loss under autocast (`amp`),
    backward, Adam (`optim.*`, the fused kernel unless `optim.fused: false`) at the task's
    learning rate for `step`, loss scaling for fp16, optional `torch.compile` of the loss
    (`compile: true`; not in the official presets). `discriminator(batch)` -> logs: the critic's
    update for tasks with one (its own Adam at the critic's `optim`, in fp32). `channels_last`
    puts the model, the loss network and the batches in that memory format."""

    def __init__(
        self,
        task: Task,
        cfg: dict,
        device: torch.device,
        net: nn.Module | None = None,
        critic_net: nn.Module | None = None,
        verbose: bool = True,
    ):
        self.task, self.device = task, device
        model = task.model
        self.net = net if net is not None else model
        self.dtype = amp_dtype(cfg, device)
        if verbose and cfg.get("amp", "bf16") and self.dtype is None and device.type != "cuda":
            print(
                f"amp {cfg.get('amp', 'bf16')!r}: not used on this {device.type} (no native support); training in fp32"
            )
        self.channels_last = bool(cfg.get("channels_last", False))
        if self.channels_last:
            for m in (model, task.loss_fn):
                if m is not None:
                    m.to(memory_format=torch.channels_last)
        o = cfg.get("optim", {})
        fused = bool(o.get("fused", True)) and device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.Adam(
            [p for p in model.parameters() if p.requires_grad],
            lr=float(o.get("lr", 1e-4)),
            betas=tuple(o.get("betas", (0.9, 0.999))),
            eps=float(o.get("eps", 1e-8)),
            fused=fused,
        )
        self.optimizers = {"optimizer": self.optimizer}  # TrainState keys
        if task.critic is not None:
            self.critic_net = critic_net if critic_net is not None else task.critic.disc
            self.optimizers["critic_optimizer"] = torch.optim.Adam(task.critic.disc.parameters(), **task.critic.optim)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.loss = torch.compile(task.loss) if cfg.get("compile") else task.loss

    def _prepare(self, batch: dict) -> dict:
        if not self.channels_last:
            return batch
        return {
            k: v.contiguous(memory_format=torch.channels_last) if torch.is_tensor(v) and v.dim() == 4 else v
            for k, v in batch.items()
        }

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def discriminator(self, batch: dict) -> dict:
        with self._autocast():  # the generator's forward; the critic itself runs in fp32
            loss, logs = self.task.discriminator_loss(self.net, self.critic_net, self._prepare(batch))
        opt = self.optimizers["critic_optimizer"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return logs

    def generator(self, batch: dict, step: int = 0) -> tuple[torch.Tensor, dict]:
        with self._autocast():
            loss, logs = self.loss(self.net, self._prepare(batch))
        lr = self.task.lr_at(step)  # per-step schedules (the SIMS warm-ups)
        if lr is not None:
            for g in self.optimizer.param_groups:
                g["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss, logs


# --------------------------------------------------------------------------- state and logs


class TrainState:
    """What exact resume restores besides the model's weights: the step, the trainer's generator
    (flips), the global RNGs (torch, NumPy, Python), every optimiser (`TrainStep.optimizers`) and
    the task's own state (e.g. the discriminator). `capture` gives train_state.pt's dict (with the
    config), `restore` is its inverse and returns the step."""

    def __init__(self, gen: torch.Generator, optimizers: dict, task: Task):
        self.gen, self.optimizers, self.task = gen, optimizers, task

    def capture(self, step: int, cfg: dict) -> dict:
        return {
            "step": step,
            "gen": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "python_rng": random.getstate(),
            **{k: o.state_dict() for k, o in self.optimizers.items()},
            "task": self.task.state_dict(),
            "config": cfg,
        }

    def restore(self, st: dict) -> int:
        task_state = dict(st.get("task", {}))
        if "adversarial" in task_state and "critic_optimizer" not in st:
            # runs saved before the trainer owned the critic's optimiser kept it in the critic's state
            task_state["adversarial"] = dict(task_state["adversarial"])
            st = {**st, "critic_optimizer": task_state["adversarial"].pop("_extra_state")["optimizer"]}
        self.task.load_state_dict(task_state)
        for k, o in self.optimizers.items():
            o.load_state_dict(st[k])
        self.gen.set_state(st["gen"])
        torch.set_rng_state(st["torch_rng"])
        np.random.set_state(st["numpy_rng"])
        random.setstate(st["python_rng"])
        return int(st["step"])


class MetricsLogger:
    """Rank 0's record of a run: metrics.jsonl (on resume, lines past the resumed step dropped),
    TensorBoard when installed, a progress bar, sample grids. Every logged value is its mean over
    the logging interval, kept as tensors until the line is written (one host sync per step: the
    bar's). With `enabled=False` (other ranks) every call does nothing."""

    def __init__(self, out: Path, step: int, total: int, desc: str, progress: bool, enabled: bool = True):
        self.enabled, self.out = enabled, out
        if not enabled:
            return
        self.path = out / "metrics.jsonl"
        _truncate_metrics(self.path, step)
        self.writer = _writer(out)
        self.bar = tqdm(total=total, initial=step, desc=desc, dynamic_ncols=True) if progress else None
        self.t0, self.interval = time.time(), {}

    def record(self, loss: torch.Tensor, logs: dict) -> None:
        if not self.enabled:
            return
        for k, v in {"loss": loss, **logs}.items():
            self.interval.setdefault(k, []).append(v.detach() if torch.is_tensor(v) else v)
        if self.bar:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{float(loss.detach()):.4g}")

    def write(self, step: int) -> None:
        if not self.enabled:
            return
        rec = {
            "step": step,
            "time": time.time() - self.t0,
            **{k: float(np.mean([float(x) for x in v])) for k, v in self.interval.items()},
        }
        self.interval = {}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.writer:
            for k, v in rec.items():
                if k != "step":
                    self.writer.add_scalar(f"train/{k}", v, step)

    def image(self, step: int, grid: torch.Tensor) -> None:
        if not self.enabled:
            return
        save_image(self.out / "samples" / f"step_{step:07d}.png", grid)
        if self.writer:
            self.writer.add_image("samples", grid, step)

    def close(self) -> None:
        if self.enabled and self.bar:
            self.bar.close()
        if self.enabled and self.writer:
            self.writer.close()


def _sample_grid(task: Task, model: nn.Module, batch: dict) -> torch.Tensor:
    model.eval()
    grid = task.samples(model, batch).clamp(0, 1).cpu()
    model.train()
    return grid


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
                f"that step on was saved ({where}). Lower optim.lr, check the data, or set amp: null"
            )


def _quiet(msg: str) -> None:
    pass


def _warn(msg: str) -> None:
    print(f"semsynth: warning: {msg}", file=sys.stderr, flush=True)


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
