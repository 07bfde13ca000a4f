"""Cascaded Refinement Network (Chen & Koltun, ICCV 2017), exactly as released.

A cascade of refinement modules from a base grid (4x8) up to full resolution. Module i sees the
layout area-downsampled to its resolution, concatenated after the bilinearly upsampled features of
module i-1 ([features, label], align_corners=True). Each module is conv3x3 -> LayerNorm(C,H,W) ->
LeakyReLU(0.2), twice, with bias-free convs; a 1x1 head with bias produces 3k channels that are
read as k images (image i = channels i, k+i, 2k+i, as the official transpose/split does).

Parameter names mirror the official TensorFlow variables one to one (`official_names`), so a
converter of the released checkpoints is a rename plus HWIO -> OIHW transpose.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..errors import InputError, UnknownNameError
from ..labels import area_resize
from .layers import Conv2d, cpu_channels_last, layer_norm_lrelu
from .registry import register_arch, register_presets

# Widths of the released models by module index from the 4x8 base: 1024 below 128 px height,
# 512 at 128 and 256, then 128 at 512 and 32 at 1024 (demo_512p/1024p overrides).
OFFICIAL_WIDTHS = (1024, 1024, 1024, 1024, 1024, 512, 512, 128, 32)


@dataclass
class CRNConfig:
    num_classes: int = 19  # input channels = num_classes + 1 (void)
    levels: int = 7  # 7 modules: 4x8 ... 256x512
    base: tuple[int, int] = (4, 8)  # grid of the coarsest module (e.g. (3, 4) for CamVid's 4:3)
    k: int = 9  # images produced at once (3k-channel head)
    widths: tuple[int, ...] | None = None  # per module, coarse to fine; default OFFICIAL_WIDTHS
    width_mult: float = 1.0  # scales every width (small/fast variants)
    grad_checkpoint: bool = False  # recompute module activations in backward (saves memory)
    extra: dict = field(default_factory=dict)

    def module_widths(self) -> list[int]:
        w = list(self.widths) if self.widths else list(OFFICIAL_WIDTHS[: self.levels])
        if len(w) != self.levels:
            raise InputError(f"widths has {len(w)} entries for {self.levels} levels")
        return [max(4, int(round(x * self.width_mult))) for x in w]

    @property
    def size(self) -> tuple[int, int]:
        """Native output size (H, W)."""
        f = 2 ** (self.levels - 1)
        return self.base[0] * f, self.base[1] * f


class RefinementModule(nn.Module):
    def __init__(self, in_ch: int, width: int):
        super().__init__()
        self.conv1 = Conv2d(in_ch, width, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(1, width, eps=1e-12)  # == TF slim layer_norm over H, W, C
        self.conv2 = Conv2d(width, width, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(1, width, eps=1e-12)

    def forward(self, x):
        x = layer_norm_lrelu(self.conv1(x), self.norm1)
        return layer_norm_lrelu(self.conv2(x), self.norm2)


@register_arch("crn", CRNConfig)
class CRN(nn.Module):
    """forward(label_onehot (B, C+1, H, W)) -> images (B, k, 3, H, W), ~[0, 1], unclipped.

    H and W must be divisible by 2**(levels-1); the native size is `config.size`, but any such
    size works (the network is fully convolutional; LayerNorm adapts to the spatial extent)."""

    def __init__(self, config: CRNConfig):
        super().__init__()
        self.config = config
        widths = config.module_widths()
        c_in = config.num_classes + 1
        self.blocks = nn.ModuleDict()
        prev = 0
        for i, w in enumerate(widths):
            self.blocks[self.level_name(i)] = RefinementModule(prev + c_in, w)
            prev = w
        self.head = nn.Conv2d(prev, 3 * config.k, 1, bias=True)
        self.reset_parameters()

    def level_name(self, i: int) -> str:
        """Official name of module i: 'g_<height>' at the 4x8 base (g_4, g_8, ... g_1024)."""
        return f"g_{self.config.base[0] * 2**i}" if self.config.base[0] == 4 else f"g_l{i}"

    def reset_parameters(self):
        # TF slim defaults: Glorot-uniform weights, zero biases; LayerNorm gamma 1, beta 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, label: torch.Tensor) -> torch.Tensor:
        n = self.config.levels
        H, W = label.shape[-2:]
        f = 2 ** (n - 1)
        if H % f or W % f:
            raise InputError(
                f"label size {H}x{W} is not divisible by {f} (= 2^(levels-1)); "
                f"native size is {self.config.size[0]}x{self.config.size[1]}"
            )
        label = cpu_channels_last(label)
        labels = [label]
        for _ in range(n - 1):  # each level is the area-downsampling of the next finer one
            labels.append(area_resize(labels[-1], (labels[-1].shape[-2] // 2, labels[-1].shape[-1] // 2)))
        x = None
        for i, block in enumerate(self.blocks.values()):
            lab = labels[n - 1 - i]
            if x is not None:
                x = F.interpolate(x, size=lab.shape[-2:], mode="bilinear", align_corners=True)
                lab = torch.cat([x, lab.to(x.dtype)], 1)
            if self.config.grad_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, lab, use_reentrant=False)
            else:
                x = block(lab)
        y = self.head(x)
        B, _, H, W = y.shape
        y = y.view(B, 3, self.config.k, H, W).transpose(1, 2)
        return (y + 1) / 2  # the original's (x + 1) / 2 * 255, on a [0, 1] scale

    def official_names(self) -> dict[str, str]:
        """state-dict key -> TensorFlow variable name of the released checkpoints."""
        out = {}
        for i, name in enumerate(self.blocks):
            for j in (1, 2):
                out[f"blocks.{name}.conv{j}.weight"] = f"{name}_conv{j}/weights"
                out[f"blocks.{name}.norm{j}.weight"] = f"{name}_conv{j}/LayerNorm/gamma"
                out[f"blocks.{name}.norm{j}.bias"] = f"{name}_conv{j}/LayerNorm/beta"
        top = list(self.blocks)[-1]
        out["head.weight"] = f"{top}_conv100/weights"
        out["head.bias"] = f"{top}_conv100/biases"
        return out

    def load_official_tf(self, variables: dict[str, torch.Tensor | object]) -> None:
        """Load TF variables (name -> array, HWIO conv kernels) of a released checkpoint."""
        import numpy as np

        sd = {}
        for key, tf_name in self.official_names().items():
            if tf_name not in variables:
                raise UnknownNameError(f"checkpoint has no variable {tf_name!r} (needed for {key})")
            v = torch.as_tensor(np.asarray(variables[tf_name]))
            if v.ndim == 4:
                v = v.permute(3, 2, 0, 1)  # HWIO -> OIHW
            sd[key] = v
        self.load_state_dict(sd, strict=True)


# Official totals (released TF checkpoints) in comments.
CRN_PRESETS = register_presets(
    {
        "crn-256p": {"arch": "crn", "levels": 7, "k": 9},  # 97,875,483 parameters
        "crn-512p": {"arch": "crn", "levels": 8, "k": 1},  # 98,622,851
        "crn-1024p": {"arch": "crn", "levels": 9, "k": 1},  # 98,674,531
        "crn-gta-256p": {"arch": "crn", "levels": 7, "k": 9},  # same structure as crn-256p
        "crn-tiny": {"arch": "crn", "levels": 5, "k": 3, "width_mult": 1 / 32},  # 64x128 smoke tests
    }
)
