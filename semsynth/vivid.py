"""The original CRN's "vivid" photo preprocessing (SPEC A.1.2; CRN:optional_preprocessing/).

"The original Cityscapes images look dull": before training 512p and 1024p, the original
tone-mapped every (already resized) training photo. Per image:

1. rgb = clip(im, 0, 1) ** 0.75, then CIELAB; L is the lightness (0..100).
2. Two edge-preserving smoothings of L with the WLS filter (Farbman et al. 2008):
   L0 = WLS(L, lambda=0.125, alpha=1.2), L1 = WLS(L, lambda=0.5, alpha=1.2).
3. Three tone maps (fine, medium, coarse) of (L, L0, L1); a and b times the saturation; back to
   sRGB; the output is the mean of the three.

`vivid(rgb)` does this for one uint8 photo; `data.LayoutDataset(vivid=True)` applies it after
resizing, and caches the result like any decoded sample.

Deliberate difference: the colour conversions are the standard sRGB (D65) <-> CIELAB formulas;
the MATLAB script's `makecform('srgb2lab')` may adapt to a D50 white, which shifts a and b
slightly (not L, which drives the tone maps).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

# (val0, val1, val2, exposure, saturation, gamma): generate_vivid_images_512full.m:22-50
TONE_MAPS = ((25, 1, 1, 1.0, 1.1, 1.0), (1, 40, 1, 1.0, 1.1, 1.0), (4, 1, 15, 1.10, 1.1, 1.0))
_WHITE = np.array([0.95047, 1.0, 1.08883])  # D65
_M = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]])


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) sRGB in [0, 1] -> CIELAB (L 0..100)."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = lin @ _M.T / _WHITE
    d = 6 / 29
    f = np.where(xyz > d**3, np.cbrt(xyz), xyz / (3 * d * d) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB -> (H, W, 3) sRGB clipped to [0, 1]."""
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], -1)
    d = 6 / 29
    xyz = np.where(f > d, f**3, 3 * d * d * (f - 4 / 29)) * _WHITE
    lin = np.clip(xyz @ np.linalg.inv(_M).T, 0, None)
    rgb = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    return np.clip(rgb, 0, 1)


def wls_matrix(img: np.ndarray, lam: float, alpha: float, small: float = 1e-4) -> sp.csr_matrix:
    """The WLS system matrix (wlsFilter.m): I plus the five-point Laplacian whose neighbour
    weights are lam / (|grad log(img + eps)|^alpha + small); symmetric positive definite."""
    h, w = img.shape
    n = h * w
    log = np.log(img + np.finfo(np.float64).eps)
    wy = lam / (np.abs(np.diff(log, axis=0)) ** alpha + small)  # (h-1, w) between rows
    wx = lam / (np.abs(np.diff(log, axis=1)) ** alpha + small)  # (h, w-1) between columns
    idx = np.arange(n).reshape(h, w)
    rows = np.concatenate([idx[:-1].ravel(), idx[:, :-1].ravel()])
    cols = np.concatenate([idx[1:].ravel(), idx[:, 1:].ravel()])
    vals = np.concatenate([wy.ravel(), wx.ravel()])
    off = sp.coo_matrix((-vals, (rows, cols)), shape=(n, n))
    deg = np.zeros(n)
    np.add.at(deg, rows, vals)
    np.add.at(deg, cols, vals)
    return (off + off.T + sp.diags(1 + deg)).tocsr()


def wls_filter(img: np.ndarray, lam: float, alpha: float) -> np.ndarray:
    """Weighted-least-squares edge-preserving smoothing (Farbman et al. 2008; wlsFilter.m):
    solve `wls_matrix(img) u = img`. The original uses a sparse direct solve (MATLAB's backslash);
    that takes minutes per 512x1024 photo here, so the system is solved by algebraic multigrid +
    CG to a relative residual of 1e-8 (differences from the direct solve ~1e-6 lightness units)."""
    import pyamg

    A = wls_matrix(img, lam, alpha)
    ml = pyamg.smoothed_aggregation_solver(A, symmetry="symmetric")
    return ml.solve(img.ravel().astype(np.float64), tol=1e-8, accel="cg").reshape(img.shape)


def _s(x: np.ndarray, a: float) -> np.ndarray:
    """sigmoid.m: (logistic(a x) - 0.5) * 0.5 / (logistic(a / 2) - 0.5)."""
    logistic = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    return (logistic(a * x) - 0.5) * 0.5 / (logistic(a / 2) - 0.5)


def tonemap_lab(
    lab: np.ndarray, L0: np.ndarray, L1: np.ndarray, val0, val1, val2, exposure, saturation, gamma
) -> np.ndarray:
    """tonemapLAB.m for positive parameters: detail (L - L0), mid (L0 - L1) and base (L1) layers
    each through the sigmoid, a and b scaled by the saturation."""
    L = lab[..., 0]
    d0 = _s((L - L0) / 100, val0) * 100
    d1 = _s((L0 - L1) / 100, val1) * 100
    base = _s((exposure * L1 - 56) / 100, val2) * 100 + 56
    out = lab.copy()
    if gamma != 1:  # the original's three maps all use gamma = 1; its other branch is not specified
        raise NotImplementedError("tone maps with gamma != 1")
    out[..., 0] = base + d1 + d0
    out[..., 1:] *= saturation
    return out


def vivid(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 photo -> its vivid version (uint8), as the original's preprocessing."""
    x = np.clip(np.asarray(rgb, dtype=np.float64) / 255.0, 0, 1) ** 0.75
    lab = srgb_to_lab(x)
    L = lab[..., 0]
    L0, L1 = wls_filter(L, 0.125, 1.2), wls_filter(L, 0.5, 1.2)
    out = np.mean([lab_to_srgb(tonemap_lab(lab, L0, L1, *t)) for t in TONE_MAPS], axis=0)
    return (out * 255 + 0.5).astype(np.uint8)
