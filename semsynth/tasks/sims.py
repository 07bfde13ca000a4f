"""Trainer tasks for the three SIMS networks: `sims-synthesis`, `sims-transform`, `sims-order`.

Each task builds its training examples on the fly from a real (layout, photo) dataset, following
the original MATLAB data generators (SPEC B.3.1, B.4.2, B.6.1) instead of precomputed .mat files:

* **sims-transform**: real segments of an image (area > 1000 px at 256x512), each jittered by a
  random scale U[0.9, 1.1) and rotation U(-r, r) about its box centre and a shift of up to
  +-1/32 of its box size; the network sees the jittered segment, the original mask and the layout,
  and is trained with the original's masked L1 (in 0..255 pixel units) between the warped
  composite and the photo. The rotation the original draws but never applies (B.8.5) is off by
  default (`jitter.rotation_deg: 0`; e.g. 2.5 applies one); the paste-back centring bug is gone.
* **sims-order**: pairs of adjacent segments of different classes whose front/back relation is
  read from a disparity (or depth) map in the boundary band (B.4.2). **Fixed:** the planar/object
  override applies in both orientations; up to 10 *random* pairs per step with no stale slots
  (padding is ignored by the loss) instead of always the first 10 (B.8.8).
* **sims-synthesis**: the original's training canvases (B.6.1, `sims.canvas.training_canvas`): a
  memory bank of the training images is built once into the run folder (`train-bank/`); for
  every draw of every image, each segment of more than 1000 px (at 256x512) is matched to the
  best-IoU segment of its class among 100 random *other* training images (precomputed when the
  dataset is made, not per step); the photo's own pixels are pasted where the two shapes
  overlap, 20 % of segments recoloured by MKL colour transfer towards the retrieved photo's box,
  half of a boundary band set to white, and the layout voided where the retrieved or a rotated
  copy of the shape spills outside the segment. Loss: perceptual L1 (crn-512p weights) + 10 x
  cross-entropy with the uncorrupted layout. **Fixed:** RGB targets (the original trained
  RGB-in/BGR-out, B.8.13); the colour-transfer branch masks with the pasted support, not the
  whole retrieved mask (B.8.12).

Each dataset has `draws` x images examples: example (i, d) is the d-th random draw for image i,
seeded by (seed, i, d), like the original's fixed `NN/` draw folders, so resumed runs see the same
data. `epochs` in the configs count passes over the *images* (one draw each, as the original
picked a random draw folder per step); `dataset()` turns them into the trainer's `steps`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from ..data import cityscapes_frame
from ..errors import MissingFileError
from ..labels import LabelSpace, colorize, one_hot
from ..losses import build_loss
from ..models import build_model, model_config
from ..models.sims import front_probability, invert_theta, jitter_theta, pair_input, warp
from ..sims.bank import Bank, build_bank
from ..sims.canvas import training_canvas
from ..sims.order import adjacent_pairs, band_median, full_order, object_override, order_rank
from ..sims.retrieval import Retriever
from ..sims.segments import REFERENCE_MIN_AREA, class_roles, extract_segments, scaled_area
from .base import Task, data_paths, open_training_data, register_task

__all__ = [
    "SynthesisTask",
    "TransformTask",
    "OrderTask",
    "SynthesisCanvases",
    "JitteredSegments",
    "OrderPairs",
    "training_bank",
    "transform_loss",
    "schedule_lr",
]


# ----------------------------------------------------------------------------- small helpers


def schedule_lr(sched: dict | None, epoch: int, base: float) -> float:
    """The originals' schedules: lr(e) = min(start * factor^(e - 1), cap(e)) where cap(e) is the
    last `caps` entry [from_epoch, cap] with from_epoch <= e (default: the base lr)."""
    if not sched:
        return base
    cap = base
    for from_epoch, c in sched.get("caps", []):
        if epoch >= int(from_epoch):
            cap = float(c)
    start = sched.get("start")
    if start is None:
        return cap
    return min(float(start) * float(sched.get("factor", 1.0)) ** (epoch - 1), cap)


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


class _Draws(Dataset):
    """`draws` deterministic random variants of every sample of a base dataset."""

    def __init__(self, base, space: LabelSpace, draws: int, seed: int):
        self.base, self.space, self.draws, self.seed = base, space, max(1, int(draws)), int(seed)
        self._segs: dict[int, object] = {}
        self.roles = class_roles(space)

    @property
    def num_images(self) -> int:
        return len(self.base)

    def __len__(self):
        return len(self.base) * self.draws

    def rng(self, i: int, d: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, i, d, 0x5135])

    def arrays(self, i: int):
        """(label (H, W) int64, photo (H, W, 3) uint8) of image i."""
        ids, rgb = self.base.arrays(i)
        return np.asarray(ids, dtype=np.int64), np.asarray(rgb)

    def segments(self, i: int, ids: np.ndarray):
        if i not in self._segs:
            self._segs[i] = extract_segments(ids, self.space.num_classes, self.roles.thin, sig_grid=None)
        return self._segs[i]


class _Subset:
    """The images of a base dataset that have a depth map (keeps the fast `arrays` path)."""

    def __init__(self, base, keep: list[int]):
        self.base, self.keep = base, list(keep)

    def __len__(self):
        return len(self.keep)

    def __getitem__(self, i):
        return self.base[self.keep[i]]

    def arrays(self, i):
        return self.base.arrays(self.keep[i])


def _steps_from_epochs(cfg: dict, images: int) -> None:
    """Configs give epochs over images; the trainer counts steps (see the module docstring)."""
    if not cfg.get("steps"):
        b = int(cfg.get("optim", {}).get("batch_size", 1))
        cfg["steps"] = int(cfg.get("epochs", 1)) * math.ceil(images / (b * _world()))


class _TaskBase(Task):
    def __init__(self, cfg: dict, space: LabelSpace, device: torch.device):
        self.cfg, self.space, self.device = cfg, space, device
        self.model_config = model_config(cfg["model"], num_classes=space.num_classes, **cfg.get("model_overrides", {}))
        self.model = build_model(self.model_config)
        o = cfg.get("optim", {})
        self.base_lr = float(o.get("lr", 1e-4))
        self.sched = o.get("schedule")
        self.batch = int(o.get("batch_size", 1))
        self.images = None

    def lr_at(self, step: int) -> float:
        """Learning rate of optimisation step `step` (0-based); epochs count passes over images."""
        if not self.images:
            return self.base_lr
        epoch = 1 + (step * self.batch * _world()) // self.images
        return schedule_lr(self.sched, epoch, self.base_lr)

    def _layout_rgb(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(colorize(ids.cpu(), self.space)).permute(2, 0, 1).float() / 255


# ----------------------------------------------------------------------------- transformation


class JitteredSegments(_Draws):
    """Example: {"image", "label", "masks" (N, H, W) bool target masks, "jitter" (N, 2, 3) the
    normalised theta that `warp` uses to make the perturbed segment, "valid" (N,) bool}."""

    def __init__(
        self,
        base,
        space,
        draws=2,
        seed=0,
        slots=10,
        min_area=REFERENCE_MIN_AREA,
        scale=(0.9, 1.1),
        shift=0.125 / 2,
        rotation_deg=0.0,
    ):
        super().__init__(base, space, draws, seed)
        self.slots, self.min_area = int(slots), float(min_area)
        self.scale, self.shift, self.rotation = tuple(scale), float(shift), math.radians(rotation_deg)

    def __getitem__(self, idx):
        i, d = idx % self.num_images, idx // self.num_images
        ids, rgb = self.arrays(i)
        H, W = ids.shape
        segs = self.segments(i, ids)
        rng = self.rng(i, d)
        big = np.flatnonzero(segs.area > scaled_area(self.min_area, (H, W)))
        if len(big) > self.slots:  # a random `slots` of them (transformation.py:272-278)
            big = np.sort(rng.choice(big, self.slots, replace=False))
        n = len(big)
        masks = torch.zeros(self.slots, H, W, dtype=torch.bool)
        for j, s in enumerate(big):
            masks[j] = torch.from_numpy(segs.full_mask(int(s)))
        box = segs.bbox[big].astype(np.float64).reshape(-1, 4)  # y0, x0, y1, x1 (end-exclusive)
        centre = np.stack([(box[:, 1] + box[:, 3]) / 2, (box[:, 0] + box[:, 2]) / 2], 1)
        bw, bh = box[:, 3] - box[:, 1], box[:, 2] - box[:, 0]
        u = rng.random((n, 4))
        scale = self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, 0]
        angle = (2 * u[:, 1] - 1) * self.rotation
        # round((u - 0.5) * size * 0.125 / 2) pixels (train_generate_transform.m:96-98)
        shift = np.stack([np.round((u[:, 2] - 0.5) * bw * self.shift), np.round((u[:, 3] - 0.5) * bh * self.shift)], 1)
        # Keep the jittered box inside the image: drop scale/rotation when it would not fit
        # (the original keeps the unscaled segment), then the shift when it would leave (l.80-115).
        half = np.stack([bw, bh], 1) / 2
        c, s_ = np.abs(np.cos(angle)), np.abs(np.sin(angle))
        ext = np.stack([half[:, 0] * c + half[:, 1] * s_, half[:, 0] * s_ + half[:, 1] * c], 1) * scale[:, None]
        lim = np.array([W, H], dtype=np.float64)
        fits = ((centre - ext >= 0) & (centre + ext <= lim)).all(1)
        scale, angle = np.where(fits, scale, 1.0), np.where(fits, angle, 0.0)
        ext = np.where(fits[:, None], ext, half)
        inside = ((centre + shift - ext >= 0) & (centre + shift + ext <= lim)).all(1)
        shift = np.where(inside[:, None], shift, 0.0)
        jitter = torch.zeros(self.slots, 2, 3)
        jitter[:, 0, 0] = jitter[:, 1, 1] = 1
        if n:
            t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
            jitter[:n] = jitter_theta(t(centre), t(scale), t(angle), t(shift), H, W).float()
        valid = torch.arange(self.slots) < n
        return {
            "image": torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 255,
            "label": torch.from_numpy(ids),
            "masks": masks,
            "jitter": jitter,
            "valid": valid,
        }


def transform_loss(
    theta: torch.Tensor, segments: torch.Tensor, masks: torch.Tensor, image: torch.Tensor, owner: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The original's masked L1 (transformation.py:163-176, 198-201), per image then averaged.

    theta (S,2,3), segments (S,3,H,W) network inputs, masks (S,1,H,W) target masks, image (B,3,H,W),
    owner (S,) image index of each segment. composite_b = sum over its segments of
    warp(segment, theta) * mask; loss_b = sum_x m(x) mean_ch |255 (composite - image)| / (sum m + 1)
    with m = sum of its masks. Returns (loss, composite)."""
    B = image.shape[0]
    warped = warp(segments, theta) * masks
    comp = image.new_zeros(B, 3, *image.shape[-2:]).index_add(0, owner, warped.to(image.dtype))
    m = image.new_zeros(B, 1, *image.shape[-2:]).index_add(0, owner, masks.to(image.dtype))
    err = (m * (255 * (comp - image)).abs().mean(1, keepdim=True)).sum((1, 2, 3)) / (m.sum((1, 2, 3)) + 1)
    return err.mean(), comp


