"""SIMS memory bank and retrieval: building from the Cityscapes sample (the real one in ../shared,
or its synthetic stand-in), resume / incremental add, self-retrieval with IoU 1, exactness of the
fast search, context-aware retrieval."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from semsynth.labels import get_space
from semsynth.sims.bank import Bank, BankError, build_bank
from semsynth.sims.retrieval import Retriever, benchmark_retrieval
from semsynth.sims.segments import class_roles, downsample_coverage, extract_segments, grid_index

SPACE = get_space("cityscapes")
ROAD, SIDEWALK, BUILDING, POLE, SKY, CAR = 0, 1, 2, 5, 10, 13


# ----------------------------------------------------------------------------- segments


def test_thin_structures_are_merged_and_pure_pole_components_dropped():
    lab = np.full((40, 60), SKY, np.int64)
    lab[10:30, 5:55] = BUILDING
    lab[5:40, 28:30] = POLE  # a pole cutting the building in two
    lab[0:3, 0:3] = POLE  # a pole fragment touching only sky
    segs = extract_segments(lab, SPACE.num_classes, class_roles(SPACE).thin, sig_grid=(8, 12))
    b = np.flatnonzero(segs.cls == BUILDING)
    assert len(b) == 1, "the pole must not split the building"
    i = b[0]
    assert segs.area[i] == (lab == BUILDING).sum()
    full, pole = segs.full_mask(i), segs.full_mask(i, "pole")
    assert (full == (lab == BUILDING)).all()
    assert pole[10:30, 28:30].all() and not pole[lab == SKY].any()  # pole pixels merged, in bbox
    # the pole itself is one segment of class pole; the fragment is another pole segment
    assert (segs.cls == POLE).sum() == 2
    # sky: split by the long pole? no - the pole is merged into sky too; the tiny corner pole
    # component is dropped for sky (more pole than sky pixels)
    assert (segs.cls == SKY).sum() == 1
    # signatures: coverage in [0, 255], full cells = 255
    assert segs.sig.shape == (len(segs), 8, 12) and segs.sig.max() == 255


def test_extract_segments_order_and_8_connectivity():
    lab = np.full((10, 10), 19, np.int64)  # void
    lab[0, 0] = lab[1, 1] = CAR  # diagonal neighbours: one component (8-connected)
    lab[5:7, 5:7] = CAR
    lab[8:10, 0:2] = ROAD
    segs = extract_segments(lab, 19, (), sig_grid=None)
    assert segs.cls.tolist() == [ROAD, CAR, CAR]
    assert segs.area.tolist() == [4, 2, 4]
    assert segs.bbox[1].tolist() == [0, 0, 2, 2]


def _whole_frame_segments(lab, C, thin):
    """The module docstring's steps, each class labelled over the whole frame (the reference
    for extract_segments, which labels each class inside its region only): (cls, bbox, area,
    mask, pole mask) per segment, in order."""
    from scipy import ndimage

    out, thin_px = [], np.isin(lab, thin)
    for c in range(C):
        cm = lab == c
        merge = c not in thin and thin_px.any()
        comp, n = ndimage.label(cm | thin_px if merge else cm, structure=np.ones((3, 3), bool))
        for j in range(1, n + 1):
            a, t = (cm & (comp == j)).sum(), (thin_px & (comp == j)).sum()
            if a == 0 or (merge and t >= a):
                continue
            ys, xs = np.nonzero(cm & (comp == j))
            y0, x0, y1, x1 = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
            out.append((c, (y0, x0, y1, x1), a, (cm & (comp == j))[y0:y1, x0:x1], (comp == j)[y0:y1, x0:x1]))
    return out


def test_segments_labelled_per_class_region_equal_whole_frame_labelling():
    """A pole leaving the building's box joins its two halves over the top; random blobs with
    thin strokes; every field and the order as when each class is labelled over the frame."""
    lab = np.full((30, 40), SKY, np.int64)
    lab[10:30, 5:15] = lab[10:30, 25:35] = BUILDING
    lab[2:10, 14] = lab[2:10, 25] = lab[2, 14:26] = POLE  # outside the building's box but row 10
    rng = np.random.default_rng(0)
    layouts = [lab]
    for _ in range(40):
        blobs = np.kron(rng.integers(0, 20, (5, 8)), np.ones((6, 5), np.int64))
        layouts.append(np.where(rng.random(blobs.shape) < 0.2, rng.choice([5, 6, 7, 19]), blobs))
    thin = class_roles(SPACE).thin
    for lab in layouts:
        segs = extract_segments(lab, 19, thin, sig_grid=(6, 8))
        ref = _whole_frame_segments(lab, 19, thin)
        assert len(segs) == len(ref)
        for i, (c, box, a, m, pm) in enumerate(ref):
            assert (segs.cls[i], tuple(segs.bbox[i]), segs.area[i]) == (c, box, a)
            assert (segs.masks[i] == m).all() and (segs.pole_masks[i] == pm).all()
            full = np.zeros(lab.shape, np.int64)
            full[box[0] : box[2], box[1] : box[3]] = m
            assert (segs.sig[i] == downsample_coverage(full, 1, grid_index(lab.shape, (6, 8)), (6, 8))[0]).all()
    assert (extract_segments(layouts[0], 19, thin, sig_grid=None).cls == BUILDING).sum() == 1


# ----------------------------------------------------------------------------- bank on the Cityscapes sample


@pytest.fixture(scope="module")
def cs_data(cityscapes_sample):
    from semsynth.data import open_dataset

    ds = open_dataset(cityscapes_sample, space=SPACE, size=(512, 1024), cache=True)
    for i in range(len(ds)):
        ds.arrays(i)  # decode once for every build below
    return ds


@pytest.fixture(scope="module")
def bank(cs_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("bank") / "cs8"
    return build_bank(cs_data, out, size=(256, 512), rgb_scale=2, shard_images=3, progress=False)


def test_bank_contents_match_the_images(bank, cs_data):
    assert bank.num_images == 8 and len(bank.meta["shards"]) == 3  # 3 + 3 + 2 images
    assert bank.num_stored_segments > len(bank) > 100
    cls = bank.cls
    assert (np.diff(cls) >= 0).all(), "index rows are sorted by class"
    for c in range(19):
        sl = bank.class_slice(c)
        assert (cls[sl] == c).all()
    # every stored segment of image 5 decodes to the segments of its layout, RGB from the photo
    lab, rgb = cs_data.arrays(5)
    from semsynth.data import resize_label

    small = resize_label(np.asarray(lab), (256, 512)).astype(np.int64)
    assert (bank.source_label(5) == small).all()
    ref = extract_segments(small, 19, bank.thin, sig_grid=None)
    stored = bank.stored_segments(5)
    assert len(stored) == len(ref)
    assert (stored["cls"] == ref.cls).all() and (stored["area"] == ref.area).all()
    rows = np.flatnonzero(bank.image == 5)
    assert len(rows) == (ref.area >= bank.index_min_area).sum()
    for i in rows[:: max(1, len(rows) // 12)]:
        s = bank.segment(i)
        y0, x0, y1, x1 = s.bbox
        assert s.mask.sum() == s.area and (small[y0:y1, x0:x1][s.mask] == s.cls).all()
        assert s.pole_mask[s.mask].all()
        up = np.asarray(rgb)[2 * y0 : 2 * y1, 2 * x0 : 2 * x1]
        assert (s.rgb[s.rgb_mask] == up[s.rgb_mask]).all() and (s.rgb[~s.rgb_mask] == 0).all()


def test_bank_reopens_fast_and_rebuilds_a_stale_index(bank):
    import time

    t = time.perf_counter()
    b2 = Bank.open(bank.path)
    assert time.perf_counter() - t < 1.0
    assert len(b2) == len(bank)
    # a damaged/stale index (e.g. interrupted after a shard was committed) is rebuilt on open
    (bank.path / "index" / "index.json").unlink()
    b3 = Bank.open(bank.path)
    assert (np.asarray(b3.table) == np.asarray(bank.table)).all()
    assert (np.asarray(b3.signatures()) == np.asarray(bank.signatures())).all()


def test_interrupted_build_resumes_and_incremental_add_equals_full_build(bank, cs_data, tmp_path):
    class Interrupting:
        """Yields the first n samples as dicts, then simulates Ctrl-C."""

        def __init__(self, n):
            self.n = n

        def __iter__(self):
            for i in range(self.n):
                lab, rgb = cs_data.arrays(i)
                yield {"label": np.asarray(lab), "image": np.asarray(rgb), "name": cs_data.names[i]}
            raise KeyboardInterrupt

    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        build_bank(Interrupting(5), out, space=SPACE, size=(256, 512), shard_images=3, progress=False)
    meta = json.loads((out / "bank.json").read_text())
    assert [s["images"] for s in meta["shards"]] == [3], "only the complete shard is committed"
    assert Bank.open(out).num_images == 3
    # resume: the committed images are skipped, the rest added
    b = build_bank(cs_data, out, progress=False)
    assert b.image_names == bank.image_names
    assert (np.asarray(b.table)[list(SEG_FIELDS)] == np.asarray(bank.table)[list(SEG_FIELDS)]).all()
    assert (np.asarray(b.signatures()) == np.asarray(bank.signatures())).all()
    for i in (0, len(b) // 2, len(b) - 1):
        assert (b.segment(i).rgb == bank.segment(i).rgb).all()
    # adding the same data again changes nothing
    assert len(build_bank(cs_data, out, progress=False)) == len(bank)
    with pytest.raises(BankError, match="built at size"):
        build_bank(cs_data, out, size=(128, 256), progress=False)


SEG_FIELDS = ("cls", "image", "y0", "x0", "y1", "x1", "area")


def test_errors_name_the_files(tmp_path):
    with pytest.raises(BankError, match=str(tmp_path / "nope")):
        Bank.open(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "bank.json").write_text("{broken")
    with pytest.raises(BankError, match="bank.json"):
        Bank.open(tmp_path / "x")


# ----------------------------------------------------------------------------- retrieval


def _brute_force(r, mask_of, qi, segs, label, k, mode="iou", w=1.0, margin=0.5, exclude=()):
    """Top k of query segment qi by scoring every indexed segment of its class one by one
    (mask IoU from full masks, context IoU cell by cell): ids (ties: lower id) and scores."""
    ix = r.index
    c = segs.cls[qi]
    qm = segs.full_mask(qi)
    rows = np.arange(ix.class_offsets[c], ix.class_offsets[c + 1])
    rows = rows[~np.isin(ix.image[rows], list(exclude))]
    inter = np.array([(qm & mask_of(i)).sum() for i in rows], np.float64)
    iou = inter / (segs.area[qi] + ix.area[rows] - inter)
    sc = iou
    if mode == "context":
        from semsynth.sims.segments import layout_grid

        lq = layout_grid(label, r.C, r.context_grid)
        qw = r._windows(segs.bbox[qi : qi + 1], margin)[0]
        bw = r._windows(ix.bbox[rows], margin)
        ctx = np.zeros(len(rows))
        for n, i in enumerate(rows):
            y0, x0 = max(qw[0], bw[n, 0]), max(qw[1], bw[n, 1])
            y1, x1 = max(min(qw[2], bw[n, 2]), y0), max(min(qw[3], bw[n, 3]), x0)
            agree = (np.asarray(ix.layouts[ix.image[i]])[y0:y1, x0:x1] == lq[y0:y1, x0:x1]).sum()
            union = (
                (qw[2] - qw[0]) * (qw[3] - qw[1])
                + (bw[n, 2] - bw[n, 0]) * (bw[n, 3] - bw[n, 1])
                - (y1 - y0) * (x1 - x0)
            )
            ctx[n] = agree / max(union, 1)
        sc = iou + w * ctx
    order = np.lexsort((rows, -sc))[:k]
    return rows[order], sc[order]


def _check_exhaustive(r, mask_of, labels, k=5, **kw):
    checked = 0
    for lab in labels:
        for mode in ("iou", "context"):
            res = r.search(
                lab, k=k, mode=mode, exclude_images=kw.get("exclude", None) or None, context_weight=kw.get("w", 1.0)
            )
            for j in np.flatnonzero(res.searched):
                ids, sc = _brute_force(r, mask_of, j, res.query, r._as_label(lab), k, mode, **kw)
                assert res.ids[j, : len(ids)].tolist() == ids.tolist(), (mode, j)
                assert np.allclose(res.score[j, : len(ids)], sc, atol=1e-6)
                checked += 1
    return checked


def test_a_bank_segment_retrieves_itself_with_iou_1(bank):
    r = Retriever(bank)
    for img in (0, 6):
        lab = bank.source_label(img)
        res = r.search(lab, k=3)
        big = np.flatnonzero(res.searched)
        assert len(big) >= 5
        for j in big:
            top = res.ids[j, 0]
            assert res.iou[j, 0] == 1.0 and bank.image[top] == img
            assert (bank.full_mask(top) == res.query.full_mask(j)).all()
            assert (res.iou[j, 1:] <= 1).all() and (np.diff(res.score[j]) <= 1e-6).all()
        # context-aware: the segment itself has identical surroundings too
        ctx = r.search(lab, k=3, mode="context")
        assert (ctx.ids[big, 0] == res.ids[big, 0]).all()
        assert np.allclose(ctx.context_iou[big, 0], 1.0) and np.allclose(ctx.score[big, 0], 2.0)


def test_search_equals_exhaustive_search_both_modes(bank, cityscapes_sample):
    """The pruned best-first search returns exactly the exhaustive top k (ids and order), in
    both modes, on real validation layouts, also with an image left out."""
    from semsynth.data import open_dataset

    val = open_dataset(cityscapes_sample, split="val", space=SPACE, size=(256, 512), require_images=False, cache=False)
    labels = [np.asarray(val.arrays(i)[0]).astype(np.int64) for i in range(0, len(val), 4)]
    r = Retriever(bank)
    assert _check_exhaustive(r, bank.full_mask, labels) >= 20
    assert _check_exhaustive(r, bank.full_mask, labels[:1], exclude=(3,), w=0.5) >= 3
    # tiny blocks: many per class, expanded over several rounds
    small = Retriever(bank)
    small.BLOCK = 3
    assert _check_exhaustive(small, bank.full_mask, labels[:2], w=0.7) >= 5
    # the first batch size is a speed setting only
    lab = labels[0]
    a, b = r.search(lab, k=5), r.search(lab, k=5, candidates=5)
    assert (a.ids == b.ids).all() and (a.score == b.score).all()
    # small segments (area <= 1000 at 256x512) and classes the bank lacks are not searched
    res = r.search(lab)
    empty = np.diff(bank.class_offsets) == 0
    skipped = ~res.searched
    assert ((res.query.area[skipped] <= 1000) | empty[res.query.cls[skipped]]).all()


def test_search_on_a_replicated_index_breaks_ties_like_an_exhaustive_sort(bank, cityscapes_sample):
    """Replicas score exactly alike: the top k must be the lowest ids among equals."""
    from semsynth.sims.retrieval import _Index

    ix = _Index.from_bank(bank).replicate(3 * len(bank))
    r = Retriever(ix)
    r.thin = bank.thin
    r.BLOCK = 4  # copies of a row share blocks; ties cross block borders
    labels = [bank.source_label(1)]
    from semsynth.data import open_dataset

    val = open_dataset(cityscapes_sample, split="val", space=SPACE, size=(256, 512), require_images=False, cache=False)
    labels.append(np.asarray(val.arrays(2)[0]).astype(np.int64))
    assert _check_exhaustive(r, lambda i: bank.full_mask(int(ix.src[i])), labels, k=4) >= 10


def _bound_failures(r, labels, w=0.7):
    """Where the chain that makes the pruned search exact breaks, on the given layouts in both
    modes: block bound >= row bound >= signature bound >= exact IoU; row bound >= IoU bound +
    w * context bound; context bound >= exact context IoU. Returns (rows checked that overlap
    their query, {bound: rows where it is below what it bounds})."""
    bk = r.blocks()
    checked, fail = 0, dict.fromkeys(("block", "row", "signature", "context"), 0)
    for lab in labels:
        lab = r._as_label(lab)
        q = extract_segments(lab, r.C, r.thin, sig_grid=None)
        for mode in ("iou", "context"):
            context = r._context(lab, q, 0.5, w) if mode == "context" else None
            for c in np.unique(q.cls[q.area > 1000]):
                qi = np.flatnonzero((q.cls == c) & (q.area > 1000))
                ba, bb = int(bk["class_blocks"][c]), int(bk["class_blocks"][c + 1])
                if ba == bb:
                    continue
                U = r._block_bounds(r._query_tables(q, qi, None), ba, bb, context)
                pos = np.arange(bk["start"][ba], bk["end"][bb - 1])
                block = np.repeat(np.arange(bb - ba), bk["end"][ba:bb] - bk["start"][ba:bb])
                g = bk["perm"][pos]
                assert (r.index.cls[g] == c).all()
                for n, qd in enumerate(r._query_tables(q, qi, None)):
                    u, ub_iou, iub = r._row_bounds(qd, pos, context)
                    ex = r._exact_iou(qd["Pf"], qd["area"], g)
                    sig = r._sig_bound(qd, g, iub)
                    fail["block"] += int((U[n][block] < u).sum())
                    fail["row"] += int((ub_iou < sig).sum())
                    fail["signature"] += int((sig < ex).sum())
                    if context is not None:
                        cx = r._context_iou(context, qd["j"], pos)
                        cb = r._context_bound(context, qd["j"], pos)
                        assert (cx <= 1).all()
                        fail["row"] += int((u < ub_iou + w * cb).sum())
                        fail["context"] += int((cb < cx).sum())
                    checked += int((ex > 0).sum())
    return checked, fail


def _val_layouts(cityscapes_sample, idx):
    from semsynth.data import open_dataset

    val = open_dataset(cityscapes_sample, split="val", space=SPACE, size=(256, 512), require_images=False, cache=False)
    return [np.asarray(val.arrays(i)[0]) for i in idx]


def test_block_and_row_bounds_are_never_below_the_exact_scores(bank, cityscapes_sample):
    """What makes the pruned search exact: on real layouts, in both modes, every block's bound
    is >= the bound of each row in it, every row's bound >= its signature bound, which is >=
    the row's exact score; the row-band context bound >= the exact context IoU."""
    r = Retriever(bank)
    r.BLOCK = 5
    bk = r.blocks()
    assert sorted(bk["perm"].tolist()) == list(range(len(bank)))  # a permutation of the bank ids
    checked, fail = _bound_failures(r, _val_layouts(cityscapes_sample, (0, 3)))
    assert checked >= 50 and fail == dict.fromkeys(fail, 0), fail


