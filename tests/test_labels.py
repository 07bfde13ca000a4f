"""Label spaces: decoding every label format in ../shared/data, errors, one-hot and pyramids."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from semsynth import labels as L
from semsynth.labels import LabelError, LabelSpace, colorize, get_space, one_hot, pyramid

CS_FRAME = "cityscapes/gtFine/train/aachen/aachen_000000_000019_gtFine_"


def hist(ids, space):
    return np.bincount(np.asarray(ids).ravel(), minlength=space.channels)


# ---------------------------------------------------------------------------------- built-in spaces


def test_cocostuff_space_follows_the_id_minus_one_convention():
    s = get_space("cocostuff")
    assert (s.num_classes, s.void) == (182, 182)
    assert s.names[0] == "person" and s.names[91] == "banner" and s.names[181] == "wood"
    unused = [i + 1 for i, n in enumerate(s.names) if n.startswith("unused-")]
    assert unused == [12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91]  # COCO ids never annotated
    assert s.names[11] == "unused-12" and s.names[12] == "stop sign"
    raw = np.array([[0, 181, 255]], dtype=np.uint8)
    assert s.decode(raw).tolist() == [[0, 181, 182]]
    with pytest.raises(LabelError, match=r"182 \(1 px\)"):
        s.decode(np.array([[182, 0]], dtype=np.uint8))
    cols = {tuple(c) for c in s.colors.tolist()}
    assert len(cols) == 182 and (0, 0, 0) not in cols  # distinct, and black stays void


def test_ade20k_space_shifts_ids_and_keeps_official_palette():
    s = get_space("ade20k")
    assert (s.num_classes, s.void) == (150, 150)
    assert s.names[:3] == ("wall", "building", "sky") and s.names[-1] == "flag"
    assert s.decode(np.array([[0, 1, 150]], dtype=np.uint8)).tolist() == [[150, 0, 149]]
    with pytest.raises(LabelError, match=r"151 \(1 px\)"):
        s.decode(np.array([[151]], dtype=np.uint8))
    # The official palette gives road (6) and skyscraper (48) one grey: colour maps decode it as
    # road, the more frequent class, instead of silently as whichever came last.
    assert s.shared_colors() == {(140, 140, 140): [6, 48]}
    assert s.decode(np.full((1, 1, 3), 140, np.uint8)).item() == 6


def test_ade20k_constants_match_the_benchmark_files(data):
    from scipy.io import loadmat

    s = get_space("ade20k")
    rows = list(csv.DictReader(open(data / "ade20k_samples/objectInfo150.csv")))
    for name, row in zip(s.names, rows, strict=True):
        words, synonyms = name.split(" "), row["Name"].split(";")
        assert any(synonyms[k : k + len(words)] == words for k in range(len(synonyms))), (name, row)
    np.testing.assert_array_equal(s.colors, loadmat(data / "ade20k_samples/color150.mat")["colors"])


def test_lazy_registry_builds_each_space_once(monkeypatch):
    calls = []
    monkeypatch.setattr(L, "_REGISTRY", {k: v for k, v in L._REGISTRY.items() if k != "ade20k"})
    monkeypatch.setitem(L._LAZY, "ade20k", lambda: calls.append(1) or L._ade20k())
    assert "ade20k" in L.available_spaces() and not calls  # listed without being built
    a, b = get_space("ade20k"), get_space("ADE20K")
    assert a is b and len(calls) == 1
    assert {"cityscapes", "camvid", "cocostuff", "ade20k"} <= set(L.available_spaces())
    with pytest.raises(LabelError, match="unknown label space 'nyu'.*cocostuff"):
        get_space("nyu")
    mine = LabelSpace("Mine", ("a",), np.array([[1, 2, 3]], np.uint8), {"id": np.array([0])})
    L.register_space(mine)
    assert get_space("mine") is mine and get_space("Mine") is mine


def test_to_dict_round_trip_is_compact_and_reads_old_lists():
    s = get_space("cityscapes")
    d = json.loads(json.dumps(s.to_dict()))
    assert len(json.dumps(d)) < 5000  # instanceId table (34,000 entries) stored as runs
    r = LabelSpace.from_dict(d)
    assert r.names == s.names and np.array_equal(r.colors, s.colors)
    for k, v in s.encodings.items():
        np.testing.assert_array_equal(r.encodings[k], v)
    d["encodings"] = {k: v.tolist() for k, v in s.encodings.items()}  # older checkpoints
    np.testing.assert_array_equal(LabelSpace.from_dict(d).encodings["labelId"], s.encodings["labelId"])


# ---------------------------------------------------------------------------------- real files


def test_cityscapes_label_ids(data):
    s = get_space("cityscapes")
    raw = np.asarray(Image.open(data / (CS_FRAME + "labelIds.png")))
    ids = s.read(data / (CS_FRAME + "labelIds.png"))
    h = hist(ids, s)
    assert h.sum() == 2048 * 1024 and ids.shape == (1024, 2048)
    for label_id, train_id in [(7, 0), (11, 2), (21, 8), (23, 10), (26, 13), (33, 18), (0, 19), (1, 19)]:
        assert h[train_id] >= (raw == label_id).sum() and np.all(ids[raw == label_id] == train_id)
    assert s.names[int(np.argmax(h[:19]))] == "road"
    assert h[19] == np.isin(raw, [0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 29, 30]).sum()


def test_cityscapes_instance_ids_decode_like_label_ids(data):
    s = get_space("cityscapes")
    inst = s.read(data / (CS_FRAME + "instanceIds.png"))  # 16-bit, labelId*1000 + instance
    np.testing.assert_array_equal(inst, s.read(data / (CS_FRAME + "labelIds.png")))
    assert s.decode(np.array([[18, 26003, 24000]], np.uint16), "instanceId").tolist() == [[5, 13, 11]]
    with pytest.raises(LabelError, match=r"999 \(1 px\)"):
        s.decode(np.array([[999]], np.uint16), "instanceId")


def test_crn_palette_colour_round_trip(shared, tmp_path):
    s = get_space("cityscapes")
    palette = json.loads((shared / "reference/crn_cityscapes_palette.json").read_text())["palette"]
    np.testing.assert_array_equal(np.asarray(palette, np.uint8).reshape(-1, 3), s.colors)
    ids = s.read(shared / "data" / (CS_FRAME + "labelIds.png"))[::4, ::4]
    L.save_label(tmp_path / "c.png", ids, s)  # CRN's colour label format
    assert Image.open(tmp_path / "c.png").mode == "RGB"
    np.testing.assert_array_equal(s.read(tmp_path / "c.png"), ids)
    L.save_label(tmp_path / "i.png", ids, s, color=False)  # grey index map, 255 = void
    np.testing.assert_array_equal(s.read(tmp_path / "i.png", "index"), ids)


def test_gta_paletted_sample(data):
    s = get_space("cityscapes")
    path = data / "gta_sample/00100370.png"
    assert Image.open(path).mode == "P"
    by_colour = s.read(path)  # through the palette colours, as the original CRN did
    by_index = s.read(path, "labelId")  # palette indices are Cityscapes labelIds
    np.testing.assert_array_equal(by_colour, by_index)
    h = hist(by_colour, s)
    assert h.sum() == 512 * 256 and s.names[int(np.argmax(h[:19]))] == "road"
    assert h[s.names.index("sky")] == 27190 and h[s.names.index("car")] == 13952


def test_cityscapes_sequences_pseudo_labels(data):
    s = get_space("cityscapes")
    files = sorted((data / "cityscapes_sequences/labels").glob("*.png"))[::30]  # one per sequence
    h = sum(hist(s.read(f), s) for f in files)
    assert h.sum() == len(files) * 1024 * 512
    top = [s.names[i] for i in np.argsort(-h[:19])[:3]]
    assert top == ["road", "building", "vegetation"]


def test_camvid_void_11(data):
    s = get_space("camvid")
    classes = json.loads((data / "camvid/classes.json").read_text())
    assert s.void == classes["void_id"] == 11
    assert [c["color"] for c in classes["classes"][:11]] == s.colors.tolist()
    path = sorted((data / "camvid/trainannot").glob("*.png"))[0]
    raw = np.asarray(Image.open(path))
    ids = s.read(path)
    assert (raw == 11).any() and np.all(ids[raw == 11] == s.void)
    np.testing.assert_array_equal(ids[raw < 11], raw[raw < 11])
    assert hist(ids, s).sum() == 480 * 360


def test_cocostuff_samples_use_only_annotated_classes(data):
    s = get_space("cocostuff")
    h = sum(hist(s.read(f), s) for f in sorted((data / "cocostuff_samples").glob("*_label/*.png")))
    used = [s.names[i] for i in np.flatnonzero(h[:182])]
    # An off-by-one decode (treating values as 1-based ids) would hit never-annotated ids.
    assert not [n for n in used if n.startswith("unused-")]
    assert "person" in used and h[182] > 0


def test_ade20k_sample_is_mostly_sky(data):
    s = get_space("ade20k")
    ids = s.read(data / "ade20k_samples/annotations/ADE_val_00000001.png")
    h = hist(ids, s)
    assert h.sum() == 512 * 683 and h[s.void] == 3613  # file value 0 ("other") is void
    assert s.names[int(np.argmax(h[:150]))] == "sky" and h[s.names.index("building")] == 123406


# ---------------------------------------------------------------------------------- errors


def test_corrupt_png_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(LabelError, match="broken.png: cannot read label map"):
        get_space("cityscapes").read(bad)


def test_missing_file(tmp_path):
    with pytest.raises(LabelError, match="nothere.png: label map not found"):
        get_space("camvid").read(tmp_path / "nothere.png")


def test_unknown_colour_names_colour_and_pixel_count(tmp_path, png):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[:] = (128, 64, 128)
    rgb[0, :3] = (1, 2, 3)
    with pytest.raises(LabelError, match=r"c.png: colour\(s\) \(1, 2, 3\) on 3 px are not in the cityscapes"):
        get_space("cityscapes").read(png(tmp_path / "c.png", rgb))
    grey = np.repeat(np.full((2, 2, 1), 7, np.uint8), 3, axis=2)
    with pytest.raises(LabelError, match="id map saved as RGB"):
        get_space("cityscapes").read(png(tmp_path / "g.png", grey))


def test_out_of_range_id_names_value_and_count(tmp_path, png):
    raw = np.zeros((3, 4), np.uint8)
    raw[0, :2] = 12
    raw[2, 3] = 200
    with pytest.raises(LabelError, match=r"a.png: value\(s\) 12 \(2 px\), 200 \(1 px\).*valid: 0\.\.11"):
        get_space("camvid").read(png(tmp_path / "a.png", raw))
    # A 16-bit map with a huge value is reported, not turned into a 65536-entry table.
    with pytest.raises(LabelError, match=r"60000 \(1 px\)"):
        get_space("camvid").read(png(tmp_path / "b.png", [[1, 60000]], mode="I;16"))
    with pytest.raises(LabelError, match="dtype float"):
        get_space("camvid").decode(np.zeros((2, 2), np.float32))
    with pytest.raises(LabelError, match="no encoding 'trainId'"):
        get_space("camvid").read(tmp_path / "a.png", "trainId")


def test_train_ids_by_file_name(tmp_path, png):
    s = get_space("cityscapes")
    f = png(tmp_path / "x_gtFine_trainIds.png", np.array([[0, 18, 255]], np.uint8))
    assert s.read(f).tolist() == [[0, 18, 19]]  # as trainIds, not labelIds (0 would be void)


# ---------------------------------------------------------------------------------- YAML spaces

YAML = """
name: roads
classes:
  - {name: road, id: 7, color: [128, 64, 128]}
  - {name: car, id: 26, color: [0, 0, 142]}
  - {name: sky, color: [70, 130, 180]}      # id defaults to its position: 2
