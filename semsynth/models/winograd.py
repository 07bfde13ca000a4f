"""3x3 convolutions (stride 1, zero padding 1) by Winograd's minimal filtering F(4x4, 3x3)
(Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016).

Why: CRN spends ~95 % of its time in 3x3 convolutions, and oneDNN's direct kernels already run at
0.8-0.9 of this CPU's convolution peak. F(4x4, 3x3) computes each 4x4 output tile from a 6x6 input
tile with 36 products per channel pair instead of 144, so the same convolution takes 4x fewer
multiplies; they run as 36 matrix products (tiles x C_in) @ (C_in x C_out). The transforms
between are additions and small constant factors over memory, ~10-20 % of the time.

Numerics: the transforms are exact up to float32 rounding; measured against a float64
convolution the largest error is ~1e-5 of the largest output (oneDNN's direct fp32 kernel: ~4e-6).
`models/layers.conv2d` decides where this runs (CPU inference in float32, big enough layers);
training and export always use the plain convolution.

The image is processed in bands of tile rows so the padded input rows and the transformed tiles
stay a few MB (36 x tiles x C floats), not 2.25x the activation.
"""

from __future__ import annotations

import torch

# G (6x3): weight transform, U = G g G^T per (C_out, C_in) pair. Input transform B^T (6x6) and
# output transform A^T (4x6) are written out below with their common subexpressions.
_G = (
    (1 / 4, 0, 0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0, 0, 1),
)
TILE = 4  # output tile side (m); input tiles are m + 2 = 6 wide
_TILES_PER_BAND = 256  # tiles per matrix product: large enough for GEMM speed, small for cache


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 3, 3) weights -> (36, C_in, C_out): G g G^T per channel pair, as one matrix
    product with kron(G, G) (36 x 9) in the weights' dtype (error ~1e-7 relative in float32)."""
    co, ci = weight.shape[:2]
    g = torch.tensor(_G, dtype=torch.float64)
    k = torch.kron(g, g).to(weight.dtype).to(weight.device)
    w = weight.detach().permute(1, 0, 2, 3).reshape(ci * co, 9)  # rows in (C_in, C_out) order
    return (k @ w.T).view(36, ci, co)


def _input_1d(s, out, t1, t2):
    """out[0..5] = B^T @ s[0..5] along one axis (s, out: lists of 6 equally shaped tensors)."""
    torch.add(s[4], s[0], alpha=4, out=out[0]).add_(s[2], alpha=-5)
    torch.add(s[4], s[2], alpha=-4, out=t1)  # s4 - 4 s2
    torch.add(s[3], s[1], alpha=-4, out=t2)  # s3 - 4 s1
    torch.add(t1, t2, out=out[1])
    torch.sub(t1, t2, out=out[2])
    torch.sub(s[4], s[2], out=t1)
    torch.sub(s[3], s[1], out=t2)
    torch.add(t1, t2, alpha=2, out=out[3])
    torch.add(t1, t2, alpha=-2, out=out[4])
    torch.add(s[5], s[1], alpha=4, out=out[5]).add_(s[3], alpha=-5)


def _output_1d(m, out, t1, t2):
    """out[0..3] = A^T @ m[0..5] along one axis."""
    torch.add(m[1], m[2], out=t1)  # s = m1 + m2
    torch.add(m[3], m[4], out=t2)  # s2 = m3 + m4
    torch.add(t1, t2, out=out[0]).add_(m[0])
    torch.add(t1, t2, alpha=4, out=out[2])
    torch.sub(m[1], m[2], out=t1)  # d = m1 - m2
    torch.sub(m[3], m[4], out=t2)  # d2 = m3 - m4
    torch.add(t1, t2, alpha=2, out=out[1])
    torch.add(t1, t2, alpha=8, out=out[3]).add_(m[5])


def conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """conv2d(x, weight, bias, padding=1) for x (B, C_in, H, W) and u = transform_weight(weight);
    returns (B, C_out, H, W) in channels_last. Any H, W (tiles past the edge are cropped)."""
    B, C, H, W = x.shape
    co = u.shape[2]
    th, tw = -(-H // TILE), -(-W // TILE)
    hp, wp = th * TILE, tw * TILE
    band = max(1, min(th, round(_TILES_PER_BAND / tw)))
    y = torch.empty(B, co, hp, wp, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    # The band's input rows with a zero border, channels last: small enough to stay in cache for
    # the transform (a padded copy of the whole input is a fresh 280 MB at 256x512, page faults).
    pad = x.new_zeros(TILE * band + 2, wp + 2, C)
    rows = x.new_empty(6, band, wp + 2, C)
    tiles = x.new_empty(6, 6, band, tw, C)
    prod = x.new_empty(36, band * tw, co)
    half = x.new_empty(4, 6, band, tw, co)
    t_in = x.new_empty(2, band, wp + 2, C)
    t_col = x.new_empty(2, band, tw, C)
    t_out = x.new_empty(2, 6, band, tw, co)
    t_fin = x.new_empty(2, band, tw, co)
    for n in range(B):
        xn = x[n].permute(1, 2, 0)  # (H, W, C)
        yn = y[n].permute(1, 2, 0).view(th, TILE, tw, TILE, co)
        for t0 in range(0, th, band):
            b = min(band, th - t0)
            r0 = TILE * t0 - 1  # image row of pad row 0; tile row t covers pad rows 4t .. 4t+5
            lo, hi = max(r0, 0), min(r0 + TILE * b + 2, H)
            pad[lo - r0 : hi - r0, 1 : W + 1].copy_(xn[lo:hi])
            pad[: lo - r0].zero_()
            pad[hi - r0 :].zero_()
            # Input transform, rows then columns.
            src = [pad[i : i + TILE * b : TILE] for i in range(6)]
            _input_1d(src, list(rows[:, :b]), t_in[0, :b], t_in[1, :b])
            for k in range(6):
                cols = [rows[k, :b, j : j + TILE * tw : TILE] for j in range(6)]
                _input_1d(cols, list(tiles[k, :, :b]), t_col[0, :b], t_col[1, :b])
            v = tiles[:, :, :b].reshape(36, b * tw, C)  # a view when b == band
            m = prod[:, : b * tw]
            torch.bmm(v, u, out=m)
            m = m.view(6, 6, b, tw, co)
            # Output transform, rows then columns, written into the output's 4x4 tile positions.
            _output_1d(list(m), list(half[:, :, :b]), t_out[0, :, :b], t_out[1, :, :b])
            for i in range(4):
                dst = [yn[t0 : t0 + b, i, :, j] for j in range(4)]
                _output_1d(list(half[i, :, :b]), dst, t_fin[0, :b], t_fin[1, :b])
    if bias is not None:
        y.add_(bias.view(1, -1, 1, 1))
    if hp != H or wp != W:
        y = y[:, :, :H, :W].contiguous(memory_format=torch.channels_last)
    return y