class _BandOneRowShort(Retriever):
    """The row-band context bound deliberately broken: the intersection's last grid row left out."""

    def _context_bound(self, context, j, pos):
        img = self.blocks()["image"][pos]
        _, R = self._agreement(context["lay"], img)
        y0, x0, y1, x1, union = self._meet(context, j, pos)
        band = R[img, np.maximum(y1 - 1, y0)].astype(np.int64) - R[img, y0]
        return np.minimum((y1 - y0) * (x1 - x0), band) / union


class _BandZero(Retriever):
    """The context bound deliberately broken further: no context term at all."""

    def _context_bound(self, context, j, pos):
        return 0.0 * super()._context_bound(context, j, pos)

    def search(self, label, **kw):  # batches of one row: the bound decides (on this small bank)
        return super().search(label, candidates=1, **kw)


def test_a_broken_context_bound_is_caught(bank, cityscapes_sample):
    """The checks have teeth: a context bound one grid row short falls below the exact
    context IoU on real layouts (the bound check above fails), and a search built on a zero
    one is no longer the exhaustive search (the equality tests fail)."""
    broken = _BandOneRowShort(bank)
    broken.BLOCK = 5
    labels = _val_layouts(cityscapes_sample, (0, 3))
    _, fail = _bound_failures(broken, labels)
    assert fail["context"] > 0 and fail["block"] == fail["signature"] == 0
    with pytest.raises(AssertionError):
        _check_exhaustive(_BandZero(bank), bank.full_mask, [r.astype(np.int64) for r in labels], k=5)


