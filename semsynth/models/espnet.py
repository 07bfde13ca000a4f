"""ESPNet (Mehta et al., "ESPNet: Efficient Spatial Pyramid of Dilated Convolutions for Semantic
Segmentation", ECCV 2018), re-implemented so that the released PyTorch state dicts load with
``strict=True``.

Structure (p = blocks at level 2, q = blocks at level 3; the released models use p=2, q=8):

* ``level1``: 3x3 stride-2 conv + BN + PReLU (16 channels), then ``b1`` = BN+PReLU on
  ``cat(level1, avgpool(image))`` (19 channels);
* ``level2_0``: ESP *down-sampler* (stride-2 3x3 reduce, five parallel dilated 3x3 convs at
  rates 1, 2, 4, 8, 16, hierarchical feature fusion = running sums of the dilated branches, concat,
  BN+PReLU), then p ESP residual blocks (1x1 reduce instead of the strided conv, identity skip);
  ``b2`` = BN+PReLU on ``cat(level2, level2_0, avgpool²(image))`` (64+64+3 = 131);
* ``level3_0`` + q ESP blocks, ``b3`` = BN+PReLU on ``cat(level3_0, level3)`` (256),
  ``classifier`` 1x1 conv to the classes (the ESPNet-C encoder ends here, 1/8 resolution);
* decoder (ESPNet): the encoder logits go through BN (``br``) and a 2x transposed conv
  (``up_l3``), are concatenated with a 1x1 projection of ``b2`` (``level3_C``), fused by
  BN+PReLU and an ESP block without skip (``combine_l2_l3``), up-sampled 2x (``up_l2``),
  concatenated with level-1 features and refined by a 3x3 CBR (``conv``), and a final 2x
  transposed conv (``classifier``) gives full-resolution logits.

The two released decoders differ only in which level-1 features the refinement sees: the
Cityscapes model concatenates the 16-channel ``level1`` output (``conv`` weight (20, 36, 3, 3)),
the CamVid model the 19-channel ``b1`` output (``conv`` weight (12, 31, 3, 3)). ``skip="level1"``
or ``skip="b1"`` selects it. All BN layers use eps=1e-3 as in the original.

Input convention of the released weights (see ``../shared/README.md``): BGR 0..255 with the
dataset mean subtracted and divided by the dataset std, then divided by 255.
:func:`espnet_preprocess` does that from RGB in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError, UnknownNameError
from .layers import cpu_channels_last

__all__ = [
    "ESPNetEncoder",
    "ESPNet",
    "ESPNET_PRESETS",
    "build_espnet",
    "load_espnet",
    "espnet_preprocess",
]

_EPS = 1e-3


class CBR(nn.Module):
    """conv (no bias) + BN + PReLU; 'same' padding."""

    def __init__(self, n_in: int, n_out: int, k: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(n_in, n_out, k, stride=stride, padding=(k - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(n_out, eps=_EPS)
        self.act = nn.PReLU(n_out)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class BR(nn.Module):
    """BN + PReLU."""

    def __init__(self, n: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(n, eps=_EPS)
        self.act = nn.PReLU(n)

    def forward(self, x):
        return self.act(self.bn(x))


class C(nn.Module):
    """A bias-free conv with 'same' padding (optionally dilated / strided)."""

    def __init__(self, n_in: int, n_out: int, k: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(
            n_in, n_out, k, stride=stride, padding=(k - 1) // 2 * dilation, dilation=dilation, bias=False
        )

    def forward(self, x):
        return self.conv(x)


def _split(n_out: int) -> tuple[int, int]:
    """Width of each of the K=5 dilated branches; the first takes the remainder."""
    n = n_out // 5
    return n, n_out - 4 * n


class _ESPBranches(nn.Module):
    """Reduce (c1), five dilated 3x3 branches, hierarchical feature fusion, concat."""

    def __init__(self, n_in: int, n_out: int, reduce_k: int, reduce_stride: int):
        super().__init__()
        n, n1 = _split(n_out)
        self.c1 = C(n_in, n, reduce_k, stride=reduce_stride)
        self.d1 = C(n, n1, 3, dilation=1)
        self.d2 = C(n, n, 3, dilation=2)
        self.d4 = C(n, n, 3, dilation=4)
        self.d8 = C(n, n, 3, dilation=8)
        self.d16 = C(n, n, 3, dilation=16)

    def branches(self, x):
        r = self.c1(x)
        add1 = self.d2(r)
        add2 = add1 + self.d4(r)
        add3 = add2 + self.d8(r)
        add4 = add3 + self.d16(r)
        return torch.cat([self.d1(r), add1, add2, add3, add4], 1)


class DownSamplerB(_ESPBranches):
    """Strided ESP module: 3x3 stride-2 reduction, fused branches, BN, PReLU."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__(n_in, n_out, reduce_k=3, reduce_stride=2)
        self.bn = nn.BatchNorm2d(n_out, eps=_EPS)
        self.act = nn.PReLU(n_out)

    def forward(self, x):
        return self.act(self.bn(self.branches(x)))


class ESPBlock(_ESPBranches):
    """ESP module with 1x1 reduction and (optionally) an identity skip, then BN+PReLU."""

    def __init__(self, n_in: int, n_out: int, add: bool = True):
        super().__init__(n_in, n_out, reduce_k=1, reduce_stride=1)
        self.bn = BR(n_out)
        self.add = add

    def forward(self, x):
        y = self.branches(x)
        if self.add:
            y = y + x
        return self.bn(y)


