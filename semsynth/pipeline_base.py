"""The one pipeline shape (as diffusers' `DiffusionPipeline`): every synthesis pipeline loads
with `from_pretrained(path, device=None, precision="auto", **options)`, moves with `to(device)`,
runs its networks at `precision`, and turns layouts into k images per layout:

    images = pipe(layouts, k=3)                   # list of (k, H, W, 3) uint8, one per layout
    out = pipe(layouts, return_intermediates=True)  # PipelineOutput(images, intermediates)
    pipe.synthesize_files(["labels/"], "out/")    # <stem>.png or <stem>_k<i>.png (+ grid, extras)

A subclass says which checkpoint tasks it runs (`@register_pipeline("crn")`), which options its
constructor takes, and implements `_run` (one batch of layouts -> images + intermediates) and,
if it has any, `intermediate_names` / `save_intermediates`. `pipelines.load_pipeline` picks the
class by the checkpoint's task from `PIPELINES`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from . import checkpoint as ckpt
from .data import check_size as _check_size_arg
from .data import list_label_files, save_image
from .errors import InputError, OutputExistsError
from .labels import LabelSpace, colorize, layout_reader
from .precision import autocast, resolve_precision
from .utils import check_writable_dir, pick_device

__all__ = [
    "Pipeline",
    "PipelineOutput",
    "PIPELINES",
    "register_pipeline",
    "load_network",
    "plan_outputs",
    "check_count",
    "output_names",
    "tile",
]

# checkpoint task -> the pipeline class that runs it
PIPELINES: dict[str, type[Pipeline]] = {}


def register_pipeline(*tasks: str):
    """Class decorator: checkpoints of these tasks load into this pipeline class."""

    def deco(cls):
        for t in tasks:
            if t in PIPELINES:
                raise ValueError(f"task {t!r} already has the pipeline {PIPELINES[t].__name__}")
            PIPELINES[t] = cls
        cls.tasks = tuple(tasks)
        return cls

    return deco


@dataclass
class PipelineOutput:
    """`images[i]`: (k, H, W, 3) uint8 for layout i; `intermediates[i]`: what the pipeline made on
    the way (SIMS: one `SIMSResult` per variant; CRN: None)."""

    images: list[np.ndarray]
    intermediates: list = field(default_factory=list)


def load_network(path_or_model, tasks, device):
    """(network in eval mode on `device`, metadata or None) from a checkpoint path or bundled name
    whose task is one of `tasks`, or an `nn.Module` as given."""
    if isinstance(path_or_model, torch.nn.Module):
        return path_or_model.to(device).eval(), None
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    task = ckpt.read_metadata(path_or_model)["task"]
    if task not in tasks:
        raise InputError(f"{path_or_model}: is a {task!r} checkpoint, expected {' or '.join(map(repr, tasks))}")
    return ckpt.load_model(path_or_model, device)


def plan_outputs(
    inputs, out_dir: str | Path, names, overwrite: bool = False, skip_existing: bool = False
) -> list[tuple[Path, list[str]]]:
    """[(label file, its output names)] still to write into `out_dir`, checked before any work:
    inputs that would share outputs, outputs that exist (refused unless `overwrite`; with
    `skip_existing` the inputs whose outputs all exist are left out, which finishes an interrupted
    run), and an output folder that cannot be written. `names(stem)` lists one input's outputs."""
    if overwrite and skip_existing:
        raise InputError("--overwrite and --skip-existing exclude each other")
    files = list_label_files(inputs)
    stems = [f.stem for f in files]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise InputError(f"several inputs share the output name(s) {dupes[:5]}; synthesize them into separate folders")
    out_dir = Path(out_dir)
    plan = [(f, names(f.stem)) for f in files]
    done = [all((out_dir / n).exists() for n in ns) for _, ns in plan]
    if skip_existing:
        plan = [item for item, d in zip(plan, done) if not d]
    else:
        existing = [out_dir / n for _, ns in plan for n in ns if (out_dir / n).exists()]
        if existing and not overwrite:
            raise OutputExistsError(
                f"{len(existing)} output(s) already exist, e.g. {existing[0]}; pass "
                "--overwrite to replace them (or --skip-existing to finish an interrupted run)"
            )
    check_writable_dir(out_dir)
    return plan