def test_index_runs_reproduce_the_masks_and_old_indexes_are_rebuilt(bank):
    runs, t = bank.runs(), np.asarray(bank.table)
    W = bank.size[1]
    for i in range(0, len(bank), 7):
        m = np.zeros((bank.size[0], W + 1), bool)
        for p, n in runs[t["run_off"][i] : t["run_off"][i] + t["run_len"][i]].tolist():
            y, x = divmod(p, W + 1)
            assert not m[y, x : x + n].any()
            m[y, x : x + n] = True
        assert (m[:, :W] == bank.full_mask(i)).all()
    # an index written before the runs existed (no version) is rebuilt from the shards on open
    info = json.loads((bank.path / "index" / "index.json").read_text())
    del info["version"]
    (bank.path / "index" / "index.json").write_text(json.dumps(info))
    (bank.path / "index" / "runs.npy").unlink()
    b2 = Bank.open(bank.path)
    assert (np.asarray(b2.runs()) == np.asarray(runs)).all()


def test_parallel_build_writes_the_same_bank(tmp_path, cityscapes_sample):
    """1 and 2 worker processes give the bank the in-process build gives, file for file."""
    from semsynth.sims.bank import build_bank_from_paths

    outs = [
        build_bank_from_paths(
            [cityscapes_sample],
            tmp_path / f"w{w}",
            size=(256, 512),
            rgb_scale=2,
            shard_images=3,
            progress=False,
            workers=w,
        )
        for w in (0, 1, 2)
    ]
    assert [b.build_stats["workers"] for b in outs] == [0, 1, 2]
    assert all(b.build_stats["images"] == 8 for b in outs)
    ref = outs[0].path
    files = sorted(f.relative_to(ref) for f in ref.rglob("*") if f.is_file())
    assert len(files) > 20
    for b in outs[1:]:
        out = b.path
        assert files == sorted(f.relative_to(out) for f in out.rglob("*") if f.is_file())
        for f in files:
            if f.suffix == ".npz":  # zip entries carry a timestamp: compare the arrays
                with np.load(ref / f) as x, np.load(out / f) as y:
                    assert x.files == y.files and all((x[n] == y[n]).all() for n in x.files)
            else:
                assert (ref / f).read_bytes() == (out / f).read_bytes(), f


