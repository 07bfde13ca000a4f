"""Synthesis pipelines: load a self-describing checkpoint once, then one call turns layouts into
photos.

    pipe = semsynth.CRNPipeline.from_pretrained("runs/crn-256p")   # or "default"
    images = pipe([label_ids])          # list of (k, H, W, 3) uint8
    pipe.synthesize_files(["labels/"], "out/")

`load_pipeline(path)` picks the right pipeline for a checkpoint's task (CRN, SIMS).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import checkpoint as ckpt
from .labels import LabelSpace, colorize, one_hot
from .utils import atomic_path, pick_device
from .errors import InputError, MissingFileError, OutputExistsError

ASSETS = Path(__file__).parent / "assets"
# Models shipped inside the package, usable by name.
BUNDLED = {"default": ASSETS / "default", "camvid": ASSETS / "camvid",
           "sims-cityscapes": ASSETS / "sims-cityscapes"}  # SIMS: needs a bank the user builds


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    p = BUNDLED.get(str(name_or_path), Path(name_or_path))
    if str(name_or_path) in BUNDLED and not p.exists():
        raise MissingFileError(f"bundled model {name_or_path!r} is not installed ({p} missing)")
    return p


def plan_outputs(inputs, out_dir: str | Path, names, overwrite: bool = False,
                 skip_existing: bool = False) -> list[tuple[Path, list[str]]]:
    """[(label file, its output names)] still to write into `out_dir`, checked before any work:
    inputs that would share outputs, outputs that exist (refused unless `overwrite`; with
    `skip_existing` the inputs whose outputs all exist are left out, which finishes an interrupted
    run), and an output folder that cannot be written. `names(stem)` lists one input's outputs."""
    from .data import list_label_files
    from .utils import check_writable_dir

    if overwrite and skip_existing:
        raise InputError("--overwrite and --skip-existing exclude each other")
    files = list_label_files(inputs)
    stems = [f.stem for f in files]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise InputError(f"several inputs share the output name(s) {dupes[:5]}; "
                         "synthesize them into separate folders")
    out_dir = Path(out_dir)
    plan = [(f, names(f.stem)) for f in files]
    done = [all((out_dir / n).exists() for n in ns) for _, ns in plan]
    if skip_existing:
        plan = [item for item, d in zip(plan, done) if not d]
    else:
        existing = [out_dir / n for _, ns in plan for n in ns if (out_dir / n).exists()]
        if existing and not overwrite:
            raise OutputExistsError(f"{len(existing)} output(s) already exist, e.g. {existing[0]}; pass "
                                    "--overwrite to replace them (or --skip-existing to finish an interrupted run)")
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
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = images[i]
    return grid