void: {ids: [0, 255], colors: [[0, 0, 0]]}
"""


def test_space_from_yaml(tmp_path, png):
    p = tmp_path / "roads.yaml"
    p.write_text(YAML)
    s = get_space(p)
    assert s.names == ("road", "car", "sky") and s.void == 3
    assert s.read(png(tmp_path / "i.png", np.array([[7, 26, 2, 0, 255]], np.uint8))).tolist() == [[0, 1, 2, 3, 3]]
    rgb = np.array([[[0, 0, 142], [0, 0, 0]]], np.uint8)
    assert s.read(png(tmp_path / "c.png", rgb)).tolist() == [[1, 3]]
    with pytest.raises(LabelError, match=r"value\(s\) 8 \(1 px\)"):
        s.decode(np.array([[8]], np.uint8))
    r = LabelSpace.from_dict(json.loads(json.dumps(s.to_dict())))
    assert r.decode(np.array([[26, 255]], np.uint8)).tolist() == [[1, 3]]


@pytest.mark.parametrize(
    "text, message",
    [
        ("classes: []", "non-empty 'classes' list"),
        ("name: x\nclasses: [{name: a, color: [1, 2]}]", r"class entry 0 .* bad colour"),
        ("classes: [{name: a, color: [1, 2, 300]}]", "bad colour"),
        ("classes: [{color: [1, 2, 3]}]", "lacks 'name'"),
        ("classes: [{name: a, id: 3, color: [1, 2, 3]}, {name: b, id: 3, color: [4, 5, 6]}]", r"id\(s\) \[3\]"),
        ("classes: [{name: a, id: -1, color: [1, 2, 3]}]", "id -1 outside"),
        ("classes: [{name: a, id: 1, color: [1, 2, 3]}]\nvoid: {ids: [1]}", "also class ids"),
        ("classes: [{name: a, color: [1, 2, 3]}, {name: b, color: [1, 2, 3]}]", "several classes"),
        ("classes: [{name: a, color: [1, 2, 3]}]\nvoid: {colors: [[1, 2, 3]]}", "also class colours"),
        ("classes: [{name: a, color: [1, 2, 3]}]\nvoid: [0]", "'void' must be a mapping"),
        ("classes: [unclosed", "cannot read label-space file"),
    ],
)
def test_space_file_errors(tmp_path, text, message):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(LabelError, match=message) as e:
        get_space(p)
    assert "bad.yaml" in str(e.value)


def test_missing_space_file(tmp_path):
    with pytest.raises(LabelError, match="nope.yaml: label-space file not found"):
        get_space(tmp_path / "nope.yaml")


# ---------------------------------------------------------------------------------- encoding


def test_one_hot_has_void_last_and_sums_to_one():
    ids = torch.tensor([[[0, 2], [3, 1]]])  # 3 classes, void = 3
    oh = one_hot(ids, 3)
    assert oh.shape == (1, 4, 2, 2)
    assert oh[0, 3, 1, 0] == 1 and oh[0, :3, 1, 0].sum() == 0  # void pixel -> last channel only
    assert torch.equal(oh.argmax(1), ids) and torch.all(oh.sum(1) == 1)
    with pytest.raises(LabelError, match=r"found 0\.\.4, valid 0\.\.3"):
        one_hot(torch.tensor([[[0, 4]]]), 3)
    with pytest.raises(TypeError):
        one_hot(ids.float(), 3)


def test_pyramid_area_averages_each_level_from_the_finer_one():
    ids = torch.tensor([[[0, 0, 1, 1], [0, 2, 1, 1], [2, 2, 2, 2], [2, 2, 2, 3]]])
    levels = pyramid(one_hot(ids, 3), [(2, 2), (1, 1)])
    half, one = levels
    assert half.shape == (1, 4, 2, 2) and one.shape == (1, 4, 1, 1)
    assert half[0, :, 0, 0].tolist() == [0.75, 0.0, 0.25, 0.0]
    assert half[0, :, 1, 1].tolist() == [0.0, 0.0, 0.75, 0.25]
    assert torch.allclose(one[0, :, 0, 0], torch.tensor([3, 4, 8, 1]) / 16)
    assert all(torch.allclose(x.sum(1), torch.ones(1)) for x in levels)


def test_colorize_uses_palette_and_black_void():
    s = get_space("camvid")
    out = colorize(torch.tensor([[3, 11]]), s)
    assert out.dtype == np.uint8 and out.tolist() == [[[128, 64, 128], [0, 0, 0]]]


@pytest.mark.parametrize("name", ["cityscapes", "camvid", "cocostuff", "ade20k"])
def test_file_ids_write_grey_maps_that_read_back_exactly(name, tmp_path):
    s = get_space(name)
    fid = s.file_ids()
    assert fid.shape == (s.channels,) and (fid >= 0).all()
    ids = np.arange(s.channels).repeat(3).reshape(-1, 1).repeat(2, axis=1)  # every class and void
    Image.fromarray(fid[ids].astype(np.uint8)).save(tmp_path / "layout.png")
    assert np.array_equal(s.read(tmp_path / "layout.png"), ids)


def test_file_ids_pick_the_smallest_value_and_mark_what_has_none(tmp_path):
    cs = get_space("cityscapes")
    assert cs.file_ids()[[0, 1, 5, cs.void]].tolist() == [7, 8, 17, 0]  # road, sidewalk, pole; void = unlabeled
    assert cs.file_ids("trainId")[[0, cs.void]].tolist() == [0, 255]
    f = tmp_path / "s.yaml"
    f.write_text("classes: [{name: a, id: 3, color: [1, 2, 3]}, {name: b, id: 9, color: [4, 5, 6]}]\n")
    assert LabelSpace.from_file(f).file_ids().tolist() == [3, 9, -1]  # no void id in this space
