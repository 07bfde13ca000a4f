"""Retrieval of bank segments for the segments of a query layout (SPEC B.2).

For every query segment with area > 1000 px (at 256x512, scaled to the bank size) the `k` best
bank segments *of the same class* are returned, by one of two scores:

* ``mode="iou"`` — the released behaviour (`search_segments.m`): IoU of the two binary masks in
  image coordinates (shape and position, no alignment).
* ``mode="context"`` — the variant the paper describes and the original never released
  (README: "search based on context iou will be added soon"): mask IoU **plus** the IoU of the
  surrounding layouts, ``score = iou + context_weight * context_iou``. The context of a segment is
  the window of its bounding box grown by `context_margin` times its height/width on each side
  (clipped to the image); on the bank's context grid (32x64 cells of majority class),

      context_iou(q, b) = #{cells in W_q ∩ W_b where both layouts have the same class}
                          / #{cells in W_q ∪ W_b}

  so it rewards candidates whose neighbourhood (road below a car, buildings behind a pole, ...)
  matches the query's, at the same place in the image.

How it is fast: per class, all query signatures against all bank signatures is one matrix
product (coverage signatures on a 16x32 grid; intersection = A·Bᵀ, union = |A| + |B| − A·Bᵀ;
only the grid cells the queries touch are read);
the context term for every pair comes from 2-D prefix sums of the per-image agreement map (four
lookups per pair). The best `candidates` by that estimate are then re-scored with the **exact**
mask IoU at the bank resolution, and the top k kept. With candidates >= the class size the result
is the exhaustive search of the original; by default (max(4k, 64)) the top-1 matched the
exhaustive search on every query we checked.

Fixed relative to the original: the top-k list is a real top-k (the original replaced the slot of
the minimum computed once per training image, so the last segment of an image won, B.8.2), and
results are returned in memory with one naming (B.8.3).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .bank import Bank, _unpack
from .segments import (REFERENCE_MIN_AREA, SegmentSet, extract_segments, grid_index, layout_grid,
                       scaled_area)

from ..errors import InputError

__all__ = ["Retriever", "Retrieval", "retrieve", "benchmark_retrieval"]


@dataclass
class Retrieval:
    """Retrieval results for one layout.

    query: the query's segments at the bank size (all of them, in extraction order: class, then
    component). searched: (Q,) which ones were searched (area above the threshold and a non-empty
    class in the bank). ids: (Q, k) bank segment ids (rows of `bank.table`), best first, -1 where
    there is none. iou: exact mask IoU; context_iou: the context term (NaN in mode "iou");
    score: what was ranked (iou, or iou + w * context_iou)."""

    label: np.ndarray = field(repr=False)
    query: SegmentSet = field(repr=False)
    searched: np.ndarray
    ids: np.ndarray
    iou: np.ndarray
    context_iou: np.ndarray
    score: np.ndarray
    mode: str
    seconds: float = 0.0

    @property
    def best(self) -> np.ndarray:
        """(Q,) the top-1 bank id of every query segment (-1: none)."""
        return self.ids[:, 0] if self.ids.shape[1] else np.full(len(self.searched), -1)


class _Index:
    """What retrieval reads from a bank, as in-memory arrays (bank rows, or replicated rows)."""

    def __init__(self, cls, bbox, area, image, sig, layouts, class_offsets, size, mask_fn, C):
        self.cls, self.bbox, self.area, self.image = cls, bbox, area, image
        self.sig, self.layouts, self.class_offsets = sig, layouts, class_offsets
        self.size, self.mask_fn, self.C = size, mask_fn, C

    @classmethod
    def from_bank(cls, bank: Bank) -> "_Index":
        t = bank.table
        shards = {}
        masks_off = np.asarray(t["mask_off"])
        shard_of = np.asarray(t["shard"])
        bbox = bank.bbox.astype(np.int64)

        def mask_fn(i: int) -> np.ndarray:
            k = int(shard_of[i])
            buf = shards.get(k)
            if buf is None:  # a plain ndarray view of the memory map (memmap slicing is slow)
                buf = shards[k] = np.asarray(bank._shard(k)["masks"])
            y0, x0, y1, x1 = bbox[i]
            return _unpack(buf, int(masks_off[i]), int(y1 - y0), int(x1 - x0))

        return cls(np.asarray(t["cls"]), bbox, np.asarray(t["area"]), np.asarray(t["image"]),
                   bank.signatures(), bank.layout_grids(), bank.class_offsets, bank.size, mask_fn,
                   bank.space.num_classes)

    def replicate(self, n_min: int) -> "_Index":
        """The same rows repeated (each copy with its own image ids) until >= n_min rows, for
        benchmarks. Masks decode from the original rows."""
        n = len(self.cls)
        reps = max(1, -(-n_min // max(n, 1)))
        n_img = len(self.layouts)
        rows = np.argsort(self.cls, kind="stable")               # class order
        src = np.tile(rows, reps)
        rep = np.repeat(np.arange(reps), len(rows))
        order = np.lexsort((rep, self.cls[src]))
        src, rep = src[order], rep[order]
        counts = np.bincount(self.cls[src], minlength=self.C)[: self.C]
        offsets = np.concatenate([[0], np.cumsum(counts)])
        base_mask = self.mask_fn
        return _Index(self.cls[src], self.bbox[src], self.area[src], self.image[src] + rep * n_img,
                      np.asarray(self.sig)[src], np.tile(np.asarray(self.layouts), (reps, 1, 1)),
                      offsets, self.size, lambda i: base_mask(int(src[i])), self.C)


class Retriever:
    """Searches one bank. Per-class signature matrices are built on first use and cached, so
    create one Retriever per bank and reuse it across layouts.

    pool: average-pool the bank's signatures by this factor for the matrix stage (default 1:
    the bank's 16x32 cells, 512 numbers per segment, 2 KB of float32 each in the cache, about
    200 MB for 100,000 segments when every class has been searched)."""

    def __init__(self, bank: Bank | _Index, pool: int = 1):
        self.bank = bank if isinstance(bank, Bank) else None
        self.index = _Index.from_bank(bank) if isinstance(bank, Bank) else bank
        self.size = tuple(self.index.size)
        self.C = self.index.C
        self.thin = tuple(bank.thin) if isinstance(bank, Bank) else ()
        self.sig_grid = tuple(np.asarray(self.index.sig).shape[1:])
        self.context_grid = tuple(np.asarray(self.index.layouts).shape[1:])
        self.pool = int(pool)
        self._sig_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._cells_sig = grid_index(self.size, self.sig_grid)
        self._cells_ctx = grid_index(self.size, self.context_grid)

    # ---------------------------------------------------------------- caches
    def _pooled(self, sig: np.ndarray) -> np.ndarray:
        """(n, gh, gw) uint8 coverage -> (n, gh/pool * gw/pool) float32 coverage in [0, 1]
        (edge cells of sizes that do not divide are averaged with zero padding)."""
        x = np.asarray(sig)
        p = self.pool
        n, gh, gw = x.shape
        if p > 1:
            ph, pw = -(-gh // p) * p, -(-gw // p) * p
            if (ph, pw) != (gh, gw):
                x = np.pad(x, ((0, 0), (0, ph - gh), (0, pw - gw)))
            x = x.reshape(n, ph // p, p, pw // p, p).sum((2, 4), dtype=np.uint16)
        return x.reshape(n, -1).astype(np.float32) * np.float32(1.0 / (255.0 * p * p))

    def _class_matrix(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(D, n) float32 pooled signatures of class c (transposed: a query touches few cells,
        and only those rows are read), and (n,) their sums."""
        hit = self._sig_cache.get(c)
        if hit is None:
            a, b = int(self.index.class_offsets[c]), int(self.index.class_offsets[c + 1])
            d = self._pooled(np.zeros((1, *self.sig_grid), np.uint8)).shape[1]
            mt = np.empty((d, b - a), np.float32)
            for s in range(a, b, 8192):
                e = min(s + 8192, b)
                mt[:, s - a:e - a] = self._pooled(np.asarray(self.index.sig[s:e])).T
            mt = torch.from_numpy(mt)
            hit = self._sig_cache[c] = (mt, mt.sum(0))
        return hit

    def warm(self) -> "Retriever":
        """Build every class's cache now (otherwise built on first use)."""
        for c in range(self.C):
            self._class_matrix(c)
        return self

    def _windows(self, bbox: np.ndarray, margin: float) -> np.ndarray:
        """(n, 4) context windows in context-grid cells [cy0, cx0, cy1, cx1)."""
        H, W = self.size
        ch, cw = self.context_grid
        b = bbox.astype(np.float64)
        h, w = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        y0 = np.clip(b[:, 0] - margin * h, 0, H)
        y1 = np.clip(b[:, 2] + margin * h, 0, H)
        x0 = np.clip(b[:, 1] - margin * w, 0, W)
        x1 = np.clip(b[:, 3] + margin * w, 0, W)
        return np.stack([np.floor(y0 * ch / H), np.floor(x0 * cw / W),
                         np.ceil(y1 * ch / H), np.ceil(x1 * cw / W)], 1).astype(np.int64)

    # ---------------------------------------------------------------- search
    def search(self, label, *args, **kwargs) -> Retrieval:
        """See `_search`. The tensors involved are small: torch runs single-threaded here, which
        avoids OpenMP synchronisation costs (10x on a busy 2-core machine); restored after."""
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._search(label, *args, **kwargs)
        finally:
            torch.set_num_threads(n)

    def _search(self, label, k: int = 10, mode: str = "iou", min_area: float = REFERENCE_MIN_AREA,
               candidates: int | None = None, context_weight: float = 1.0,
               context_margin: float = 0.5, allowed_images=None, exclude_images=None) -> Retrieval:
        """Retrieve for every segment of `label` (class indices, void = C; any size: resized to
        the bank size with nearest neighbour). Returns a `Retrieval`.

        min_area: pixels at 256x512 (scaled to the bank size); only larger segments are searched
        (the original's "area > 1000"). candidates: how many per query are re-scored exactly
        (default max(4k, 64)). allowed_images / exclude_images: bank image ids to restrict the
        search to / leave out (e.g. the query's own image when building training canvases)."""
        t0 = time.perf_counter()
        if mode not in ("iou", "context"):
            raise InputError(f"mode must be 'iou' or 'context', got {mode!r}")
        label = self._as_label(label)
        q = extract_segments(label, self.C, self.thin, sig_grid=self.sig_grid, cells=self._cells_sig)
        Q = len(q)
        ids = np.full((Q, k), -1, np.int64)
        iou = np.zeros((Q, k), np.float32)
        ctx = np.full((Q, k), np.nan if mode == "iou" else 0.0, np.float32)
        score = np.zeros((Q, k), np.float32)
        searched = q.area > scaled_area(min_area, self.size)
        M = max(4 * k, 64) if candidates is None else max(int(candidates), k)

        img_ok = None
        if allowed_images is not None or exclude_images is not None:
            n_img = len(self.index.layouts)
            img_ok = np.ones(n_img, bool) if allowed_images is None else np.zeros(n_img, bool)
            if allowed_images is not None:
                img_ok[np.asarray(list(allowed_images), dtype=np.int64)] = True
            if exclude_images is not None:
                img_ok[np.asarray(list(exclude_images), dtype=np.int64)] = False

        S = qwin = None
        if mode == "context" and searched.any():
            lay_q = layout_grid(label, self.C, self.context_grid, self._cells_ctx)
            S = self._agreement_sums(lay_q)
            qwin = self._windows(q.bbox, context_margin)

        qfull_cache: dict[int, np.ndarray] = {}
        for c in np.unique(q.cls[searched]):
            qi = np.flatnonzero(searched & (q.cls == c))
            Bt, Bsum = self._class_matrix(int(c))
            a = int(self.index.class_offsets[c])
            n = Bt.shape[1]
            if n == 0:
                searched[qi] = False
                continue
            Qs = self._pooled(q.sig[qi])
            cells = np.flatnonzero(Qs.any(0))                         # cells the queries touch
            inter = (torch.from_numpy(np.ascontiguousarray(Qs[:, cells])) @ Bt[cells]).T  # (n, q)
            qsum = torch.from_numpy(Qs.sum(1))
            est = inter / (Bsum[:, None] + qsum[None, :] - inter).clamp_min(1e-6)
            ctx_all = None
            if S is not None:
                ctx_all = torch.from_numpy(self._context(S, qwin[qi], a, n, context_margin))
                est = est + context_weight * ctx_all
            if img_ok is not None:
                bad = torch.from_numpy(~img_ok[self.index.image[a:a + n]])
                est[bad] = -np.inf
            m = min(M, n)
            top = torch.topk(est, m, dim=0).indices.T.numpy()          # (q, m) local rows
            for r, qq in enumerate(qi):
                cand = top[r]
                if img_ok is not None:
                    cand = cand[np.isfinite(est[cand, r].numpy())]
                if len(cand) == 0:
                    searched[qq] = False
                    continue
                qfull = qfull_cache.get(qq)
                if qfull is None:
                    qfull = qfull_cache[qq] = q.full_mask(qq)
                ex = self._exact_iou(qfull, int(q.area[qq]), a + cand)
                sc = ex.copy()
                cx = None
                if ctx_all is not None:
                    cx = ctx_all[cand, r].numpy()
                    sc = sc + context_weight * cx
                order = np.lexsort((cand, -sc))[:k]                    # best first, ties: lower id
                kk = len(order)
                ids[qq, :kk] = a + cand[order]
                iou[qq, :kk] = ex[order]
                score[qq, :kk] = sc[order]
                if cx is not None:
                    ctx[qq, :kk] = cx[order]
        return Retrieval(label=label, query=q, searched=searched, ids=ids, iou=iou, context_iou=ctx,
                         score=score, mode=mode, seconds=time.perf_counter() - t0)

    def _as_label(self, label) -> np.ndarray:
        if isinstance(label, torch.Tensor):
            label = label.cpu().numpy()
        label = np.asarray(label)
        if label.ndim != 2 or label.dtype.kind not in "ui":
            raise InputError(f"a query layout is an (H, W) integer map of class indices, got "
                             f"{label.dtype} {label.shape}")
        if label.size and (label.min() < 0 or label.max() > self.C):
            raise InputError(f"query layout has class indices {label.min()}..{label.max()}, the bank's "
                             f"label space has 0..{self.C} (void = {self.C})")
        if label.shape != self.size:
            from ..data import resize_label
            label = resize_label(label, self.size)
        return label.astype(np.int64)

    def _agreement_sums(self, lay_q: np.ndarray) -> np.ndarray:
        """(n_img, (ch+1)(cw+1)) 2-D prefix sums of [bank layout == query layout] per image."""
        lay = self.index.layouts
        n, ch, cw = lay.shape
        dt = np.int16 if ch * cw < 32768 else np.int32
        S = np.zeros((n, ch + 1, cw + 1), dt)
        np.equal(lay, lay_q[None], out=S[:, 1:, 1:], casting="unsafe")
        # running sums as a few dozen whole-array adds: several times faster than np.cumsum
        # along an axis
        for i in range(2, cw + 1):
            S[:, :, i] += S[:, :, i - 1]
        for i in range(2, ch + 1):
            S[:, i] += S[:, i - 1]
        return S.reshape(n, -1)

    def _context(self, S: np.ndarray, qwin: np.ndarray, a: int, n: int, margin: float) -> np.ndarray:
        """(n, q) context IoU of bank rows a..a+n against the query windows."""
        bwin = self._windows(self.index.bbox[a:a + n], margin)
        cw1 = self.context_grid[1] + 1
        y0 = np.maximum(bwin[:, None, 0], qwin[None, :, 0])
        x0 = np.maximum(bwin[:, None, 1], qwin[None, :, 1])
        y1 = np.maximum(np.minimum(bwin[:, None, 2], qwin[None, :, 2]), y0)
        x1 = np.maximum(np.minimum(bwin[:, None, 3], qwin[None, :, 3]), x0)
        img = self.index.image[a:a + n][:, None]
        agree = (S[img, y1 * cw1 + x1].astype(np.int32) - S[img, y0 * cw1 + x1]
                 - S[img, y1 * cw1 + x0] + S[img, y0 * cw1 + x0])
        inter = (y1 - y0) * (x1 - x0)
        area_b = ((bwin[:, 2] - bwin[:, 0]) * (bwin[:, 3] - bwin[:, 1]))[:, None]
        area_q = ((qwin[:, 2] - qwin[:, 0]) * (qwin[:, 3] - qwin[:, 1]))[None, :]
        return (agree / np.maximum(area_b + area_q - inter, 1)).astype(np.float32)

    def _exact_iou(self, qfull: np.ndarray, qarea: int, rows: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows), np.float64)
        bbox, area, mask_fn = self.index.bbox, self.index.area, self.index.mask_fn
        for j, i in enumerate(rows):
            y0, x0, y1, x1 = bbox[i]
            inter = np.count_nonzero(qfull[y0:y1, x0:x1] & mask_fn(int(i)))
            out[j] = inter / (qarea + int(area[i]) - inter)
        return out.astype(np.float32)


