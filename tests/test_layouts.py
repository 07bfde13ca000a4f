"""Procedural street layouts: deterministic, plausible (class placement invariants), perspective
consistent, and written files decode back exactly."""

from __future__ import annotations

import numpy as np
import pytest

from semsynth import layouts as L
from semsynth.labels import get_space
from semsynth.layouts import CLASSES, street_layout, street_layouts, write_layouts

SEEDS = range(6)
SIZE = (128, 256)


@pytest.fixture(scope="module")
def maps():
    return {s: street_layout(s, SIZE) for s in SEEDS}


def test_deterministic_and_seed_dependent(maps):
    a = street_layout(0, SIZE)
    assert a.dtype == np.int64 and a.shape == SIZE
    assert np.array_equal(a, maps[0])
    assert all(not np.array_equal(maps[s], maps[t]) for s in SEEDS for t in SEEDS if s < t)
    assert np.array_equal(street_layouts(2, seed=4, size=SIZE), np.stack([maps[4], maps[5]]))


def test_only_cityscapes_classes_and_no_void(maps):
    space = get_space("cityscapes")
    for a in maps.values():
        assert a.min() >= 0 and a.max() < space.num_classes


def test_every_required_class_appears_over_a_few_seeds(maps):
    required = [
        "road",
        "sidewalk",
        "building",
        "vegetation",
        "terrain",
        "sky",
        "pole",
        "traffic sign",
        "traffic light",
        "car",
        "person",
    ]
    present = set().union(*(set(np.unique(a).tolist()) for a in maps.values()))
    assert {CLASSES[n] for n in required} <= present, [n for n in required if CLASSES[n] not in present]
    for a in maps.values():  # the backbone of every street
        backbone = {CLASSES[n] for n in ("road", "sidewalk", "building", "sky", "car")}
        assert backbone <= set(np.unique(a).tolist())


def test_sky_on_top_road_below_and_reaching_the_bottom(maps):
    rows = np.arange(SIZE[0])[:, None]
    for a in maps.values():
        sky, road = a == CLASSES["sky"], a == CLASSES["road"]
        assert rows[sky.any(1)].max() < rows[road.any(1)].min()  # a horizon separates them
        assert sky[0].any() or sky[: SIZE[0] // 4].any()  # sky at the top of the picture
        bottom = a[-1]
        assert (bottom == CLASSES["road"]).mean() > 0.25  # the camera stands on the road
        # the road is a trapezoid: it narrows to a few pixels towards the vanishing point
        width = road.sum(1)
        top_row = rows[road.any(1)].min()
        assert width[top_row : top_row + 3].max() < 0.3 * SIZE[1] < width[-1]


def test_cars_stand_on_the_road(maps):
    on_road = total = 0
    for a in maps.values():
        car = a == CLASSES["car"]
        cols = np.flatnonzero(car.any(0))
        lowest = SIZE[0] - 1 - np.argmax(car[::-1, cols], axis=0)  # lowest car pixel per column
        ok = lowest < SIZE[0] - 1
        below = a[lowest[ok] + 1, cols[ok]]
        on_road += int((below == CLASSES["road"]).sum())
        total += int(ok.sum())
    assert total and on_road / total > 0.8


def test_sidewalks_flank_the_road_and_persons_stand_on_them(maps):
    for a in maps.values():
        row = a[-1]
        road_cols = np.flatnonzero(row == CLASSES["road"])
        side_cols = np.flatnonzero(row == CLASSES["sidewalk"])
        # in the bottom row, sidewalk (if visible) lies outside the road span, never inside it
        assert not ((side_cols > road_cols.min()) & (side_cols < road_cols.max())).any()
    from scipy import ndimage

    feet = total = 0
    for s in range(12):
        a = street_layout(s, SIZE)
        comps, n = ndimage.label(a == CLASSES["person"])
        for i in range(1, n + 1):  # the row under each visible figure's lowest pixels
            r, c = np.nonzero(comps == i)
            if len(r) >= 20 and r.max() + 1 < SIZE[0]:
                under = a[r.max() + 1, c[r == r.max()]]
                total += 1  # on the pavement, or with the feet hidden by a nearer object
                ok = [CLASSES[k] for k in ("sidewalk", "car", "bus", "truck", "pole", "vegetation")]
                feet += bool(np.isin(under, ok).any())
    assert total > 10 and feet / total > 0.9


def test_same_scene_at_any_resolution():
    small, large = street_layout(7, (128, 256)), street_layout(7, (256, 512))
    assert (large[::2, ::2] == small).mean() > 0.95


def test_perspective_size_and_depth_occlusion():
    """A car twice as far is half as wide; nearer things hide farther ones whatever the drawing order."""

    def canvas():
        return L._Canvas((128, 256), f=280.0, hc=1.3, yh=55.0, xv=128.0)

    widths = []
    for z in (10.0, 20.0):
        cv = canvas()
        L._vehicle(cv, 0.0, z, L.CAR, np.random.default_rng(0))
        cols = np.flatnonzero((cv.label == CLASSES["car"]).any(0))
        widths.append(cols.max() - cols.min() + 1)
    assert abs(widths[0] / widths[1] - 2) < 0.15

    a, b = canvas(), canvas()
    L._vehicle(a, 0.5, 12.0, L.CAR, np.random.default_rng(1))  # near car first ...
    L._vehicle(a, -0.5, 25.0, L.BUS, np.random.default_rng(2))  # ... then a far bus
    L._vehicle(b, -0.5, 25.0, L.BUS, np.random.default_rng(2))
    L._vehicle(b, 0.5, 12.0, L.CAR, np.random.default_rng(1))
    assert np.array_equal(a.label, b.label)
    bus_alone = canvas()
    L._vehicle(bus_alone, -0.5, 25.0, L.BUS, np.random.default_rng(2))
    hidden = (bus_alone.label == CLASSES["bus"]) & (a.label == CLASSES["car"])
    assert hidden.sum() > 50  # the near car covers part of the bus


def test_written_files_decode_back_exactly(tmp_path):
    written = write_layouts(tmp_path, n=2, seed=3, size=(64, 128), color=True)
    assert [p.name for p in written] == [
        "layout_00003_trainIds.png",
        "layout_00003_color.png",
        "layout_00004_trainIds.png",
        "layout_00004_color.png",
    ]
    space = get_space("cityscapes")
    for seed in (3, 4):
        ref = street_layout(seed, (64, 128))
        grey = tmp_path / f"layout_{seed:05d}_trainIds.png"
        assert np.array_equal(space.read(grey, encoding="index"), ref)
        assert np.array_equal(space.read(grey), ref)  # the file name selects trainIds
        assert np.array_equal(space.read(tmp_path / f"layout_{seed:05d}_color.png"), ref)


def test_cli_layouts(tmp_path, capsys):
    from semsynth.cli import main

    out = tmp_path / "lay"
    assert main(["layouts", "-n", "3", "--seed", "0", "--size", "64", "128", "-o", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"layout_{s:05d}_trainIds.png" for s in range(3)]
    assert "wrote 3 file(s)" in capsys.readouterr().out
    got = get_space("cityscapes").read(out / "layout_00001_trainIds.png", encoding="index")
    assert np.array_equal(got, street_layout(1, (64, 128)))
    assert main(["layouts", "-n", "0", "-o", str(out)]) == 2
