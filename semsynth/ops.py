"""Binary mask morphology, the one implementation every SIMS step uses (canvas bands, order-pair
adjacency and boundary bands, training canvases).

Masks are boolean NumPy arrays (H, W) or stacks (..., H, W); squares are applied to the last two
axes. `edge` is what MATLAB's `edge(mask, 'sobel', 0)` marks on a binary mask (up to its
thinning): the pixels on both sides of the outline, a pixel whose 3x3 neighbourhood holds both
values. The frame border is not an outline.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["dilate", "edge"]


def _square(mask: np.ndarray, size: int) -> tuple[int, ...]:
    return (1,) * (mask.ndim - 2) + (size, size)


def _bytes(mask) -> np.ndarray:
    return np.asarray(mask, dtype=bool).view(np.uint8)


def dilate(mask, size: int) -> np.ndarray:
    """Dilation by a size x size square (MATLAB strel('square', size)); size <= 1: unchanged.
    Every caller passes an odd size, so the square is centred."""
    if size <= 1:
        return np.asarray(mask, dtype=bool)
    return ndimage.maximum_filter(_bytes(mask), size=_square(mask, size), mode="constant").view(bool)


def edge(mask) -> np.ndarray:
    """Pixels on both sides of the mask's outline (3x3 neighbourhood holding both values)."""
    m = _bytes(mask)
    fp = _square(m, 3)
    return ndimage.maximum_filter(m, size=fp, mode="nearest") != ndimage.minimum_filter(m, size=fp, mode="nearest")
