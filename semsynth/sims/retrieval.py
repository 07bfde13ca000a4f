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

How it is fast, and why it is exact: the top k are found best-first under upper bounds, so the
result is the exhaustive search's, with no approximation. Three levels of bounds, each >= the
next, the last >= the exact score (float64, the same operations as the scores, so rounding never
puts a bound below its score):

* blocks: each class's rows are sorted (`Retriever.blocks`: area in steps of sqrt 2, then the
  box centre) so that similar rows sit side by side, and cut into blocks of BLOCK rows (the bank
  ids are kept through a permutation). A block stores its union box, min / max area, per cell of
  the signature grid pooled 4x4 the most class pixels any of its rows can have there, and (per
  context margin) its union context window and min / max window area. Per query segment only the
  blocks are bounded for the whole class: the intersection I is at most the query's pixels in
  the union box (four lookups in the query's integral image) and at most the sum over coarse
  cells of min(query pixels, block max); IoU = I / (A_q + A_b - I) over A_b in [min, max] is at
  most I' / (A_q + max(min - I', 0)) with I' = min(I, max) (`_range_ratio`); the context IoU
  bound (below) the same way with the window areas.
* rows: blocks are expanded by decreasing bound while they can still enter the top k; their rows
  get the same IoU bound with their own box, area and coarse cells, plus the row-band context
  bound (below; `_row_bounds`), then, when taken for scoring, the full 16x32 signature bound
  (`_sig_bound`).
* context: the agreeing cells lie in W_q ∩ W_b, so context_iou <= |W_q ∩ W_b| / |W_q ∪ W_b|
  (blocks). Per layout each bank image's [layout == query layout] map is packed into one 64-bit
  word per grid row, with its agreeing cells per grid row summed into prefix sums (filled per
  chunk of images as they are needed). A row's bound: the agreeing cells are at most the
  intersection's cells and at most the image's agreeing cells in the intersection's grid rows
  over the whole width (two lookups; `_context_bound`). The exact term, a popcount per grid row
  of the bits masked to the intersection's columns, is computed for the rows taken for
  scoring, before their signature bound; only those whose IoU bound plus it can still enter
  are scored for mask IoU.

Mask IoU is scored exactly in batches of decreasing bound (the first `candidates`, then 4x more
each round) from the bank's horizontal mask runs (bank.py: two lookups per run in the query's
row-wise prefix sums, vectorised over the batch). "Can still enter" is lexicographic on (score,
-id), the order of the result: a row or block whose bound is below the k-th best exact score so
far, or equal to it without an id below the k-th entry's, is dropped; the search ends when
nothing is left. Ties are broken by the lower bank id, as in an exhaustive sort.

