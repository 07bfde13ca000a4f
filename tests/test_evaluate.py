"""Evaluation: metric definitions on hand-made inputs, the FID Inception's key layout, the
segmenter plug-in registry, pairing errors, and `evaluate` / `semsynth evaluate` end to end on a
tiny folder (a palette "segmenter" plug-in judges colour-coded images exactly)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semsynth.cli import main as cli
from semsynth.errors import CheckpointError
from semsynth.evaluate import (
    EvaluationError,
    available_segmenters,
    build_segmenter,
    confusion_matrix,
    evaluate,
    pair_files,
    register_segmenter,
    segmentation_scores,
    write_report,
)
from semsynth.labels import colorize, get_space, save_label
from semsynth.models.inception import (
    FIDInceptionV3,
    feature_statistics,
    frechet_distance,
    frechet_distance_features,
    kernel_inception_distance,
    load_fid_inception,
    polynomial_mmd,
)

CS = get_space("cityscapes")
DOC = Path(__file__).resolve().parents[1] / "docs" / "evaluate-report.md"


def assert_documented(rep: dict) -> None:
    """Every key of the report's fixed structure is named in docs/evaluate-report.md."""
    documented = set(re.findall(r"`([a-z_0-9]+)`", DOC.read_text()))
    some = lambda d: next(iter(d.values())) if d else {}  # noqa: E731  (one column's entry)
    levels = [rep, rep["protocol"], rep["inputs"], some(rep["segmentation"]), some(rep["segmentation"])["intervals"]]
    if rep["comparisons"]:
        levels += [rep["comparisons"][0], rep["comparisons"][0]["miou"]]
    for d in rep["distribution"]:
        levels += [d] + ([d["real_split_half"], some(d["models"])] if d["real_split_half"] else [])
    if rep["diversity"]:
        levels += [rep["diversity"], some(rep["diversity"]["models"])]
    missing = {k for level in levels for k in level if k not in documented}
    assert not missing, f"keys not documented in {DOC.name}: {sorted(missing)}"


# ----------------------------------------------------------------------------- segmentation metrics


def test_confusion_and_scores_by_hand():
    names = ("a", "b", "c")  # void = 3
    gt = torch.tensor([0, 0, 0, 1, 1, 3, 3, 2])
    pr = torch.tensor([0, 0, 1, 1, 3, 2, 0, 2])
    conf = confusion_matrix(pr, gt, 3)
    assert conf.shape == (4, 4) and conf.sum() == 8 and conf[0, 0] == 2 and conf[1, 3] == 1
    s = segmentation_scores(conf.numpy(), names)
    # labelled pixels: 6 (the two void-layout pixels are ignored); correct: 0,0,1,2 -> 4
    assert s["pixel_accuracy"] == pytest.approx(4 / 6)
    # a: tp 2, gt 3, pred 2 -> 2/3; b: tp 1, gt 2 (one predicted void), pred 2 -> 1/3; c: 1/1
    assert s["per_class_iou"] == pytest.approx({"a": 2 / 3, "b": 1 / 3, "c": 1.0})
    assert s["miou"] == pytest.approx((2 / 3 + 1 / 3 + 1) / 3)
    assert s["predicted_void_fraction"] == pytest.approx(1 / 6)


def test_absent_and_hallucinated_classes():
    names = ("a", "b", "c")
    gt = torch.tensor([0, 0, 0, 0])
    pr = torch.tensor([0, 0, 0, 1])  # b only predicted, c nowhere
    s = segmentation_scores(confusion_matrix(pr, gt, 3).numpy(), names)
    assert s["per_class_iou"]["c"] is None
    assert s["per_class_iou"]["b"] == 0.0
    assert s["miou"] == pytest.approx(0.75)  # classes in the layouts: a only
    assert s["miou_union"] == pytest.approx(0.375)  # a and the hallucinated b
    assert s["classes_present"] == 1


# ----------------------------------------------------------------------------- FID / KID


def test_frechet_distance_closed_forms():
    mu, cov = np.zeros(3), np.eye(3)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0, abs=1e-10)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1)
    # diagonal: sum of per-dimension terms
    a, b = np.array([1.0, 4.0]), np.array([9.0, 1.0])
    want = ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance([0, 0], np.diag(a), [0, 0], np.diag(b)) == pytest.approx(want)


