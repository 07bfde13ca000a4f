"""SIMS networks (Qi, Chen, Jia & Koltun, CVPR 2018): transformation, ordering and synthesis.

All three are built from the same unit as CRN: conv 3x3 (no bias) -> LayerNorm over (C, H, W)
(`GroupNorm(1, C, eps=1e-12)`) -> LeakyReLU(0.2), Glorot-uniform init. Pools are 3x3 stride 2
with TensorFlow "SAME" padding (0 before / 1 after on even sizes; averages divide by the number of
real pixels), every resize is bilinear with align_corners=True, as in the original.

* `SIMSTransform` (SPEC B.3): per retrieved segment, [segment RGB, target mask, layout one-hot]
  (3 + 1 + C+1 = 24 ch) resized to 256x512 -> 5-stage encoder -> global mean -> a zero-initialised
  linear layer with identity bias -> an affine theta (2x3), learnt in the original's pixel units
  (`TransformConfig.theta_units`, the presets) and returned normalised. **Deliberate difference:** theta acts on
  PyTorch's normalised coordinates (`F.affine_grid`, align_corners=False: the image spans [-1, 1],
  pixel centres at (2i+1)/W - 1, the centre is exactly the image centre), instead of the original's
  pixel offsets from floor(W/2) with zero-valued last row/column (SPEC B.8.7). Translations are thus
  resolution independent; `pixel_to_normalized` / `normalized_to_pixel` convert, and `snap_theta`
  reproduces the original test-time rounding (integer linear part, whole-pixel shifts).
* `SIMSOrder` (SPEC B.4.3): [pair image, colour layout] (6 ch) at 256x512 -> the same encoder ->
  global mean -> 1x1 conv 1024 + LN + LeakyReLU -> dropout 0.5 -> 1x1 conv to C+1 "front class"
  logits. **Fixed:** the original's 8x12 average pool saw only 12 of the 16 columns (B.8.8).
  Slot c is class index c (the original's slot 0 was an unused placeholder; ours is the last,
  void slot) so the count of outputs, 20 for Cityscapes, is unchanged.
* `SIMSSynthesis` (SPEC B.6.3): [layout one-hot, canvas RGB, canvas support] (C+1+3+1 = 24 ch)
  -> a 6-stage average-pool encoder and a U-Net-like decoder at 256x512 whose every stage also
  sees the whole input resized to its size -> RGB (`(x + 1) / 2`, [0, 1] scale) and C+1 semantic
  logits. `stages` = 0/1/2 selects the 256x512 / 512x1024 / 1024x2048 variant: the backbone always
  runs on the input resized to 1/2**stages, then a 128-wide block at 512x1024 (stages >= 1) and a
  single 1x1 conv at 1024x2048 (stages = 2). **Fixed:** the 1024 variant's one TF1 legacy
  `align_corners=False` resize (pixel 2i sampling, SPEC B.6.3) is replaced by the align_corners=True
  bilinear resize used everywhere else.

Module names are shared between the variants, so `init_from` (the trainer's partial restore by
name and shape) carries the backbone 256 -> 512 and the 512 block and heads 512 -> 1024, as the
README's progressive recipe intends (SPEC B.6.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError
from .layers import Conv2d, cpu_channels_last, layer_norm_lrelu
from .registry import register_arch, register_presets

__all__ = [
    "TransformConfig",
    "OrderConfig",
    "SynthesisConfig",
    "SIMSTransform",
    "SIMSOrder",
    "SIMSSynthesis",
    "warp",
    "pixel_to_normalized",
    "normalized_to_pixel",
    "snap_theta",
    "invert_theta",
    "jitter_theta",
    "pair_input",
    "front_probability",
    "SIMS_PRESETS",
    "tf_pool",
]

# Official widths (SPEC B.3.2, B.4.3, B.6.3): encoder stages, convs per stage.
ENCODER5 = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
ENCODER6 = ENCODER5 + ((512, 512, 512),)
DECODER6 = ((512, 512),) * 5 + ((256, 256),)  # D6, D5, D4, D3, D2, D1 (coarse to fine)
FINAL = (256, 256)  # DF at the backbone resolution
FINE = (128, 128)  # g_decoder_512


def _scale(widths, mult: float):
    return tuple(tuple(max(4, int(round(w * mult))) for w in stage) for stage in widths)


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _same_pad(n: int) -> tuple[int, int]:
    """TF "SAME" padding of a 3x3 stride-2 window on an axis of length n: (before, after)."""
    total = max((math.ceil(n / 2) - 1) * 2 + 3 - n, 0)
    return total // 2, total - total // 2


def tf_pool(x: torch.Tensor, kind: str) -> torch.Tensor:
    """3x3 stride-2 pooling with TF "SAME" padding; `avg` divides by the real (unpadded) count."""
    (t, b), (l, r) = _same_pad(x.shape[-2]), _same_pad(x.shape[-1])
    pad = (l, r, t, b)
    if kind == "max":
        return F.max_pool2d(F.pad(x, pad, value=float("-inf")), 3, 2)
    s = F.avg_pool2d(F.pad(x, pad), 3, 2)
    if not any(pad):
        return s
    ones = torch.ones(1, 1, *x.shape[-2:], dtype=x.dtype, device=x.device)
    return s / F.avg_pool2d(F.pad(ones, pad), 3, 2)


class ConvLN(nn.Module):
    """conv (no bias) -> LayerNorm over C, H, W -> LeakyReLU(0.2); the unit of every SIMS net."""

    def __init__(self, cin: int, cout: int, k: int = 3):
        super().__init__()
        self.conv = Conv2d(cin, cout, k, padding=k // 2, bias=False)
        self.norm = nn.GroupNorm(1, cout, eps=1e-12)

    def forward(self, x):
        return layer_norm_lrelu(self.conv(x), self.norm)


def _block(cin: int, widths) -> nn.Sequential:
    layers = []
    for w in widths:
        layers.append(ConvLN(cin, w))
        cin = w
    return nn.Sequential(*layers)


def _glorot(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class Encoder5(nn.Module):
    """The transformation / ordering encoder: 5 stages, avg pool after the first, max after the rest."""

    def __init__(self, cin: int, widths):
        super().__init__()
        self.stages = nn.ModuleList()
        for ws in widths:
            self.stages.append(_block(cin, ws))
            cin = ws[-1]
        self.out_channels = cin

    def forward(self, x):
        for i, stage in enumerate(self.stages):
            x = tf_pool(stage(x), "avg" if i == 0 else "max")
        # Global mean. The original's VALID average pool (8x16 for the transform, 8x12 for the
        # order net, which skipped the right quarter) equals this at 256x512 for the transform.
        return x.mean(dim=(2, 3))


# ----------------------------------------------------------------------------- configs


@dataclass
class TransformConfig:
    num_classes: int = 19
    work_size: tuple[int, int] = (256, 512)  # the net runs on its inputs resized to this
    width_mult: float = 1.0
    # What the regressor's 6 outputs mean: "pixels" = the original's theta (translations in pixels
    # of the input frame, linear part on pixel offsets from the centre), converted to normalised
    # theta in forward, so Adam at the original's lr 1e-5 moves theta as it did there; "normalised"
    # = affine_grid's theta directly (one unit = W/2 pixels: 1e-5 then moves a 1024-px frame's
    # segments ~500x faster). The presets use "pixels"; the default keeps older checkpoints' meaning.
    theta_units: str = "normalised"


@dataclass
class OrderConfig:
    num_classes: int = 19
    work_size: tuple[int, int] = (256, 512)
    width_mult: float = 1.0
    fc_width: int = 1024
    dropout: float = 0.5  # keep-probability 0.5 in the original


@dataclass
class SynthesisConfig:
    num_classes: int = 19
    stages: int = 0  # 0: 256x512 model, 1: 512x1024, 2: 1024x2048 (backbone at 1/2**stages)
    levels: int = 6  # encoder/decoder stages (6 in the original: 256x512 -> 4x8)
    width_mult: float = 1.0
    grad_checkpoint: bool = False
    native: tuple[int, int] | None = None  # output size it is trained for; default 256x512 * 2**stages
    # Not in SIMS (off in the sims-256p/512p/1024p presets): the RGB head predicts a correction
    # added to the canvas where the canvas holds photo pixels (support minus the white elision
    # pixels), its last conv starting at zero, so the output starts as the canvas itself. A short
    # CPU run then spends its steps on filling and harmonising instead of learning to copy.
    canvas_skip: bool = False

    @property
    def size(self) -> tuple[int, int]:
        """Native output size (H, W): what pipelines compose canvases at."""
        return tuple(self.native) if self.native else (256 * 2**self.stages, 512 * 2**self.stages)


# ----------------------------------------------------------------------------- transformation


@register_arch("sims-transform", TransformConfig)
class SIMSTransform(nn.Module):
    """forward(segment (N,3,H,W) in [0,1], target_mask (N,1,H,W), label_onehot (N,C+1,H,W))
    -> theta (N, 2, 3), an affine map on normalised output coordinates -> input coordinates
    (`F.affine_grid` convention). Identity at initialisation."""

    def __init__(self, config: TransformConfig):
        super().__init__()
        self.config = config
        widths = _scale(ENCODER5, config.width_mult)
        if config.theta_units not in ("pixels", "normalised"):
            raise InputError(f"theta_units must be 'pixels' or 'normalised', got {config.theta_units!r}")
        self.encoder = Encoder5(3 + 1 + config.num_classes + 1, widths)
        self.fc = nn.Linear(self.encoder.out_channels, 6)
        _glorot(self)
        # Zero weights and identity bias: theta starts at the identity (transformation.py:145-154).
        nn.init.zeros_(self.fc.weight)
        with torch.no_grad():
            self.fc.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]))

    def forward(self, segment, target_mask, label):
        size = self.config.work_size
        # Resizing each input before concatenating equals resizing the concatenation (linear per
        # channel) and avoids a full-resolution 24-channel copy.
        x = torch.cat(
            [
                _resize(segment, size),
                _resize(target_mask.to(segment.dtype), size),
                _resize(label.to(segment.dtype), size),
            ],
            1,
        )
        f = self.encoder(x)
        # theta in float32 even under autocast: bf16 would round the identity's 1.0 to +-0.4 %,
        # i.e. several pixels of scale error at 1024 px.
        with torch.autocast(device_type=f.device.type, enabled=False):
            theta = self.fc(f.float()).view(-1, 2, 3)
            if self.config.theta_units == "pixels":
                # x_px = x_norm * W/2, y_px = y_norm * H/2 (offsets from the centre of the H x W frame)
                H, W = segment.shape[-2:]
                theta = theta * theta.new_tensor([[1.0, H / W, 2.0 / W], [W / H, 1.0, 2.0 / H]])
            return theta


def warp(image: torch.Tensor, theta: torch.Tensor, size=None, mode: str = "bilinear") -> torch.Tensor:
    """Sample `image` (N,C,H,W) at theta-mapped positions of an output grid of `size` (default the
    input size); zeros outside the image. Pixel-centre normalised coordinates (align_corners=False),
    so the identity theta reproduces every pixel, the last row and column included."""
    size = tuple(size or image.shape[-2:])
    grid = F.affine_grid(theta.to(image.dtype), (image.shape[0], image.shape[1], *size), align_corners=False)
    return F.grid_sample(image, grid, mode=mode, padding_mode="zeros", align_corners=False)


def _norm_matrix(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """3x3 N with x_norm = N @ [u, v, 1] for continuous pixel coordinates u in [0, W] (pixel i's
    centre at i + 0.5), v in [0, H]."""
    return torch.tensor([[2.0 / w, 0, -1], [0, 2.0 / h, -1], [0, 0, 1]], dtype=like.dtype, device=like.device)


def _to3(theta):
    bottom = torch.zeros(*theta.shape[:-2], 1, 3, dtype=theta.dtype, device=theta.device)
    bottom[..., 0, 2] = 1
    return torch.cat([theta, bottom], -2)


def pixel_to_normalized(theta_px: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """A (..., 2, 3) affine on continuous pixel coordinates (x right, y down, origin at the top-left
    corner of the image) -> the same map on normalised coordinates for an HxW image."""
    n = _norm_matrix(h, w, theta_px)
    return (n @ _to3(theta_px) @ torch.linalg.inv(n))[..., :2, :]


def normalized_to_pixel(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    n = _norm_matrix(h, w, theta)
    return (torch.linalg.inv(n) @ _to3(theta) @ n)[..., :2, :]


def invert_theta(theta: torch.Tensor) -> torch.Tensor:
    return torch.linalg.inv(_to3(theta))[..., :2, :]


def snap_theta(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The original's test-time rounding (transformation.py:155-159), "to avoid bilinear
    interpolation corrupting the original pixels": linear part rounded to integers (a near-identity
    map becomes the identity), translation rounded to whole pixels of an HxW image."""
    px = normalized_to_pixel(theta, h, w)
    lin = px[..., :2].round()
    # With an integer linear part L, u_src = L u + t maps pixel centres to pixel centres iff
    # t + (L - I) @ [0.5, 0.5] is integral.
    half = torch.full((*lin.shape[:-1], 1), 0.5, dtype=theta.dtype, device=theta.device)
    off = (lin - torch.eye(2, dtype=theta.dtype, device=theta.device)) @ half
    t = (px[..., 2:] + off).round() - off
    return pixel_to_normalized(torch.cat([lin, t], -1), h, w)


