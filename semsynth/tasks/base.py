"""The task interface of the trainer, and the training data every task starts from.

A *task* says what a training batch means: which network it trains, how the loss of a batch is
computed and what a sample grid shows. `semsynth.train.train` runs the same loop for every task
and calls only what `Task` declares here.

Required: `model` (the trained network), `model_config` (rebuilds it from a checkpoint),
`loss(model, batch) -> (loss, logs)`, `samples(model, batch) -> (3, H, W) grid`.
Optional, with the defaults below: `dataset` (default: `open_training_data`), `lr_at` (a
per-step learning rate; default: the optimiser's constant one), `state_dict` /
`load_state_dict` (trainable state outside the model, for exact resume), `loss_fn` (a frozen
loss network that follows the model's memory format), and `critic` with `discriminator_loss`
(an adversarial term: the loop steps the discriminator before each generator step).

A task registers itself where it is defined, with `@register_task("name")`; the config's
`task:` key picks it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Protocol

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..data import LayoutDataset, open_dataset
from ..errors import ConfigError
from ..labels import LabelSpace
from ..losses import AdversarialLoss
from ..utils import shared_dir

__all__ = ["Task", "TASKS", "register_task", "build_task", "open_training_data", "data_paths"]

TASKS: dict[str, type] = {}


def register_task(name: str) -> Callable[[type], type]:
    """Class decorator: make a `Task` class available as config `task: name`."""

    def deco(cls: type) -> type:
        TASKS[name] = cls
        cls.name = name
        return cls

    return deco


def build_task(cfg: dict, space: LabelSpace, device: torch.device) -> Task:
    name = cfg.get("task", "crn")
    if name not in TASKS:
        raise ConfigError(f"config key task: unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name](cfg, space, device)


class Task(Protocol):
    """What the trainer needs of a task (see the module docstring). Tasks subclass it, so the
    optional parts have their defaults and the trainer never probes for them."""

    name: ClassVar[str]
    space: LabelSpace
    model: nn.Module
    model_config: dict
    loss_fn: nn.Module | None = None
    critic: AdversarialLoss | None = None

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        """The loss to minimise over `model`'s parameters and a dict of 0-dim tensors to log."""
        ...

    def samples(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """A (3, H, W) picture in [0, 1] of what the model does on `batch`."""
        ...

    def dataset(self, cfg: dict, out: Path | None = None) -> Dataset:
        return open_training_data(cfg, self.space)

    def lr_at(self, step: int) -> float | None:
        """The learning rate of optimisation step `step` (0-based); None keeps `optim.lr`."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def discriminator_loss(self, model: nn.Module, disc: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        """The critic's loss on this batch (tasks with a `critic`); `disc` is the discriminator as
        the trainer runs it (wrapped for several processes)."""
        raise NotImplementedError(f"task {self.name!r} has no critic")


def data_paths(cfg: dict) -> list[Path]:
    """The folders of `data.path`: one folder or a list, each a path or 'shared:<folder>' (a
    folder under the shared data dir: SEMSYNTH_SHARED, default ../shared)."""
    d = cfg.get("data", {})
    if not d.get("path"):
        raise ConfigError("no training data: pass --data PATH (or set data.path in the config)")
    paths = d["path"] if isinstance(d["path"], list) else [d["path"]]
    return [shared_dir() / str(p)[len("shared:") :] if str(p).startswith("shared:") else Path(p) for p in paths]


def open_training_data(cfg: dict, space: LabelSpace) -> LayoutDataset:
    """The `data` section as one dataset, for every task: the folders of `data_paths` (their
    samples joined, each folder's layout detected on its own), with `split`, `size`, `cache`,
    `label_encoding`, `exclude` (names or globs) and `vivid` applied to all."""
    d = cfg.get("data", {})
    parts = [
        open_dataset(
            p,
            space=space,
            split=d.get("split", "train"),
            size=tuple(d["size"]) if d.get("size") else None,
            cache=d.get("cache", True),
            label_encoding=d.get("label_encoding"),
            exclude=d.get("exclude"),
            vivid=d.get("vivid", False),
        )
        for p in data_paths(cfg)
    ]
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return LayoutDataset(
        [it for p in parts for it in p.items],
        space,
        size=first.size,
        cache=d.get("cache", True),
        label_encoding=d.get("label_encoding"),
        layout="joined",
        vivid=first.vivid,
    )