def check_count(value, what: str) -> int | None:
    """A count option (k, batch size): None or an integer >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise InputError(f"{what} must be an integer of at least 1, got {value!r}")
    return int(value)


def output_names(stem: str, k: int) -> list[str]:
    """`<stem>.png` for one output, `<stem>_k0.png ...` for k > 1 (what `evaluate` pairs on)."""
    return [f"{stem}.png"] if k == 1 else [f"{stem}_k{i}.png" for i in range(k)]


def tile(images: np.ndarray) -> np.ndarray:
    """(k, H, W, 3) -> a near-square grid, row-major (k = 9 gives the original's 3x3 layout)."""
    k, h, w, c = images.shape
    cols = int(np.ceil(np.sqrt(k)))
    rows = int(np.ceil(k / cols))
    grid = np.zeros((rows * h, cols * w, c), dtype=images.dtype)
    for i in range(k):
        r, q = divmod(i, cols)
        grid[r * h : (r + 1) * h, q * w : (q + 1) * w] = images[i]
    return grid


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) float in [0, 1] (any float dtype) -> (..., H, W, 3) uint8, rounded."""
    x = (images.float().clamp(0, 1) * 255 + 0.5).byte()
    return x.movedim(-3, -1).cpu().numpy()


class Pipeline:
    """The shared part of every pipeline; see the module docstring.

    Subclasses set `networks` (attribute names of their nn.Modules, moved by `to`), implement
    `_run(layouts, k, size, read, seed, keep)` -> (list of (k, H, W, 3) uint8, list of
    intermediates or None per layout) and the properties `size` (native (H, W)) and `default_k`
    (outputs per layout when k is not given); `max_k` (None: no limit) caps k."""

    tasks: ClassVar[tuple[str, ...]] = ()
    networks: ClassVar[tuple[str, ...]] = ("model",)
    max_k: int | None = None

    def __init__(
        self,
        model: torch.nn.Module,
        space: LabelSpace,
        meta: dict | None = None,
        device=None,
        precision: str | None = "auto",
    ):
        self.device = pick_device(device) if not isinstance(device, torch.device) else device
        self.model = model.to(self.device).eval()
        self.space = space
        self.meta = meta or {}
        self._precision_choice = precision
        self.precision = precision

    # ------------------------------------------------------------------ loading, device, precision
    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | None = None, precision: str | None = "auto", **options
    ) -> Pipeline:
        """A checkpoint (run folder, step folder, .safetensors file or bundled name) of one of
        `cls.tasks`; `options` are the subclass's constructor options (SIMS: bank=, ...)."""
        accepted = [
            p
            for p in inspect.signature(cls.__init__).parameters
            if p not in ("self", "model", "space", "meta", "device", "precision")
        ]
        unknown = [o for o in options if o not in accepted]
        if unknown:
            task = ckpt.read_metadata(path)["task"]
            raise InputError(
                f"{path}: is a {task!r} checkpoint, which takes no {', '.join(unknown)} "
                f"(options of the {cls.__name__}: {', '.join(accepted) or 'none'})"
            )
        dev = pick_device(device)
        resolve_precision(precision, dev)  # a bad value is refused before anything loads
        model, meta = load_network(path, cls.tasks, dev)
        return cls(model, meta["label_space"], meta=meta, device=dev, precision=precision, **options)

    @property
    def precision(self) -> str:
        """The precision the networks run at, "fp32" or "bf16" (set: auto | fp32 | bf16)."""
        return self._precision

    @precision.setter
    def precision(self, value: str | None) -> None:
        self._precision_choice = value
        self._precision = resolve_precision(value, self.device)

    def autocast(self):
        """The context every network call of this pipeline runs in (`precision.autocast`)."""
        return autocast(self.device, self._precision)

    def to(self, device) -> Pipeline:
        """Move every network to `device`; "auto" precision is chosen again for it."""
        self.device = pick_device(device) if not isinstance(device, torch.device) else device
        for name in self.networks:
            net = getattr(self, name)
            if net is not None:
                setattr(self, name, net.to(self.device))
        self.precision = self._precision_choice
        return self

    #: pixels per forward on a CPU when no batch size is given (one 256x512 image)
    CPU_BATCH_PIXELS = 256 * 512

    def auto_batch(self, size: tuple[int, int]) -> int:
        """Layouts per forward when no batch size is given: 4 on an accelerator; on a CPU as
        many as make CPU_BATCH_PIXELS (1 to 4). A CPU's convolutions fill its cores at batch 1
        already, while a batch multiplies the activations' memory and the page faults of the
        first pass: crn-256p, 3 layouts with `semsynth synthesize`: 76 s and 4.4 GB peak at batch
        3, 63 s and 2.5 GB at batch 1 (warm passes gain ~5 % per image from batching)."""
        if self.device.type != "cpu":
            return 4
        return max(1, min(4, self.CPU_BATCH_PIXELS // max(1, size[0] * size[1])))

    # ------------------------------------------------------------------ what subclasses provide
    @property
    def size(self) -> tuple[int, int]:
        raise NotImplementedError

    @property
    def default_k(self) -> int:
        raise NotImplementedError

    def check_size(self, size) -> tuple[int, int]:
        """`size` (None: native) checked for this pipeline's networks."""
        return _check_size_arg(size, "--size") or tuple(self.size)

    def _run(self, layouts: list, k: int, size: tuple[int, int], read, seed, keep: bool):
        raise NotImplementedError

    def intermediate_names(self, stem: str) -> list[str]:
        """Files `save_intermediates` writes for one layout (none by default)."""
        return []

    def save_intermediates(self, intermediate, out_dir: Path, stem: str) -> list[Path]:
        return []

    # ------------------------------------------------------------------ the shared calls
    def check_k(self, k) -> int:
        k = check_count(k, "k") or self.default_k
        return min(k, self.max_k) if self.max_k else k

    def _read(self, layout, read=None) -> np.ndarray:
        if isinstance(layout, (str, Path)):
            return (read or self.space.read)(layout)
        if isinstance(layout, torch.Tensor):
            layout = layout.cpu().numpy()
        return np.asarray(layout)

    def __call__(
        self,
        layouts,
        k: int | None = None,
        size: tuple[int, int] | None = None,
        batch_size: int | None = None,
        read=None,
        seed: int | None = None,
        return_intermediates: bool = False,
    ):
        """Layouts (class-index arrays or tensors, or label-map paths; one or a list) -> list of
        (k, H, W, 3) uint8, one per layout; with `return_intermediates` a `PipelineOutput`.

        k: outputs per layout (default `default_k`, at most `max_k`). size: output (H, W),
        default native; layouts are resized (nearest) as the pipeline needs. read: decodes paths
        (default `space.read`; see `labels.layout_reader`). seed: for pipelines that draw (SIMS
        canvases and variants; default the pipeline's seed); CRN is deterministic. batch_size:
        layouts per forward (default `auto_batch`)."""
        single = isinstance(layouts, (str, Path)) or (
            isinstance(layouts, (np.ndarray, torch.Tensor)) and layouts.ndim == 2
        )
        layouts = [layouts] if single else list(layouts)
        k, size = self.check_k(k), self.check_size(size)
        batch_size = check_count(batch_size, "batch size") or self.auto_batch(size)
        images, inter = [], []
        with torch.inference_mode():
            for i in range(0, len(layouts), batch_size):
                im, it = self._run(layouts[i : i + batch_size], k, size, read, seed, return_intermediates)
                images += im
                inter += it
        return PipelineOutput(images, inter) if return_intermediates else images

    def synthesize_files(
        self,
        inputs,
        out_dir: str | Path,
        k: int | None = None,
        grid: bool = False,
        overwrite: bool = False,
        batch_size: int | None = None,
        size=None,
        progress: bool = True,
        skip_existing: bool = False,
        label_space=None,
        label_encoding: str | None = None,
        save_intermediates: bool = False,
        seed: int | None = None,
    ) -> list[Path]:
        """Label-map files/folders -> `<stem>.png` (k = 1) or `<stem>_k<i>.png` in `out_dir`, with
        `grid` (k > 1) also `<stem>_grid.png`, with `save_intermediates` the pipeline's extra
        files. Refuses to overwrite existing outputs unless `overwrite`; `skip_existing` leaves
        out inputs whose outputs are all there (`plan_outputs`: all checked before any write).
        label_space / label_encoding: how the files are decoded (`labels.layout_reader`)."""
        k, size = self.check_k(k), self.check_size(size)
        batch_size = check_count(batch_size, "batch size") or self.auto_batch(size)
        if save_intermediates and not self.intermediate_names("x"):
            raise InputError(
                f"{type(self).__name__} makes no intermediates to save (--save-intermediates is for SIMS checkpoints)"
            )
        read = layout_reader(self.space, label_space, label_encoding)
        grid = grid and k > 1

        def names(stem):
            return [
                *output_names(stem, k),
                *([f"{stem}_grid.png"] if grid else []),
                *(self.intermediate_names(stem) if save_intermediates else []),
            ]

        plan = plan_outputs(inputs, out_dir, names, overwrite=overwrite, skip_existing=skip_existing)
        files = [f for f, _ in plan]
        out_dir = Path(out_dir)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(files), desc="synthesize", unit="layout")
        written = []
        for i in range(0, len(files), batch_size):
            batch = files[i : i + batch_size]
            out = self(batch, k=k, size=size, batch_size=batch_size, read=read, seed=seed, return_intermediates=True)
            for f, imgs, inter in zip(batch, out.images, out.intermediates):
                for arr, n in zip([*imgs, *([tile(imgs)] if grid else [])], names(f.stem)):
                    written.append(save_image(out_dir / n, arr))
                if save_intermediates:
                    written += self.save_intermediates(inter, out_dir, f.stem)
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
        return written

    def colorize(self, ids) -> np.ndarray:
        return colorize(ids, self.space)
