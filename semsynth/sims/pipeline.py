"""SIMS inference: layout -> retrieval -> alignment -> ordering -> canvas -> synthesis.

    pipe = SIMSPipeline.from_pretrained("runs/sims-512p", bank="banks/cityscapes",
                                        transform="runs/sims-transform", order="runs/sims-order",
                                        precision="auto")
    images = pipe([label_ids], k=3)            # list of (k, H, W, 3) uint8: variant 0 is top-1
    out = pipe([label_ids], return_intermediates=True)   # + out.intermediates: SIMSResult per variant
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

from ..data import save_image
from ..errors import InputError
from ..labels import LabelSpace, colorize, one_hot
from ..models.sims import front_probability, pair_input, snap_theta
from ..pipeline_base import Pipeline, load_network, register_pipeline, to_uint8
from ..utils import atomic_path
from .bank import Bank
from .canvas import CanvasConfig, compose_canvas
from .order import full_order, order_rank
from .retrieval import Retriever

__all__ = ["SIMSPipeline", "SIMSResult", "PairwiseOrder"]

# what `save_intermediates` writes per layout
_INTERMEDIATES = ("_canvas.png", "_layout.png", "_segments.png", "_segments.json")


@dataclass
class SIMSResult:
    """Everything one layout went through. `image` (H, W, 3) uint8."""

    image: np.ndarray
    canvas: object  # semsynth.sims.canvas.Canvas
    retrieval: object  # semsynth.sims.retrieval.Retrieval
    theta: np.ndarray | None = None  # (Q, 2, 3) normalised affine per query segment
    front: object | None = None  # PairwiseOrder
    choice: np.ndarray | None = None  # (Q,) retrieved candidate pasted per segment (None: top-1)
    extra: dict = field(default_factory=dict)


class PairwiseOrder:
    """The order network on demand: `front(prev, new)` -> True when query segment `prev` (already
    pasted) is in front of `new`. Only pairs that actually overlap on the canvas are asked, and
    each pair is evaluated once. Inputs (order.py:177-186): the two query segments in their class
    colours and the colour layout, at the bank size. `autocast`: the pipeline's precision context."""

    def __init__(
        self, model, retrieval, space: LabelSpace, rank: np.ndarray, device, threshold: float = 0.5, autocast=None
    ):
        self.model, self.retrieval, self.space = model, retrieval, space
        self.rank, self.device, self.threshold = rank, device, threshold
        self.autocast = autocast or torch.autocast(torch.device(device).type, enabled=False)
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
            with self.autocast:
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


