"""Synthesis pipelines: load a self-describing checkpoint once, then one call turns layouts into
photos. Every pipeline has the shape of `pipeline_base.Pipeline`:

    pipe = semsynth.CRNPipeline.from_pretrained("runs/crn-256p", precision="bf16")  # or "default"
    images = pipe([label_ids])          # list of (k, H, W, 3) uint8
    pipe.synthesize_files(["labels/"], "out/")

`load_pipeline(path, **options)` picks the pipeline class registered for the checkpoint's task
(CRN: "crn"; SIMS: "sims-synthesis", which also needs `bank=`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from .errors import InputError
from .labels import one_hot
from .pipeline_base import (
    PIPELINES,
    Pipeline,
    PipelineOutput,
    check_count,
    output_names,
    plan_outputs,
    register_pipeline,
    tile,
    to_uint8,
)
from .sims.pipeline import SIMSPipeline  # registers the "sims-synthesis" pipeline

__all__ = [
    "CRNPipeline",
    "SIMSPipeline",
    "Pipeline",
    "PipelineOutput",
    "PIPELINES",
    "load_pipeline",
    "pipeline_class",
    "plan_outputs",
    "check_count",
    "output_names",
    "tile",
]


@register_pipeline("crn")
class CRNPipeline(Pipeline):
    """A CRN generator: k deterministic variants per layout, in batches."""

    @property
    def k(self) -> int:
        """The model's number of outputs per layout."""
        return self.model.config.k

    @property
    def default_k(self) -> int:
        return self.k

    @property
    def max_k(self) -> int:
        return self.k

    @property
    def size(self) -> tuple[int, int]:
        return self.model.config.size

    def check_size(self, size) -> tuple[int, int]:
        """`size` (default: native) checked against the model: CRN needs multiples of its base grid."""
        size = super().check_size(size)
        f = 2 ** (self.model.config.levels - 1)
        if size[0] % f or size[1] % f:
            raise InputError(
                f"--size {size[0]} {size[1]}: this model needs both sides divisible by {f} "
                f"(native {self.size[0]} {self.size[1]})"
            )
        return size

    def _prepare(self, layout, size, read=None) -> torch.Tensor:
        t = torch.as_tensor(self._read(layout, read), dtype=torch.long)
        if t.shape != tuple(size):  # nearest: labels are categories, never interpolated
            t = F.interpolate(t[None, None].float(), size=size, mode="nearest")[0, 0].long()
        return t

    def _run(self, layouts, k, size, read, seed, keep):
        ids = torch.stack([self._prepare(x, size, read) for x in layouts]).to(self.device)
        with self.autocast():
            fake = self.model(one_hot(ids, self.space.num_classes))[:, :k]
        return list(to_uint8(fake)), [None] * len(layouts)


def pipeline_class(task: str) -> type[Pipeline]:
    """The pipeline registered for a checkpoint task."""
    if task not in PIPELINES:
        raise InputError(
            f"no pipeline runs {task!r} checkpoints (pipelines: {', '.join(sorted(PIPELINES))}); "
            "sims-transform / sims-order checkpoints go to a SIMS pipeline as --transform / --order"
        )
    return PIPELINES[task]


def load_pipeline(path: str | Path, device: str | None = None, precision: str | None = "auto", **options):
    """The pipeline for a checkpoint's task, loaded with `from_pretrained`. Options left None are
    dropped; one the task's pipeline does not take (bank= for a CRN checkpoint) is an error."""
    options = {k: v for k, v in options.items() if v is not None}
    task = ckpt.read_metadata(path)["task"]
    try:
        cls = pipeline_class(task)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    return cls.from_pretrained(path, device=device, precision=precision, **options)