def retrieve(bank: Bank, label, k: int = 10, mode: str = "iou", **kwargs) -> Retrieval:
    """One-off `Retriever(bank).search(label, ...)` (create a Retriever to search many layouts)."""
    return Retriever(bank).search(label, k=k, mode=mode, **kwargs)


def benchmark_retrieval(bank: Bank, layouts, n_segments: int = 100_000, k: int = 10,
                        modes=("iou", "context"), repeat: int = 1) -> dict:
    """Time retrieval per layout against the bank's index replicated to >= n_segments rows.

    layouts: (H, W) class-index maps (e.g. validation label maps). Returns a dict with the bank
    size, the cache warm-up time and, per mode, mean / max seconds per layout and the mean number
    of query segments searched."""
    index = _Index.from_bank(bank).replicate(n_segments)
    r = Retriever(index)
    r.thin = bank.thin
    t0 = time.perf_counter()
    r.warm()
    out = {"segments": len(index.cls), "images": len(index.layouts), "warm_seconds": time.perf_counter() - t0,
           "torch_threads": torch.get_num_threads()}
    layouts = [r._as_label(lab) for lab in layouts]
    for mode in modes:
        r.search(layouts[0], k=k, mode=mode)  # first-call overheads
        times, nq = [], []
        for _ in range(repeat):
            for lab in layouts:
                res = r.search(lab, k=k, mode=mode)
                times.append(res.seconds)
                nq.append(int(res.searched.sum()))
        out[mode] = {"mean_s": float(np.mean(times)), "max_s": float(np.max(times)),
                     "layouts": len(layouts), "mean_queries": float(np.mean(nq))}
    return out
