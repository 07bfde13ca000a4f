"""Perceptual losses: CRN's per-class min-over-k "hindsight" diversity loss and the plain mean loss.

For a backbone Φ with layers l (weights w_l), generated images fake_k (k = 1..K) and the real
photo, with the one-hot label M (C+1 channels including void) area-resized to each layer's
resolution (M^(l)):

* mode "diversity" (CRN 256p, SPEC A.4.2)::

      E_l[b,k,c] = 1/(H_l·W_l) · Σ_x M_c^(l)(x) · mean_ch |Φ_l(fake_k) − Φ_l(real)|(x)
      L[b,k,c]   = Σ_l w_l · E_l[b,k,c]
      loss       = mean_b [ 0.999 · Σ_c min_k L[b,k,c] + 0.001 · Σ_c mean_k L[b,k,c] ]

  normalised by the whole image area, not the class area; each class (void included) picks its
  own best image, so different regions may be explained by different outputs.
* mode "mean" (CRN 512p/1024p "simple loss", SPEC A.4.3): Σ_l w_l · mean |Φ_l(fake) − Φ_l(real)|
  over all elements (batch, k, channels, positions); the label is ignored.

The real photo goes through the backbone once (without a graph unless it requires grad), the
B·k fakes in one batch.

`AdversarialLoss` is an optional extra, *not part of CRN* (the paper deliberately trains without a
discriminator): a layout-conditioned multi-scale PatchGAN with hinge loss and discriminator feature
matching, the recipe of pix2pixHD/SPADE. It restores texture that a short perceptual-only run
leaves blurred; the official presets never enable it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from .errors import InputError, UnknownNameError
from .labels import area_resize
from .models.backbones import Backbone, build_backbone

__all__ = [
    "PerceptualLoss",
    "AdversarialLoss",
    "PatchDiscriminator",
    "LOSS_PRESETS",
    "build_loss",
    "build_adversarial",
    "calibrate_layer_weights",
    "MODES",
]

MODES = ("diversity", "mean")

_CRN_LAYERS = ("input", "conv1_2", "conv2_2", "conv3_2", "conv4_2", "conv5_2")


def _crn(weights: Sequence[float]) -> list[tuple[str, float]]:
    return list(zip(_CRN_LAYERS, weights))


# name -> (backbone, [(layer, weight)], mode)
LOSS_PRESETS: dict[str, tuple[str, list[tuple[str, float]], str]] = {
    # The official weights (SPEC A.4.2-A.4.4, Appendix 2), tuned for MatConvNet VGG-19 on
    # 255·x − mean RGB input, average pooling, post-ReLU features.
    "crn-256p": ("vgg19-matconvnet", _crn([1, 1 / 1.6, 1 / 2.3, 1 / 1.8, 1 / 2.8, 10 / 0.8]), "diversity"),
    "crn-512p": ("vgg19-matconvnet", _crn([1, 1 / 2.6, 1 / 4.8, 1 / 3.7, 1 / 5.6, 10 / 1.5]), "mean"),
    "crn-1024p": ("vgg19-matconvnet", _crn([1, 1 / 2.6, 1 / 4.8, 1 / 3.7, 1 / 5.6, 10 / 1.5]), "mean"),
    "crn-gta-256p": ("vgg19-matconvnet", _crn([1, 1 / 1.4, 1 / 1.8, 1 / 1.3, 1 / 2.2, 10 / 0.62]), "diversity"),
    # Backbones available without the 500 MB VGG-19 files. Weights chosen so every term has the
    # same magnitude as the pixel ("input") term: w_l = m_input / m_l, where m_l is the mean
    # |Φ_l(blur(x)) − Φ_l(x)| over the 8 Cityscapes training photos (../shared) box-resized to
    # 256×512, blurred with a Gaussian of σ = 2 px (a stand-in for an early, blurry generator
    # output), with the backbones' default options; m_l / m_input rounded to 2 significant
    # digits (`calibrate_layer_weights`; re-measured by the slow test in tests/test_losses.py).
    # Measured m_l: normalised VGG  input 5.08, conv1_2 0.277, conv2_2 0.291, conv3_1 0.242
    #               (its features are Gatys-normalised to mean activation 1, hence the large
    #               weights); SqueezeNet input 5.08, conv1 3.28, fire3 11.5, fire5 9.14,
    #               fire7 5.24, fire9 1.85. The ratios move little with σ (1 to 4 px: conv1_2
    #               0.057-0.045, fire9 0.40-0.27).
    # L1 on pixels only (0..255 scale): weight-free, for tests and smoke runs.
    "pixel": ("pixels", [("input", 1.0)], "diversity"),
    "normalised-vgg": (
        "vgg19-normalised",
        [("input", 1.0), ("conv1_2", 1 / 0.055), ("conv2_2", 1 / 0.057), ("conv3_1", 1 / 0.048)],
        "diversity",
    ),
    "squeezenet": (
        "squeezenet1_1",
        [
            ("input", 1.0),
            ("conv1", 1 / 0.65),
            ("fire3", 1 / 2.3),
            ("fire5", 1 / 1.8),
            ("fire7", 1 / 1.0),
            ("fire9", 1 / 0.36),
        ],
        "diversity",
    ),
}
for _name in ("normalised-vgg", "squeezenet"):
    _bb, _layers, _ = LOSS_PRESETS[_name]
    LOSS_PRESETS[f"{_name}-diversity"] = (_bb, _layers, "diversity")
    LOSS_PRESETS[f"{_name}-mean"] = (_bb, _layers, "mean")


class PerceptualLoss(nn.Module):
    """forward(fake (B,k,3,H,W) or (B,3,H,W), real (B,3,H,W), label (B,C+1,H,W) or None)
    -> (scalar loss, logs). Images are RGB in [0, 1]; logs hold detached 0-dim tensors:
    ``layer/<name>`` (unweighted mean |ΔΦ| of that layer over b, k and positions) and, in
    diversity mode, ``term/min`` and ``term/mean`` (the two parts before mixing)."""

    def __init__(
        self,
        backbone: Backbone | nn.Module | str,
        layers: Iterable[tuple[str, float]],
        mode: str = "diversity",
        mix: tuple[float, float] = (0.999, 0.001),
        backbone_path=None,
    ):
        super().__init__()
        self.layers = [(str(n), float(w)) for n, w in layers]
        if not self.layers:
            raise InputError("PerceptualLoss needs at least one (layer, weight)")
        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {mode!r}")
        if isinstance(backbone, str):
            backbone = build_backbone(backbone, path=backbone_path, layers=[n for n, _ in self.layers])
        if isinstance(backbone, Backbone):
            missing = [n for n, _ in self.layers if n not in backbone.requested]
            if missing:
                raise InputError(
                    f"the backbone does not return {missing} (it returns {backbone.requested}); "
                    f"build it with build_backbone(..., layers=[...]) including them"
                )
        self.backbone = backbone
        self.mode = mode
        self.mix = (float(mix[0]), float(mix[1]))

    def extra_repr(self) -> str:
        terms = ", ".join(f"{n}×{w:.4g}" for n, w in self.layers)
        return f"mode={self.mode}, mix={self.mix}, layers=[{terms}]"

    def forward(self, fake: torch.Tensor, real: torch.Tensor, label: torch.Tensor | None = None):
        if fake.dim() == 4:
            fake = fake.unsqueeze(1)
        if fake.dim() != 5 or real.dim() != 4 or fake.shape[0] != real.shape[0] or fake.shape[2:] != real.shape[1:]:
            raise InputError(
                f"expected fake (B,k,3,H,W) and real (B,3,H,W); got {tuple(fake.shape)} and {tuple(real.shape)}"
            )
        B, k = fake.shape[:2]
        if label is not None and (label.dim() != 4 or label.shape[0] != B or label.shape[-2:] != fake.shape[-2:]):
            raise InputError(
                f"label must be (B, C+1, H, W) = ({B}, C+1, {fake.shape[-2]}, {fake.shape[-1]}), "
                f"got {tuple(label.shape)}"
            )
        real = real.to(fake.dtype)
        if real.requires_grad:
            feat_real = self.backbone(real)
        else:
            with torch.no_grad():
                feat_real = self.backbone(real)
        feat_fake = self.backbone(fake.reshape(B * k, *fake.shape[2:]))

        # the loss arithmetic in float32 even under autocast (einsum would otherwise run in bf16)
        with torch.autocast(device_type=fake.device.type, enabled=False):
            return self._combine(feat_fake, feat_real, label, B, k)

    def _combine(self, feat_fake, feat_real, label, B: int, k: int):
        diversity = self.mode == "diversity"
        logs: dict[str, torch.Tensor] = {}
        total = None
        L = None  # (B, k, classes)
        for name, w in self.layers:
            f = feat_fake[name]
            r = feat_real[name]
            f = f.reshape(B, k, *f.shape[1:]).float()
            d = (f - r.float().unsqueeze(1)).abs().mean(2)  # (B, k, h, w): mean over channels
            logs[f"layer/{name}"] = d.detach().mean()
            if not diversity:
                total = w * d.mean() if total is None else total + w * d.mean()
                continue
            h, wd = d.shape[-2:]
            if label is None:
                E = d.mean((2, 3)).unsqueeze(-1)  # one "class" covering the image
            else:
                m = area_resize(label.float(), (h, wd))
                E = torch.einsum("bkhw,bchw->bkc", d, m) / (h * wd)
            L = w * E if L is None else L + w * E
        if diversity:
            t_min = L.min(1).values.sum(1).mean()
            t_mean = L.mean(1).sum(1).mean()
            total = self.mix[0] * t_min + self.mix[1] * t_mean
            logs["term/min"] = t_min.detach()
            logs["term/mean"] = t_mean.detach()
        return total, logs


def build_loss(preset_or_dict: str | dict | tuple, backbone_path=None, **overrides) -> PerceptualLoss:
    """A PerceptualLoss from a preset name (`LOSS_PRESETS`), a preset tuple, or a dict
    ``{"backbone": ..., "layers": [[name, weight], ...], "mode": ..., "mix": [a, b],
    "backbone_path": ..., "backbone_options": {...}}`` (a dict may also name a ``preset`` and
    override parts of it). overrides: mode=, mix=, pretrained=False (random backbone, smoke tests)."""
    cfg: dict = {}
    if isinstance(preset_or_dict, str):
        cfg["preset"] = preset_or_dict
    elif isinstance(preset_or_dict, (tuple, list)):
        cfg.update(zip(("backbone", "layers", "mode"), preset_or_dict))
    elif isinstance(preset_or_dict, dict):
        cfg.update(preset_or_dict)
    else:
        raise TypeError(f"build_loss takes a preset name, tuple or dict, not {type(preset_or_dict).__name__}")
    if "preset" in cfg and cfg["preset"] is not None:
        name = cfg.pop("preset")
        if name not in LOSS_PRESETS:
            raise UnknownNameError(f"unknown loss preset {name!r}; presets: {sorted(LOSS_PRESETS)}")
        bb, layers, mode = LOSS_PRESETS[name]
        cfg = {"backbone": bb, "layers": layers, "mode": mode, **cfg}
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if "backbone" not in cfg or "layers" not in cfg:
        raise InputError(f"a loss config needs 'backbone' and 'layers' (or 'preset'); got {sorted(cfg)}")
    path = backbone_path if backbone_path is not None else cfg.get("backbone_path")
    layers = [(str(n), float(w)) for n, w in cfg["layers"]]
    backbone = build_backbone(
        cfg["backbone"],
        path=path,
        layers=[n for n, _ in layers],
        pretrained=cfg.get("pretrained", True),
        **cfg.get("backbone_options", {}),
    )
    return PerceptualLoss(
        backbone, layers, mode=cfg.get("mode", "diversity"), mix=tuple(cfg.get("mix", (0.999, 0.001)))
    )


@torch.no_grad()
def calibrate_layer_weights(
    backbone: nn.Module,
    layers: Sequence[str],
    real: torch.Tensor,
    fake: torch.Tensor,
    reference: str = "input",
    digits: int = 2,
):
    """Per-layer weights that give every term the magnitude of the `reference` term.

    Returns ([(layer, weight)], {layer: mean |Φ_l(fake) − Φ_l(real)|}); weight = m_ref / m_l rounded
    to `digits` significant digits of its inverse (so it reads like CRN's 1/1.6, 1/2.3 …)."""
    fr, ff = backbone(real), backbone(fake)
    means = {n: float((ff[n].float() - fr[n].float()).abs().mean()) for n in layers}
    ref = means[reference]
    out = []
    for n in layers:
        inv = means[n] / ref
        inv = float(f"{inv:.{digits}g}")
        out.append((n, 1.0 / inv))
    return out, means


class PatchDiscriminator(nn.Module):
    """Conditional PatchGAN (pix2pix's n_layers=3 design) applied at `scales` resolutions, each
    half the previous (pix2pixHD). Input: [2·image − 1, one-hot layout]; convs are spectrally
    normalised instead of instance-normalised, so batch size 1 is fine. forward(x) -> one list per
    scale of the feature maps after each block, the last being the (B, 1, h, w) patch logits."""

    def __init__(self, in_channels: int, width: int = 64, layers: int = 3, scales: int = 2):
        super().__init__()
        self.nets = nn.ModuleList()
        for _ in range(scales):
            blocks, c_in = [], in_channels
            for i in range(layers + 1):
                c_out = width * 2 ** min(i, 3)
                stride = 2 if i < layers else 1
                blocks.append(nn.Sequential(spectral_norm(nn.Conv2d(c_in, c_out, 4, stride, 2)), nn.LeakyReLU(0.2)))
                c_in = c_out
            blocks.append(spectral_norm(nn.Conv2d(c_in, 1, 4, 1, 2)))
            self.nets.append(nn.ModuleList(blocks))

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        outs = []
        for i, blocks in enumerate(self.nets):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            feats, h = [], x
            for block in blocks:
                h = block(h)
                feats.append(h)
            outs.append(feats)
        return outs


class AdversarialLoss(nn.Module):
    """Hinge GAN loss + discriminator feature matching for generated images (B, k, 3, H, W), holding
    the discriminator `disc`. It owns no optimiser: the trainer steps `disc` itself, with Adam at
    `optim` (lr, betas), as a visible step of its loop.

    Per training step: `discriminator_loss(fake.detach(), real, label)` is D's loss on real vs every
    one of the k outputs; then `generator_loss(fake, real, label)` = weight · (−mean D(fake)) +
    feature_matching · mean_l |D_l(fake) − D_l(real)| / mean |D_l(real)| (all scales, all blocks but
    the logits; relative, unlike pix2pixHD's absolute L1, because D has no normalisation layers)."""

    def __init__(
        self,
        label_channels: int,
        weight: float = 1.0,
        feature_matching: float = 10.0,
        width: int = 64,
        layers: int = 3,
        scales: int = 2,
        lr: float = 2e-4,
        betas: Sequence[float] = (0.5, 0.999),
    ):
        super().__init__()
        self.weight, self.feature_matching = float(weight), float(feature_matching)
        self.disc = PatchDiscriminator(3 + label_channels, width, layers, scales)
        self.optim = {"lr": float(lr), "betas": tuple(float(b) for b in betas)}

    @staticmethod
    def _inputs(images: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """(B, k, 3, H, W) or (B, 3, H, W) images + (B, C+1, H, W) label -> (B·k, 3+C+1, H, W)."""
        if images.dim() == 4:
            images = images.unsqueeze(1)
        B, k = images.shape[:2]
        lab = label.to(images.dtype).unsqueeze(1).expand(B, k, *label.shape[1:])
        return torch.cat([images * 2 - 1, lab], 2).flatten(0, 1)

    def _joint(self, net: nn.Module, fake: torch.Tensor, real: torch.Tensor, label: torch.Tensor):
        """D on fakes and reals in one forward: spectral norm's power iteration advances once per
        forward, so separate calls would judge the two with different normalised weights."""
        return net(torch.cat([self._inputs(fake, label), self._inputs(real, label)]))

    def discriminator_loss(
        self, fake: torch.Tensor, real: torch.Tensor, label: torch.Tensor, disc: nn.Module | None = None
    ) -> tuple[torch.Tensor, dict]:
        """D's hinge loss on `real` vs the (detached) `fake`; `disc`: the discriminator as the
        trainer runs it (DDP-wrapped under torchrun so its gradients are averaged like G's)."""
        # float32 whatever the surrounding autocast: D is small and has no gradient scaler
        with torch.enable_grad(), torch.autocast(device_type=real.device.type, enabled=False):
            logits = [o[-1] for o in self._joint(disc or self.disc, fake.detach().float(), real.float(), label.float())]
            n = fake.shape[0] * (fake.shape[1] if fake.dim() == 5 else 1)
            loss_real = sum(F.relu(1 - o[n:]).mean() for o in logits) / len(logits)
            loss_fake = sum(F.relu(1 + o[:n]).mean() for o in logits) / len(logits)
        return loss_real + loss_fake, {"gan/d_real": loss_real.detach(), "gan/d_fake": loss_fake.detach()}

    def generator_loss(self, fake: torch.Tensor, real: torch.Tensor, label: torch.Tensor):
        if fake.dim() == 4:
            fake = fake.unsqueeze(1)
        k = fake.shape[1]
        n = fake.shape[0] * k
        self.disc.requires_grad_(False)  # gradients flow through D into the generator only
        try:
            outs = self._joint(self.disc, fake, real.to(fake.dtype), label)
        finally:
            self.disc.requires_grad_(True)
        out_fake = [[f[:n] for f in o] for o in outs]
        out_real = [[f[n:].detach() for f in o] for o in outs]
        adv = -sum(o[-1].float().mean() for o in out_fake) / len(out_fake)
        fm, terms = fake.new_zeros((), dtype=torch.float32), 0
        for of, orl in zip(out_fake, out_real):
            for a, b in zip(of[:-1], orl[:-1]):
                b = b.float().repeat_interleave(k, 0)
                # relative to the real features' magnitude (spectrally normalised D features are
                # small and grow during training, so an absolute L1 would need re-weighting), per
                # image, so that DDP's average over ranks equals the single-process batch mean
                dims = tuple(range(1, b.dim()))
                fm = fm + ((a.float() - b).abs().mean(dims) / (b.abs().mean(dims) + 1e-8)).mean()
                terms += 1
        fm = fm / max(terms, 1)
        total = self.weight * adv + self.feature_matching * fm
        return total, {"gan/g_adv": adv.detach(), "gan/feature_matching": fm.detach()}


def build_adversarial(cfg: dict | None, label_channels: int) -> AdversarialLoss | None:
    """`loss.adversarial` of a training config ({weight, feature_matching, width, layers, scales,
    lr, betas}) -> AdversarialLoss, or None when absent or weight and feature_matching are 0."""
    if not cfg:
        return None
    known = {"weight", "feature_matching", "width", "layers", "scales", "lr", "betas"}
    unknown = set(cfg) - known
    if unknown:
        raise InputError(f"unknown loss.adversarial options {sorted(unknown)}; known: {sorted(known)}")
    if not cfg.get("weight", 1.0) and not cfg.get("feature_matching", 10.0):
        return None
    return AdversarialLoss(label_channels, **cfg)
