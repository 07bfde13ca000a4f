"""`semsynth demo`: end to end on a tiny checkpoint made here (and on the bundled model when it is
installed), the page links exactly the files written, output folders are never silently reused."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semsynth.checkpoint import BUNDLED, save_model
from semsynth.cli import main
from semsynth.data import resize_label
from semsynth.demo import run_demo
from semsynth.labels import get_space
from semsynth.layouts import street_layout
from semsynth.models import build_model, model_config

SIZE = (32, 64)  # the tiny model's native size (4 levels from 4x8)


def _tiny(path: Path, space: str = "cityscapes", k: int = 2) -> Path:
    sp = get_space(space)
    torch.manual_seed(0)
    cfg = model_config({"arch": "crn", "levels": 4, "k": k, "width_mult": 1 / 32, "num_classes": sp.num_classes})
    save_model(path / "model.safetensors", build_model(cfg), cfg, sp, "crn", step=123)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return _tiny(tmp_path_factory.mktemp("tiny"))


def _links(index: Path) -> set[str]:
    return set(re.findall(r'(?:src|href)="([^"]+)"', index.read_text(encoding="utf-8")))


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {"index.html"}


def test_procedural_demo_end_to_end(tiny, tmp_path):
    out = tmp_path / "demo"
    index = run_demo(out, n=2, seed=5, model=tiny, device="cpu", progress=False)
    assert index == out / "index.html" and index.is_file()
    written = _files(out)
    assert written == {
        "layouts/street_0005.png",
        "layouts/street_0006.png",
        *(f"outputs/street_000{s}_k{i}.png" for s in (5, 6) for i in range(2)),
    }
    assert _links(index) == written  # every image shown exists, every file written is shown
    assert not list(out.rglob(".*"))  # no temp files left behind
    space = get_space("cityscapes")
    for s in (5, 6):  # the colour layouts decode back to exactly what the model was given
        assert np.array_equal(space.read(out / f"layouts/street_{s:04d}.png"), street_layout(s, SIZE))
        for i in range(2):
            im = Image.open(out / f"outputs/street_{s:04d}_k{i}.png")
            assert im.size == (SIZE[1], SIZE[0]) and im.mode == "RGB"
    page = index.read_text(encoding="utf-8")
    for fact in ("training step", "123", "cityscapes", "cpu", "wall time", str(tiny)):
        assert fact in page
    assert "road" in page and "sky" in page  # legend of the classes present


def test_k_and_single_output_names(tiny, tmp_path):
    index = run_demo(tmp_path / "d", n=1, k=1, model=tiny, device="cpu", progress=False)
    assert _files(index.parent) == {"layouts/street_0000.png", "outputs/street_0000.png"}
    assert _links(index) == _files(index.parent)
    with pytest.raises(ValueError, match="k must be at least 1"):
        run_demo(tmp_path / "e", n=1, k=0, model=tiny, progress=False)


def test_existing_folder_needs_overwrite(tiny, tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"not empty.*--overwrite"):
        run_demo(out, n=1, model=tiny, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # nothing written
    index = run_demo(out, n=1, model=tiny, progress=False, overwrite=True)
    assert index.is_file() and (out / "notes.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()  # an existing empty folder is fine
    assert run_demo(tmp_path / "empty", n=1, model=tiny, progress=False).is_file()


def test_default_folder_is_fresh(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = run_demo(n=1, model=tiny, progress=False)
    second = run_demo(n=1, model=tiny, progress=False)
    assert first == Path("semsynth-demo/index.html") and second == Path("semsynth-demo-2/index.html")
    assert first.is_file() and second.is_file()


def test_cli(tiny, tmp_path, capsys):
    out = tmp_path / "cli"
    args = [
        "demo",
        "-o",
        str(out),
        "-n",
        "1",
        "--seed",
        "3",
        "--k",
        "1",
        "--model",
        str(tiny),
        "--device",
        "cpu",
        "--quiet",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert str(out / "index.html") in printed
    assert _files(out) == {"layouts/street_0003.png", "outputs/street_0003.png"}
    assert main(args) == 2  # the folder is taken now
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_user_label_maps(tiny, tmp_path, data):
    files = sorted((data / "cityscapes/gtFine/val/frankfurt").glob("*_labelIds.png"))[:1]
    seq = sorted((data / "cityscapes_sequences/labels").glob("seq0005_*.png"))[:1]
    if not files or not seq:
        pytest.skip("frankfurt val / seq0005 label maps not in the shared data")
    index = run_demo(tmp_path / "u", inputs=[*files, *seq], model=tiny, progress=False)
    names = [files[0].stem, seq[0].stem]
    assert _files(index.parent) == {
        *(f"layouts/{n}.png" for n in names),
        *(f"outputs/{n}_k{i}.png" for n in names for i in range(2)),
    }
    assert _links(index) == _files(index.parent)
    space = get_space("cityscapes")
    for f, n in zip([*files, *seq], names):
        assert np.array_equal(space.read(index.parent / f"layouts/{n}.png"), resize_label(space.read(f), SIZE))
    assert files[0].name in index.read_text(encoding="utf-8")


def test_user_label_maps_duplicate_names_and_errors(tiny, tmp_path, png):
    space = get_space("cityscapes")
    ids = street_layout(0, (16, 32))
    png(tmp_path / "a/x_trainIds.png", ids.astype(np.uint8))
    png(tmp_path / "b/x_trainIds.png", ids.astype(np.uint8))
    index = run_demo(tmp_path / "o", inputs=[tmp_path / "a", tmp_path / "b"], k=1, model=tiny, progress=False)
    assert _files(index.parent) == {
        "layouts/x_trainIds.png",
        "layouts/x_trainIds_2.png",
        "outputs/x_trainIds.png",
        "outputs/x_trainIds_2.png",
    }
    assert np.array_equal(space.read(index.parent / "layouts/x_trainIds_2.png"), resize_label(ids, SIZE))
    png(tmp_path / "bad/y_trainIds.png", np.full((8, 8), 77, np.uint8))
    with pytest.raises(ValueError, match="77"):
        run_demo(tmp_path / "p", inputs=[tmp_path / "bad"], model=tiny, progress=False)
    assert not (tmp_path / "p").exists()  # a bad input stops the demo before anything is written


def test_procedural_needs_cityscapes_model(tmp_path):
    camvid = _tiny(tmp_path / "camvid", space="camvid")
    with pytest.raises(ValueError, match="pass label maps"):
        run_demo(tmp_path / "d", model=camvid, progress=False)


def test_bundled_default_model(tmp_path):
    if not (BUNDLED["default"] / "model.safetensors").is_file():
        pytest.skip("the bundled default model is not installed (semsynth/assets/default/model.safetensors)")
    index = run_demo(tmp_path / "d", n=1, k=1, device="cpu", progress=False)
    img = np.asarray(Image.open(index.parent / "outputs/street_0000.png"))
    assert img.shape == (128, 256, 3) and img.std() > 5  # a picture, not a flat colour
