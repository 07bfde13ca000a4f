"""Mask morphology (semsynth.ops): the one dilation and edge every SIMS step uses."""

from __future__ import annotations

import numpy as np

from semsynth.ops import dilate, edge


def test_dilation_by_a_centred_square_and_stacks():
    m = np.zeros((9, 11), bool)
    m[4, 5] = True
    d = dilate(m, 5)
    ys, xs = np.nonzero(d)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (2, 6, 3, 7) and d.sum() == 25
    assert dilate(m, 1) is not None and np.array_equal(dilate(m, 1), m)
    corner = np.zeros((9, 11), bool)
    corner[0, 0] = True  # clipped at the frame, not wrapped
    assert dilate(corner, 3).sum() == 4 and not dilate(corner, 3)[-1].any()
    stack = np.stack([m, corner])  # (N, H, W): each mask on its own
    assert np.array_equal(dilate(stack, 3), np.stack([dilate(m, 3), dilate(corner, 3)]))


def test_edge_marks_both_sides_of_the_outline_but_not_the_frame():
    m = np.zeros((8, 10), bool)
    m[2:6, 3:7] = True
    e = edge(m)
    # a one-pixel ring inside and one outside the square: 6x6 minus the 2x2 interior
    assert e.sum() == 36 - 4 and not e[3:5, 4:6].any() and e[1, 2] and e[2, 3]
    full = np.ones((5, 5), bool)
    assert not edge(full).any()  # the frame border is no outline
    half = np.zeros((4, 6), bool)
    half[:, :3] = True
    assert np.array_equal(np.nonzero(edge(half).any(0))[0], [2, 3])
    # the same as "the 3x3 neighbourhood holds both values" on random masks, stacked or not
    rng = np.random.default_rng(0)
    r = rng.random((3, 12, 13)) < 0.4
    both = dilate(r, 3) & dilate(~r, 3)
    assert np.array_equal(edge(r), both) and np.array_equal(edge(r[1]), both[1])