def _avg_down(x: torch.Tensor, times: int) -> torch.Tensor:
    """The input projection: `times` 3x3 stride-2 average pools (padding counted, as in the original)."""
    for _ in range(times):
        x = F.avg_pool2d(x, 3, stride=2, padding=1)
    return x


class ESPNetEncoder(nn.Module):
    """ESPNet-C: logits at 1/8 resolution. `forward_features` exposes the intermediate maps."""

    def __init__(self, classes: int = 20, p: int = 2, q: int = 8):
        super().__init__()
        self.level1 = CBR(3, 16, 3, stride=2)
        self.b1 = BR(16 + 3)
        self.level2_0 = DownSamplerB(16 + 3, 64)
        self.level2 = nn.ModuleList([ESPBlock(64, 64) for _ in range(p)])
        self.b2 = BR(128 + 3)
        self.level3_0 = DownSamplerB(128 + 3, 128)
        self.level3 = nn.ModuleList([ESPBlock(128, 128) for _ in range(q)])
        self.b3 = BR(256)
        self.classifier = C(256, classes, 1)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Network-normalised input -> {"level1", "b1", "b2", "b3"} feature maps."""
        out0 = self.level1(x)
        b1 = self.b1(torch.cat([out0, _avg_down(x, 1)], 1))
        o1_0 = self.level2_0(b1)
        o1 = o1_0
        for layer in self.level2:
            o1 = layer(o1)
        b2 = self.b2(torch.cat([o1, o1_0, _avg_down(x, 2)], 1))
        o2_0 = self.level3_0(b2)
        o2 = o2_0
        for layer in self.level3:
            o2 = layer(o2)
        b3 = self.b3(torch.cat([o2_0, o2], 1))
        return {"level1": out0, "b1": b1, "b2": b2, "b3": b3}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x)["b3"])


class ESPNet(nn.Module):
    """ESPNet with the light decoder; full-resolution logits (input H, W divisible by 8)."""

    def __init__(self, classes: int = 20, p: int = 2, q: int = 8, skip: str = "level1"):
        super().__init__()
        if skip not in ("level1", "b1"):
            raise InputError(f"skip must be 'level1' or 'b1', got {skip!r}")
        self.skip = skip
        self.encoder = ESPNetEncoder(classes, p, q)
        self.level3_C = C(128 + 3, classes, 1)
        self.br = nn.BatchNorm2d(classes, eps=_EPS)
        self.conv = CBR((16 if skip == "level1" else 19) + classes, classes, 3)
        self.up_l3 = nn.Sequential(nn.ConvTranspose2d(classes, classes, 2, stride=2, bias=False))
        self.combine_l2_l3 = nn.Sequential(BR(2 * classes), ESPBlock(2 * classes, classes, add=False))
        self.up_l2 = nn.Sequential(nn.ConvTranspose2d(classes, classes, 2, stride=2, bias=False), BR(classes))
        self.classifier = nn.ConvTranspose2d(classes, classes, 2, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % 8 or w % 8:
            raise InputError(f"ESPNet needs H and W divisible by 8, got {h}x{w}")
        f = self.encoder.forward_features(cpu_channels_last(x))
        l3 = self.up_l3(self.br(self.encoder.classifier(f["b3"])))
        l2 = self.up_l2(self.combine_l2_l3(torch.cat([self.level3_C(f["b2"]), l3], 1)))
        return self.classifier(self.conv(torch.cat([l2, f[self.skip]], 1)))


# name (also the `semsynth.weights` entry) -> constructor arguments, label space (outputs = its
# classes + void), input size (H, W), BGR mean/std
ESPNET_PRESETS: dict[str, dict] = {
    "espnet-cityscapes": {
        "classes": 20,
        "skip": "level1",
        "space": "cityscapes",
        "size": (512, 1024),
        "mean": (72.3923111, 82.90893555, 73.15840149),
        "std": (45.3192215, 46.15289307, 44.91483307),
    },
    "espnet-camvid": {
        "classes": 12,
        "skip": "b1",
        "space": "camvid",
        "size": (360, 480),
        "mean": (105.66, 103.33, 99.63),
        "std": (71.12, 71.67, 67.87),
    },
}


def espnet_preprocess(images: torch.Tensor, mean, std) -> torch.Tensor:
    """RGB in [0, 1] (B, 3, H, W) -> ((BGR·255 − mean) / std) / 255, the released models' input."""
    bgr = images.flip(1) * 255.0
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (bgr - m) / s / 255.0


def build_espnet(name: str) -> ESPNet:
    """The architecture of a preset, randomly initialised (no weights)."""
    if name not in ESPNET_PRESETS:
        raise UnknownNameError(f"unknown ESPNet preset {name!r}; known: {sorted(ESPNET_PRESETS)}")
    cfg = ESPNET_PRESETS[name]
    return ESPNet(cfg["classes"], p=2, q=8, skip=cfg["skip"])


def load_espnet(name: str, path: str | Path | None = None) -> ESPNet:
    """A preset with its released weights (strict load), frozen, in eval mode.

    `path` defaults to the preset's file found by `semsynth.weights.resolve` (``SEMSYNTH_WEIGHTS``,
    the torch hub cache, ``<shared>/weights``; never downloaded); its sha256 is checked."""
    from .. import weights as W

    model = build_espnet(name)
    file = W.verify(Path(path)) if path is not None else W.resolve(name, download=False)
    state = torch.load(file, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.requires_grad_(False).eval()
