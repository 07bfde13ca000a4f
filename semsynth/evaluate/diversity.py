"""Diversity: perceptual distance among the k outputs of a layout, and between different layouts
as its reference."""

from __future__ import annotations

import numpy as np
import torch

from .common import EvaluationError, _resize
from .segmenters import ESPNetSegmenter, Segmenter


def _squeezenet_available() -> bool:
    try:
        from ..models.backbones import build_backbone  # noqa: F401
        from ..weights import resolve

        resolve("squeezenet1_1", download=False)
        return True
    except (ImportError, FileNotFoundError, ValueError):
        return False


class PerceptualDistance:
    """d(a, b) = mean over layers of the mean absolute difference between channel-normalised
    feature maps (each position's channel vector scaled to unit RMS), LPIPS-style but unweighted
    and L1. Backbone: SqueezeNet 1.1 (conv1, fire3, fire5, fire7, fire9), else the ESPNet encoder
    (level1, b1, b2, b3). Images are shrunk (antialiased) so the longer side is <= `max_side`."""

    def __init__(self, device, segmenter: Segmenter | None = None, backbone: str = "auto", max_side: int = 512):
        self.device = torch.device(device)
        self.max_side = max_side
        if backbone == "auto":
            backbone = "squeezenet1_1" if _squeezenet_available() else "espnet"
        if backbone == "squeezenet1_1":
            from ..models.backbones import build_backbone

            layers = ["conv1", "fire3", "fire5", "fire7", "fire9"]
            net = build_backbone("squeezenet1_1", layers=layers).to(self.device)

            def feats(x):
                f = net(x)
                return [f[l] for l in layers]

            self._feats = feats
            self.name = "SqueezeNet1.1 " + "/".join(layers)
        elif backbone == "espnet":
            from ..models.espnet import espnet_preprocess

            seg = (
                segmenter
                if isinstance(segmenter, ESPNetSegmenter)
                else ESPNetSegmenter("espnet-cityscapes", self.device)
            )
            layers = ["level1", "b1", "b2", "b3"]

            def feats(x):
                f = seg.net.encoder.forward_features(espnet_preprocess(x, seg.mean, seg.std))
                return [f[l] for l in layers]

            self._feats = feats
            self.name = f"ESPNet encoder ({seg.name}) " + "/".join(layers)
        else:
            raise EvaluationError(f"unknown perceptual backbone {backbone!r}")
        self.backbone = backbone

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        s = self.max_side / max(h, w)
        if s < 1:
            x = _resize(x, (max(8, round(h * s / 8) * 8), max(8, round(w * s / 8) * 8)))
        elif h % 8 or w % 8:
            x = _resize(x, (max(8, round(h / 8) * 8), max(8, round(w / 8) * 8)))
        return x.to(self.device, torch.float32)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for f in self._feats(self._prep(images)):
            f = f.float()  # bf16 features under autocast: the distance itself in fp32
            rms = f.pow(2).mean(1, keepdim=True).sqrt()
            out.append(f / (rms + 1e-10))
        return out

    @staticmethod
    def pair_distance(fa: list[torch.Tensor], fb: list[torch.Tensor]) -> torch.Tensor:
        """Per-sample distances between two feature lists of equal batch size."""
        return torch.stack([(a - b).abs().mean((1, 2, 3)) for a, b in zip(fa, fb)]).mean(0)

    @torch.no_grad()
    def pairwise_mean(self, images: torch.Tensor) -> tuple[float, int]:
        """Mean distance over all k(k-1)/2 pairs of the k images (same size)."""
        k = images.shape[0]
        if k < 2:
            raise ValueError("diversity needs at least 2 images")
        feats = self.features(images)
        i, j = torch.triu_indices(k, k, offset=1)
        d = self.pair_distance([f[i] for f in feats], [f[j] for f in feats])
        return float(d.mean()), int(len(i))

    @torch.no_grad()
    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.pair_distance(self.features(a), self.features(b))


def _pick_chain(stems: list[str], pairs: int, seed: int) -> list[str]:
    """A random sequence of up to `pairs` + 1 distinct layouts (deterministic for a seed); its
    consecutive elements are the pairs of the between-layout reference."""
    if len(stems) < 2:
        return []
    order = np.random.default_rng(seed).permutation(len(stems))[: pairs + 1]
    return [stems[i] for i in order]


def _between_layouts(perceptual: PerceptualDistance, kept: dict, chain: list[str]) -> float | None:
    """Mean perceptual distance between the (first) images of consecutive layouts of `chain`;
    each image's features are computed once."""
    ds, prev = [], None
    for stem in chain:
        if stem not in kept:
            prev = None
            continue
        f = perceptual.features(kept[stem])
        if prev is not None and prev[0].shape == f[0].shape:
            ds.append(float(perceptual.pair_distance(prev, f)[0]))
        prev = f
    return float(np.mean(ds)) if ds else None
