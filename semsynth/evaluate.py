"""Evaluation of synthesized images: segmentation consistency, FID/KID, diversity, reports.

``semsynth evaluate FAKE_DIR --labels LABEL_DIR [--real REAL_DIR] -o REPORT_DIR`` (or
:func:`evaluate` + :func:`write_report`) measures, for the images in FAKE_DIR and — side by side,
as their ceiling — for the real photos of the same layouts:

* **Segmentation consistency**: a frozen segmenter labels every image; the confusion matrix
  against the input layout gives per-class IoU, mIoU and pixel accuracy (see
  :func:`segmentation_scores` for the exact definitions). Images and layouts are both brought to
  the segmenter's own input size (images bilinear, layouts nearest), so every image set is scored
  at the same resolution.
* **FID / KID**: the standard FID Inception-v3 (`semsynth.models.inception`) when its weights
  ``pt_inception-2015-12-05-6726825d.pth`` are given (``--inception``) or found by
  `semsynth.weights.resolve` — never downloaded. Always also a Fréchet distance and KID on the
  pooled features of a network that is available here (SqueezeNet 1.1, else the ESPNet encoder),
  named as *non-standard*: it is not comparable to published FIDs. Real photos are first resized
  (antialiased) to the synthesized images' resolution. The "real" column is the same distance
  between two random halves of the real photos (a floor that shows the small-sample bias).
* **Diversity**: for layouts with k > 1 outputs, the mean pairwise perceptual distance between
  them (:class:`PerceptualDistance`); as a reference, the same distance between photos of
  *different* layouts.

File pairing is by name: a layout ``<stem>.png`` pairs with ``<stem>.png|jpg`` or, for k variants,
``<stem>_k0.png`` … ``<stem>_k{k-1}.png``; Cityscapes suffixes (``_leftImg8bit``,
``_gtFine_labelIds`` …) are ignored and sub-folders are searched.

Segmenters are plug-ins (:func:`register_segmenter`). Adding e.g. DRN-D-105 for Cityscapes::

    import torch
    from semsynth.evaluate import Segmenter, register_segmenter
    from semsynth.labels import get_space

    class DRN105(Segmenter):
        def __init__(self, device=None):
            super().__init__("drn-d-105", get_space("cityscapes"), input_size=(1024, 2048))
            from drn import DRNSeg                      # your copy of github.com/fyu/drn
            self.net = DRNSeg("drn_d_105", 19, pretrained_model=None, pretrained=False)
            self.net.load_state_dict(torch.load("drn_d_105_cityscapes.pth", map_location="cpu"))
            self.net.eval().to(device)
            self.mean = torch.tensor([0.2901, 0.3281, 0.2870], device=device).view(1, 3, 1, 1)
            self.std = torch.tensor([0.1830, 0.1866, 0.1845], device=device).view(1, 3, 1, 1)  # info.json

        @torch.no_grad()
        def predict(self, images):                 # (B, 3, 1024, 2048) RGB in [0, 1]
            logits = self.net((images - self.mean) / self.std)[0]
            return logits.argmax(1)                # trainIds 0..18 = cityscapes class indices

    register_segmenter("drn-d-105", DRN105)

then ``evaluate(..., segmenter="drn-d-105")`` in that process, or on the command line
``semsynth evaluate ... --segmenter mymodule:DRN105`` (``module:attribute`` is imported; the
attribute is a Segmenter, or a factory called with ``device=``).
"""
from __future__ import annotations

import datetime as _dt
import html
import importlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .labels import LabelSpace, colorize, get_space
from .utils import atomic_path, pick_device

__all__ = [
    "Segmenter", "ESPNetSegmenter", "register_segmenter", "build_segmenter", "available_segmenters",
    "confusion_matrix", "segmentation_scores", "PerceptualDistance", "FeatureNet",
    "build_feature_net", "pair_files", "Group", "evaluate", "write_report", "EvaluationError",
]


class EvaluationError(InputError):
    """Inputs that cannot be evaluated (missing pairs, empty folders, mismatched spaces)."""


# ============================================================================ segmenters


class Segmenter:
    """A frozen semantic segmenter used as a judge.

    Subclasses set `name`, `space` (the label space of their predictions) and `input_size`
    ((H, W) the network expects; the evaluator resizes images to it, None = any size) and
    implement `predict(images)`: (B, 3, H, W) RGB in [0, 1] -> (B, H, W) integer class indices of
    `space`, `space.void` where the network predicts void/ignore."""

    def __init__(self, name: str, space: "LabelSpace | str", input_size: tuple[int, int] | None = None):
        self.name = name
        self.space = get_space(space)
        self.input_size = tuple(int(v) for v in input_size) if input_size is not None else None

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """`predict` with its output checked (shape, integer type, range)."""
        with torch.no_grad():
            out = self.predict(images)
        b, _, h, w = images.shape
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (b, h, w):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise EvaluationError(f"segmenter {self.name!r}: predict() returned {shape}, expected ({b}, {h}, {w})")
        if out.dtype.is_floating_point or out.dtype == torch.bool:
            raise EvaluationError(f"segmenter {self.name!r}: predict() must return class indices, got {out.dtype}")
        out = out.long()
        if out.numel() and (int(out.min()) < 0 or int(out.max()) > self.space.void):
            raise EvaluationError(
                f"segmenter {self.name!r}: predicted indices {int(out.min())}..{int(out.max())} are "
                f"outside 0..{self.space.void} of label space {self.space.name!r}")
        return out

    def describe(self) -> dict:
        return {"name": self.name, "label_space": self.space.name,
                "input_size": list(self.input_size) if self.input_size else None}