Fixed relative to the original: the top-k list is a real top-k (the original replaced the slot of
the minimum computed once per training image, so the last segment of an image won, B.8.2), and
results are returned in memory with one naming (B.8.3).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError
from .bank import Bank, _ragged
from .segments import REFERENCE_MIN_AREA, SegmentSet, extract_segments, grid_index, layout_grid, scaled_area

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
    """What retrieval reads from a bank, as in-memory arrays (bank rows, or replicated rows).

    cls, area, image: (n,) int32; bbox: (n, 4) int32 (y0, x0, y1, x1); layouts: (n_img, ch, cw)
    context grids; class_offsets: (C + 1,) rows of each class; run_off / run_len / runs: the mask
    runs (bank.py) of the *source* rows; src: (n,) row -> source row (None: the identity)."""

    def __init__(self, cls, bbox, area, image, layouts, class_offsets, size, C, run_off, run_len, runs, sig, src=None):
        self.cls, self.bbox, self.area, self.image = cls, bbox, area, image
        self.layouts, self.class_offsets, self.size, self.C = layouts, class_offsets, size, C
        self.run_off, self.run_len, self.src = run_off, run_len, src
        runs = np.asarray(runs)  # a plain view of a memory map: np.memmap indexing is slow
        self.runs = runs
        # the runs as little-endian 16-bit words (p low, p high, n): aligned gathers, several
        # times faster than gathering the unaligned 32-bit field p of the 6-byte records
        self.run_words = runs.view("<u2")
        self.sig = np.asarray(sig)  # (n_source, gh, gw) coverage signatures, memory-mapped

    @classmethod
    def from_bank(cls, bank: Bank) -> _Index:
        t = bank.table
        i32 = lambda f: np.asarray(t[f]).astype(np.int32)  # noqa: E731
        return cls(
            i32("cls"),
            bank.bbox.astype(np.int32),
            i32("area"),
            i32("image"),
            bank.layout_grids(),
            np.asarray(bank.class_offsets),
            bank.size,
            bank.space.num_classes,
            np.asarray(t["run_off"]),
            i32("run_len"),
            bank.runs(),
            bank.signatures(),
        )

    def __len__(self) -> int:
        return len(self.cls)

    def resident_bytes(self) -> int:
        """Bytes of the per-row arrays held in memory (the runs are memory-mapped, not counted)."""
        arrs = [self.cls, self.bbox, self.area, self.image, self.run_off, self.run_len, self.src]
        return sum(a.nbytes for a in arrs if isinstance(a, np.ndarray) and not isinstance(a, np.memmap))

    def replicate(self, n_min: int) -> _Index:
        """The same rows repeated (each copy with its own image ids) until >= n_min rows, for
        benchmarks. Masks (runs) are read from the original rows."""
        n = len(self.cls)
        reps = max(1, -(-n_min // max(n, 1)))
        n_img = len(self.layouts)
        rows = np.argsort(self.cls, kind="stable")  # class order
        src = np.tile(rows, reps)
        rep = np.repeat(np.arange(reps), len(rows))
        order = np.lexsort((rep, self.cls[src]))
        src, rep = src[order], rep[order]
        counts = np.bincount(self.cls[src], minlength=self.C)[: self.C]
        offsets = np.concatenate([[0], np.cumsum(counts)])
        base = src if self.src is None else self.src[src]
        return _Index(
            self.cls[src],
            self.bbox[src],
            self.area[src],
            (self.image[src] + rep * n_img).astype(np.int32),
            np.tile(np.asarray(self.layouts), (reps, 1, 1)),
            offsets,
            self.size,
            self.C,
            self.run_off,
            self.run_len,
            self.runs,
            self.sig,
            base.astype(np.int32),
        )


class Retriever:
    """Searches one bank (exactly: see the module docstring). The block order and per-row /
    per-block tables (`blocks`, `windows`) are built on first use and cached, so create one
    Retriever per bank and reuse it across layouts."""

    def __init__(self, bank: Bank | _Index):
        self.bank = bank if isinstance(bank, Bank) else None
        self.index = _Index.from_bank(bank) if isinstance(bank, Bank) else bank
        self.size = tuple(self.index.size)
        self.C = self.index.C
        self.thin = tuple(bank.thin) if isinstance(bank, Bank) else ()
        self.context_grid = tuple(np.asarray(self.index.layouts).shape[1:])
        self._cells_ctx = grid_index(self.size, self.context_grid)
        self.sig_grid = tuple(self.index.sig.shape[1:])
        self._cells_sig = grid_index(self.size, self.sig_grid)
        self._sig = self.index.sig.reshape(len(self.index.sig), -1)
        # most pixels of its class a bank segment can have in a cell, given its coverage signature
        # there (sig = rint(count * 255 / cell area), segments.downsample_coverage)
        cell_area = np.bincount(self._cells_sig.ravel(), minlength=self._sig.shape[1])
        lut = np.floor((np.arange(256)[:, None] + 0.5) * cell_area[None] / 255.0 + 1e-6)
        self._sig_ub = np.minimum(lut, cell_area[None]).astype(np.int32)  # (256, cells)
        self._sig_ub_t = np.ascontiguousarray(self._sig_ub.T).ravel()  # [cell * 256 + value]
        gh, gw = self.sig_grid
        p = self.COARSE
        fine_to_coarse = ((np.arange(gh)[:, None] // p) * (-(-gw // p)) + np.arange(gw)[None] // p).ravel()
        self._coarse_of = fine_to_coarse
        self._cells_coarse = fine_to_coarse[self._cells_sig]
        self._coarse_area = np.bincount(self._cells_coarse.ravel())
        self._blk: dict | None = None
        self._win: dict[float, dict] = {}
        self._E = self._R = self._stamp = self._eq = self._rows = None
        self._fresh = (0, -1)  # (generation, chunks filled in it)
        self._gen = 0

    #: signature cells pooled p x p for the coarse bound computed for every row of a class
    COARSE = 4
    #: bank rows per block of the block bound (module docstring)
    BLOCK = 64

    # ---------------------------------------------------------------- caches
    def _coarse_table(self) -> np.ndarray:
        """(n_source, coarse cells) the most class pixels each bank segment can have in each cell
        of the signature grid pooled COARSE x COARSE (from the signatures, `_sig_ub`): a bound
        of the intersection computed for many rows at once, cheaply (few cells per query)."""
        nsrc = len(self._sig)
        dt = np.int16 if self._coarse_area.max() < 2**15 else np.int32
        out = np.empty((nsrc, len(self._coarse_area)), dt)
        cells = np.arange(self._sig.shape[1])
        for s in range(0, nsrc, 16384):
            ub = self._sig_ub[np.asarray(self._sig[s : s + 16384]), cells]
            acc = np.zeros((len(ub), out.shape[1]), np.int32)
            for c in range(out.shape[1]):
                acc[:, c] = ub[:, self._coarse_of == c].sum(1)
            out[s : s + 16384] = np.minimum(acc, self._coarse_area[None])
        return out

    def blocks(self) -> dict:
        """The rows of each class in block order and the blocks' summaries (module docstring).

        perm: (n,) sorted position -> bank row (ids stay the bank's); per sorted position:
        corners (4, n) int32 flat offsets of the box corners (y0x0, y0x1, y1x0, y1x1) in an
        (H + 1, W + 1) integral image, area, image, coarse (n, cells) (`_coarse_table`); per block:
        start / end positions, class_offsets (C + 1,) blocks of each class, the union box's
        corners, min / max area, per-cell max coarse bound and the lowest bank id."""
        if self._blk is None:
            ix, B = self.index, self.BLOCK
            b = ix.bbox.astype(np.int64)
            area = ix.area.astype(np.int64)
            # similar rows side by side: area in steps of sqrt(2), then the box centre (32 px)
            level = np.floor(2 * np.log2(np.maximum(area, 1))).astype(np.int64)
            perm = np.lexsort(((b[:, 1] + b[:, 3]) // 64, (b[:, 0] + b[:, 2]) // 64, level, ix.cls))
            off = np.asarray(ix.class_offsets, np.int64)
            starts = [np.arange(off[c], off[c + 1], B) for c in range(self.C)]
            class_blocks = np.concatenate([[0], np.cumsum([len(s) for s in starts])])
            start = np.concatenate(starts).astype(np.int64) if len(perm) else np.zeros(0, np.int64)
            end = np.minimum(start + B, np.repeat(off[1 : self.C + 1], np.diff(class_blocks)))
            bs, ar = b[perm], area[perm]
            src = perm if ix.src is None else ix.src[perm]
            # rows of a replicated index get their own copy, as a real bank of that size would
            coarse = self._coarse_table()[src]
            red = lambda f, x: f.reduceat(x, start, axis=0) if len(start) else x[:0]  # noqa: E731
            ub = np.stack([red(np.minimum, bs[:, 0]), red(np.minimum, bs[:, 1])])
            ub = np.concatenate([ub, np.stack([red(np.maximum, bs[:, 2]), red(np.maximum, bs[:, 3])])])
            self._blk = {
                "perm": perm.astype(np.int64),
                "corners": self._corners(bs.T),
                "area": ar.astype(np.int32),
                "image": ix.image[perm],
                "coarse": coarse,
                "start": start,
                "end": end,
                "class_blocks": class_blocks,
                "b_corners": self._corners(ub),
                "b_amin": red(np.minimum, ar),
                "b_amax": red(np.maximum, ar),
                "b_coarse": red(np.maximum, coarse),
                "b_minid": red(np.minimum, perm),
            }
        return self._blk

    def _corners(self, b: np.ndarray) -> np.ndarray:
        """(4, n) int32 flat offsets of boxes (4, n) (y0, x0, y1, x1) in an (H + 1, W + 1) image."""
        W1 = self.size[1] + 1
        y0, x0, y1, x1 = (b[i].astype(np.int32) for i in range(4))
        return np.stack([y0 * W1 + x0, y0 * W1 + x1, y1 * W1 + x0, y1 * W1 + x1])

    def windows(self, margin: float) -> dict:
        """Context windows in context cells, in block order: win (4, n) int16, area (n,); and
        per block the union window b_win (4, nblocks) and min / max window area."""
        hit = self._win.get(float(margin))
        if hit is None:
            bk = self.blocks()
            w = self._windows(self.index.bbox[bk["perm"]], margin).T
            area = ((w[2] - w[0]) * (w[3] - w[1])).astype(np.int32)
            st = bk["start"]
            red = lambda f, x: f.reduceat(x, st, axis=-1) if len(st) else x[..., :0]  # noqa: E731
            bw = np.concatenate([red(np.minimum, w[:2]), red(np.maximum, w[2:])])
            hit = self._win[float(margin)] = {
                "win": np.ascontiguousarray(w.astype(np.int16)),
                "area": area,
                "b_win": bw.astype(np.int16),
                "b_amin": red(np.minimum, area),
                "b_amax": red(np.maximum, area),
            }
        return hit

    def warm(self, margin: float = 0.5) -> Retriever:
        """Build the per-row caches now (otherwise built on first use)."""
        self.blocks()
        self.windows(margin)
        return self

    def cache_bytes(self) -> int:
        """Bytes of the per-row and per-block caches built so far plus the per-image agreement
        cache (its full size: pages are touched as images are scored)."""
        arrs = list((self._blk or {}).values()) + [a for w in self._win.values() for a in w.values()]
        n = sum(a.nbytes for a in arrs)
        ch, cw = self.context_grid
        return n + len(self.index.layouts) * (ch * -(-cw // 64) * 8 + (ch + 1) * 2 + 8)

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
        return np.stack(
            [np.floor(y0 * ch / H), np.floor(x0 * cw / W), np.ceil(y1 * ch / H), np.ceil(x1 * cw / W)], 1
        ).astype(np.int64)

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

    def _search(
        self,
        label,
        k: int = 10,
        mode: str = "iou",
        min_area: float = REFERENCE_MIN_AREA,
        candidates: int | None = None,
        context_weight: float = 1.0,
        context_margin: float = 0.5,
        allowed_images=None,
        exclude_images=None,
    ) -> Retrieval:
        """Retrieve for every segment of `label` (class indices, void = C; any size: resized to
        the bank size with nearest neighbour). Returns a `Retrieval`, the same as an exhaustive
        search (every same-class bank segment scored exactly).

        min_area: pixels at 256x512 (scaled to the bank size); only larger segments are searched
        (the original's "area > 1000"). candidates: size of the first batch scored exactly
        (default max(4k, 64); a speed setting only, results do not depend on it).
        allowed_images / exclude_images: bank image ids to restrict the search to / leave out
        (e.g. the query's own image when building training canvases)."""
        t0 = time.perf_counter()
        if mode not in ("iou", "context"):
            raise InputError(f"mode must be 'iou' or 'context', got {mode!r}")
        if context_weight < 0:
            raise InputError(f"context_weight must be >= 0, got {context_weight}")
        label = self._as_label(label)
        q = extract_segments(label, self.C, self.thin, sig_grid=None)
        Q = len(q)
        ids = np.full((Q, k), -1, np.int64)
        iou = np.zeros((Q, k), np.float32)
        ctx = np.full((Q, k), np.nan if mode == "iou" else 0.0, np.float32)
        score = np.zeros((Q, k), np.float32)
        searched = q.area > scaled_area(min_area, self.size)
        M = max(4 * k, 64) if candidates is None else max(int(candidates), k, 1)
        ix = self.index

        img_ok = None
        if allowed_images is not None or exclude_images is not None:
            n_img = len(ix.layouts)
            img_ok = np.ones(n_img, bool) if allowed_images is None else np.zeros(n_img, bool)
            if allowed_images is not None:
                img_ok[np.asarray(list(allowed_images), dtype=np.int64)] = True
            if exclude_images is not None:
                img_ok[np.asarray(list(exclude_images), dtype=np.int64)] = False

        context = None
        if mode == "context" and searched.any():
            context = self._context(label, q, context_margin, context_weight)

        bk = self.blocks()
        for c in np.unique(q.cls[searched]):
            qi = np.flatnonzero(searched & (q.cls == c))
            ba, bb = int(bk["class_blocks"][c]), int(bk["class_blocks"][c + 1])
            if bb == ba:
                searched[qi] = False
                continue
            qds = self._query_tables(q, qi, img_ok)
            U = self._block_bounds(qds, ba, bb, context)
            for r, j in enumerate(qi):
                got = self._best_first(U[r], ba, k, M, qds[r], context)
                if got is None:
                    searched[j] = False
                    continue
                g, ex, cx, sc = got
                kk = len(g)
                ids[j, :kk], iou[j, :kk], score[j, :kk] = g, ex, sc
                if cx is not None:
                    ctx[j, :kk] = cx
        return Retrieval(
            label=label,
            query=q,
            searched=searched,
            ids=ids,
            iou=iou,
            context_iou=ctx,
            score=score,
            mode=mode,
            seconds=time.perf_counter() - t0,
        )

    def _query_tables(self, q: SegmentSet, qi: np.ndarray, img_ok) -> list[dict]:
        """Per query segment qi[r] of one class: row-wise prefix sums Pf (exact intersections
        from runs), flat (H, W + 1), the integral image S (box bounds), flat (H + 1, W + 1), and
        its pixels per coarse cell (t, qcc) and per signature cell (cells, qc), non-zero only."""
        H, W = self.size
        P = np.zeros((len(qi), H + 1, W + 1), np.int32)
        for r, j in enumerate(qi):
            y0, x0, y1, x1 = q.bbox[j]
            np.cumsum(q.masks[j], axis=1, dtype=np.int32, out=P[r, 1 + y0 : 1 + y1, 1 + x0 : 1 + x1])
            P[r, 1 + y0 : 1 + y1, 1 + x1 :] = P[r, 1 + y0 : 1 + y1, x1 : x1 + 1]
        S = np.cumsum(P, axis=1, dtype=np.int32).reshape(len(qi), -1)
        # row-wise prefix sums are <= W: 16 bits where they fit, half the cache footprint of the
        # random lookups of the exact IoU (differences within a row never wrap)
        Pf = P[:, 1:, :].reshape(len(qi), -1).astype(np.uint16 if W < 2**16 else np.int32)
        qds = []
        for r, j in enumerate(qi):
            y0, x0, y1, x1 = q.bbox[j]
            m = q.masks[j]
            qcc = np.bincount(self._cells_coarse[y0:y1, x0:x1][m], minlength=self._coarse_area.size)
            qc = np.bincount(self._cells_sig[y0:y1, x0:x1][m], minlength=self._sig.shape[1])
            t, cells = np.flatnonzero(qcc), np.flatnonzero(qc)
            qd = {"j": j, "S": S[r], "Pf": Pf[r], "area": int(q.area[j]), "t": t, "qcc": qcc[t].astype(np.int32)}
            qd.update(cells=cells, cells256=cells * 256, qc=qc[cells].astype(np.int32), img_ok=img_ok)
            qds.append(qd)
        return qds

    def _block_bounds(self, qds: list[dict], ba: int, bb: int, context: dict | None) -> np.ndarray:
        """(len(qds), bb - ba) upper bounds of the score of every row of blocks ba..bb-1 for
        the query segments qds (`_query_tables`, one class): the IoU bound of the union box,
        per-cell max coarse bound and area range (`_range_ratio`), plus in mode "context" the
        window IoU bound of the union window and window area range."""
        bk = self.blocks()
        box = self._box(np.stack([qd["S"] for qd in qds]), bk["b_corners"][:, ba:bb])
        for r, qd in enumerate(qds):
            cb = _row_sums(np.minimum(bk["b_coarse"][ba:bb, qd["t"]], qd["qcc"], dtype=np.float32))
            np.minimum(box[r], cb, out=box[r])
        Aq = np.array([qd["area"] for qd in qds], np.int64)[:, None]
        U = self._range_ratio(box, Aq, bk["b_amin"][ba:bb], bk["b_amax"][ba:bb])
        if context is not None:
            qw = context["qwin"][[qd["j"] for qd in qds]]
            inter = self._overlap(qw, context["b_win"][:, ba:bb])
            qa = ((qw[:, 2] - qw[:, 0]) * (qw[:, 3] - qw[:, 1]))[:, None]
            U += context["w"] * self._range_ratio(inter, qa, context["b_amin"][ba:bb], context["b_amax"][ba:bb])
        return U

    def _context(self, label: np.ndarray, q: SegmentSet, margin: float, weight: float) -> dict:
        """What mode "context" needs for one layout: its context grid, the query windows, the
        bank's windows (`windows`); a new generation of the agreement cache."""
        self._gen += 1
        return {
            "lay": layout_grid(label, self.C, self.context_grid, self._cells_ctx),
            "qwin": self._windows(q.bbox, margin).astype(np.int32),
            "w": float(weight),
            **self.windows(margin),
        }

    @staticmethod
    def _box(S: np.ndarray, cn: np.ndarray) -> np.ndarray:
        """Query pixels inside boxes (corner offsets cn (4, n)) from integral images S (q, .)."""
        return (np.take(S, cn[3], -1) - np.take(S, cn[1], -1)) - (np.take(S, cn[2], -1) - np.take(S, cn[0], -1))

    @staticmethod
    def _range_ratio(inter, qarea, amin, amax):
        """Upper bound of I / max(Aq + A - I, 1) (an IoU) over rows with I <= min(inter, A) and
        A in [amin, amax]: it grows with I, and in A up to A = I then falls, so the best is
        I' / (Aq + max(amin - I', 0)) with I' = min(inter, amax). Integer inputs: exact in
        float64, and rounding a larger ratio never gives a smaller float."""
        i = np.minimum(inter, amax)
        return i / np.maximum(qarea + np.maximum(amin - i, 0), 1)

    def _row_bounds(self, qd: dict, pos: np.ndarray, context: dict | None):
        """Upper bounds of the rows at sorted positions pos for query qd: (score bound (-inf
        where the image is not allowed), mask IoU bound, intersection bound), from the box
        lookups, the rows' areas and their coarse signature bounds."""
        bk = self.blocks()
        Ab = bk["area"][pos]
        iub = np.minimum(self._box(qd["S"], bk["corners"][:, pos]), Ab)
        cb = _row_sums(np.minimum(bk["coarse"][pos][:, qd["t"]], qd["qcc"][None], dtype=np.float32))
        np.minimum(iub, cb, out=iub, casting="unsafe")
        ub_iou = iub / (qd["area"] + Ab - iub)
        u = ub_iou
        if context is not None:
            u = ub_iou + context["w"] * self._context_bound(context, qd["j"], pos)
        if qd["img_ok"] is not None:
            u = np.where(qd["img_ok"][bk["image"][pos]], u, -np.inf)
        return u, ub_iou, iub

    def _best_first(self, ub: np.ndarray, ba: int, k: int, m: int, qd: dict, context: dict | None):
        """Exact top k of query qd["j"] among the rows of blocks ba + (0..len(ub)-1) with block
        bounds ub. Blocks are expanded by decreasing bound (m rows' worth first, then 4x more
        each round) while they can still enter; their rows get their own bounds
        (`_row_bounds`). Rows are taken by decreasing bound in batches (m first, then 4x more)
        and re-bounded with the full signatures (`_sig_bound`); in mode "context" the context
        term, cheap to compute exactly (`_context_iou`), first replaces its window bound, so only
        rows whose signature bound plus exact context can still enter are scored for mask IoU
        (the costly part): a few first (to raise the k-th best score quickly), then the rest of
        the batch that can still enter. "Can enter" is lexicographic on (score, -id), the order
        of the result: a bound equal to the k-th best score enters only with an id below the
        k-th entry's (a block: its lowest id). Returns (ids, iou, context_iou or None, score),
        best first, or None when no row is allowed."""
        bk = self.blocks()
        perm = bk["perm"]
        minid = bk["b_minid"][ba : ba + len(ub)]
        start, end = bk["start"][ba : ba + len(ub)], bk["end"][ba : ba + len(ub)]
        rem = np.argsort(-ub, kind="stable")  # blocks not expanded yet, best first
        nb = max(1, m // self.BLOCK)
        live = np.zeros(0, np.int64)  # sorted positions of rows not scored and not pruned
        lu = lui = liub = np.zeros(0)
        rows, ious, ctxs, scores = [], [], [], []
        kth = [-np.inf, -1]  # (score, id) of the k-th best so far
        head = max(k, 16)

        def can_enter(bound, g):
            return (bound > kth[0]) | ((bound == kth[0]) & (g < kth[1]))

        def score(g, cx):
            ex = self._exact_iou(qd["Pf"], qd["area"], g)
            sc = ex if cx is None else ex + context["w"] * cx
            rows.append(g), ious.append(ex), ctxs.append(cx), scores.append(sc)
            allg, allsc = np.concatenate(rows), np.concatenate(scores)
            if len(allsc) >= k:
                top = np.lexsort((allg, -allsc))[k - 1]
                kth[:] = allsc[top], allg[top]

        while True:
            rem = rem[can_enter(ub[rem], minid[rem])]
            if len(rem):
                take, rem = rem[:nb], rem[nb:]
                nb *= 4
                pos = _ragged(start[take], end[take] - start[take])
                u, ui, iu = self._row_bounds(qd, pos, context)
                keep = can_enter(u, perm[pos])
                live = np.concatenate([live, pos[keep]])
                lu, lui, liub = (np.concatenate([x, y[keep]]) for x, y in ((lu, u), (lui, ui), (liub, iu)))
            if not len(live):
                if not len(rem):
                    break
                continue
            if len(rem) and lu.max() < ub[rem[0]]:
                continue  # a block not expanded yet may hold better rows: expand before scoring
            if len(live) > m:
                part = np.argpartition(-lu, m - 1)
                sel, part = part[:m], part[m:]
            else:
                sel, part = slice(None), np.zeros(0, np.int64)
            pos, ui, iu = live[sel], lui[sel], liub[sel]
            live, lu, lui, liub = live[part], lu[part], lui[part], liub[part]
            m *= 4
            g, cx = perm[pos], None
            if context is not None:  # exact context first: cheaper than the signature bound
                cx = self._context_iou(context, qd["j"], pos)
                keep = can_enter(ui + context["w"] * cx, g)
                pos, g, cx, iu = pos[keep], g[keep], cx[keep], iu[keep]
            sb = self._sig_bound(qd, g, iu)
            if cx is not None:
                sb = sb + context["w"] * cx
            keep = can_enter(sb, g)
            g, sb = g[keep], sb[keep]
            cx = None if cx is None else cx[keep]
            o = np.argsort(-sb, kind="stable")
            g, sb = g[o], sb[o]
            cx = None if cx is None else cx[o]
            if len(g):
                score(g[:head], None if cx is None else cx[:head])
                rest = np.flatnonzero(can_enter(sb[head:], g[head:])) + head
                if len(rest):
                    score(g[rest], None if cx is None else cx[rest])
            keep = can_enter(lu, perm[live])
            live, lu, lui, liub = live[keep], lu[keep], lui[keep], liub[keep]
        if not rows:
            return None
        g, allsc = np.concatenate(rows), np.concatenate(scores)
        order = np.lexsort((g, -allsc))[:k]  # best first, ties: lower id
        cx = np.concatenate(ctxs)[order] if context is not None else None
        return g[order], np.concatenate(ious)[order], cx, allsc[order]

    def _sig_bound(self, qd: dict, rows: np.ndarray, iub: np.ndarray) -> np.ndarray:
        """Tighter upper bounds of the mask IoU of bank rows: per signature cell the
        intersection is at most min(query pixels there, the most the bank segment's coverage
        value allows), summed over the cells the query touches (and at most iub)."""
        ix = self.index
        base = rows if ix.src is None else ix.src[rows]
        cells = qd["cells"]
        sg = self._sig[base[:, None], cells[None, :]]
        ub = np.take(self._sig_ub_t, sg + qd["cells256"][None, :])  # _sig_ub[sg, cells], cell-major
        ib = np.minimum(_row_sums(np.minimum(ub, qd["qc"][None, :], dtype=np.float32)), iub)
        return ib / (qd["area"] + ix.area[rows] - ib)

    def _exact_iou(self, Pf: np.ndarray, qarea: int, rows: np.ndarray) -> np.ndarray:
        """(len(rows),) float64 exact mask IoU of the query (row-wise prefix sums Pf, flat
        (H, W + 1)) with bank rows, from the rows' horizontal runs."""
        ix = self.index
        base = rows if ix.src is None else ix.src[rows]
        ln = ix.run_len[base]
        at = _ragged(ix.run_off[base], ln)
        at *= 3  # word index of p's low half (run_words)
        p = ix.run_words[at + 1].astype(np.int64)
        p <<= 16
        p |= ix.run_words[at]
        at += 2
        cs = np.zeros(len(at) + 1, np.int64)
        np.cumsum(Pf[p + ix.run_words[at]] - Pf[p], out=cs[1:])  # each run's pixels, >= 0
        end = np.cumsum(ln)
        inter = cs[end] - cs[end - ln]  # per row: the sum of its runs' pixels
        return inter / (qarea + ix.area[rows] - inter)

    @staticmethod
    def _overlap(qw: np.ndarray, bw: np.ndarray):
        """Cells of the intersection of query windows (q, 4) and bank windows (4, n): (q, n)
        int arrays (y0, x0, y1, x1, area) with empty intersections of area 0."""
        h = np.minimum(bw[2], qw[:, 2:3]) - np.maximum(bw[0], qw[:, 0:1])
        w = np.minimum(bw[3], qw[:, 3:4]) - np.maximum(bw[1], qw[:, 1:2])
        return np.maximum(h, 0) * np.maximum(w, 0)

    #: images per chunk of the agreement cache (filled a chunk at a time: contiguous, no gather;
    #: a power of 2)
    AGREE_CHUNK = 1024

    def _agreement(self, lay_q: np.ndarray, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(E, R) for the bank images, filled for the chunks of the given images once per layout
        (search), then cached. E: (n_img, ch, words) uint64 bit rows of [bank layout == query
        layout] (bit x of word w of row y: cell (y, 64 w + x)); 8 bytes per 64 cells: the
        agreement of any rectangle is a popcount per row (`_context_iou`). R: (n_img, ch + 1)
        uint16, agreeing cells in grid rows < y (whole width): the row-band bound
        (`_context_bound`), two lookups per row."""
        n_img = len(self.index.layouts)
        ch, cw = self.context_grid
        nw, B = -(-cw // 64), self.AGREE_CHUNK
        if self._E is None or len(self._E) != n_img:
            self._E = np.zeros((n_img, ch, nw), np.uint64)  # pages touched on use
            self._R = np.zeros((n_img, ch + 1), np.uint16 if ch * cw < 2**16 else np.int32)
            self._stamp = np.zeros(-(-n_img // B), np.int64)
            self._eq = np.zeros((B, ch, nw * 64), bool)  # columns >= cw stay False
            self._buf = np.empty((B, ch, nw * 8), np.uint64)
            self._tri = np.triu(np.ones((ch, ch + 1), np.float32), 1)  # row counts -> prefix sums
        if self._fresh == (self._gen, len(self._stamp)):
            return self._E, self._R  # every chunk filled for this layout
        wanted = np.zeros(len(self._stamp), bool)
        wanted[images >> (B.bit_length() - 1)] = True  # chunk ids (B a power of 2); a scatter, not np.unique
        need = np.flatnonzero(wanted & (self._stamp != self._gen))
        lay = self.index.layouts
        for c in need:
            s, e = c * B, min(c * B + B, n_img)
            eq, x = self._eq[: e - s], self._buf[: e - s]
            np.equal(lay[s:e], lay_q[None], out=eq[:, :, :cw])
            # 8 bools (bytes 0/1) -> one byte, bit j = byte j: the multiply moves byte j's bit
            # to bit 56 + j without carries
            np.multiply(eq.view("<u8"), np.uint64(0x0102040810204080), out=x)
            np.right_shift(x, np.uint64(56), out=x)
            np.copyto(self._E[s:e].view(np.uint8), x, casting="unsafe")
            rows = (
                np.bitwise_count(self._E[s:e]).sum(2, dtype=np.int32)
                if nw > 1
                else np.bitwise_count(self._E[s:e, :, 0])
            )
            # exact in float32 (counts < 2**24); a matrix product is faster than cumsum here
            np.copyto(self._R[s:e], rows.astype(np.float32) @ self._tri, casting="unsafe")
        self._stamp[need] = self._gen
        if len(need):
            self._fresh = (self._gen, int((self._stamp == self._gen).sum()))
        return self._E, self._R

    #: LOW[i]: the i lowest bits set (i = 0..64)
    _LOW = np.array([(1 << i) - 1 for i in range(65)], dtype=np.uint64)

    @staticmethod
    def _meet(context: dict, j: int, pos: np.ndarray):
        """Query segment j's context window intersected with those of the rows at sorted
        positions pos: (y0, x0, y1, x1) (empty ones: y1 = y0 or x1 = x0) and the union's cells."""
        bw, qw = context["win"][:, pos].astype(np.int32), context["qwin"][j]
        y0 = np.maximum(bw[0], qw[0])
        x0 = np.maximum(bw[1], qw[1])
        y1 = np.maximum(np.minimum(bw[2], qw[2]), y0)
        x1 = np.maximum(np.minimum(bw[3], qw[3]), x0)
        qarea = (qw[2] - qw[0]) * (qw[3] - qw[1])
        union = np.maximum(context["area"][pos] + qarea - (y1 - y0) * (x1 - x0), 1)
        return y0, x0, y1, x1, union

    def _context_bound(self, context: dict, j: int, pos: np.ndarray) -> np.ndarray:
        """Upper bound of the context IoU of query segment j with the rows at sorted positions
        pos, tighter than the window IoU: the agreeing cells of the windows' intersection are
        at most its cells and at most the image's agreeing cells in the intersection's grid
        rows over the whole width (two lookups in the row prefix sums of `_agreement`). Same
        denominator as `_context_iou`, so never below it in float64 either."""
        img = self.blocks()["image"][pos]
        _, R = self._agreement(context["lay"], img)
        y0, x0, y1, x1, union = self._meet(context, j, pos)
        band = R[img, y1].astype(np.int64) - R[img, y0]
        return np.minimum((y1 - y0) * (x1 - x0), band) / union

    def _context_iou(self, context: dict, j: int, pos: np.ndarray) -> np.ndarray:
        """(len(pos),) float64 context IoU of query segment j with the rows at sorted positions
        pos: the agreeing cells of the windows' intersection counted row by row (popcount of
        the image's agreement bits masked to the intersection's columns)."""
        img = self.blocks()["image"][pos]
        E, _ = self._agreement(context["lay"], img)
        y0, x0, y1, x1, union = self._meet(context, j, pos)
        base = 64 * np.arange(E.shape[2])
        lo = np.clip(x0[:, None] - base, 0, 64)
        hi = np.clip(x1[:, None] - base, 0, 64)
        cols = self._LOW[hi] & ~self._LOW[lo]  # (n, words)
        lo_y, hi_y = (int(y0.min()), int(y1.max())) if len(pos) else (0, 0)
        ch = E.shape[1]
        if self._rows is None:  # _rows[y0 * (ch + 1) + y1, y] = y0 <= y < y1: a lookup, not two compares
            y = np.arange(ch)
            r0, r1 = np.divmod(np.arange((ch + 1) ** 2), ch + 1)
            self._rows = ((y >= r0[:, None]) & (y < r1[:, None])).astype(np.uint8)
        in_rows = np.take(self._rows, y0 * (ch + 1) + y1, axis=0)[:, lo_y:hi_y]  # (n, rows)
        if E.shape[2] == 1:  # the usual 64-cell-wide grid: one word per row, no word sums
            G = np.take(E[:, :, 0], img, axis=0)[:, lo_y:hi_y]  # whole rows: the faster gather
            G &= cols
            cnt = np.bitwise_count(G)
        else:
            cnt = np.bitwise_count(E[img, lo_y:hi_y] & cols[:, None, :]).sum(2, dtype=np.int16)
        cnt *= in_rows
        return _row_sums(cnt) / union

    def _as_label(self, label) -> np.ndarray:
        if isinstance(label, torch.Tensor):
            label = label.cpu().numpy()
        label = np.asarray(label)
        if label.ndim != 2 or label.dtype.kind not in "ui":
            raise InputError(
                f"a query layout is an (H, W) integer map of class indices, got {label.dtype} {label.shape}"
            )
        if label.size and (label.min() < 0 or label.max() > self.C):
            raise InputError(
                f"query layout has class indices {label.min()}..{label.max()}, the bank's "
                f"label space has 0..{self.C} (void = {self.C})"
            )
        if label.shape != self.size:
            from ..data import resize_label

            label = resize_label(label, self.size)
        return label.astype(np.int64)


def _row_sums(x: np.ndarray) -> np.ndarray:
    """(n,) int64 row sums of an (n, m) array of non-negative integers whose sums are below
    2**24, as a float32 matrix product: exact, and several times faster than an integer sum
    over a short last axis."""
    return (x.astype(np.float32, copy=False) @ np.ones(x.shape[1], np.float32)).astype(np.int64)


def retrieve(bank: Bank, label, k: int = 10, mode: str = "iou", **kwargs) -> Retrieval:
    """One-off `Retriever(bank).search(label, ...)` (create a Retriever to search many layouts)."""
    return Retriever(bank).search(label, k=k, mode=mode, **kwargs)


def benchmark_retrieval(
    bank: Bank, layouts, n_segments: int = 100_000, k: int = 10, modes=("iou", "context"), repeat: int = 1
) -> dict:
    """Time retrieval per layout against the bank's index replicated to >= n_segments rows.

    layouts: (H, W) class-index maps (e.g. validation label maps). Returns a dict with the index
    size and memory (resident per-row arrays and caches; the mask runs, memory-mapped from the
    bank, per source segment), the cache warm-up time and, per mode, mean / median / max seconds
    per layout and the mean number of query segments searched."""
    t0 = time.perf_counter()
    index = _Index.from_bank(bank).replicate(n_segments)
    r = Retriever(index)
    r.thin = bank.thin
    r.warm()
    n = len(index)
    resident = index.resident_bytes() + r.cache_bytes() + np.asarray(index.layouts).nbytes
    runs_per_seg = bank.runs().nbytes / max(len(bank), 1)
    out = {
        "segments": n,
        "images": len(index.layouts),
        "warm_seconds": time.perf_counter() - t0,
        "index_mb": resident / 1e6,
        "index_bytes_per_segment": resident / n,
        "runs_bytes_per_segment": runs_per_seg,
        "torch_threads": torch.get_num_threads(),
    }
    layouts = [r._as_label(lab) for lab in layouts]
    for mode in modes:
        r.search(layouts[0], k=k, mode=mode)  # first-call overheads
        times, nq = [], []
        for _ in range(repeat):
            for lab in layouts:
                res = r.search(lab, k=k, mode=mode)
                times.append(res.seconds)
                nq.append(int(res.searched.sum()))
        out[mode] = {
            "mean_s": float(np.mean(times)),
            "median_s": float(np.median(times)),
            "max_s": float(np.max(times)),
            "layouts": len(layouts),
            "mean_queries": float(np.mean(nq)),
        }
    return out