def test_frechet_distance_singular_and_methods_agree():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, 32)), rng.normal(0.5, 1.2, size=(12, 32))  # n < d: singular
    s1, s2 = feature_statistics(x), feature_statistics(y)
    d_sqrtm = frechet_distance(*s1, *s2)
    d_eigh = frechet_distance(*s1, *s2, method="eigh")
    assert np.isfinite(d_sqrtm) and d_sqrtm > 0
    assert d_sqrtm == pytest.approx(d_eigh, rel=1e-4)
    d_low, m = frechet_distance_features(x, y)
    assert m == "lowrank" and d_low == pytest.approx(d_sqrtm, rel=1e-6)
    x2, y2 = rng.normal(size=(80, 6)), rng.normal(0.3, 0.8, size=(50, 6))  # full rank
    assert frechet_distance_features(x2, y2)[1] == "sqrtm"
    assert frechet_distance_features(x2, y2, "lowrank")[0] == pytest.approx(
        frechet_distance_features(x2, y2)[0], rel=1e-9
    )
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(x[:1])


def test_kid_unbiased_and_deterministic():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(200, 16)), rng.normal(size=(200, 16))
    same = kernel_inception_distance(x, y, num_subsets=20, subset_size=100)
    shifted = kernel_inception_distance(x, y + 1.0, num_subsets=20, subset_size=100)
    assert abs(same["mean"]) < 3 * same["std"] + 1e-3  # unbiased: ~0 for one distribution
    assert shifted["mean"] > 10 * abs(same["mean"])
    assert kernel_inception_distance(x, y, 20, 100) == same
    # the estimator against a direct double loop
    a, b = x[:5], y[:6]
    k = lambda u, v: (u @ v / 16 + 1) ** 3  # noqa: E731
    xx = sum(k(a[i], a[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(b[i], b[j]) for i in range(6) for j in range(6) if i != j) / 30
    xy = sum(k(a[i], b[j]) for i in range(5) for j in range(6)) / 30
    assert polynomial_mmd(a, b) == pytest.approx(xx + yy - 2 * xy)


def test_fid_inception_matches_pt_inception_layout(tmp_path):
    """Facts of pt_inception-2015-12-05 (torchvision Inception3 names, 1008-way fc, no AuxLogits):
    94 conv+BN units -> 94*5 + 2 = 472 tensors; parameters = torchvision inception_v3's
    27,161,264 - AuxLogits 3,326,696 + 8 more fc classes (8*2048 + 8)."""
    net = FIDInceptionV3()
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(sd) == 472
    assert sum(p.numel() for p in net.parameters()) == 27_161_264 - 3_326_696 + 8 * 2048 + 8
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == 94
    assert sd["fc.weight"].shape == (1008, 2048)
    assert sd["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert sd["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert sd["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert sd["Mixed_5b.branch_pool.conv.weight"].shape == (32, 192, 1, 1)
    assert not any(k.startswith("AuxLogits") for k in sd)
    # a file in that format (old-style: no num_batches_tracked) loads strictly
    torch.save(sd, tmp_path / "fid.pth")
    loaded = load_fid_inception(tmp_path / "fid.pth")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items())
    bad = dict(sd)
    bad.pop("fc.bias")
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="bad.pth: not the FID Inception weights.*fc.bias"):
        load_fid_inception(tmp_path / "bad.pth")


# ----------------------------------------------------------------------------- plug-in and data


PLUGIN = '''
import torch
from semsynth.evaluate import Segmenter
from semsynth.labels import get_space


class PaletteSegmenter(Segmenter):
    """Judges colour-coded images: nearest palette colour, void when far from all of them."""

    def __init__(self, device=None, space="cityscapes"):
        super().__init__("palette", space, input_size=None)
        self.pal = torch.tensor(self.space.colors, dtype=torch.float32) / 255

    def predict(self, images):
        d = ((images.permute(0, 2, 3, 1)[..., None, :] - self.pal) ** 2).sum(-1)  # B,H,W,C
        best, idx = d.min(-1)
        return torch.where(best > 0.05, self.space.void, idx)
'''
_ns: dict = {}
exec(compile(PLUGIN, "palette_plugin", "exec"), _ns)
PaletteSegmenter = _ns["PaletteSegmenter"]


def _layout(rng, h=32, w=64):
    ids = np.full((h, w), 0, dtype=np.int64)  # road
    ids[: h // 3] = 10  # sky
    for _ in range(4):
        c = int(rng.integers(1, 19))
        y, x = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        ids[y : y + 8, x : x + 12] = c
    ids[-2:, :4] = CS.void
    return ids


def _save_rgb(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture
def tiny(tmp_path):
    """5 layouts (colour maps), k=2 synthesized variants (colour-coded + noise) and real photos."""
    rng = np.random.default_rng(0)
    for i in range(5):
        ids = _layout(rng)
        save_label(tmp_path / "labels" / f"s{i}.png", ids, CS)
        rgb = colorize(ids, CS).astype(np.float64)
        for k in range(2):
            _save_rgb(tmp_path / "fake" / f"s{i}_k{k}.png", rgb + rng.normal(0, 1 + k, rgb.shape))
        _save_rgb(tmp_path / "real" / f"s{i}.png", rgb + rng.normal(0, 1.5, rgb.shape))
    return tmp_path


def test_registry_and_plugin_validation():
    assert {"espnet-cityscapes", "espnet-camvid"} <= set(available_segmenters())
    register_segmenter("palette-test", lambda device=None: PaletteSegmenter(device))
    seg = build_segmenter("palette-test")
    assert seg.space is CS and "palette-test" in available_segmenters()

    class Broken(PaletteSegmenter):
        def predict(self, images):
            return torch.zeros(images.shape[0], 3, 3, dtype=torch.long)

    with pytest.raises(EvaluationError, match="returned"):
        Broken().segment(torch.rand(1, 3, 8, 8))
    with pytest.raises(EvaluationError, match="unknown segmenter"):
        build_segmenter("drn-d-105")


def test_pairing_variants_and_errors(tiny):
    groups, notes = pair_files(tiny / "labels", tiny / "fake", tiny / "real")
    assert [g.stem for g in groups] == [f"s{i}" for i in range(5)]
    assert [p.name for p in groups[0].images] == ["s0_k0.png", "s0_k1.png"]
    assert groups[0].real.name == "s0.png" and notes["layouts_without_images"] == 0
    _save_rgb(tiny / "fake" / "other_k0.png", np.zeros((4, 4, 3)))
    with pytest.raises(EvaluationError, match=r"have no layout.*other_k0\.png"):
        pair_files(tiny / "labels", tiny / "fake")
    with pytest.raises(EvaluationError, match="matches a layout"):
        pair_files(tiny / "labels", None, tiny / "fake")


def test_evaluate_end_to_end(tiny, tmp_path):
    report = evaluate(
        tiny / "fake", tiny / "labels", tiny / "real", segmenter=PaletteSegmenter(), device="cpu", draws=5, thumbnails=2
    )
    seg = report["segmentation"]
    assert seg["synthesized"]["miou"] == 1.0 and seg["synthesized"]["pixel_accuracy"] == 1.0
    assert seg["synthesized"]["intervals"]["miou"] == [1.0, 1.0] and seg["synthesized"]["layouts"] == 5
    assert seg["real"]["pixel_accuracy"] == 1.0
    assert report["inputs"]["models"]["synthesized"]["images"] == 10 and report["inputs"]["real_photos"] == 5
    assert [c["name"] for c in report["columns"]] == ["synthesized", "real"]
    assert any("standard FID not computed" in w for w in report["warnings"])
    assert report["protocol"]["label_decoding"]["polegroup"] == "pole"
    div = report["diversity"]
    if div is not None:  # needs SqueezeNet or ESPNet weights from ../shared
        d = div["models"]["synthesized"]
        assert d["layouts"] == 5 and 0 < d["mean"] < div["between_layouts"]["synthesized"]
    for d in report["distribution"]:
        assert not d["standard"] and "non-standard" in d["name"]
        # 5 layouts -> halves of 2 (one left out), C(5,2)*C(3,2) = 30 ordered splits, 5 drawn
        assert d["layouts"] == 5 and d["n_per_set"] == 2 and d["draws"] == 5 and d["distinct_splits"] == 30
        assert d["models"]["synthesized"]["n"] == [2, 2] and d["real_split_half"]["n"] == [2, 2]
        assert d["models"]["synthesized"]["n_unmatched"] == [10, 5] and not d["fd_reliable"] and d["note"]
    paths = write_report(report, tmp_path / "rep")
    data = json.loads(paths["json"].read_text())
    assert_documented(data)
    assert data["semsynth_evaluate"] == 2 and data["columns"][0] == {"name": "synthesized", "kind": "images"}
    md = paths["md"].read_text()
    assert "| metric | synthesized | real (ceiling) |" in md
    assert "| sky | 100.0 [100.0, 100.0] | 100.0 [100.0, 100.0] |" in md
    assert "synthesized: mIoU 100.0 [100.0, 100.0]" in md
    page = paths["html"].read_text()
    assert "<table>" in page and 'src="thumbs/s0/synthesized.png"' in page and 'src="thumbs/s1/real.png"' in page
    assert sorted(p.name for p in (tmp_path / "rep" / "thumbs").iterdir()) == ["s0", "s1"]
    assert sorted(p.name for p in (tmp_path / "rep" / "thumbs" / "s0").iterdir()) == [
        "layout.png",
        "real.png",
        "synthesized.png",
    ]


def test_evaluate_with_user_inception_file(tiny, tmp_path):
    """A (here randomly initialised) FID Inception file given by the user gives a standard FID row."""
    for i in range(5):
        (tiny / "fake" / f"s{i}_k1.png").unlink()
    torch.save(FIDInceptionV3().state_dict(), tmp_path / "inception.pth")
    report = evaluate(
        tiny / "fake",
        tiny / "labels",
        tiny / "real",
        segmenter=PaletteSegmenter(),
        inception=tmp_path / "inception.pth",
        fd_network="none",
        device="cpu",
        draws=3,
        thumbnails=0,
    )
    (fid,) = report["distribution"]
    assert fid["standard"] and fid["dims"] == 2048 and np.isfinite(fid["models"]["synthesized"]["fd"])
    assert fid["fd_method"] == "lowrank"  # 2 images per set < 2048 dimensions
    assert not any("standard FID" in w for w in report["warnings"])


def test_space_mismatch_is_an_error(tiny):
    with pytest.raises(EvaluationError, match="label space"):
        evaluate(tiny / "fake", tiny / "labels", segmenter=PaletteSegmenter(), label_space="camvid")


def test_cli_plugin_module_and_errors(tiny, tmp_path, monkeypatch, capsys):
    plug = tmp_path / "plug"
    plug.mkdir()
    (plug / "my_palette_seg.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(plug))
    out = tmp_path / "rep"
    rc = cli(
        [
            "evaluate",
            str(tiny / "real"),
            "--labels",
            str(tiny / "labels"),
            "--segmenter",
            "my_palette_seg:PaletteSegmenter",
            "-o",
            str(out),
            "--thumbnails",
            "1",
        ]
    )
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["columns"] == [{"name": "images", "kind": "images"}] and rep["segmentation"]["images"]["miou"] == 1.0
    assert "| metric | images |" in capsys.readouterr().out
    rc = cli(
        [
            "evaluate",
            str(tiny / "real"),
            "--labels",
            str(tmp_path / "nowhere"),
            "-o",
            str(out),
            "--segmenter",
            "my_palette_seg:PaletteSegmenter",
        ]
    )
    assert rc == 2 and "label folder not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------- side by side, protocol


def test_cli_side_by_side_models(tiny, tmp_path, monkeypatch, capsys):
    """Two named folders + real photos: one report, a column per model and the ceiling, the paired
    comparison, per-class deltas, a thumbnail row per layout with a cell per column; --json prints
    the same document to stdout."""
    plug = tmp_path / "plug"
    plug.mkdir()
    (plug / "my_palette_seg2.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(plug))
    rng = np.random.default_rng(5)
    for p in sorted((tiny / "fake").glob("*.png")):  # "worse": a quarter of each image is grey
        arr = np.asarray(Image.open(p)).astype(np.float64)
        arr[:, : arr.shape[1] // 4] = 128 + rng.normal(0, 1, arr[:, : arr.shape[1] // 4].shape)
        _save_rgb(tiny / "worse" / p.name, arr)
    out = tmp_path / "rep"
    args = [
        "evaluate",
        f"good={tiny / 'fake'}",
        f"worse={tiny / 'worse'}",
        "--labels",
        str(tiny / "labels"),
        "--real",
        str(tiny / "real"),
        "--segmenter",
        "my_palette_seg2:PaletteSegmenter",
        "--fd-network",
        "none",
        "--thumbnails",
        "2",
        "--bootstrap",
        "200",
    ]
    assert cli(args + ["-o", str(out)]) == 0
    printed = capsys.readouterr().out
    rep = json.loads((out / "report.json").read_text())
    assert_documented(rep)
    assert [c["name"] for c in rep["columns"]] == ["good", "worse", "real"]
    comp = {(c["model"], c["baseline"]): c for c in rep["comparisons"]}
    assert set(comp) == {("worse", "good"), ("good", "real"), ("worse", "real")}
    d = comp[("worse", "good")]["miou"]
    assert d["diff"] < 0 and d["interval"][1] < 0  # clearly worse on the same layouts
    assert comp[("good", "real")]["miou"]["ratio"] == 1.0
    assert "| metric | good | worse | real (ceiling) |" in printed and "## Paired comparisons" in printed
    assert "worse − good" in printed and "good higher mIoU" in printed
    md = (out / "report.md").read_text()
    assert "| class IoU % | good | worse | real | worse − good |" in md
    page = (out / "report.html").read_text()
    assert all(f'src="thumbs/s0/{c}.png"' in page for c in ("layout", "good", "worse", "real"))
    assert "<th>good</th><th>worse</th><th>real</th>" in page
    # the form: options first, then the folders; no -o with --json
    assert cli(["evaluate", "--json", *args[3:], args[1], args[2]]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["comparisons"] == rep["comparisons"] and doc["segmentation"]["good"] == rep["segmentation"]["good"]


def test_unnamed_folders_and_name_errors(tiny, tmp_path):
    shutil.copytree(tiny / "fake", tmp_path / "b" / "fake")
    rep = evaluate(
        [tiny / "fake", tmp_path / "b" / "fake"],
        tiny / "labels",
        segmenter=PaletteSegmenter(),
        fd_network="none",
        thumbnails=0,
        bootstrap=50,
    )
    names = [c["name"] for c in rep["columns"]]
    assert len(names) == 2 and names[0] != names[1] and all(n.endswith("fake") for n in names)
    (c,) = rep["comparisons"]
    assert c["miou"]["diff"] == 0 and c["miou"]["interval"] == [0.0, 0.0]  # a model against itself
    with pytest.raises(EvaluationError, match="both named 'x'"):
        evaluate(["x=" + str(tiny / "fake"), "x=" + str(tiny / "real")], tiny / "labels", segmenter=PaletteSegmenter())
    with pytest.raises(EvaluationError, match="'real' names"):
        evaluate({"real": tiny / "fake"}, tiny / "labels", tiny / "real", segmenter=PaletteSegmenter())


def test_models_are_scored_on_shared_layouts(tiny):
    (tiny / "fewer").mkdir()
    for p in sorted((tiny / "fake").glob("s[0-2]_k*.png")):
        shutil.copy(p, tiny / "fewer" / p.name)
    rep = evaluate(
        {"all": tiny / "fake", "fewer": tiny / "fewer"},
        tiny / "labels",
        tiny / "real",
        segmenter=PaletteSegmenter(),
        fd_network="none",
        thumbnails=0,
        bootstrap=50,
    )
    assert rep["segmentation"]["all"]["layouts"] == 3 and rep["segmentation"]["real"]["layouts"] == 3
    assert any("all: 2 layout(s)" in w for w in rep["warnings"])


def test_polegroup_decoding(tmp_path):
    """labelId 18 (polegroup) is pole by default and void with polegroup="ignore"."""
    from semsynth.evaluate import evaluation_space

    lab = CS.encodings["labelId"]
    assert lab[18] == CS.names.index("pole") and evaluation_space(CS, "ignore").encodings["labelId"][18] == CS.void
    assert evaluation_space(CS, "ignore").encodings["instanceId"][18] == CS.void
    assert evaluation_space(CS, "ignore").encodings["labelId"][17] == CS.names.index("pole")
    assert evaluation_space(CS, "pole") is CS and evaluation_space(get_space("camvid"), "ignore").name == "camvid"
    raw = np.full((16, 32), 7, dtype=np.uint8)  # road
    raw[:8] = 23  # sky
    raw[8:, :4] = 18  # polegroup: 32 pixels
    Image.fromarray(raw).save(_mk(tmp_path / "labels") / "a_gtFine_labelIds.png")
    ids = CS.decode_ids(raw, "labelId")
    _save_rgb(tmp_path / "img" / "a.png", colorize(ids, CS))
    kw = dict(segmenter=PaletteSegmenter(), thumbnails=0, bootstrap=10)
    pole = evaluate(tmp_path / "img", tmp_path / "labels", **kw)["segmentation"]["images"]
    ign = evaluate(tmp_path / "img", tmp_path / "labels", polegroup="ignore", **kw)
    assert pole["labelled_pixels"] == 512 and pole["per_class_iou"]["pole"] == 1.0
    s = ign["segmentation"]["images"]
    assert s["labelled_pixels"] == 512 - 32 and s["per_class_iou"]["pole"] is None  # void pixels: not scored
    assert ign["protocol"]["label_decoding"]["polegroup"] == "ignore"
    assert "void" in ign["protocol"]["label_decoding"]["polegroup_note"]


def _mk(p):
    p.mkdir(parents=True, exist_ok=True)
    return p


def test_segmenter_input_size():
    register_segmenter("palette-fixed", lambda device=None: PaletteSegmenter(device))
    with pytest.raises(EvaluationError, match="does not take an input size"):
        build_segmenter("palette-fixed", input_size=(64, 128))
    register_segmenter("palette-sized", lambda device=None, input_size=None: _Sized(input_size))
    assert build_segmenter("palette-sized", input_size=(16, 32)).input_size == (16, 32)


class _Sized(PaletteSegmenter):
    def __init__(self, input_size):
        super().__init__()
        self.input_size = input_size