class ESPNetSegmenter(Segmenter):
    """The released ESPNet (p=2, q=8) models, `espnet-cityscapes` (1024x512) and `espnet-camvid`
    (480x360). Their void output is the space's void. `input_size` overrides the resolution the
    network runs at (multiples of 8; smaller = faster, less accurate)."""

    def __init__(self, preset: str = "espnet-cityscapes", device=None, path=None,
                 input_size: tuple[int, int] | None = None):
        from .models.espnet import ESPNET_PRESETS, load_espnet

        cfg = ESPNET_PRESETS[preset]
        size = tuple(input_size) if input_size is not None else cfg["size"]
        if size[0] % 8 or size[1] % 8:
            raise EvaluationError(f"{preset}: input size {size} must be multiples of 8")
        super().__init__(preset, cfg["space"], input_size=size)
        if cfg["classes"] != self.space.num_classes + 1:
            raise EvaluationError(f"{preset}: {cfg['classes']} outputs do not match the "
                                  f"{self.space.name} space ({self.space.num_classes} classes + void)")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.net = load_espnet(preset, path).to(self.device)
        self.mean, self.std = cfg["mean"], cfg["std"]

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        from .models.espnet import espnet_preprocess

        x = images.to(self.device, torch.float32)
        if tuple(x.shape[-2:]) != self.input_size:
            # bilinear without antialiasing = the original's cv2.resize(INTER_LINEAR)
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        return espnet_preprocess(x, self.mean, self.std)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.net(self._prepare(images))
        if tuple(logits.shape[-2:]) != tuple(images.shape[-2:]):
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits.argmax(1)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encoder feature maps ("level1", "b1", "b2", "b3") at the network's input size."""
        return self.net.encoder.forward_features(self._prepare(images))


_SEGMENTERS: dict[str, Callable[..., Segmenter]] = {
    "espnet-cityscapes": lambda device=None: ESPNetSegmenter("espnet-cityscapes", device),
    "espnet-camvid": lambda device=None: ESPNetSegmenter("espnet-camvid", device),
}
_DEFAULT_FOR_SPACE = {"cityscapes": "espnet-cityscapes", "camvid": "espnet-camvid"}


def register_segmenter(name: str, factory: Callable[..., Segmenter], default_for: str | None = None) -> None:
    """Make `factory(device=...) -> Segmenter` available as `name`; `default_for` = a label-space
    name for which it becomes the default judge."""
    _SEGMENTERS[name] = factory
    if default_for:
        _DEFAULT_FOR_SPACE[default_for] = name


def available_segmenters() -> list[str]:
    return sorted(_SEGMENTERS)


def default_segmenter(space: str) -> str | None:
    return _DEFAULT_FOR_SPACE.get(space)


def build_segmenter(name: "str | Segmenter", device=None) -> Segmenter:
    """A registered segmenter by name, or ``module:attribute`` (a Segmenter or a factory)."""
    if isinstance(name, Segmenter):
        return name
    if name in _SEGMENTERS:
        obj = _SEGMENTERS[name](device=device)
    elif ":" in name:
        mod, _, attr = name.partition(":")
        try:
            target = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise EvaluationError(f"cannot import segmenter {name!r}: {e}") from e
        obj = target if isinstance(target, Segmenter) else target(device=device)
    else:
        raise EvaluationError(f"unknown segmenter {name!r}; registered: {available_segmenters()}, "
                              f"or give module:attribute")
    if not isinstance(obj, Segmenter):
        raise EvaluationError(f"segmenter {name!r} built a {type(obj).__name__}, not a Segmenter")
    return obj


# ============================================================================ segmentation metrics


