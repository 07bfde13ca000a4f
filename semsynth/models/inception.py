"""The Inception-v3 of the FID literature, and the statistics computed on its features.

`FIDInceptionV3` is the network of Heusel et al.'s TensorFlow FID code (the 2015-12-05 Inception
graph) as ported to PyTorch by pytorch-fid: torchvision's Inception-v3 layout and parameter names
with a 1008-way ``fc`` and no auxiliary classifier, plus the graph's pooling quirks:

* in the 35x35 (``Mixed_5b..5d``), 17x17 (``Mixed_6b..6e``) blocks and in ``Mixed_7b``, the pool
  branch averages without counting the zero padding (``count_include_pad=False``);
* in ``Mixed_7c`` the pool branch is a 3x3 *max* pool (stride 1, padding 1).

Its parameter names are those of ``pt_inception-2015-12-05-6726825d.pth``, so the user's copy of
that file loads with ``strict=True`` (`load_fid_inception`). The weights are not distributed with
semsynth and never downloaded by it.

The features are the 2048-d global average pool after ``Mixed_7c``. Input: RGB in [0, 1], resized
to 299x299 (bilinear, ``align_corners=False``, no antialiasing, as pytorch-fid) and scaled to
[-1, 1].

`frechet_distance` and `kernel_inception_distance` work on any (N, D) feature arrays, so they
also serve the non-standard distances on other networks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError, InputError, MissingFileError

__all__ = [
    "FIDInceptionV3",
    "load_fid_inception",
    "FID_WEIGHTS_FILE",
    "FID_WEIGHTS_URL",
    "frechet_distance",
    "frechet_distance_features",
    "feature_statistics",
    "kernel_inception_distance",
    "polynomial_mmd",
]

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_FILE


class BasicConv2d(nn.Module):
    """conv (no bias) + BN (eps 1e-3) + ReLU; keys ``conv.weight``, ``bn.*``."""

    def __init__(self, n_in: int, n_out: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(n_in, n_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(n_out, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg3(x):
    """The TF graph's 3x3/1 average pool: the padding is not counted."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1→5x5 | 1x1→3x3→3x3 | avgpool→1x1."""

    def __init__(self, n_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(n_in, 64, 1)
        self.branch5x5_1 = BasicConv2d(n_in, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(n_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(n_in, pool_features, 1)

    def forward(self, x):
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg3(x)),
            ],
            1,
        )


