"""Datasets: every layout in ../shared/data, pairing errors, resizing, flips and the decode cache."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from semsynth import data as D
from semsynth.data import DatasetError, list_label_files, load_image, open_dataset, save_image
from semsynth.labels import LabelError, colorize, get_space


@pytest.mark.parametrize(
    "folder, kw, count, layout, space",
    [
        ("cityscapes", {}, 8, "cityscapes", "cityscapes"),
        ("cityscapes", {"split": "val", "require_images": False}, 15, "cityscapes", "cityscapes"),
        ("camvid", {}, 367, "camvid", "camvid"),
        ("camvid", {"split": "val"}, 101, "camvid", "camvid"),
        ("cityscapes_sequences", {}, 180, "paired", "cityscapes"),
        ("cocostuff_samples", {}, 13, "cocostuff", "cocostuff"),
        ("cocostuff_samples", {"split": "val"}, 8, "cocostuff", "cocostuff"),
        ("ade20k_samples", {}, 3, "ade20k", "ade20k"),
        ("gta_sample", {"require_images": False}, 1, "labels", "cityscapes"),
    ],
)
def test_every_shared_layout_opens(data, folder, kw, count, layout, space):
    ds = open_dataset(data / folder, size=(32, 64), **kw)
    assert (len(ds), ds.layout, ds.space.name) == (count, layout, space)
    s = ds[-1]
    assert s["label"].dtype == torch.int64 and s["label"].shape == (32, 64)
    assert 0 <= int(s["label"].min()) and int(s["label"].max()) <= ds.space.void
    assert s["name"] == ds.items[-1].name and s["name"] in s["label_path"]
    assert os.path.basename(s["label_path"]).startswith(s["name"])
    if kw.get("require_images", True):
        img = s["image"]
        assert img.dtype == torch.float32 and img.shape == (3, 32, 64)
        assert 0 <= float(img.min()) and float(img.max()) <= 1 and float(img.std()) > 0.02
    else:
        assert "image" not in s


def test_cityscapes_pairs_photos_with_label_ids(data):
    ds = open_dataset(data / "cityscapes")
    assert ds.names == [f"aachen_{i:06d}_000019" for i in range(8)]  # MATLAB order: city/file
    for it in ds.items:
        assert it.label.name == it.name + "_gtFine_labelIds.png"
        assert it.image.name == it.name + "_leftImg8bit.png"


def test_cityscapes_val_without_photos_says_so(data):
    with pytest.raises(DatasetError, match=r"leftImg8bit/val.*15 label maps but no photos.*require_images=False"):
        open_dataset(data / "cityscapes", split="val")
    with pytest.raises(DatasetError, match=r"split 'test' not found \(splits here: train, val\)"):
        open_dataset(data / "cityscapes", split="test")


def test_label_list_and_list_label_files(data, tmp_path):
    files = list_label_files([data / "cityscapes/gtFine/train", data / "gta_sample/00100370.png"])
    assert len(files) == 9 and all(f.name.endswith("labelIds.png") for f in files[:8])  # no instanceIds
    ds = open_dataset(files, require_images=False, size=(16, 32))
    assert len(ds) == 9 and ds[8]["name"] == "00100370"
    with pytest.raises(DatasetError, match="require_images=False"):
        open_dataset(files)
    with pytest.raises(DatasetError, match="nope.png: no such file or folder"):
        list_label_files([tmp_path / "nope.png"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/readme.txt").write_text("x")
    with pytest.raises(DatasetError, match="empty: folder holds no label maps"):
        list_label_files(tmp_path / "empty")


def test_folder_listing_is_recursive_sorted_and_skips_hidden(tmp_path, png):
    for rel in ["b/2.png", "b/1.png", "a.png", ".hidden/x.png", "b/.tmp.png"]:
        png(tmp_path / rel, np.zeros((2, 2), np.uint8))
    (tmp_path / "notes.txt").write_text("x")
    assert [f.relative_to(tmp_path).as_posix() for f in list_label_files(tmp_path)] == ["a.png", "b/1.png", "b/2.png"]


# ---------------------------------------------------------------------------------- tiny layouts


def make_paired(root, png, n=3, h=6, w=8, seed=0):
    """images/ + labels/ with photo = colorize(label), so a pairing or flip error is visible."""
    rng = np.random.default_rng(seed)
    space = get_space("camvid")
    for i in range(n):
        ids = rng.integers(0, 12, size=(h, w)).astype(np.uint8)
        png(root / "labels" / f"s{i}.png", ids)
        png(root / "images" / f"s{i}.png", colorize(ids, space))
    return root


def test_pairing_errors_name_the_files(tmp_path, png):
    root = make_paired(tmp_path, png)
    png(root / "labels/extra1.png", np.zeros((6, 8), np.uint8))
    png(root / "labels/extra2.png", np.zeros((6, 8), np.uint8))
    png(root / "images/lonely.jpg", np.zeros((6, 8, 3), np.uint8))
    with pytest.raises(DatasetError) as e:
        open_dataset(root, space="camvid")
    msg = str(e.value)
    assert "2 label map(s)" in msg and "extra1, extra2" in msg and "1 photo(s)" in msg and "lonely" in msg
    assert len(open_dataset(root, space="camvid", require_images=False)) == 5


def test_size_mismatch_names_both_files(tmp_path, png):
    root = make_paired(tmp_path, png)
    png(root / "images/s1.png", np.zeros((6, 9, 3), np.uint8))
    ds = open_dataset(root, space="camvid")
    with pytest.raises(DatasetError, match=r"images/s1.png is 9x6 \(WxH\) but its label map .*labels/s1.png is 8x6"):
        ds.verify()
    with pytest.raises(DatasetError, match=r"s1.png is 9x6"):
        ds[1]


def test_missing_empty_and_unknown_layouts(tmp_path, png):
    with pytest.raises(DatasetError, match="nothing: dataset folder not found"):
        open_dataset(tmp_path / "nothing")
    (tmp_path / "labels").mkdir()
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="labels: no label maps found"):
        open_dataset(tmp_path)
    png(tmp_path / "other/x.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(DatasetError, match="no dataset layout.*require_images=False"):
        open_dataset(tmp_path / "other")
    with pytest.raises(DatasetError, match="excluded"):
        open_dataset(tmp_path / "other", require_images=False, exclude=["x*"])


def test_broken_files_raise_with_their_path(tmp_path, png):
    root = make_paired(tmp_path, png, n=2)
    (root / "images/s0.png").write_bytes(b"not a png at all")
    (root / "labels/s1.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    ds = open_dataset(root, space="camvid", cache=False)
    with pytest.raises(DatasetError, match="images/s0.png: cannot read image"):
        ds[0]
    with pytest.raises(LabelError, match="labels/s1.png: cannot read label map"):
        ds[1]


def test_official_ade20k_split_folders_and_exclude(tmp_path, png):
    for split, name in [("training", "ADE_train_1"), ("training", "ADE_train_2"), ("validation", "ADE_val_1")]:
        png(tmp_path / f"annotations/{split}/{name}.png", np.array([[0, 1], [150, 3]], np.uint8))
        png(tmp_path / f"images/{split}/{name}.jpg", np.zeros((2, 2, 3), np.uint8))
    assert open_dataset(tmp_path).names == ["ADE_train_1", "ADE_train_2"]
    assert open_dataset(tmp_path, exclude=["*_2"]).names == ["ADE_train_1"]
    val = open_dataset(tmp_path, split="val")
    assert val.names == ["ADE_val_1"] and val[0]["label"].tolist() == [[150, 0], [149, 2]]
    with pytest.raises(DatasetError, match=r"no subfolder for split 'test' \(splits here: training, validation\)"):
        open_dataset(tmp_path, split="test")


# ---------------------------------------------------------------------------------- resizing


def test_resize_photo_antialiased_and_label_nearest(tmp_path, png):
    checker = ((np.indices((16, 32)).sum(0) % 2) * 255).astype(np.uint8)
    png(tmp_path / "images/a.png", np.repeat(checker[..., None], 3, 2))
    labels = np.zeros((16, 32), np.uint8)
    labels[:, 16:] = 3
    labels[5, 5] = 8  # a 1-pixel object
    png(tmp_path / "labels/a.png", labels)
    s = open_dataset(tmp_path, space="camvid", size=(4, 8))[0]
    # A 1-pixel checkerboard shrunk 4x must average to grey; a non-antialiased resize aliases it.
    assert torch.allclose(s["image"], torch.full_like(s["image"], 0.5), atol=0.05)
    # Nearest at pixel centres: source pixel (4i + 2, 4j + 2); no blended or shifted classes.
    np.testing.assert_array_equal(s["label"].numpy(), labels[2::4, 2::4])
    assert set(s["label"].unique().tolist()) == {0, 3}
    up = D.resize_label(np.array([[1, 2]], np.uint8), (2, 4))
    assert up.tolist() == [[1, 1, 2, 2], [1, 1, 2, 2]]
    assert load_image(tmp_path / "images/a.png", size=(4, 8)).shape == (3, 4, 8)


def test_colour_labels_resize_without_inventing_colours(data):
    # A colour map (the GTA palette) is decoded before resizing, so shrinking it keeps valid classes.
    ds = open_dataset([data / "gta_sample/00100370.png"], require_images=False, size=(37, 71))
    full = get_space("cityscapes").read(data / "gta_sample/00100370.png")
    small = ds[0]["label"]
    assert small.shape == (37, 71) and set(small.unique().tolist()) <= set(np.unique(full).tolist())


# ---------------------------------------------------------------------------------- flips


def test_flip_moves_label_and_photo_together(tmp_path, png):
    root = make_paired(tmp_path, png, n=1, h=5, w=7)
    plain = open_dataset(root, space="camvid")[0]
    ds = open_dataset(root, space="camvid", flip=True)
    torch.manual_seed(0)
    draws = [ds[0] for _ in range(16)]
    flipped = [torch.equal(d["label"], plain["label"].flip(-1)) for d in draws]
    assert any(flipped) and not all(flipped)
    space = get_space("camvid")
    for d in draws:  # the photo is the colourised label: they must still agree pixel for pixel
        expect = torch.from_numpy(colorize(d["label"], space)).permute(2, 0, 1).float() / 255
        assert torch.equal(d["image"], expect)
    torch.manual_seed(0)
    again = [torch.equal(ds[0]["label"], plain["label"].flip(-1)) for _ in range(16)]
    assert again == flipped  # seeded by torch's RNG


# ---------------------------------------------------------------------------------- caching


@pytest.fixture
def count_opens(monkeypatch):
    calls = []
    real = Image.open

    def counting(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(Image, "open", counting)
    return calls


def test_memory_cache_decodes_once(tmp_path, png, count_opens):
    ds = open_dataset(make_paired(tmp_path, png), space="camvid", size=(3, 4))
    first = ds[1]
    assert len(count_opens) == 2  # label + photo
    second = ds[1]
    assert len(count_opens) == 2
    assert torch.equal(first["label"], second["label"]) and torch.equal(first["image"], second["image"])
    first["label"].fill_(0)  # samples are copies: mutating one must not poison the cache
    assert torch.equal(ds[1]["label"], second["label"])
    open_dataset(tmp_path, space="camvid", cache=False)[1]
    assert len(count_opens) == 4


def test_disk_cache_survives_new_instances_and_invalidates_on_change(tmp_path, png, count_opens, monkeypatch):
    root = make_paired(tmp_path / "d", png)
    monkeypatch.setenv("SEMSYNTH_CACHE", str(tmp_path / "cache"))
    a = open_dataset(root, space="camvid", size=(3, 4), cache="disk")
    ref = [a[i] for i in range(3)]
    assert len(count_opens) == 6
    npy = sorted((tmp_path / "cache").rglob("*.npy"))
    assert len(npy) == 6 and not [p for p in (tmp_path / "cache").rglob(".*")]  # no temp files left
    b = open_dataset(root, space="camvid", size=(3, 4), cache="disk")  # a fresh process, in effect
    got = [b[i] for i in range(3)]
    assert len(count_opens) == 6  # nothing decoded: served from the .npy files
    assert isinstance(b.arrays(0)[0], np.memmap)
    assert all(torch.equal(x["label"], y["label"]) and torch.equal(x["image"], y["image"]) for x, y in zip(ref, got))
    open_dataset(root, space="camvid", size=(2, 4), cache="disk")[0]  # another size: another entry
    assert len(count_opens) == 8
    lab = root / "labels/s0.png"
    png(lab, np.full((6, 8), 3, np.uint8))
    os.utime(lab, ns=(1, 1))  # same size, new mtime (and content)
    assert set(b[0]["label"].unique().tolist()) == {3} and len(count_opens) == 10


def test_disk_cache_with_dataloader_workers(tmp_path, png):
    root = make_paired(tmp_path / "d", png, n=4)
    ds = open_dataset(root, space="camvid", cache="disk", cache_dir=tmp_path / "c")
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    batches = list(loader)
    assert [n for b in batches for n in b["name"]] == ["s0", "s1", "s2", "s3"]
    assert torch.equal(batches[1]["label"][0], ds[2]["label"])
    assert len(list((tmp_path / "c").rglob("*-label.npy"))) == 4


# ---------------------------------------------------------------------------------- image helpers


def test_save_and_load_image_round_trip(tmp_path):
    img = torch.rand(3, 5, 7)
    img[0, 0, 0], img[1, 0, 0] = 1.7, -0.3  # out of range: clipped
    out = save_image(tmp_path / "sub/x.png", img)
    back = load_image(out)
    assert back.shape == (3, 5, 7) and back[0, 0, 0] == 1 and back[1, 0, 0] == 0
    assert (back - img.clamp(0, 1)).abs().max() <= 0.5 / 255 + 1e-6  # rounded, not truncated
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["x.png"]
    with pytest.raises(ValueError, match="unknown image extension"):
        save_image(tmp_path / "x.xyz", img)
    with pytest.raises(DatasetError, match="nope.png: image not found"):
        load_image(tmp_path / "nope.png")
