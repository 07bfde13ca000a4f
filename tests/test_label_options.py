"""Label decoding never crashes (hypothesis fuzz: random bytes, damaged PNG headers, random modes
and palettes), warns when a grey map is probably misread (trainIds read as labelIds, JPEG), and
the --label-space / --label-encoding options reach every command that reads layouts."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from semsynth.cli import main as cli
from semsynth.labels import LabelError, LabelWarning, get_space, layout_reader
from semsynth.layouts import street_layout

FUZZ_EXAMPLES = 500  # per fuzz test (three tests: 1,500 label files per run)
SPACES = ["cityscapes", "camvid", "cocostuff", "ade20k"]
ENCODINGS = [None, "auto", "color", "index", "labelId", "trainId", "instanceId", "id", "bogus"]
MODES = ["L", "P", "RGB", "RGBA", "LA", "I;16", "I", "1", "F", "CMYK", "YCbCr"]
fuzz = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _check_read(path, space_name: str, encoding):
    """The property: a valid class map, or a LabelError; nothing else escapes."""
    space = get_space(space_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LabelWarning)
        try:
            out = space.read(path, encoding)
        except LabelError as e:
            assert str(e)  # a message, naming something
            return
    assert out.dtype == np.int64 and out.ndim == 2
    assert out.min() >= 0 and out.max() <= space.void


def _image_bytes(mode: str, arr: np.ndarray, palette: bytes | None) -> bytes:
    """A small image of `mode` from random values; PNG where PNG can hold the mode."""
    a8 = (arr % 256).astype(np.uint8)
    if mode == "P":
        im = Image.fromarray(a8[..., 0]).convert("P")
        if palette and len(palette) >= 3:
            im.putpalette(palette[: len(palette) // 3 * 3])
    elif mode in ("RGB", "RGBA", "CMYK"):
        im = Image.fromarray(a8[..., : {"RGB": 3, "RGBA": 4, "CMYK": 4}[mode]], mode)
    elif mode == "LA":
        im = Image.fromarray(a8[..., :2], "LA")
    elif mode == "YCbCr":
        im = Image.fromarray(a8[..., :3], "RGB").convert("YCbCr")
    elif mode == "1":
        im = Image.fromarray(a8[..., 0] > 127)
    else:
        dtype = {"L": np.uint8, "I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        im = Image.fromarray((arr[..., 0] % (256 if mode == "L" else 65536)).astype(dtype))
    buf = io.BytesIO()
    im.save(buf, format={"F": "TIFF", "I": "TIFF", "CMYK": "TIFF", "YCbCr": "JPEG"}.get(mode, "PNG"))
    return buf.getvalue()


@fuzz
@given(
    data=st.binary(max_size=600),
    space=st.sampled_from(SPACES),
    enc=st.sampled_from(ENCODINGS),
    suffix=st.sampled_from([".png", ".jpg", ".bmp", ".tif"]),
)
def test_fuzz_random_bytes(tmp_path, data, space, enc, suffix):
    f = tmp_path / f"x_labelIds{suffix}"
    f.write_bytes(data)
    _check_read(f, space, enc)


@fuzz
@given(
    mode=st.sampled_from(MODES),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    hi=st.sampled_from([2, 12, 20, 35, 151, 183, 256, 70000]),
    space=st.sampled_from(SPACES),
    enc=st.sampled_from(ENCODINGS),
    palette=st.one_of(st.none(), st.binary(min_size=0, max_size=768)),
)
def test_fuzz_modes_and_palettes(tmp_path, mode, h, w, seed, hi, space, enc, palette):
    arr = np.random.default_rng(seed).integers(0, hi, (h, w, 4))
    f = tmp_path / "y.png"
    f.write_bytes(_image_bytes(mode, arr, palette))
    _check_read(f, space, enc)


@fuzz
@given(
    seed=st.integers(0, 2**32 - 1),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 400)),
    space=st.sampled_from(SPACES),
)
def test_fuzz_damaged_png_headers(tmp_path, seed, flips, cut, space):
    arr = np.random.default_rng(seed).integers(0, 19, (16, 16)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    b = bytearray(buf.getvalue())
    for pos, val in flips:
        b[pos % len(b)] = val
    f = tmp_path / "z_trainIds.png"
    f.write_bytes(bytes(b[:cut] if cut is not None else b))
    _check_read(f, space, None)


def test_trainids_read_as_labelids_warns(tmp_path, png):
    ids = street_layout(3, (64, 128)).astype(np.uint8)  # class indices = trainIds 0..18, void 19
    assert ids.max() < 19  # class indices 0..18 = trainIds, no void: every pixel also a valid labelId
    f = png(tmp_path / "scene.png", ids)  # the name does not say trainIds
    space = get_space("cityscapes")
    with pytest.warns(LabelWarning, match=r"scene.png: read as cityscapes labelIds .* void; as trainIds only"):
        space.read(f)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LabelWarning)
        assert np.array_equal(space.read(f, "trainId"), ids)  # explicit: no warning
        space.read(png(tmp_path / "scene_trainIds.png", ids))  # named: no warning
        real = street_layout(3, (64, 128))
        labelids = np.array([7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33], np.uint8)
        space.read(png(tmp_path / "ok.png", labelids[np.where(real >= 19, 0, real)]))  # real labelIds


def test_jpeg_label_map_warns(tmp_path):
    f = tmp_path / "lab.jpg"
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(f, quality=100)
    with pytest.warns(LabelWarning, match="is a JPEG"):
        get_space("cityscapes").read(f)


def test_cli_prints_label_warnings_as_one_line(tmp_path, png, capsys):
    ids = street_layout(1, (64, 128)).astype(np.uint8)
    assert ids.max() < 19
    f = png(tmp_path / "l" / "scene.png", ids)
    assert cli(["sims", "order-prior", "--data", str(f)]) == 0
    err = capsys.readouterr().err
    assert "semsynth: warning: " in err and "--label-encoding trainId" in err and "warnings.warn" not in err


def test_layout_reader_maps_another_space_by_class_name(tmp_path, png):
    space = get_space("cityscapes")
    yaml_space = tmp_path / "mine.yaml"
    yaml_space.write_text(
        "name: mine\nclasses:\n  - {name: Road, id: 1, color: [1, 2, 3]}\n"
        "  - {name: car, id: 2, color: [4, 5, 6]}\nvoid: {ids: [0]}\n"
    )
    f = png(tmp_path / "m.png", np.array([[1, 2], [0, 1]], np.uint8))
    got = layout_reader(space, str(yaml_space))(f)
    assert got.tolist() == [[space.names.index("road"), space.names.index("car")], [space.void, 0]]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nclasses:\n  - {name: spaceship, id: 1, color: [1, 2, 3]}\n")
    with pytest.raises(LabelError, match="spaceship"):
        layout_reader(space, str(bad))


def test_synthesize_and_demo_take_label_options(tmp_path, png, capsys):
    ids = street_layout(2, (64, 128)).astype(np.uint8)
    ids[:4, :4] = 255  # some void pixels: 255 is no labelId
    f = png(tmp_path / "l" / "plain.png", ids)  # trainIds (void 255) under a neutral name
    assert cli(["synthesize", "default", str(f), "-o", str(tmp_path / "o1"), "--k", "1"]) == 2  # 255 not a labelId
    assert "Wrong --label-space or --label-encoding?" in capsys.readouterr().err
    assert (
        cli(["synthesize", "default", str(f), "-o", str(tmp_path / "o1"), "--k", "1", "--label-encoding", "trainId"])
        == 0
    )
    assert cli(["demo", str(f), "-o", str(tmp_path / "d"), "--k", "1", "--quiet", "--label-encoding", "trainId"]) == 0
    assert (tmp_path / "d" / "index.html").is_file()