class CRNPipeline:
    def __init__(self, model: torch.nn.Module, space: LabelSpace, meta: dict | None = None,
                 device: torch.device | None = None):
        self.device = device or pick_device()
        self.model = model.to(self.device).eval()
        self.space = space
        self.meta = meta or {}

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None) -> "CRNPipeline":
        dev = pick_device(device)
        model, meta = ckpt.load_model(resolve_checkpoint(path), dev)
        return cls(model, meta["label_space"], meta, dev)

    @property
    def k(self) -> int:
        return self.model.config.k

    @property
    def size(self) -> tuple[int, int]:
        return self.model.config.size

    def _prepare(self, layout, size, read=None) -> torch.Tensor:
        ids = (read or self.space.read)(layout) if isinstance(layout, (str, Path)) else np.asarray(layout)
        t = torch.as_tensor(ids, dtype=torch.long)
        if t.shape != tuple(size):  # nearest: labels are categories, never interpolated
            t = F.interpolate(t[None, None].float(), size=size, mode="nearest")[0, 0].long()
        return t

    def check_size(self, size) -> tuple[int, int]:
        """`size` (default: native) checked against the model: CRN needs multiples of its base grid."""
        from .data import check_size

        size = check_size(size, "--size") or tuple(self.size)
        f = 2 ** (self.model.config.levels - 1)
        if size[0] % f or size[1] % f:
            raise InputError(f"--size {size[0]} {size[1]}: this model needs both sides divisible by {f} "
                             f"(native {self.size[0]} {self.size[1]})")
        return size

    @torch.no_grad()
    def __call__(self, layouts, k: int | None = None, size: tuple[int, int] | None = None,
                 batch_size: int = 4, read=None) -> list[np.ndarray]:
        """Layouts (class-index arrays or label-map paths) -> list of (k, H, W, 3) uint8 images.

        Layouts are resized (nearest) to `size`, by default the model's native size. `read` decodes
        paths (default `space.read`; see `labels.layout_reader`)."""
        single = isinstance(layouts, np.ndarray) and layouts.ndim == 2
        layouts = [layouts] if single or isinstance(layouts, (str, Path)) else list(layouts)
        size = self.check_size(size)
        k = min(check_count(k, "k") or self.k, self.k)
        batch_size = check_count(batch_size, "batch size")
        out = []
        for i in range(0, len(layouts), batch_size):
            ids = torch.stack([self._prepare(x, size, read) for x in layouts[i:i + batch_size]]).to(self.device)
            fake = self.model(one_hot(ids, self.space.num_classes))[:, :k]
            out.extend((fake.clamp(0, 1) * 255 + 0.5).byte().permute(0, 1, 3, 4, 2).cpu().numpy())
        return out

    def synthesize_files(self, inputs, out_dir: str | Path, k: int | None = None, grid: bool = False,
                         overwrite: bool = False, batch_size: int = 4, size=None,
                         progress: bool = True, skip_existing: bool = False,
                         label_space=None, label_encoding: str | None = None) -> list[Path]:
        """Label-map files/folders -> images in `out_dir` named after the inputs. Refuses to
        overwrite existing outputs unless `overwrite`; `skip_existing` leaves out inputs whose
        outputs are all there (see `plan_outputs`; everything is checked before writing any)."""
        from .labels import layout_reader

        k = min(check_count(k, "k") or self.k, self.k)
        batch_size = check_count(batch_size, "batch size")
        size = self.check_size(size)
        read = layout_reader(self.space, label_space, label_encoding)
        plan = plan_outputs(inputs, out_dir, lambda s: [*output_names(s, k), *([f"{s}_grid.png"] if grid and k > 1 else [])],
                            overwrite=overwrite, skip_existing=skip_existing)
        files, names = [f for f, _ in plan], [ns for _, ns in plan]
        out_dir = Path(out_dir)
        written = []
        it = range(0, len(files), batch_size)
        if progress:
            from tqdm import tqdm
            it = tqdm(it, total=(len(files) + batch_size - 1) // batch_size, desc="synthesize", unit="batch")
        for i in it:
            batch = files[i:i + batch_size]
            for f, imgs, ns in zip(batch, self(batch, k=k, size=size, batch_size=batch_size, read=read),
                                   names[i:i + batch_size]):
                for arr, n in zip(list(imgs) + ([tile(imgs)] if grid and k > 1 else []), ns):
                    with atomic_path(out_dir / n) as tmp:
                        Image.fromarray(arr).save(tmp, format="PNG")
                    written.append(out_dir / n)
        return written

    def colorize(self, ids) -> np.ndarray:
        return colorize(ids, self.space)


def load_pipeline(path: str | Path, device: str | None = None, **kwargs):
    """The pipeline for a checkpoint's task: CRN, or SIMS (which also needs `bank=`)."""
    meta = ckpt.read_metadata(resolve_checkpoint(path))
    if meta["task"].startswith("sims"):
        from .sims.pipeline import SIMSPipeline

        return SIMSPipeline.from_pretrained(resolve_checkpoint(path), device=device, **kwargs)
    return CRNPipeline.from_pretrained(path, device=device)