@register_task("sims-transform")
class TransformTask(_TaskBase):
    def dataset(self, cfg: dict, out: Path | None = None):
        j = cfg.get("jitter", {})
        ds = JitteredSegments(
            open_training_data(cfg, self.space),
            self.space,
            draws=cfg.get("data", {}).get("draws", 2),
            seed=int(cfg.get("seed", 0)),
            slots=int(cfg.get("slots", 10)),
            min_area=float(cfg.get("min_area", REFERENCE_MIN_AREA)),
            scale=j.get("scale", (0.9, 1.1)),
            shift=float(j.get("shift", 0.0625)),
            rotation_deg=float(j.get("rotation_deg", 0.0)),
        )
        self.images = ds.num_images
        _steps_from_epochs(cfg, ds.num_images)
        return ds

    def _forward(self, model, batch):
        owner, slot = batch["valid"].nonzero(as_tuple=True)
        masks = batch["masks"][owner, slot].unsqueeze(1).to(batch["image"].dtype)
        jit = batch["jitter"][owner, slot]
        with torch.autocast(device_type=masks.device.type, enabled=False):
            segs = warp(batch["image"][owner] * masks, jit)  # the perturbed segments: network input
        label = one_hot(batch["label"], self.space.num_classes)[owner]
        theta = model(segs, masks, label) if len(owner) else None
        return owner, masks, jit, segs, theta

    def loss(self, model, batch):
        owner, masks, jit, segs, theta = self._forward(model, batch)
        if theta is None:  # no segment large enough in this batch: a zero loss that touches every weight
            zero = sum(p.sum() for p in model.parameters()) * 0.0
            return zero, {"segments": torch.tensor(0.0)}
        with torch.autocast(device_type=theta.device.type, enabled=False):  # sub-pixel warps in fp32
            loss, _ = transform_loss(theta.float(), segs.float(), masks.float(), batch["image"].float(), owner)
        with torch.no_grad():
            err = (theta.float() - invert_theta(jit.float())).abs()
        return loss, {"theta_err": err.mean(), "segments": torch.tensor(float(len(owner)))}

    @torch.no_grad()
    def samples(self, model, batch):
        """One row per example: photo | jittered segments | after the predicted warp."""
        owner, masks, jit, segs, theta = self._forward(model, batch)
        img = batch["image"]
        if theta is None:
            return torch.cat([img, img * 0, img * 0], 3).permute(1, 0, 2, 3).flatten(1, 2)
        ident = torch.eye(2, 3, device=img.device).expand(len(owner), 2, 3)
        _, before = transform_loss(ident, segs, masks, img, owner)
        _, after = transform_loss(theta, segs, masks, img, owner)
        rows = torch.cat([img, before, after], 3)  # (B, 3, H, 3W)
        return rows.permute(1, 0, 2, 3).flatten(1, 2)