def test_benchmark_script_smoke(tmp_path, cityscapes_sample):
    """benchmarks/retrieval.py runs end to end at tiny sizes (CI runs it once; no timing judged)."""
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "retrieval.py"
    mod = runpy.run_path(str(script))
    res = mod["main"](
        ["--smoke", "--data", str(cityscapes_sample), "--cache", str(tmp_path), "--json", str(tmp_path / "r.json")]
    )
    assert res[0]["segments"] >= 2000 and res[0]["iou"]["layouts"] == 2
    assert res[0]["index_bytes_per_segment"] > 0 and (tmp_path / "r.json").is_file()


def test_retrieval_restricted_to_images_and_checks_input(bank):
    r = Retriever(bank)
    lab = bank.source_label(2)
    res = r.search(lab, k=4, exclude_images=[2])
    got = res.ids[res.searched]
    assert (got >= 0).any() and not (bank.image[got[got >= 0]] == 2).any()
    only = r.search(lab, k=4, allowed_images=[3])
    got = only.ids[only.searched]
    assert (bank.image[got[got >= 0]] == 3).all()
    # any size works (nearest resize to the bank size); bad class indices do not
    up = np.repeat(np.repeat(lab, 2, 0), 2, 1)
    assert (r.search(up, k=1).ids[:, 0] == r.search(lab, k=1).ids[:, 0]).all()
    with pytest.raises(ValueError, match="class indices"):
        r.search(np.full((256, 512), 40))


@pytest.mark.slow
def test_benchmark_retrieval_100k_segments(bank, cityscapes_sample):
    """Replicates the 8-image index to >= 100,000 segments; run with `pytest -m slow`."""
    from semsynth.data import open_dataset

    val = open_dataset(cityscapes_sample, split="val", space=SPACE, size=(256, 512), require_images=False, cache=False)
    lays = [val.arrays(i)[0] for i in range(len(val))]
    out = benchmark_retrieval(bank, lays, n_segments=100_000, k=10)
    print(json.dumps(out, indent=1))
    assert out["segments"] >= 100_000
    assert out["iou"]["mean_s"] < 1.0 and out["context"]["mean_s"] < 1.0


def test_cli_build_bank_reports_missing_data(tmp_path, capsys):
    from semsynth.cli import main

    rc = main(["sims", "build-bank", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "b")])
    assert rc == 2 and "missing" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "b", ignore_errors=True)