@register_pipeline("sims-synthesis")
class SIMSPipeline(Pipeline):
    """See the module docstring. `size` is the synthesis network's native size (canvases are
    composed at it unless a call asks for another); layouts of any size are resized (nearest) to
    the bank size for retrieval. Outputs per layout: k variants (default 1; see `choice`).

    bank: a memory-bank folder or `Bank`; transform / order: optional `sims-transform` /
    `sims-order` checkpoints or modules; k: retrieved candidates per segment (not the number of
    outputs); seed: of canvases and variants; variety: candidates a variant draws from."""

    networks = ("model", "transform", "order_net")

    def __init__(
        self,
        model: torch.nn.Module,
        space: LabelSpace,
        bank=None,
        transform=None,
        order=None,
        meta: dict | None = None,
        device=None,
        precision: str | None = "auto",
        k: int = 10,
        retrieval_mode: str = "iou",
        snap: bool = True,
        canvas_config=None,
        seed: int = 0,
        variety: int = 3,
        allow_upsampled_bank: bool = False,
    ):
        if bank is None:
            raise InputError(
                "a SIMS pipeline needs a memory bank: pass bank=PATH (CLI: --bank BANK), "
                "built with `semsynth sims build-bank`"
            )
        super().__init__(model, space, meta, device, precision)
        self.bank = bank if isinstance(bank, Bank) else Bank.open(bank)
        if list(self.bank.space.names) != list(space.names):
            raise InputError(
                f"the bank's label space ({self.bank.space.name}, {self.bank.space.num_classes} "
                f"classes) is not the model's ({space.name}, {space.num_classes} classes)"
            )
        self.transform = load_network(transform, "sims-transform", self.device)[0] if transform is not None else None
        self.order_net = load_network(order, "sims-order", self.device)[0] if order is not None else None
        self.k, self.retrieval_mode, self.snap, self.seed = int(k), retrieval_mode, bool(snap), int(seed)
        self.variety = max(1, min(int(variety), self.k))
        self.canvas_config = canvas_config
        self.allow_upsampled_bank = bool(allow_upsampled_bank)
        self.check_size(None)
        self.retriever = Retriever(self.bank)
        self.class_order = full_order(space)
        self.rank = order_rank(self.class_order)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of canvases and outputs: the synthesis network's native size."""
        return tuple(self.model.config.size)

    @property
    def default_k(self) -> int:
        return 1  # each SIMS variant is a whole canvas + synthesis pass

    def check_size(self, size) -> tuple[int, int]:
        """Canvases are composed from the bank's photos: a bank whose photos are smaller than the
        synthesis size would be upsampled (the 1024p model on a default 512x1024 bank), which the
        original never does. Refuse, saying how to build a full-scale bank."""
        size = super().check_size(size)
        (H, W), (rh, rw) = size, self.bank.rgb_size
        if self.allow_upsampled_bank or (H <= rh and W <= rw):
            return size
        need = max(-(-H // self.bank.size[0]), -(-W // self.bank.size[1]))
        raise InputError(
            f"this model synthesizes {H}x{W} but the bank {self.bank.path} keeps photos at {rh}x{rw} "
            f"(rgb_scale {self.bank.rgb_scale}): its segments would be upsampled. Build a full-scale bank with "
            f"`semsynth sims build-bank --data DATA --out BANK --rgb-scale {need}` (or pass "
            f"allow_upsampled_bank=True)"
        )

    # ------------------------------------------------------------------ steps
    def retrieve(self, layout):
        """Top-k bank segments for every query segment (`semsynth.sims.retrieval.Retrieval`)."""
        return self.retriever.search(self._read(layout), k=self.k, mode=self.retrieval_mode)

    @torch.no_grad()
    def align(self, retrieval, choice: np.ndarray | None = None, batch: int = 8, size=None) -> np.ndarray | None:
        """Affine thetas (Q, 2, 3; normalised, align_corners=False) moving each chosen retrieved
        segment onto its query segment; identity where nothing was retrieved. None without a
        transformation network. Inputs as at training time: the segment's RGB in the RGB frame of
        the bank, the query mask and the layout at that size. `size`: of the canvas the thetas
        are snapped for (default native)."""
        if self.transform is None:
            return None
        size = size or self.size
        q = retrieval.query
        Q = len(q)
        theta = np.tile(np.eye(2, 3), (Q, 1, 1))
        col = np.zeros(Q, np.int64) if choice is None else np.asarray(choice, np.int64)
        todo = [
            (j, int(retrieval.ids[j, col[j]]))
            for j in range(Q)
            if retrieval.searched[j] and 0 <= col[j] < retrieval.ids.shape[1] and retrieval.ids[j, col[j]] >= 0
        ]
        if not todo:
            return theta
        s = self.bank.rgb_scale
        H, W = self.bank.rgb_size
        up = lambda m: np.repeat(np.repeat(m, s, 0), s, 1)  # noqa: E731  (nearest, as the original)
        lab = torch.from_numpy(up(np.asarray(retrieval.label, np.int64)))[None].to(self.device)
        onehot = one_hot(lab, self.space.num_classes)
        out = []
        for i in range(0, len(todo), batch):
            chunk = todo[i : i + batch]
            seg = torch.zeros(len(chunk), 3, H, W)
            qm = torch.zeros(len(chunk), 1, H, W)
            for n, (j, b) in enumerate(chunk):
                sg = self.bank.segment(b)
                y0, x0 = sg.bbox[0] * s, sg.bbox[1] * s
                h, w = sg.rgb.shape[:2]
                seg[n, :, y0 : y0 + h, x0 : x0 + w] = torch.from_numpy(sg.rgb).permute(2, 0, 1).float() / 255
                qm[n, 0] = torch.from_numpy(up(q.full_mask(j)))
            with self.autocast():
                th = self.transform(seg.to(self.device), qm.to(self.device), onehot.expand(len(chunk), -1, -1, -1))
            th = th.double()
            if self.snap:
                th = snap_theta(th, *size)
            out.append(th.cpu().numpy())
        theta[[j for j, _ in todo]] = np.concatenate(out)
        return theta

    def order(self, retrieval) -> PairwiseOrder | None:
        """The pairwise front/back decisions for `compose_canvas` (None without an order network:
        later classes in the class-order prior then overwrite earlier ones)."""
        if self.order_net is None:
            return None
        return PairwiseOrder(self.order_net, retrieval, self.space, self.rank, self.device, autocast=self.autocast())

    def compose_canvas(self, retrieval, theta=None, front=None, rng=None, config=None, choice=None, size=None):
        """The canvas at `size` (default native; `semsynth.sims.canvas.compose_canvas`)."""
        return compose_canvas(
            self.bank,
            retrieval,
            size=size or self.size,
            theta=theta,
            order=self.class_order,
            choice=choice,
            front=front,
            config=config or self.canvas_config,
            rng=self.seed if rng is None else rng,
        )

    @torch.no_grad()
    def synthesize(self, canvas) -> np.ndarray:
        """Canvas (its RGB, support and revised layout) -> (H, W, 3) uint8 photo."""
        rgb, support = canvas.tensors()
        label = torch.as_tensor(canvas.label, dtype=torch.long)[None].to(self.device)
        with self.autocast():
            out, _ = self.model(
                one_hot(label, self.space.num_classes), rgb[None].to(self.device), support[None].to(self.device)
            )
        return to_uint8(out[0])

    # ------------------------------------------------------------------ all at once
    def choice(self, retrieval, variant: int, seed: int | None = None) -> np.ndarray | None:
        """Which retrieved candidate each query segment pastes in output `variant`: 0 is the
        original's top-1 everywhere; variant v > 0 draws each segment's candidate uniformly from
        its best `self.variety` (seeded by (seed, v); default the pipeline's seed), so the k
        outputs of one layout differ in the photo segments they are made of. (Not in the
        original, which makes one image.)"""
        if variant == 0:
            return None
        valid = (retrieval.ids[:, : self.variety] >= 0).sum(1)
        rng = np.random.default_rng([self.seed if seed is None else int(seed), int(variant), 0x51C])
        return np.floor(rng.random(len(valid)) * np.maximum(valid, 1)).astype(np.int64)

    def run(self, layout, rng=None, variant: int = 0, retrieval=None, size=None, seed: int | None = None) -> SIMSResult:
        """One output of one layout, with everything on the way. rng: of the canvas (default
        `seed`, else the pipeline's seed); size: of the canvas and output (default native)."""
        size = size or self.size
        r = retrieval if retrieval is not None else self.retrieve(layout)
        choice = self.choice(r, variant, seed)
        theta = self.align(r, choice, size=size)
        front = self.order(r)
        canvas = self.compose_canvas(r, theta, front, rng=seed if rng is None else rng, choice=choice, size=size)
        return SIMSResult(
            image=self.synthesize(canvas), canvas=canvas, retrieval=r, theta=theta, front=front, choice=choice
        )

    def run_variants(self, layout, k: int, rng=None, size=None, seed: int | None = None) -> list[SIMSResult]:
        """Variants 0 .. k-1 of one layout (see `choice`), retrieving once."""
        first = self.run(layout, rng=rng, size=size, seed=seed)
        return [first] + [
            self.run(layout, rng=rng, variant=v, retrieval=first.retrieval, size=size, seed=seed) for v in range(1, k)
        ]

    def _run(self, layouts, k, size, read, seed, keep):
        images, inter = [], []
        for x in layouts:
            results = self.run_variants(self._read(x, read), k, size=size, seed=seed)
            images.append(np.stack([r.image for r in results]))
            inter.append(results if keep else None)
        return images, inter

    # ------------------------------------------------------------------ intermediates
    def intermediate_names(self, stem: str) -> list[str]:
        return [stem + e for e in _INTERMEDIATES]

    def save_intermediates(self, result, out_dir: str | Path, stem: str) -> list[Path]:
        """Of `result` (a SIMSResult, or a layout's list of them: its variant 0):
        `<stem>_canvas.png` (the canvas), `<stem>_layout.png` (revised layout, colours),
        `<stem>_segments.png` (the chosen segments pasted as placed, no elision or holes) and
        `<stem>_segments.json` (per query segment: class, bank segment, source image, IoU, theta)."""
        if isinstance(result, (list, tuple)):
            result = result[0]
        out_dir = Path(out_dir)
        raw = self.compose_canvas(
            result.retrieval,
            result.theta,
            result.front,
            choice=result.choice,
            size=result.canvas.label.shape,
            config=CanvasConfig(
                elision_ratio=0, shadow_removal=False, vegetation_trim=False, outer_elision=False, context_fill=False
            ),
        )
        files = {
            f"{stem}_canvas.png": result.canvas.rgb,
            f"{stem}_layout.png": colorize(result.canvas.label, self.space),
            f"{stem}_segments.png": raw.rgb,
        }
        written = [save_image(out_dir / name, np.ascontiguousarray(arr)) for name, arr in files.items()]
        r, q = result.retrieval, result.retrieval.query
        rows = []
        for j in range(len(q)):
            b = int(result.canvas.bank_ids[j]) if result.canvas.bank_ids is not None else -1
            rows.append(
                {
                    "query": j,
                    "class": self.space.names[int(q.cls[j])],
                    "area": int(q.area[j]),
                    "bank_segment": b,
                    "source_image": self.bank.image_names[int(self.bank.image[b])] if b >= 0 else None,
                    "iou": float(r.iou[j, 0]) if b >= 0 else None,
                    "warped": bool(result.canvas.warped[j]) if result.canvas.warped is not None else False,
                    "theta": np.round(result.theta[j], 6).tolist() if result.theta is not None else None,
                }
            )
        with atomic_path(out_dir / f"{stem}_segments.json") as tmp:
            tmp.write_text(
                json.dumps({"segments": rows, "paste_order": [int(v) for v in result.canvas.order]}, indent=1)
            )
        written.append(out_dir / f"{stem}_segments.json")
        return written