# ----------------------------------------------------------------------------- ordering


def _depth_index(folder: Path) -> dict[str, Path]:
    """frame stem -> depth/disparity file under `folder` (recursive), '_disparity'/'_depth' stripped."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() not in (".png", ".npy", ".tif", ".tiff", ".pfm") or not p.is_file():
            continue
        stem = p.stem
        for suffix in ("_disparity", "_depth"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
        out.setdefault(stem, p)
    return out


def read_nearness(path: Path, kind: str, size: tuple[int, int]) -> np.ndarray:
    """A map where larger = closer, NaN = unknown, at `size` (nearest resize: never averaged across
    object boundaries). Cityscapes disparity PNGs: d = (p - 1) / 256 for p > 0, 0 = invalid."""
    if path.suffix.lower() == ".npy":
        raw = np.load(path).astype(np.float64)
        valid = np.isfinite(raw) & (raw > 0)
    else:
        with Image.open(path) as im:
            raw = np.asarray(im).astype(np.float64)
        if raw.ndim == 3:
            raw = raw[..., 0]
        valid = raw > 0
        if kind == "disparity":
            raw = (raw - 1) / 256
    val = np.where(valid, raw, np.nan)
    if kind == "depth":
        val = 1.0 / val
    if val.shape != tuple(size):
        ys = (np.arange(size[0]) * val.shape[0]) // size[0]
        xs = (np.arange(size[1]) * val.shape[1]) // size[1]
        val = val[ys[:, None], xs[None, :]]
    return val


class OrderPairs(_Draws):
    """Example: {"label", "mask_a", "mask_b" (P, H, W) bool, "target" (P,) class index in front,
    -100 for empty slots}. Pairs are adjacent segments (3x3-dilated outline of a touches b) of
    different classes, a before b in the coarse order; the nearer one (median nearness in the
    11x11 boundary band) is in front, except that an object always beats a planar class."""

    def __init__(
        self,
        base,
        space,
        depth_files: list[Path],
        kind: str = "disparity",
        draws=1,
        seed=0,
        slots=10,
        min_area=REFERENCE_MIN_AREA,
        adjacency=3,
        band=11,
    ):
        super().__init__(base, space, draws, seed)
        self.depth_files, self.kind = depth_files, kind
        self.slots, self.min_area, self.adjacency, self.band = int(slots), float(min_area), adjacency, band
        self.rank = order_rank(full_order(space))
        self._pairs: dict[int, tuple] = {}

    def pairs(self, i: int, ids: np.ndarray):
        """(index a, index b, front class) of every labelled pair of image i, and the segments."""
        if i in self._pairs:
            return self._pairs[i]
        H, W = ids.shape
        segs = self.segments(i, ids)
        big = np.flatnonzero(segs.area > scaled_area(self.min_area, (H, W)))
        big = big[np.argsort(self.rank[segs.cls[big]], kind="stable")]
        near = read_nearness(self.depth_files[i], self.kind, (H, W))
        out = []
        for a, b, in_a, in_b in adjacent_pairs(segs, big, self.adjacency, self.band):
            ma, mb = band_median(near, in_a), band_median(near, in_b)
            if ma is None or mb is None:  # kept only where both sides have depth (B.4.2 l.85)
                continue
            ca, cb = int(segs.cls[a]), int(segs.cls[b])
            front = object_override(ca, cb, self.roles)
            if front is None:  # larger nearness is closer; ties go to b (median_j <= median_k)
                front = cb if ma <= mb else ca
            out.append((int(a), int(b), front))
        self._pairs[i] = (out, segs)
        return self._pairs[i]

    def __getitem__(self, idx):
        i, d = idx % self.num_images, idx // self.num_images
        ids, _ = self.arrays(i)
        H, W = ids.shape
        pairs, segs = self.pairs(i, ids)
        rng = self.rng(i, d)
        if len(pairs) > self.slots:
            pairs = [pairs[k] for k in sorted(rng.choice(len(pairs), self.slots, replace=False))]
        ma = torch.zeros(self.slots, H, W, dtype=torch.bool)
        mb = torch.zeros_like(ma)
        target = torch.full((self.slots,), -100, dtype=torch.long)
        for k, (a, b, front) in enumerate(pairs):
            ma[k], mb[k] = torch.from_numpy(segs.full_mask(a)), torch.from_numpy(segs.full_mask(b))
            target[k] = front
        return {"label": torch.from_numpy(ids), "mask_a": ma, "mask_b": mb, "target": target}


@register_task("sims-order")
class OrderTask(_TaskBase):
    def dataset(self, cfg: dict, out: Path | None = None):
        base = open_training_data(cfg, self.space)
        d = cfg.get("data", {})
        kind = "depth" if d.get("depth") else "disparity"
        folder = d.get("depth") or d.get("disparity")
        if not folder or folder == "auto":  # <data>/disparity/<split> (else <data>/disparity) of every folder
            split = d.get("split", "train")
            folders = [
                r / "disparity" / split if (r / "disparity" / split).is_dir() else r / "disparity"
                for r in data_paths(cfg)
            ]
        else:
            folders = [Path(folder)]
        for f in folders:
            if not f.is_dir():
                raise MissingFileError(
                    f"{f}: no disparity maps. The order network learns front/back from disparity or "
                    f"depth: use a dataset with Cityscapes' disparity/<split>/<city>/*_disparity.png, or "
                    f"set data.disparity=FOLDER (larger = closer) or data.depth=FOLDER (smaller = closer)"
                )
        index: dict[str, Path] = {}
        for f in folders:
            for k, v in _depth_index(f).items():
                index.setdefault(k, v)
        keep, files = [], []
        for k, it in enumerate(base.items):
            hit = index.get(cityscapes_frame(Path(str(it.label)).stem)) or index.get(it.name)
            if hit is not None:
                keep.append(k)
                files.append(hit)
        if not keep:
            raise MissingFileError(
                f"{', '.join(map(str, folders))}: none of the {len(base)} images has a "
                f"depth/disparity map (looked for <frame>_disparity.png / <frame>.png / .npy)"
            )
        ds = OrderPairs(
            _Subset(base, keep),
            self.space,
            files,
            kind=kind,
            draws=d.get("draws", 1),
            seed=int(cfg.get("seed", 0)),
            slots=int(cfg.get("slots", 10)),
            min_area=float(cfg.get("min_area", REFERENCE_MIN_AREA)),
        )
        self.images = ds.num_images
        _steps_from_epochs(cfg, ds.num_images)
        return ds

    def _inputs(self, batch):
        owner, slot = (batch["target"] != -100).nonzero(as_tuple=True)
        colors = torch.as_tensor(self.space.colors, device=batch["label"].device)
        pair, layout = pair_input(
            batch["label"][owner], batch["mask_a"][owner, slot], batch["mask_b"][owner, slot], colors
        )
        return owner, slot, pair, layout, batch["target"][owner, slot]

    def loss(self, model, batch):
        owner, slot, pair, layout, target = self._inputs(batch)
        if not len(owner):
            return sum(p.sum() for p in model.parameters()) * 0.0, {"pairs": torch.tensor(0.0)}
        logits = model(pair, layout)
        loss = F.cross_entropy(logits.float(), target)
        acc = (logits.argmax(1) == target).float().mean()
        return loss, {"accuracy": acc.detach(), "pairs": torch.tensor(float(len(owner)))}

    @torch.no_grad()
    def samples(self, model, batch):
        """Up to 4 pairs of the first example: the pair image with the predicted front segment
        bright and the other dimmed | the same for the ground truth."""
        owner, slot, pair, layout, target = self._inputs(batch)
        H, W = batch["label"].shape[-2:]
        if not len(owner):
            return torch.zeros(3, H, 2 * W)
        k = min(4, len(owner))
        logits = model(pair[:k], layout[:k])
        la = (
            batch["label"][owner[:k]]
            .flatten(1)
            .gather(1, batch["mask_a"][owner[:k], slot[:k]].flatten(1).float().argmax(1, keepdim=True))
            .squeeze(1)
        )
        lb = (
            batch["label"][owner[:k]]
            .flatten(1)
            .gather(1, batch["mask_b"][owner[:k], slot[:k]].flatten(1).float().argmax(1, keepdim=True))
            .squeeze(1)
        )
        pa = front_probability(logits, la, lb)
        rows = []
        for j in range(k):
            a = batch["mask_a"][owner[j], slot[j]].float()
            for a_front in (bool(pa[j] > 0.5), bool(target[j] == la[j])):
                w = (
                    torch.where(batch["mask_a"][owner[j], slot[j]], 1.0 if a_front else 0.35, 0.35 if a_front else 1.0)
                    if a.any()
                    else 1.0
                )
                rows.append(pair[j] * w)
        grid = torch.stack(rows).view(k, 2, 3, H, W)
        return grid.permute(2, 0, 3, 1, 4).reshape(3, k * H, 2 * W)


# ----------------------------------------------------------------------------- synthesis


class SynthesisCanvases(_Draws):
    """Example (i, d) = photo i, its real layout, and the d-th training canvas of it made the
    original way (`semsynth.sims.canvas.training_canvas`, SPEC B.6.1): every segment is pasted
    with the photo's own pixels where it overlaps the best-IoU segment of its class among
    `pool` random *other* training images, which come from `bank`, a memory bank of this
    dataset's images. The retrievals of all draws are computed once, up front
    (`precompute`), so no search sits on a training step's critical path.

    Keys: "image" (3, H, W) float, "label_gt" (H, W) the real layout, "label" the corrupted
    layout, "canvas" (3, H, W) float in [0, 1], "support" (1, H, W) float."""

    def __init__(
        self,
        base,
        space,
        bank,
        draws=5,
        seed=0,
        pool=100,
        min_area=REFERENCE_MIN_AREA,
        colour_transfer=0.2,
        corrupt_rotation_deg=2.5,
        elision_band=0.05,
        elision_ratio=0.5,
        progress=True,
    ):
        super().__init__(base, space, draws, seed)
        self.bank, self.pool, self.min_area = bank, int(pool), float(min_area)
        self.p_ct, self.corrupt = float(colour_transfer), float(corrupt_rotation_deg)
        self.elision = (float(elision_band) * 512, float(elision_ratio))
        self.order = full_order(space)
        # bank image id -> dataset index (the bank was built from this dataset, by name)
        names = {n: k for k, n in enumerate(bank.image_names)}
        self.bank_of = np.array([names.get(self.base.items[i].name, -1) for i in range(self.num_images)], np.int64)
        self.image_of = {int(b): i for i, b in enumerate(self.bank_of) if b >= 0}
        self.retriever = Retriever(bank)
        self._ret: dict[int, object] = {}  # image -> Retrieval of draw 0 (query segments)
        self._ids: dict[tuple[int, int], np.ndarray] = {}
        self.precompute(progress)

    def precompute(self, progress: bool = True) -> None:
        """Top-1 retrieval of every segment of every image for every draw, each draw against
        `pool` random other images of the bank (seeded by (seed, i, d))."""
        n_img = self.bank.num_images
        todo = [(i, d) for d in range(self.draws) for i in range(self.num_images)]
        for i, d in tqdm(todo, desc="training-canvas retrieval", disable=not progress, unit="canvas"):
            own = self.bank_of[i]
            pool = np.delete(np.arange(n_img), own) if own >= 0 else np.arange(n_img)
            rng = np.random.default_rng([self.seed, i, d, 0x5E1])
            allowed = rng.choice(pool, size=min(self.pool, len(pool)), replace=False)
            ids, _ = self.arrays(i)
            r = self.retriever.search(ids, k=1, allowed_images=allowed, min_area=self.min_area)
            self._ret.setdefault(i, r)
            self._ids[i, d] = np.where(r.searched, r.ids[:, 0], -1)

    def _photo(self, bank_image: int) -> np.ndarray:
        return self.arrays(self.image_of[bank_image])[1]

    def __getitem__(self, idx):
        i, d = idx % self.num_images, idx // self.num_images
        ids, rgb = self.arrays(i)
        r = self._ret[i]
        r = dataclasses.replace(r, ids=self._ids[i, d][:, None], searched=self._ids[i, d] >= 0)
        cv = training_canvas(
            self.bank,
            r,
            rgb,
            ref_image=self._photo,
            rng=self.rng(i, d),
            recolor_p=self.p_ct,
            elision=self.elision[0],
            elision_ratio=self.elision[1],
            corrupt_deg=self.corrupt,
            order=self.order,
        )
        rgb_t, sup = cv.tensors()
        return {
            "image": torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 255,
            "label_gt": torch.from_numpy(ids),
            "label": torch.from_numpy(cv.label),
            "canvas": rgb_t,
            "support": sup,
        }


def training_bank(base, space: LabelSpace, folder: Path, size, progress: bool = True):
    """The memory bank of the training images that training canvases retrieve from, built once
    into `folder` (resumable, like any bank) at the training size."""
    if (folder / "bank.json").is_file():
        bank = Bank.open(folder)
        if len(bank.image_names) >= len(base):
            return bank
    return build_bank(base, folder, space=space, size=tuple(size), rgb_scale=1, progress=progress)


@register_task("sims-synthesis")
class SynthesisTask(_TaskBase):
    def __init__(self, cfg: dict, space: LabelSpace, device: torch.device):
        super().__init__(cfg, space, device)
        loss_cfg = dict(cfg.get("loss", {}))
        self.ce_weight = float(loss_cfg.pop("ce_weight", 10.0))
        self.loss_fn = build_loss(loss_cfg).to(device)  # {preset, backbone_path, pretrained, ...}

    def dataset(self, cfg: dict, out: Path | None = None):
        d, c = cfg.get("data", {}), cfg.get("canvas", {})
        base = open_training_data(cfg, self.space)
        size = tuple(d["size"]) if d.get("size") else tuple(base[0]["label"].shape[-2:])
        if c.get("bank"):
            folder = Path(c["bank"])
        else:  # the run folder keeps it (a resumed run reuses it); without one, a temporary folder
            folder = Path(out) / "train-bank" if out else Path(tempfile.mkdtemp(prefix="semsynth-train-bank-"))
        bank = training_bank(base, self.space, folder, size)
        ds = SynthesisCanvases(
            base,
            self.space,
            bank,
            draws=d.get("draws", 5),
            seed=int(cfg.get("seed", 0)),
            pool=int(c.get("pool", 100)),
            min_area=float(cfg.get("min_area", REFERENCE_MIN_AREA)),
            colour_transfer=float(c.get("colour_transfer", 0.2)),
            corrupt_rotation_deg=float(c.get("corrupt_rotation_deg", 2.5)),
            elision_band=float(c.get("elision_band", 0.05)),
            elision_ratio=float(c.get("elision_ratio", 0.5)),
        )
        self.images = ds.num_images
        _steps_from_epochs(cfg, ds.num_images)
        return ds

    def perceptual(self, fake: torch.Tensor, real: torch.Tensor, stages: int):
        """The perceptual term. At the 1024 variant the original runs the VGG layers on images
        resized to half size while the pixel term stays at full size (synthesis_1024_2048.py:78-79,
        259-264); with a "mean"-mode loss that is: loss(half) - w_in * L1(half) + w_in * L1(full)."""
        if stages < 2 or self.loss_fn.mode != "mean":
            return self.loss_fn(fake, real, None)
        half = tuple(s // 2 for s in fake.shape[-2:])
        rs = lambda x: F.interpolate(x, size=half, mode="bilinear", align_corners=True)  # noqa: E731
        loss, logs = self.loss_fn(rs(fake), rs(real), None)
        w_in = dict(self.loss_fn.layers).get("input", 0.0)
        if w_in:
            full = (
                self.loss_fn.backbone.prepare(fake) - self.loss_fn.backbone.prepare(real.to(fake.dtype))
                if hasattr(self.loss_fn.backbone, "prepare")
                else None
            )
            if full is not None:
                l1 = full.abs().mean()
                loss = loss - w_in * logs["layer/input"] + w_in * l1
                logs["layer/input"] = l1.detach()
        return loss, logs

    def loss(self, model, batch):
        canvas, corrupted = batch["canvas"], batch["label"]
        rgb, logits = model(one_hot(corrupted, self.space.num_classes), canvas, batch["support"])
        p, logs = self.perceptual(rgb, batch["image"], getattr(model, "module", model).config.stages)
        gt = batch["label_gt"]
        if logits.shape[-2:] != gt.shape[-2:]:  # the 1024 variant's semantic head is at half size
            gt = F.interpolate(gt[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0].long()
        ce = F.cross_entropy(logits.float(), gt)
        logs = {**logs, "perceptual": p.detach(), "ce": ce.detach()}
        return p + self.ce_weight * ce, logs

    @torch.no_grad()
    def samples(self, model, batch):
        """One row per example: corrupted layout | canvas | output | photo."""
        canvas, corrupted = batch["canvas"], batch["label"]
        rgb, _ = model(one_hot(corrupted, self.space.num_classes), canvas, batch["support"])
        rows = []
        for b in range(rgb.shape[0]):
            lay = self._layout_rgb(corrupted[b]).to(rgb.device)
            rows.append(torch.cat([lay, canvas[b], rgb[b].clamp(0, 1), batch["image"][b]], 2))
        return torch.cat(rows, 1)