def jitter_theta(
    centre: torch.Tensor, scale: torch.Tensor, angle: torch.Tensor, shift: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """Normalised theta (N,2,3) whose `warp` moves content by: scaling by `scale` and rotating by
    `angle` (radians, counter-clockwise on screen) about `centre` (N,2: continuous pixel x, y), then
    shifting by `shift` (N,2 pixels). `invert_theta` of it is the map that undoes the jitter."""
    c, s = torch.cos(angle), torch.sin(angle)
    # Forward map of content (dst = c0 + s R (src - c0) + t); warp needs the inverse, src = f(dst).
    # With y pointing down, a counter-clockwise screen rotation is [[c, s], [-s, c]].
    fwd = torch.zeros(centre.shape[0], 3, 3, dtype=centre.dtype, device=centre.device)
    fwd[:, 0, 0], fwd[:, 0, 1], fwd[:, 1, 0], fwd[:, 1, 1] = scale * c, scale * s, -scale * s, scale * c
    lin = fwd[:, :2, :2]
    fwd[:, :2, 2] = centre - (lin @ centre.unsqueeze(-1)).squeeze(-1) + shift
    fwd[:, 2, 2] = 1
    inv = torch.linalg.inv(fwd)[:, :2, :]
    return pixel_to_normalized(inv, h, w)


# ----------------------------------------------------------------------------- ordering


@register_arch("sims-order", OrderConfig)
class SIMSOrder(nn.Module):
    """forward(pair (N,3,H,W), layout_rgb (N,3,H,W), both [0,1]) -> logits (N, C+1): which class of
    the pair is in front (slot c = class index c; the last slot is unused)."""

    def __init__(self, config: OrderConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder5(6, _scale(ENCODER5, config.width_mult))
        fc = max(4, int(round(config.fc_width * config.width_mult)))
        self.fc1 = ConvLN(self.encoder.out_channels, fc, k=1)
        self.dropout = nn.Dropout(config.dropout)
        self.fc2 = nn.Conv2d(fc, config.num_classes + 1, 1, bias=True)
        _glorot(self)

    def forward(self, pair, layout_rgb):
        size = self.config.work_size
        x = torch.cat([_resize(pair, size), _resize(layout_rgb, size)], 1)
        f = self.encoder(x)[..., None, None]
        return self.fc2(self.dropout(self.fc1(f))).flatten(1)


def pair_input(
    label: torch.Tensor, mask_a: torch.Tensor, mask_b: torch.Tensor, colors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The order net's inputs (train_generate_order.m:78-84, order.py:177-186).

    label (B,H,W) class indices (void = C); mask_a/mask_b (P,H,W) bool, pair p belonging to image
    `p` of label when B == P, or to a single label broadcast over pairs when B == 1. colors (C,3)
    uint8 palette. Returns (pair image, colour layout), (P,3,H,W) each in [0,1]: the pair image
    shows only the two segments in their class colours (black elsewhere)."""
    pal = torch.cat([colors.to(label.device).float() / 255, torch.zeros(1, 3, device=label.device)])
    layout = pal[label.long()].permute(0, 3, 1, 2)  # (B,3,H,W)
    if layout.shape[0] != mask_a.shape[0]:
        layout = layout.expand(mask_a.shape[0], -1, -1, -1)
    either = (mask_a | mask_b).unsqueeze(1)
    return layout * either, layout


def front_probability(logits: torch.Tensor, class_a: torch.Tensor, class_b: torch.Tensor) -> torch.Tensor:
    """P(segment of class_a is in front of class_b), from the logits of just the pair's two classes
    (the original took the argmax over all 20 slots, SPEC B.4.4)."""
    la = logits.gather(1, class_a.view(-1, 1).long())
    lb = logits.gather(1, class_b.view(-1, 1).long())
    return torch.sigmoid(la - lb).squeeze(1)


# ----------------------------------------------------------------------------- synthesis


@register_arch("sims-synthesis", SynthesisConfig)
class SIMSSynthesis(nn.Module):
    """forward(label_onehot (B,C+1,H,W), canvas (B,3,H,W) in [0,1], support (B,1,H,W) or None)
    -> (image (B,3,H,W) ~[0,1] unclipped, logits (B,C+1,h,w)); h,w = H,W except at stages=2 where
    the semantic head stays at H/2, W/2 as in the original. `support` defaults to canvas > 0
    (summed over channels), the original's mask."""

    def __init__(self, config: SynthesisConfig):
        super().__init__()
        self.config = config
        if not 1 <= config.levels <= 6:
            raise InputError(f"levels must be 1..6, got {config.levels}")
        if config.stages not in (0, 1, 2):
            raise InputError(f"stages must be 0, 1 or 2, got {config.stages}")
        m = config.width_mult
        cx = config.num_classes + 1 + 3 + 1
        enc = _scale(ENCODER6[: config.levels], m)
        dec = _scale(DECODER6[6 - config.levels :], m)
        self.encoder = nn.ModuleList()
        cin = cx
        for ws in enc:
            self.encoder.append(_block(cin, ws))
            cin = ws[-1]
        self.decoder = nn.ModuleList()  # coarse to fine: D_levels ... D1
        prev = 0
        for i, ws in enumerate(dec):
            skip = enc[config.levels - 1 - i][-1]
            self.decoder.append(_block(cx + skip + prev, ws))
            prev = ws[-1]
        final = _scale((FINAL,), m)[0]
        self.final = _block(cx + prev, final)
        if config.stages == 0:
            self.rgb_256 = nn.Conv2d(final[-1], 3, 1)
            self.sem_256 = nn.Conv2d(final[-1], config.num_classes + 1, 1)
        else:
            fine = _scale((FINE,), m)[0]
            self.fine_512 = _block(cx + final[-1], fine)
            self.rgb_512 = nn.Conv2d(fine[-1], 3, 1)
            self.sem_512 = nn.Conv2d(fine[-1], config.num_classes + 1, 1)
            if config.stages == 2:
                self.rgb_1024 = nn.Conv2d(cx + 3, 3, 1)
        _glorot(self)
        if config.canvas_skip:
            last = self.rgb_256 if config.stages == 0 else self.rgb_512 if config.stages == 1 else self.rgb_1024
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def _run(self, block, x):
        if self.config.grad_checkpoint and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward(self, label, canvas, support=None):
        cfg = self.config
        if support is None:
            support = canvas.sum(1, keepdim=True) > 0
        x = cpu_channels_last(torch.cat([label.to(canvas.dtype), canvas, support.to(canvas.dtype)], 1))
        H, W = x.shape[-2:]
        f = 2 ** (cfg.stages + cfg.levels)
        if H % f or W % f:
            raise InputError(
                f"input size {H}x{W} is not divisible by {f} (= 2^(stages+levels)); "
                f"native size is {cfg.size[0]}x{cfg.size[1]}"
            )
        s = 2**cfg.stages
        xb = _resize(x, (H // s, W // s))
        pools, h = [], xb
        for block in self.encoder:
            h = tf_pool(self._run(block, h), "avg")
            pools.append(h)
        d = None
        for i, block in enumerate(self.decoder):
            p = pools[cfg.levels - 1 - i]
            parts = [_resize(xb, p.shape[-2:]), p]
            if d is not None:
                parts.append(_resize(d, p.shape[-2:]))
            d = self._run(block, torch.cat(parts, 1))
        d = self._run(self.final, torch.cat([xb, _resize(d, xb.shape[-2:])], 1))
        if cfg.stages == 0:
            rgb, sem = self.rgb_256(d), self.sem_256(d)
        else:
            x512 = _resize(x, (H * 2 // s, W * 2 // s))
            d = self._run(self.fine_512, torch.cat([x512, _resize(d, x512.shape[-2:])], 1))
            rgb, sem = self.rgb_512(d), self.sem_512(d)
            if cfg.stages == 2:
                rgb = self.rgb_1024(torch.cat([x, _resize(rgb, (H, W))], 1))
        out = (rgb + 1) / 2
        if cfg.canvas_skip:
            known = (support > 0) & ~(canvas == 1).all(1, keepdim=True)  # photo pixels, not elision white
            out = out + known.to(out.dtype) * (canvas.to(out.dtype) - 0.5)
        return out, sem


# ----------------------------------------------------------------------------- registry

# Parameter counts (19 classes) in comments; the spec's recomputed totals are ~55.7M (256) and
# ~56.1M (512) for synthesis.
SIMS_PRESETS: dict[str, dict] = register_presets(
    {
        "sims-synthesis-256p": {"arch": "sims-synthesis", "stages": 0},  # 55,671,319 (spec: ~55.7M)
        "sims-synthesis-512p": {"arch": "sims-synthesis", "stages": 1},  # 56,138,903 (spec: ~56.1M)
        "sims-synthesis-1024p": {"arch": "sims-synthesis", "stages": 2},  # 56,138,987 (+ the 27->3 1x1 conv)
        "sims-transform": {"arch": "sims-transform", "theta_units": "pixels"},  # 14,734,086
        "sims-order": {"arch": "sims-order"},  # 15,267,476
        # Smoke tests at 32x64: 1/16 widths; synthesis has the 512-style fine block over a 3-level backbone.
        "sims-tiny": {"arch": "sims-synthesis", "stages": 1, "levels": 3, "width_mult": 1 / 16, "native": [32, 64]},
        "sims-transform-tiny": {
            "arch": "sims-transform",
            "work_size": [32, 64],
            "width_mult": 1 / 16,
            "theta_units": "pixels",
        },
        "sims-order-tiny": {"arch": "sims-order", "work_size": [32, 64], "width_mult": 1 / 16},
    }
)
