"""SIMS inference: layout -> retrieval -> alignment -> ordering -> canvas -> synthesis.

    pipe = SIMSPipeline.from_pretrained("runs/sims-512p", bank="banks/cityscapes",
                                        transform="runs/sims-transform", order="runs/sims-order")
    images = pipe([label_ids])                 # list of (H, W, 3) uint8
    # or step by step:
    r = pipe.retrieve(label)                   # top-k bank segments per query segment
    theta = pipe.align(r)                      # (Q, 2, 3) affine per segment (None: no transform net)
    front = pipe.order(r)                      # pairwise front/back (None: no order net)
    canvas = pipe.compose_canvas(r, theta, front)
    image = pipe.synthesize(canvas)

The transformation and ordering networks are optional: without them the canvas pastes the
retrieved segments unmoved, in the class-order prior (later classes over earlier ones), which is
what the released code effectively did on Cityscapes (SPEC B.3.3, B.4.4).

Test-time choices of the original kept here: top-1 retrieval; theta snapped to the identity
linear part and whole-pixel shifts (`snap=True`); a warp is used only if it overlaps the query
segment better than no warp (done by `compose_canvas`). Fixed: the pairwise order compares only
the logits of the pair's two classes and cuts the new segment where the earlier one is in front
(the released code used a wrong key and an inverted mask, B.8.10).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import checkpoint as ckpt
from ..labels import LabelSpace, colorize, one_hot
from ..models.sims import front_probability, pair_input, snap_theta
from ..utils import atomic_path, pick_device
from ..errors import InputError

__all__ = ["SIMSPipeline", "SIMSResult", "PairwiseOrder"]


@dataclass
class SIMSResult:
    """Everything one layout went through. `image` (H, W, 3) uint8."""

    image: np.ndarray
    canvas: object                       # semsynth.sims.canvas.Canvas
    retrieval: object                    # semsynth.sims.retrieval.Retrieval
    theta: np.ndarray | None = None      # (Q, 2, 3) normalised affine per query segment
    front: object | None = None          # PairwiseOrder
    choice: np.ndarray | None = None     # (Q,) retrieved candidate pasted per segment (None: top-1)
    extra: dict = field(default_factory=dict)


def _load(path_or_model, want: str, device):
    """A network from a checkpoint path (checking its task) or an nn.Module as is."""
    if path_or_model is None:
        return None, None
    if isinstance(path_or_model, torch.nn.Module):
        return path_or_model.to(device).eval(), None
    from ..pipelines import resolve_checkpoint

    meta = ckpt.read_metadata(resolve_checkpoint(path_or_model))
    if meta["task"] != want:
        raise InputError(f"{path_or_model}: is a {meta['task']!r} checkpoint, expected {want!r}")
    model, meta = ckpt.load_model(resolve_checkpoint(path_or_model), device)
    return model, meta


class PairwiseOrder:
    """The order network on demand: `front(prev, new)` -> True when query segment `prev` (already
    pasted) is in front of `new`. Only pairs that actually overlap on the canvas are asked, and
    each pair is evaluated once. Inputs (order.py:177-186): the two query segments in their class
    colours and the colour layout, at the bank size."""

    def __init__(self, model, retrieval, space: LabelSpace, rank: np.ndarray, device, threshold: float = 0.5):
        self.model, self.retrieval, self.space = model, retrieval, space
        self.rank, self.device, self.threshold = rank, device, threshold
        self.q = retrieval.query
        self._label = torch.as_tensor(retrieval.label, dtype=torch.long)[None]
        self._colors = torch.as_tensor(space.colors)
        self.cache: dict[tuple[int, int], float] = {}

    @torch.no_grad()
    def prob(self, i: int, j: int) -> float:
        """P(query segment i is in front of segment j); 0.5 for segments of one class."""
        ci, cj = int(self.q.cls[i]), int(self.q.cls[j])
        if ci == cj:
            return 0.5
        # the network saw pairs oriented as (earlier, later) in the class-order prior
        a, b = (i, j) if self.rank[ci] <= self.rank[cj] else (j, i)
        if (a, b) not in self.cache:
            ma = torch.from_numpy(self.q.full_mask(a))[None]
            mb = torch.from_numpy(self.q.full_mask(b))[None]
            pair, layout = pair_input(self._label, ma, mb, self._colors)
            logits = self.model(pair.to(self.device), layout.to(self.device)).float()
            ca = torch.tensor([int(self.q.cls[a])], device=self.device)
            cb = torch.tensor([int(self.q.cls[b])], device=self.device)
            self.cache[(a, b)] = float(front_probability(logits, ca, cb)[0])
        p = self.cache[(a, b)]
        return p if a == i else 1.0 - p

    def __call__(self, prev: int, new: int) -> bool:
        return self.prob(prev, new) > self.threshold

    def matrix(self) -> np.ndarray:
        """(Q, Q) P(i in front of j) over all searched segments (every pair evaluated)."""
        Q = len(self.q)
        out = np.full((Q, Q), 0.5)
        idx = np.flatnonzero(self.retrieval.searched)
        for i in idx:
            for j in idx:
                if i != j:
                    out[i, j] = self.prob(int(i), int(j))
        return out


class SIMSPipeline:
    """See the module docstring. `size` is the synthesis network's native size (the canvas is
    composed at it); layouts of any size are resized (nearest) to the bank size for retrieval."""

    def __init__(self, synthesis: torch.nn.Module, space: LabelSpace, bank, transform=None, order=None,
                 meta: dict | None = None, device=None, k: int = 10, retrieval_mode: str = "iou",
                 snap: bool = True, canvas_config=None, seed: int = 0, variety: int = 3,
                 allow_upsampled_bank: bool = False):
        from .bank import Bank
        from .retrieval import Retriever
        from .order import full_order

        if bank is None:
            raise InputError("a SIMS pipeline needs a memory bank: pass bank=PATH (CLI: --bank BANK), "
                             "built with `semsynth sims build-bank`")
        self.device = device or pick_device()
        self.model = synthesis.to(self.device).eval()
        self.space = space
        self.bank = bank if isinstance(bank, Bank) else Bank.open(bank)
        if list(self.bank.space.names) != list(space.names):
            raise InputError(f"the bank's label space ({self.bank.space.name}, {self.bank.space.num_classes} "
                             f"classes) is not the model's ({space.name}, {space.num_classes} classes)")
        self.transform = transform.to(self.device).eval() if transform is not None else None
        self.order_net = order.to(self.device).eval() if order is not None else None
        self.meta = meta or {}
        self.k, self.retrieval_mode, self.snap, self.seed = int(k), retrieval_mode, bool(snap), int(seed)
        self.variety = max(1, min(int(variety), self.k))
        self.canvas_config = canvas_config
        self._size = None
        self.allow_upsampled_bank = bool(allow_upsampled_bank)
        self._check_bank_scale()
        self.retriever = Retriever(self.bank)
        self.class_order = full_order(space)
        self.rank = np.empty(space.num_classes, np.int64)
        self.rank[self.class_order] = np.arange(space.num_classes)

    @classmethod
    def from_pretrained(cls, checkpoint, bank=None, transform=None, order=None, device: str | None = None,
                        **kwargs) -> "SIMSPipeline":
        """checkpoint: a `sims-synthesis` run/checkpoint; bank: a memory-bank folder (or `Bank`);
        transform / order: optional `sims-transform` / `sims-order` checkpoints (or modules)."""
        if bank is None:
            raise InputError("a SIMS checkpoint needs a memory bank: pass bank=PATH (CLI: --bank BANK), "
                             "built with `semsynth sims build-bank`")
        dev = pick_device(device)
        model, meta = _load(checkpoint, "sims-synthesis", dev)
        t_model, _ = _load(transform, "sims-transform", dev)
        o_model, _ = _load(order, "sims-order", dev)
        return cls(model, meta["label_space"], bank, t_model, o_model, meta, dev, **kwargs)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of canvases and outputs: the synthesis network's native size unless set."""
        return self._size or tuple(self.model.config.size)

    @size.setter
    def size(self, value) -> None:
        self._size = tuple(int(v) for v in value) if value is not None else None
        self._check_bank_scale()

    def _check_bank_scale(self) -> None:
        """Canvases are composed from the bank's photos: a bank whose photos are smaller than the
        synthesis size would be upsampled (the 1024p model on a default 512x1024 bank), which the
        original never does. Refuse, saying how to build a full-scale bank."""
        (H, W), (rh, rw) = self.size, self.bank.rgb_size
        if self.allow_upsampled_bank or (H <= rh and W <= rw):
            return
        need = max(-(-H // self.bank.size[0]), -(-W // self.bank.size[1]))
        raise InputError(
            f"this model synthesizes {H}x{W} but the bank {self.bank.path} keeps photos at {rh}x{rw} "
            f"(rgb_scale {self.bank.rgb_scale}): its segments would be upsampled. Build a full-scale bank with "
            f"`semsynth sims build-bank --data DATA --out BANK --rgb-scale {need}` (or pass "
            f"allow_upsampled_bank=True)")

    # ------------------------------------------------------------------ steps
    def _as_label(self, layout) -> np.ndarray:
        if isinstance(layout, (str, Path)):
            return self.space.read(layout)
        if isinstance(layout, torch.Tensor):
            layout = layout.cpu().numpy()
        return np.asarray(layout)

    def retrieve(self, layout):
        """Top-k bank segments for every query segment (`semsynth.sims.retrieval.Retrieval`)."""
        return self.retriever.search(self._as_label(layout), k=self.k, mode=self.retrieval_mode)

    @torch.no_grad()
    def align(self, retrieval, choice: np.ndarray | None = None, batch: int = 8) -> np.ndarray | None:
        """Affine thetas (Q, 2, 3; normalised, align_corners=False) moving each chosen retrieved
        segment onto its query segment; identity where nothing was retrieved. None without a
        transformation network. Inputs as at training time: the segment's RGB in the RGB frame of
        the bank, the query mask and the layout at that size."""
        if self.transform is None:
            return None
        q = retrieval.query
        Q = len(q)
        theta = np.tile(np.eye(2, 3), (Q, 1, 1))
        col = np.zeros(Q, np.int64) if choice is None else np.asarray(choice, np.int64)
        todo = [(j, int(retrieval.ids[j, col[j]])) for j in range(Q)
                if retrieval.searched[j] and 0 <= col[j] < retrieval.ids.shape[1] and retrieval.ids[j, col[j]] >= 0]
        if not todo:
            return theta
        s = self.bank.rgb_scale
        H, W = self.bank.rgb_size
        up = lambda m: np.repeat(np.repeat(m, s, 0), s, 1)  # noqa: E731  (nearest, as the original)
        lab = torch.from_numpy(up(np.asarray(retrieval.label, np.int64)))[None].to(self.device)
        onehot = one_hot(lab, self.space.num_classes)
        out = []
        for i in range(0, len(todo), batch):
            chunk = todo[i:i + batch]
            seg = torch.zeros(len(chunk), 3, H, W)
            qm = torch.zeros(len(chunk), 1, H, W)
            for n, (j, b) in enumerate(chunk):
                sg = self.bank.segment(b)
                y0, x0 = sg.bbox[0] * s, sg.bbox[1] * s
                h, w = sg.rgb.shape[:2]
                seg[n, :, y0:y0 + h, x0:x0 + w] = torch.from_numpy(sg.rgb).permute(2, 0, 1).float() / 255
                qm[n, 0] = torch.from_numpy(up(q.full_mask(j)))
            th = self.transform(seg.to(self.device), qm.to(self.device),
                                onehot.expand(len(chunk), -1, -1, -1)).double()
            if self.snap:
                th = snap_theta(th, *self.size)
            out.append(th.cpu().numpy())
        theta[[j for j, _ in todo]] = np.concatenate(out)
        return theta

    def order(self, retrieval) -> PairwiseOrder | None:
        """The pairwise front/back decisions for `compose_canvas` (None without an order network:
        later classes in the class-order prior then overwrite earlier ones)."""
        if self.order_net is None:
            return None
        return PairwiseOrder(self.order_net, retrieval, self.space, self.rank, self.device)

    def compose_canvas(self, retrieval, theta=None, front=None, rng=None, config=None, choice=None):
        """The canvas at the synthesis size (`semsynth.sims.canvas.compose_canvas`)."""
        from .canvas import compose_canvas

        return compose_canvas(self.bank, retrieval, size=self.size, theta=theta, order=self.class_order,
                              choice=choice,
                              front=front, config=config or self.canvas_config,
                              rng=self.seed if rng is None else rng)

    @torch.no_grad()
    def synthesize(self, canvas) -> np.ndarray:
        """Canvas (its RGB, support and revised layout) -> (H, W, 3) uint8 photo."""
        rgb, support = canvas.tensors()
        label = torch.as_tensor(canvas.label, dtype=torch.long)[None].to(self.device)
        out, _ = self.model(one_hot(label, self.space.num_classes), rgb[None].to(self.device),
                            support[None].to(self.device))
        return (out[0].float().clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).cpu().numpy()

    # ------------------------------------------------------------------ all at once
    def choice(self, retrieval, variant: int) -> np.ndarray | None:
        """Which retrieved candidate each query segment pastes in output `variant`: 0 is the
        original's top-1 everywhere; variant v > 0 draws each segment's candidate uniformly from
        its best `self.variety` (seeded by (seed, v)), so the k outputs of one layout differ in
        the photo segments they are made of. (Not in the original, which makes one image.)"""
        if variant == 0:
            return None
        valid = (retrieval.ids[:, : self.variety] >= 0).sum(1)
        rng = np.random.default_rng([self.seed, int(variant), 0x51C])
        return np.floor(rng.random(len(valid)) * np.maximum(valid, 1)).astype(np.int64)

    def run(self, layout, rng=None, variant: int = 0, retrieval=None) -> SIMSResult:
        r = retrieval if retrieval is not None else self.retrieve(layout)
        choice = self.choice(r, variant)
        theta = self.align(r, choice)
        front = self.order(r)
        canvas = self.compose_canvas(r, theta, front, rng=rng, choice=choice)
        return SIMSResult(image=self.synthesize(canvas), canvas=canvas, retrieval=r, theta=theta, front=front,
                          choice=choice)

    def run_variants(self, layout, k: int, rng=None) -> list[SIMSResult]:
        """Variants 0 .. k-1 of one layout (see `choice`), retrieving once."""
        first = self.run(layout, rng=rng)
        return [first] + [self.run(layout, rng=rng, variant=v, retrieval=first.retrieval) for v in range(1, k)]

    def __call__(self, layouts, rng=None) -> list[np.ndarray]:
        """Layouts (class-index arrays, tensors or label-map paths) -> list of (H, W, 3) uint8."""
        single = (isinstance(layouts, (np.ndarray, torch.Tensor)) and layouts.ndim == 2) \
            or isinstance(layouts, (str, Path))
        layouts = [layouts] if single else list(layouts)
        return [self.run(x, rng=rng).image for x in layouts]

    def save_intermediates(self, result: SIMSResult, out_dir: str | Path, stem: str) -> list[Path]:
        """`<stem>_canvas.png` (the canvas), `<stem>_layout.png` (revised layout, colours),
        `<stem>_segments.png` (the chosen segments pasted as placed, no elision or holes) and
        `<stem>_segments.json` (per query segment: class, bank segment, source image, IoU, theta)."""
        from PIL import Image

        from .canvas import CanvasConfig

        out_dir = Path(out_dir)
        raw = self.compose_canvas(result.retrieval, result.theta, result.front, choice=result.choice,
                                  config=CanvasConfig(elision_ratio=0, shadow_removal=False, vegetation_trim=False,
                                                      outer_elision=False, context_fill=False))
        files = {f"{stem}_canvas.png": result.canvas.rgb, f"{stem}_layout.png": colorize(result.canvas.label, self.space),
                 f"{stem}_segments.png": raw.rgb}
        written = []
        for name, arr in files.items():
            with atomic_path(out_dir / name) as tmp:
                Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")
            written.append(out_dir / name)
        r, q = result.retrieval, result.retrieval.query
        rows = []
        for j in range(len(q)):
            b = int(result.canvas.bank_ids[j]) if result.canvas.bank_ids is not None else -1
            rows.append({
                "query": j, "class": self.space.names[int(q.cls[j])], "area": int(q.area[j]),
                "bank_segment": b,
                "source_image": self.bank.image_names[int(self.bank.image[b])] if b >= 0 else None,
                "iou": float(r.iou[j, 0]) if b >= 0 else None,
                "warped": bool(result.canvas.warped[j]) if result.canvas.warped is not None else False,
                "theta": np.round(result.theta[j], 6).tolist() if result.theta is not None else None,
            })
        with atomic_path(out_dir / f"{stem}_segments.json") as tmp:
            tmp.write_text(json.dumps({"segments": rows, "paste_order": [int(v) for v in result.canvas.order]},
                                      indent=1))
        written.append(out_dir / f"{stem}_segments.json")
        return written

    def synthesize_files(self, inputs, out_dir: str | Path, save_intermediates: bool = False,
                         overwrite: bool = False, progress: bool = True, size=None, k=None, grid=False,
                         batch_size=None, skip_existing: bool = False, label_space=None,
                         label_encoding: str | None = None) -> list[Path]:
        """Label-map files/folders -> `<stem>.png` (k = 1) or `<stem>_k<i>.png` (variant i, see
        `choice`) in `out_dir`, plus intermediates (of variant 0) and with `grid` a tiled
        `<stem>_grid.png`. Refuses to overwrite existing outputs unless `overwrite`;
        `skip_existing` leaves out the layouts whose outputs are all there (`pipelines.plan_outputs`:
        all checked before anything is written). size: synthesis size (default the model's).
        batch_size: accepted for the CLI's sake; SIMS composes one layout at a time."""
        from PIL import Image

        from ..data import check_size
        from ..labels import layout_reader
        from ..pipelines import check_count, output_names, plan_outputs, tile

        k = check_count(k, "k") or 1
        check_count(batch_size, "batch size")
        if size is not None:
            self.size = check_size(size, "--size")
        read = layout_reader(self.space, label_space, label_encoding)
        extra = ("_canvas.png", "_layout.png", "_segments.png", "_segments.json") if save_intermediates else ()
        plan = plan_outputs(inputs, out_dir, lambda s: output_names(s, k) + [s + e for e in extra]
                            + ([f"{s}_grid.png"] if grid else []), overwrite=overwrite, skip_existing=skip_existing)
        out_dir = Path(out_dir)
        it = [(f, f.stem) for f, _ in plan]
        if progress:
            from tqdm import tqdm
            it = tqdm(it, desc="sims synthesize", unit="img")

        def write(name, arr):
            with atomic_path(out_dir / name) as tmp:
                Image.fromarray(arr).save(tmp, format="PNG")
            written.append(out_dir / name)

        written = []
        for f, stem in it:
            results = self.run_variants(read(f), k)
            first, images = results[0], [r.image for r in results]
            for name, img in zip(output_names(stem, k), images):
                write(name, img)
            if grid:
                write(f"{stem}_grid.png", tile(np.stack(images)))
            if save_intermediates:
                written += self.save_intermediates(first, out_dir, stem)
        return written