class InceptionB(nn.Module):
    """35→17 reduction: 3x3/2 | 1x1→3x3→3x3/2 | maxpool/2."""

    def __init__(self, n_in: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(n_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(n_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, 3, stride=2),
            ],
            1,
        )


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions."""

    def __init__(self, n_in: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(n_in, 192, 1)
        self.branch7x7_1 = BasicConv2d(n_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(n_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(n_in, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for m in (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            d = m(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class InceptionD(nn.Module):
    """17→8 reduction: 1x1→3x3/2 | 1x1→1x7→7x1→3x3/2 | maxpool/2."""

    def __init__(self, n_in: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(n_in, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(n_in, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3/3x1 outputs; `pool` = "avg" (Mixed_7b) or "max" (Mixed_7c)."""

    def __init__(self, n_in: int, pool: str = "avg"):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(n_in, 320, 1)
        self.branch3x3_1 = BasicConv2d(n_in, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(n_in, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(n_in, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.pool == "max" else _avg3(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(a),
                self.branch3x3_2b(a),
                self.branch3x3dbl_3a(d),
                self.branch3x3dbl_3b(d),
                self.branch_pool(pooled),
            ],
            1,
        )


class FIDInceptionV3(nn.Module):
    """forward(images RGB [0,1], any size) -> (B, 2048) pool features (float32)."""

    def __init__(self, resize_input: bool = True):
        super().__init__()
        self.resize_input = resize_input
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)  # unused for features; present so the file loads strictly

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.resize_input and tuple(x.shape[-2:]) != (299, 299):
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in (
            "Mixed_5b",
            "Mixed_5c",
            "Mixed_5d",
            "Mixed_6a",
            "Mixed_6b",
            "Mixed_6c",
            "Mixed_6d",
            "Mixed_6e",
            "Mixed_7a",
            "Mixed_7b",
            "Mixed_7c",
        ):
            x = getattr(self, name)(x)
        return x.mean((2, 3))


def load_fid_inception(path: str | Path) -> FIDInceptionV3:
    """The FID Inception with the user's ``pt_inception-2015-12-05-6726825d.pth`` (strict load),
    frozen, in eval mode. The file's sha256 is checked against the hash in its name."""
    from .. import weights as W

    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingFileError(f"FID Inception weights not found at {p}; get {FID_WEIGHTS_FILE} from {FID_WEIGHTS_URL}")
    W.verify(p)
    net = FIDInceptionV3()
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        net.load_state_dict(state, strict=True)
    except Exception as e:  # torch.load raises many types on a wrong file (even IndexError)
        why = " ".join(str(e).split())[:300]
        raise CheckpointError(
            f"{p}: not the FID Inception weights {FID_WEIGHTS_FILE} ({type(e).__name__}: {why})"
        ) from None
    return net.requires_grad_(False).eval()


# ----------------------------------------------------------------------------- statistics


def feature_statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of (N, D) features, in float64."""
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise InputError(f"need at least 2 feature vectors (N, D), got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6, method: str = "sqrtm") -> float:
    """||mu1 − mu2||² + Tr(S1 + S2 − 2 (S1 S2)^½), as in the FID literature.

    method="sqrtm" (default, the reference computation of the FID code): scipy's `sqrtm` of
    S1·S2; if it is not finite (singular product, e.g. fewer samples than dimensions) `eps`·I is
    added to both covariances; a small imaginary part from round-off is dropped, a large one is an
    error. method="eigh": Tr (S1 S2)^½ = Σ √λ(S1^½ S2 S1^½) with symmetric eigen-solvers — the
    same value (to round-off), several times faster for singular 2048-d covariances."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise InputError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    if method == "eigh":
        w, u = np.linalg.eigh((s1 + s1.T) / 2)
        r = (u * np.sqrt(np.clip(w, 0, None))) @ u.T
        lam = np.linalg.eigvalsh(r @ s2 @ r)
        tr_covmean = float(np.sqrt(np.clip(lam, 0, None)).sum())
    elif method == "sqrtm":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", linalg.LinAlgWarning)  # singular products are expected
            covmean = linalg.sqrtm(s1 @ s2)
            if not np.isfinite(covmean).all():
                offset = np.eye(s1.shape[0]) * eps
                covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
        if np.iscomplexobj(covmean):
            imag = np.abs(np.diagonal(covmean).imag).max()
            if imag > 1e-3 * max(1.0, np.abs(np.diagonal(covmean).real).max()):
                raise InputError(f"Fréchet distance: matrix square root has a large imaginary part ({imag:.3g})")
            covmean = covmean.real
        tr_covmean = float(np.trace(covmean))
    else:
        raise InputError(f"method must be 'sqrtm' or 'eigh', got {method!r}")
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def frechet_distance_features(x: np.ndarray, y: np.ndarray, method: str = "auto") -> tuple[float, str]:
    """Fréchet distance between the Gaussians fitted to feature sets x (n1, D) and y (n2, D).

    Returns (distance, method used). method="auto": "sqrtm" (the reference computation) when both
    sets have at least D samples; otherwise "lowrank", exact for any n: with centred features A, B,
    the non-zero eigenvalues of S1·S2 are the squared singular values of A·Bᵀ / √((n1−1)(n2−1)),
    so Tr (S1 S2)^½ is that matrix's nuclear norm — an (n1 x n2) SVD instead of a (D x D) square
    root of a singular matrix (minutes for D = 2048 on a CPU). "sqrtm" / "eigh" force the
    covariance route."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise InputError(f"feature sets must be (N, D) with the same D, got {x.shape} and {y.shape}")
    n1, n2, d = len(x), len(y), x.shape[1]
    if n1 < 2 or n2 < 2:
        raise InputError(f"need at least 2 feature vectors per set, got {n1} and {n2}")
    if method == "auto":
        method = "sqrtm" if min(n1, n2) >= d else "lowrank"
    if method != "lowrank":
        return frechet_distance(*feature_statistics(x), *feature_statistics(y), method=method), method
    mu1, mu2 = x.mean(0), y.mean(0)
    a, b = x - mu1, y - mu2
    diff = mu1 - mu2
    tr1, tr2 = (a * a).sum() / (n1 - 1), (b * b).sum() / (n2 - 1)
    nuclear = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    return float(diff @ diff + tr1 + tr2 - 2 * nuclear), method


def polynomial_mmd(
    x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> float:
    """Unbiased MMD² with the kernel k(a, b) = (gamma·a·b + coef0)^degree, gamma = 1/D."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise InputError("MMD needs at least 2 samples per set")
    g = 1.0 / x.shape[1] if gamma is None else gamma
    kxx = (g * x @ x.T + coef0) ** degree
    kyy = (g * y @ y.T + coef0) ** degree
    kxy = (g * x @ y.T + coef0) ** degree
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()
    )


def kernel_inception_distance(
    x: np.ndarray, y: np.ndarray, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> dict:
    """KID (Bińkowski et al. 2018): the unbiased polynomial-kernel MMD² averaged over random
    subsets of size min(subset_size, len(x), len(y)). Returns {"mean", "std", "subset_size",
    "num_subsets"}; deterministic for a given seed."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise InputError(f"KID needs at least 2 samples per set, got {len(x)} and {len(y)}")
    rng = np.random.default_rng(seed)
    vals = np.array(
        [
            polynomial_mmd(x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)])
            for _ in range(num_subsets)
        ]
    )
    return {
        "mean": float(vals.mean()),
        "std": float(vals.std()),
        "subset_size": int(m),
        "num_subsets": int(num_subsets),
    }
