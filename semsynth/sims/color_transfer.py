"""Colour transfer by the linear Monge-Kantorovich mapping ("MKL", Pitié & Kokaram 2007; SPEC B.7).

Given source pixels X0 (covariance A, mean mu0) and target pixels X1 (covariance B, mean mu1),
the linear map T with T A T = B that moves colours the least is

    T = A^-1/2 (A^1/2 B A^1/2)^1/2 A^-1/2,        result = (X0 - mu0) T + mu1.

As in the reference implementation, the square roots are taken through eigen-decompositions with
negative eigenvalues clamped and a small epsilon added, so degenerate (flat, grey) inputs give a
finite map. SIMS uses it (only) to recolour 20 % of the pasted segments of training canvases.
The iterative IDT method of the same package is not used by SIMS and not provided.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mkl_matrix", "mkl_map", "mkl_transfer", "mkl_transfer_image"]

_EPS = 2.2204e-16  # MATLAB's eps, as the reference code


def _cov(x: np.ndarray) -> np.ndarray:
    if len(x) < 2:
        return np.zeros((x.shape[1], x.shape[1]))
    return np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def mkl_matrix(a: np.ndarray, b: np.ndarray, eps: float = _EPS) -> np.ndarray:
    """The MKL map T for source covariance `a` and target covariance `b` (d x d)."""
    da2, ua = np.linalg.eigh(a)
    da = np.sqrt(np.maximum(da2, 0) + eps)
    c = (da[:, None] * (ua.T @ b @ ua)) * da[None, :]  # Da Ua' B Ua Da
    dc2, uc = np.linalg.eigh((c + c.T) / 2)
    dc = np.sqrt(np.maximum(dc2, 0) + eps)
    inv_da = 1.0 / da
    return ua @ (inv_da[:, None] * (uc @ (dc[:, None] * uc.T)) * inv_da[None, :]) @ ua.T


def mkl_map(pixels: np.ndarray, source: np.ndarray, target: np.ndarray, eps: float = _EPS) -> np.ndarray:
    """Apply the MKL map fitted from `source` (N, 3) to `target` (M, 3) colours to `pixels` (P, 3):
    (pixels - mean(source)) T + mean(target). Float in, float out (no clipping: callers clip)."""
    return (pixels - source.mean(0)) @ mkl_matrix(_cov(source), _cov(target), eps) + target.mean(0)


def mkl_transfer(source: np.ndarray, target: np.ndarray, eps: float = _EPS) -> np.ndarray:
    """Recolour `source` pixels (N, 3) so that their mean and covariance match `target`'s (M, 3).
    Float in, float out (no clipping: callers clip to their range)."""
    x0 = np.asarray(source, dtype=np.float64).reshape(-1, np.shape(source)[-1])
    x1 = np.asarray(target, dtype=np.float64).reshape(-1, np.shape(target)[-1])
    if len(x0) == 0 or len(x1) == 0:
        raise ValueError("mkl_transfer needs at least one source and one target pixel")
    return mkl_map(x0, x0, x1, eps).reshape(np.shape(source))


def mkl_transfer_image(
    image: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None, ref_mask: np.ndarray | None = None
) -> np.ndarray:
    """Recolour an (H, W, 3) image (uint8 or float [0, 1]) towards a reference image's colours.
    Statistics come from the masked pixels (all if no mask); every pixel of `image` is mapped.
    Returns the same dtype as `image`, clipped to its range."""
    img = np.asarray(image)
    scale = 255.0 if img.dtype == np.uint8 else 1.0
    x = img.astype(np.float64) / scale
    r = np.asarray(reference).astype(np.float64) / (255.0 if np.asarray(reference).dtype == np.uint8 else 1.0)
    src = x[mask] if mask is not None else x.reshape(-1, 3)
    tgt = r[ref_mask] if ref_mask is not None else r.reshape(-1, 3)
    out = np.clip(mkl_map(x, src, tgt), 0.0, 1.0)
    return (out * 255.0 + 0.5).astype(np.uint8) if img.dtype == np.uint8 else out.astype(img.dtype)