def confusion_matrix(pred: torch.Tensor, gt: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C+1)x(C+1) int64 counts, rows = layout class, columns = predicted class (index C = void),
    by one `bincount`."""
    n = num_classes + 1
    idx = gt.reshape(-1).long() * n + pred.reshape(-1).long()
    return torch.bincount(idx, minlength=n * n).reshape(n, n)


def segmentation_scores(conf: np.ndarray, names: Sequence[str]) -> dict:
    """Scores from a (C+1)x(C+1) confusion matrix (last row/column void).

    Pixels whose *layout* is void are ignored; a void *prediction* on a labelled pixel is an error.

    * ``pixel_accuracy``: correct / labelled pixels;
    * ``per_class_iou[c]`` = TP / (TP + FP + FN), None where class c is neither in the layouts nor
      predicted;
    * ``miou``: mean IoU over the classes present in the layouts (the definition behind the
      accuracies quoted for the shared ESPNet weights); ``miou_union``: mean over classes in the
      layouts *or* the predictions (the Cityscapes scripts' nan-mean, which also charges classes
      that were only hallucinated);
    * ``mean_class_accuracy``: mean recall over classes present in the layouts."""
    conf = np.asarray(conf, dtype=np.int64)
    c = len(names)
    lab = conf[:c]                      # rows with a labelled layout pixel
    tp = np.diag(lab[:, :c]).astype(np.float64)
    gt = lab.sum(1).astype(np.float64)  # includes predicted void
    pred = lab[:, :c].sum(0).astype(np.float64)
    union = gt + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        recall = np.where(gt > 0, tp / gt, np.nan)
    present = gt > 0
    total = gt.sum()
    return {
        "pixel_accuracy": float(tp.sum() / total) if total else None,
        "miou": float(iou[present].mean()) if present.any() else None,
        "miou_union": float(np.nanmean(iou)) if (union > 0).any() else None,
        "mean_class_accuracy": float(recall[present].mean()) if present.any() else None,
        "per_class_iou": {n: (None if math.isnan(v) else float(v)) for n, v in zip(names, iou)},
        "classes_present": int(present.sum()),
        "labelled_pixels": int(total),
        "predicted_void_fraction": float(lab[:, c].sum() / total) if total else None,
    }


# ============================================================================ feature networks


def _resize(x: torch.Tensor, size: tuple[int, int], antialias: bool = True) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False,
                         antialias=antialias).clamp_(0, 1)


class FeatureNet:
    """images (B, 3, H, W) in [0, 1] -> (B, D) float64 features for Fréchet distance / KID."""

    def __init__(self, key: str, label: str, standard: bool, dims: int, fn: Callable):
        self.key, self.label, self.standard, self.dims, self._fn = key, label, standard, dims, fn

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return self._fn(images).double().cpu().numpy()

    def describe(self) -> dict:
        return {"key": self.key, "name": self.label, "standard": self.standard, "dims": self.dims}


def _find_fid_weights(path) -> Path | None:
    """The user's FID Inception file: `path`, else the standard file name in semsynth's weight
    folders (never downloaded)."""
    from .models.inception import FID_WEIGHTS_FILE

    if path:
        return Path(path).expanduser()
    try:
        from .weights import resolve

        return resolve(FID_WEIGHTS_FILE, download=False)
    except (FileNotFoundError, ValueError, ImportError):
        return None


def build_feature_net(key: str, device, inception_path=None, segmenter: Segmenter | None = None) -> FeatureNet:
    """`inception` (standard FID), `squeezenet1_1` or `espnet` (non-standard)."""
    device = torch.device(device)
    if key == "inception":
        from .models.inception import load_fid_inception

        net = load_fid_inception(inception_path).to(device)
        return FeatureNet("inception", "FID (Inception-v3 pt_inception-2015-12-05, pool3 2048-d)",
                          True, 2048, lambda x: net(x.to(device)))
    if key == "squeezenet1_1":
        from .models.backbones import build_backbone

        sq = build_backbone("squeezenet1_1", layers=["fire9"]).to(device)
        return FeatureNet(
            "squeezenet1_1", "FD-SqueezeNet1.1 (fire9 pooled, 512-d; non-standard, not comparable "
            "to published FID)", False, 512,
            lambda x: sq(_resize(x.to(device), (299, 299)))["fire9"].mean((2, 3)))
    if key == "espnet":
        seg = segmenter if isinstance(segmenter, ESPNetSegmenter) else ESPNetSegmenter("espnet-cityscapes", device)
        return FeatureNet(
            "espnet", f"FD-ESPNet ({seg.name} encoder b3 pooled, 256-d; non-standard, not "
            "comparable to published FID)", False, 256,
            lambda x: seg.features(x)["b3"].mean((2, 3)))
    raise EvaluationError(f"unknown feature network {key!r}; choose inception, squeezenet1_1 or espnet")


def _squeezenet_available() -> bool:
    try:
        from .models.backbones import build_backbone  # noqa: F401
        from .weights import resolve

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
            from .models.backbones import build_backbone

            layers = ["conv1", "fire3", "fire5", "fire7", "fire9"]
            net = build_backbone("squeezenet1_1", layers=layers).to(self.device)
            def feats(x):
                f = net(x)
                return [f[l] for l in layers]

            self._feats = feats
            self.name = "SqueezeNet1.1 " + "/".join(layers)
        elif backbone == "espnet":
            from .models.espnet import espnet_preprocess

            seg = segmenter if isinstance(segmenter, ESPNetSegmenter) \
                else ESPNetSegmenter("espnet-cityscapes", self.device)
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


# ============================================================================ pairing


_CS_SUFFIX = re.compile(r"_(leftImg8bit|gt(Fine|Coarse)_(labelIds|labelTrainIds|trainIds|color|instanceIds))$")
_VARIANT = re.compile(r"^(?P<stem>.+)_k(?P<k>\d+)$")


def _key(path: Path) -> str:
    """Pairing key: the file name without extension and without Cityscapes name suffixes; only
    the name counts, so layouts in city/ sub-folders pair with flat image folders."""
    return _CS_SUFFIX.sub("", path.stem)


@dataclass
class Group:
    """One layout and the images evaluated against it."""

    stem: str
    label: Path
    images: list[Path] = field(default_factory=list)   # synthesized variants, by k
    real: Path | None = None


def _image_files(folder: Path) -> list[Path]:
    from .data import _scan

    if not folder.is_dir():
        raise EvaluationError(f"{folder}: no such folder")
    return _scan(folder)


def _examples(items: Sequence[str], n: int = 5) -> str:
    s = ", ".join(items[:n])
    return s + (f", … ({len(items) - n} more)" if len(items) > n else "")


def pair_files(label_dir, images_dir=None, real_dir=None) -> tuple[list[Group], dict]:
    """Match layouts with synthesized images (``<stem>.*`` or ``<stem>_k<i>.*``) and real photos
    (``<stem>.*``). Returns the groups that have images (sorted by stem) and notes (counts of
    layouts without images, real photos without layouts). Raises EvaluationError for images
    without a layout, duplicate names, or when nothing pairs."""
    from .data import list_label_files

    label_dir = Path(label_dir)
    if not label_dir.exists():
        raise EvaluationError(f"{label_dir}: label folder not found")
    labels: dict[str, Path] = {}
    for f in list_label_files(label_dir):
        k = _key(f)
        if k in labels:
            raise EvaluationError(f"{label_dir}: layouts {labels[k]} and {f} have the same name {k!r}")
        labels[k] = f
    groups = {k: Group(k, p) for k, p in labels.items()}
    notes: dict = {"layouts_found": len(labels)}

    if images_dir is not None:
        images_dir = Path(images_dir)
        variants: dict[str, dict[int, Path]] = {}
        orphans, grids = [], 0
        for f in _image_files(images_dir):
            k, idx = _key(f), 0
            if k not in labels:
                m = _VARIANT.match(f.stem)
                if m and _CS_SUFFIX.sub("", m["stem"]) in labels:
                    k, idx = _CS_SUFFIX.sub("", m["stem"]), int(m["k"])
                elif f.stem.endswith("_grid") and _CS_SUFFIX.sub("", f.stem[:-5]) in labels:
                    grids += 1  # `semsynth synthesize --grid` previews: not evaluated
                    continue
                else:
                    orphans.append(f.relative_to(images_dir).as_posix())
                    continue
            if idx in variants.setdefault(k, {}):
                raise EvaluationError(f"{images_dir}: {variants[k][idx].name} and {f.name} are both "
                                      f"variant {idx} of layout {k!r}")
            variants[k][idx] = f
        if orphans:
            raise EvaluationError(
                f"{len(orphans)} image(s) in {images_dir} have no layout in {label_dir}: "
                f"{_examples(orphans)}. Images must be named after their layout: <stem>.png or "
                f"<stem>_k<i>.png (layouts there look like {_examples(sorted(labels)[:3], 3)}).")
        for k, v in variants.items():
            groups[k].images = [v[i] for i in sorted(v)]
        if grids:
            notes["grid_previews_ignored"] = grids
        if not variants:
            raise EvaluationError(f"{images_dir}: no images found")

    if real_dir is not None:
        real_dir = Path(real_dir)
        found, unpaired = 0, []
        for f in _image_files(real_dir):
            k = _key(f)
            if k in groups:
                if groups[k].real is not None:
                    raise EvaluationError(f"{real_dir}: {groups[k].real.name} and {f.name} are both "
                                          f"photos of layout {k!r}")
                groups[k].real = f
                found += 1
            else:
                unpaired.append(f.name)
        if not found:
            raise EvaluationError(f"no real photo in {real_dir} matches a layout in {label_dir} by "
                                  f"name (photos: {_examples(unpaired, 3)}; layouts: "
                                  f"{_examples(sorted(labels)[:3], 3)})")
        notes["real_without_layout"] = len(unpaired)

    if images_dir is not None:
        out = [g for g in groups.values() if g.images]
        notes["layouts_without_images"] = len(groups) - len(out)
        if real_dir is not None:
            notes["real_ignored_no_synthesized"] = sum(1 for g in groups.values() if g.real and not g.images)
            notes["layouts_without_real"] = sum(1 for g in out if g.real is None)
    else:
        out = [g for g in groups.values() if g.real]
        notes["layouts_without_images"] = len(groups) - len(out)
    return sorted(out, key=lambda g: g.stem), notes


# ============================================================================ evaluation


@dataclass
class _SetResult:
    conf: np.ndarray
    per_image_accuracy: dict = field(default_factory=dict)
    features: dict = field(default_factory=dict)      # feature-net key -> list of (B, D)
    diversity: dict = field(default_factory=dict)     # stem -> mean pairwise distance
    thumbs: dict = field(default_factory=dict)        # stem -> [(caption, uint8 HxWx3)]
    count: int = 0
    size_warnings: list = field(default_factory=list)
    kept: dict = field(default_factory=dict)          # stem -> first image at the feature size


def _load(path: Path) -> torch.Tensor:
    from .data import load_image

    return load_image(path).unsqueeze(0)


def _thumb(arr: np.ndarray, height: int = 128, nearest: bool = False) -> np.ndarray:
    from PIL import Image

    h, w = arr.shape[:2]
    size = (max(1, round(w * height / h)), height)
    mode = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(arr).resize(size, mode))


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    return (img.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())


def _run_set(entries: list[tuple[Group, list[Path]]], seg: Segmenter, space: LabelSpace,
             encoding, feature_nets: list[FeatureNet], feat_size, perceptual: PerceptualDistance | None,
             batch_size: int, thumb_stems: set, device, keep_stems: set = frozenset()) -> _SetResult:
    """One pass over an image set: segmentation confusion, pooled features, within-layout
    diversity, thumbnails. Images are streamed in batches; only small results are kept."""
    n = space.num_classes + 1
    res = _SetResult(conf=np.zeros((n, n), dtype=np.int64))
    seg_size = seg.input_size
    buf_img, buf_lab, buf_meta = [], [], []
    feats = {fn.key: [] for fn in feature_nets}

    def flush():
        if not buf_img:
            return
        x = torch.cat(buf_img).to(device)
        y = torch.stack(buf_lab).to(device)
        pred = seg.segment(x)
        for b, (stem, name) in enumerate(buf_meta):
            cm = confusion_matrix(pred[b], y[b], space.num_classes).cpu().numpy()
            res.conf += cm
            lab = cm[: space.num_classes]
            tot = lab.sum()
            res.per_image_accuracy[name] = float(np.trace(lab[:, : space.num_classes]) / tot) if tot else None
            if stem in thumb_stems and not any(c.startswith("segmentation") for c, _ in res.thumbs.get(stem, [])):
                res.thumbs.setdefault(stem, []).append(
                    ("segmentation", _thumb(colorize(pred[b], space), nearest=True)))
        buf_img.clear(); buf_lab.clear(); buf_meta.clear()

    fbuf: list[torch.Tensor] = []

    def flush_feats():
        if fbuf:
            x = torch.cat(fbuf).to(device)
            for fn in feature_nets:
                feats[fn.key].append(fn(x))
            fbuf.clear()

    for group, paths in entries:
        ids = space.read(group.label, encoding)
        lab_full = torch.from_numpy(np.ascontiguousarray(ids))
        loaded = []
        for i, p in enumerate(paths):
            img = _load(p)
            h, w = img.shape[-2:]
            if abs(h / w - ids.shape[0] / ids.shape[1]) > 0.02 * (ids.shape[0] / ids.shape[1]):
                res.size_warnings.append(f"{p.name} is {w}x{h} but its layout is {ids.shape[1]}x{ids.shape[0]}")
            size = seg_size or (h, w)
            lab = lab_full
            if tuple(lab.shape) != tuple(size):
                lab = F.interpolate(lab[None, None].float(), size=size, mode="nearest")[0, 0].long()
            xs = img if seg_size is None else _resize(img, size, antialias=False)
            if seg_size is None and buf_img and tuple(buf_img[0].shape[-2:]) != tuple(size):
                flush()
            buf_img.append(xs); buf_lab.append(lab); buf_meta.append((group.stem, p.name))
            keep = i == 0 and group.stem in keep_stems
            if feature_nets or keep:
                small = _resize(img, feat_size) if feat_size else img  # once for both uses
                if feature_nets:
                    fbuf.append(small)
                if keep:
                    res.kept[group.stem] = small
            if group.stem in thumb_stems:
                res.thumbs.setdefault(group.stem, []).append((f"k{i}", _thumb(_to_uint8(img[0]))))
            if perceptual is not None and len(paths) > 1:
                loaded.append(img)
            res.count += 1
            if len(buf_img) >= batch_size:
                flush()
            if len(fbuf) >= batch_size:
                flush_feats()
        if loaded:
            same = all(t.shape == loaded[0].shape for t in loaded)
            batch = torch.cat(loaded if same else [_resize(t, loaded[0].shape[-2:]) for t in loaded])
            res.diversity[group.stem] = perceptual.pairwise_mean(batch)[0]
    flush()
    flush_feats()
    res.features = {k: np.concatenate(v) if v else np.zeros((0, 1)) for k, v in feats.items()}
    return res


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


def _distribution(fn: FeatureNet, fake: np.ndarray | None, real: np.ndarray | None,
                  kid_subsets: int, kid_subset_size: int, seed: int, fid_method: str = "auto") -> dict:
    from .models.inception import frechet_distance_features, kernel_inception_distance

    # "auto": scipy's sqrtm as in the FID code when the covariances have full rank (n >= D),
    # else the exact low-rank formula; non-standard distances use the faster eigen-solution.
    method = fid_method if fn.standard else ("eigh" if fid_method in ("auto", "sqrtm") else fid_method)
    out = {**fn.describe()}
    used = set()

    def fd(a, b):
        m = method if method != "eigh" or min(len(a), len(b)) >= a.shape[1] else "lowrank"
        v, m = frechet_distance_features(a, b, m)
        used.add(m)
        out["fd_method"] = "/".join(sorted(used))
        return v

    if fake is not None and real is not None and len(fake) >= 2 and len(real) >= 2:
        out["fd"] = fd(fake, real)
        out["kid"] = kernel_inception_distance(fake, real, kid_subsets, kid_subset_size, seed)
        out["n"] = [int(len(fake)), int(len(real))]
    if real is not None and len(real) >= 4:
        perm = np.random.default_rng(seed).permutation(len(real))
        half = len(real) // 2
        a, b = real[perm[:half]], real[perm[half: 2 * half]]
        out["real_split_half"] = {"fd": fd(a, b),
                                  "kid": kernel_inception_distance(a, b, kid_subsets, kid_subset_size, seed),
                                  "n": [int(half), int(half)]}
    if real is not None and len(real) < 4:
        out["note"] = "too few real photos for a split-half reference"
    if fake is not None and len(fake) < 2:
        out["note"] = "too few images for a distance"
    return out


def evaluate(images_dir=None, labels_dir=None, real_dir=None, *, segmenter: "str | Segmenter | None" = None,
             label_space: "str | LabelSpace | None" = None, label_encoding: str | None = None,
             inception: "str | Path | None" = None, fid_method: str = "auto", fd_network: str = "auto",
             device=None, batch_size: int = 4, kid_subsets: int = 100, kid_subset_size: int = 1000,
             diversity_network: str = "auto", thumbnails: int = 4, between_pairs: int = 20, seed: int = 0,
             progress: Callable[[str], None] | None = None) -> dict:
    """Evaluate `images_dir` (synthesized images, or real photos alone) against the layouts in
    `labels_dir`, with the `real_dir` photos of the same layouts side by side.

    segmenter: a registered name, ``module:attribute`` or a `Segmenter` (default: the label
    space's, espnet-cityscapes / espnet-camvid); label_space: how the layouts are read (default:
    the segmenter's; must match it). inception: the user's ``pt_inception-2015-12-05`` file for the
    standard FID (default: looked up, never downloaded); fid_method: see
    `frechet_distance_features`. fd_network: "auto" (SqueezeNet 1.1, else ESPNet), "squeezenet1_1",
    "espnet" or "none" for the non-standard distance; diversity_network likewise ("auto",
    "squeezenet1_1", "espnet"). FD/KID need `real_dir`; diversity needs k > 1 variants.

    Returns the report dict (JSON-able except ``report["_thumbs"]``); :func:`write_report` writes
    it. Raises EvaluationError (a ValueError) for unusable inputs."""
    t0 = time.perf_counter()
    log = progress or (lambda s: None)
    if labels_dir is None:
        raise EvaluationError("--labels (the layouts folder) is required")
    if images_dir is None and real_dir is None:
        raise EvaluationError("nothing to evaluate: give an images folder and/or real photos")
    device = pick_device(device)

    # -- label space and judge
    space = get_space(label_space) if label_space is not None else None
    if space is None and segmenter is None and Path(labels_dir).name in ("trainannot", "valannot", "testannot"):
        space = get_space("camvid")  # the SegNet CamVid layout, as data.py detects it
        log(f"{Path(labels_dir).name}/: reading the layouts as CamVid (give --label-space to override)")
    if segmenter is None:
        segmenter = default_segmenter(space.name if space else "cityscapes")
        if segmenter is None:
            raise EvaluationError(f"no default segmenter for label space {space.name!r}; "
                                  f"give --segmenter (registered: {available_segmenters()})")
    seg = build_segmenter(segmenter, device=device)
    if space is None:
        space = seg.space
    if seg.space.name != space.name or seg.space.num_classes != space.num_classes:
        raise EvaluationError(
            f"segmenter {seg.name!r} predicts the {seg.space.name!r} label space "
            f"({seg.space.num_classes} classes) but the layouts are read as {space.name!r} "
            f"({space.num_classes}); choose a matching --segmenter or --label-space")

    groups, notes = pair_files(labels_dir, images_dir, real_dir)
    if not groups:
        raise EvaluationError(f"no layout in {labels_dir} has an image to evaluate")
    log(f"{len(groups)} layouts, {sum(len(g.images) for g in groups)} images, "
        f"{sum(1 for g in groups if g.real)} real photos; segmenter {seg.name} on {device}")

    # images_dir alone = evaluate those images; with real_dir = synthesized vs real
    sets: dict[str, list[tuple[Group, list[Path]]]] = {}
    if images_dir is not None:
        sets["images"] = [(g, g.images) for g in groups]
    if real_dir is not None:
        sets["real"] = [(g, [g.real]) for g in groups if g.real is not None]
    column = {"images": "synthesized" if real_dir is not None else "images", "real": "real"}

    # -- distribution networks: only with two sets to compare
    feature_nets: list[FeatureNet] = []
    warnings: list[str] = []
    fid_note = None
    first_paths = next(iter(sets.values()))[0][1]
    feat_size = tuple(_load(first_paths[0]).shape[-2:])
    if images_dir is not None and real_dir is not None:
        wpath = _find_fid_weights(inception)
        if wpath is not None:
            feature_nets.append(build_feature_net("inception", device, wpath))
        else:
            from .models.inception import FID_WEIGHTS_FILE, FID_WEIGHTS_URL

            fid_note = (f"standard FID not computed: the Inception weights {FID_WEIGHTS_FILE} were not "
                        f"given (--inception PATH) nor found; they are at {FID_WEIGHTS_URL}")
        key = fd_network
        auto = key == "auto"
        if auto:
            key = "squeezenet1_1" if _squeezenet_available() else "espnet"
        if key != "none":
            try:
                feature_nets.append(build_feature_net(key, device, segmenter=seg))
            except FileNotFoundError as e:
                if not auto:
                    raise
                warnings.append(f"no non-standard Fréchet distance: no feature network available ({e})")

    multi = images_dir is not None and any(len(g.images) > 1 for g in groups)
    perceptual = None
    if multi or (images_dir is not None and real_dir is not None):
        try:
            perceptual = PerceptualDistance(device, seg, backbone=diversity_network)
        except FileNotFoundError as e:
            if diversity_network != "auto":
                raise
            warnings.append(f"diversity not computed: no perceptual network available ({e})")

    thumb_stems = {g.stem for g in groups[:thumbnails]}
    chain = _pick_chain([g.stem for g in groups if real_dir is None or g.real], between_pairs, seed) \
        if perceptual is not None and images_dir is not None else []
    keep_stems = set(chain)
    results: dict[str, _SetResult] = {}
    timing = {}
    for name, entries in sets.items():
        t = time.perf_counter()
        log(f"evaluating {column[name]} ({sum(len(p) for _, p in entries)} images)")
        results[name] = _run_set(entries, seg, space, label_encoding, feature_nets, feat_size,
                                 perceptual if name == "images" and multi else None, batch_size,
                                 thumb_stems, device, keep_stems)
        timing[column[name]] = round(time.perf_counter() - t, 2)

    # -- assemble
    report: dict = {
        "semsynth_evaluate": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": {
            "images": str(images_dir) if images_dir is not None else None,
            "labels": str(labels_dir), "real": str(real_dir) if real_dir is not None else None,
            "label_space": space.name, "layouts": len(groups),
            "images_evaluated": results["images"].count if "images" in results else 0,
            "real_evaluated": results["real"].count if "real" in results else 0,
            "variants_per_layout": sorted({len(g.images) for g in groups}) if images_dir is not None else None,
            **notes,
        },
        "columns": {k: column[k] for k in results},
        "segmentation": {"segmenter": seg.describe(),
                         "resolution": list(seg.input_size) if seg.input_size else "native"},
        "distribution": [],
        "diversity": None,
        "warnings": list(warnings),
    }
    for name, r in results.items():
        s = segmentation_scores(r.conf, space.names)
        s["confusion"] = r.conf.tolist()
        s["per_image_pixel_accuracy"] = r.per_image_accuracy
        report["segmentation"][column[name]] = s
        report["warnings"] += r.size_warnings[:20]
    if fid_note:
        report["warnings"].append(fid_note)
    t = time.perf_counter()
    for fn in feature_nets:
        report["distribution"].append(_distribution(
            fn, results["images"].features.get(fn.key), results["real"].features.get(fn.key),
            kid_subsets, kid_subset_size, seed, fid_method))
    if feature_nets:
        timing["distribution"] = round(time.perf_counter() - t, 2)
    if perceptual is not None:
        t = time.perf_counter()
        div = results["images"].diversity if "images" in results else {}
        vals = np.array(list(div.values()), dtype=np.float64)
        d: dict = {
            "network": perceptual.name,
            "definition": "mean pairwise distance among the k outputs of a layout; distance = mean over "
                          "layers of the mean |a-b| of channel-normalised (unit-RMS) features",
            "layouts": int(len(vals)),
            "mean": float(vals.mean()) if len(vals) else None,
            "std": float(vals.std()) if len(vals) else None,
            "per_layout": div,
        }
        if images_dir is not None:
            d["between_layouts"] = {c: _between_layouts(perceptual, results[k].kept, chain)
                                    for k, c in column.items() if k in results}
            d["between_layouts_pairs"] = max(0, len(chain) - 1)
        report["diversity"] = d
        timing["diversity_between"] = round(time.perf_counter() - t, 2)
    timing["total"] = round(time.perf_counter() - t0, 2)
    report["timing_s"] = timing
    report["device"] = str(device)

    # thumbnails: layout | images/variants | segmentation | real | its segmentation
    thumbs = {}
    for g in groups[:thumbnails]:
        row = [("layout", _thumb(colorize(space.read(g.label, label_encoding), space), nearest=True))]
        for name in results:
            items = results[name].thumbs.get(g.stem, [])
            shown = [(c, a) for c, a in items if c.startswith("k") and int(c[1:]) < 3]
            single = len(g.images if name == "images" else [g.real]) == 1
            for cap, arr in shown:
                row.append((column[name] if single else f"{column[name]} {cap}", arr))
            row += [(f"{column[name]} segmentation", a) for c, a in items if c == "segmentation"]
        thumbs[g.stem] = row
    report["_thumbs"] = thumbs
    return report


# ============================================================================ report writing


def _pct(v):
    return "—" if v is None else f"{100 * v:.1f}"


def _num(v, fmt="{:.2f}"):
    return "—" if v is None else fmt.format(v)


def _summary_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    cols = list(report["columns"].values())
    seg = report["segmentation"]
    sname = seg["segmenter"]["name"]
    rows = [
        [f"mIoU % ({sname}, classes in layouts)"] + [_pct(seg[c]["miou"]) for c in cols],
        ["mIoU % (classes in layouts or predicted)"] + [_pct(seg[c]["miou_union"]) for c in cols],
        ["pixel accuracy %"] + [_pct(seg[c]["pixel_accuracy"]) for c in cols],
        ["mean class accuracy %"] + [_pct(seg[c]["mean_class_accuracy"]) for c in cols],
    ]
    for d in report["distribution"]:
        split = d.get("real_split_half", {})
        label = d["name"] if not d["standard"] else "FID"
        row = [label, _num(d.get("fd"))]
        if "real" in cols:
            row.append(_num(split.get("fd")) + (" (split half)" if split else ""))
        rows.append(row)
        kid, skid = d.get("kid"), split.get("kid")
        scale = 1000 if d["standard"] else 1

        def k(v):
            return "—" if not v else (f"{scale * v['mean']:.2f} ± {scale * v['std']:.2f}" if d["standard"]
                                      else f"{v['mean']:.3g} ± {v['std']:.2g}")
        krow = [f"KID ×1000 (Inception)" if d["standard"] else f"KID ({d['key']}, non-standard)", k(kid)]
        if "real" in cols:
            krow.append(k(skid) + (" (split half)" if skid else ""))
        rows.append(krow)
    div = report.get("diversity")
    if div:
        row = [f"diversity (within layout, {div['network'].split()[0]})",
               _num(div["mean"], "{:.4f}") + (f" ({div['layouts']} layouts)" if div["layouts"] else "")]
        if "real" in cols:
            row.append("n/a (one photo per layout)")
        rows.append(row)
        btw = div.get("between_layouts") or {}
        if btw:
            rows.append(["distance between different layouts (reference)"]
                        + [_num(btw.get(c), "{:.4f}") for c in cols])
    head = ["metric"] + [c + (" (ceiling)" if c == "real" else "") for c in cols]
    rows = [r + ["—"] * (len(head) - len(r)) for r in rows]
    return head, rows


def _class_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    cols = list(report["columns"].values())
    seg = report["segmentation"]
    names = list(seg[cols[0]]["per_class_iou"])
    return ["class IoU %"] + cols, [[n] + [_pct(seg[c]["per_class_iou"][n]) for c in cols] for n in names]


def _md_table(head, rows) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(head, rows) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _inputs_lines(report: dict) -> list[str]:
    i = report["inputs"]
    out = [f"- layouts: `{i['labels']}` ({i['label_space']}), {i['layouts']} evaluated"]
    if i["images"]:
        out.append(f"- {report['columns'].get('images', 'images')}: `{i['images']}`, {i['images_evaluated']} images"
                   + (f" (variants per layout: {i['variants_per_layout']})" if i.get("variants_per_layout") else ""))
    if i["real"]:
        out.append(f"- real: `{i['real']}`, {i['real_evaluated']} photos")
    seg = report["segmentation"]
    out.append(f"- segmenter: {seg['segmenter']['name']} at {seg['resolution']}; device {report['device']}; "
               f"time {report['timing_s'].get('total')} s")
    return out


def write_report(report: dict, out_dir) -> dict[str, Path]:
    """report.json (atomic), report.md and report.html with the tables, thumbs/*.png."""
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    thumbs = report.get("_thumbs", {})
    data = {k: v for k, v in report.items() if not k.startswith("_")}
    paths = {"json": out_dir / "report.json", "md": out_dir / "report.md", "html": out_dir / "report.html"}
    with atomic_path(paths["json"]) as tmp:
        tmp.write_text(json.dumps(data, indent=1, allow_nan=False))

    thumb_files = []
    for stem, row in thumbs.items():
        h = max(a.shape[0] for _, a in row)
        gap = 4
        w = sum(a.shape[1] for _, a in row) + gap * (len(row) - 1)
        canvas = np.full((h, w, 3), 255, dtype=np.uint8)
        x = 0
        for _, a in row:
            canvas[: a.shape[0], x: x + a.shape[1]] = a[..., :3]
            x += a.shape[1] + gap
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", stem)
        p = out_dir / "thumbs" / f"{safe}.png"
        with atomic_path(p) as tmp:
            Image.fromarray(canvas).save(tmp, format="PNG")
        thumb_files.append((stem, p.relative_to(out_dir).as_posix(), [c for c, _ in row]))

    head, rows = _summary_rows(report)
    chead, crows = _class_rows(report)
    notes = ["mIoU over the classes present in the layouts (the definition behind the quoted ESPNet "
             "accuracies); pixels that are void in the layout are ignored, void predictions count as errors."]
    if report["distribution"]:
        notes.append("Non-standard distances are computed on networks available here and are NOT comparable "
                     "to published FIDs. The real column of FD/KID compares two random halves of the real "
                     "photos (a floor; FD is biased upwards for small sets, so compare it with FD on sets "
                     "of the same size).")
    if report.get("diversity"):
        notes.append("Diversity: " + report["diversity"]["definition"] + f" ({report['diversity']['network']}).")
    notes += [f"warning: {w}" for w in report.get("warnings", [])]

    md = ["# semsynth evaluation", "", *_inputs_lines(report), "", "## Summary", "", _md_table(head, rows), "",
          *[f"- {n}" for n in notes], "", "## Per-class IoU", "", _md_table(chead, crows), ""]
    if thumb_files:
        md += ["## Examples", ""]
        for stem, rel, caps in thumb_files:
            md += [f"**{stem}** — {' | '.join(caps)}", "", f"![{stem}]({rel})", ""]
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text("\n".join(md))

    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child"
             "{text-align:left}img{max-width:100%}")
    body = ["<h1>semsynth evaluation</h1><ul>"
            + "".join("<li>" + re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(s[2:])) + "</li>"
                      for s in _inputs_lines(report)) + "</ul>",
            "<h2>Summary</h2>", _html_table(head, rows),
            "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>",
            "<h2>Per-class IoU</h2>", _html_table(chead, crows)]
    if thumb_files:
        body.append("<h2>Examples</h2>")
        for stem, rel, caps in thumb_files:
            body.append(f"<p><b>{html.escape(stem)}</b> — {html.escape(' | '.join(caps))}<br>"
                        f"<img src=\"{html.escape(rel)}\" alt=\"{html.escape(stem)}\"></p>")
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>semsynth evaluation</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    with atomic_path(paths["html"]) as tmp:
        tmp.write_text(page)
    return paths
