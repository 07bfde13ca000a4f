"""Evaluation of synthesized images: segmentation consistency, FID/KID, diversity, reports.

``semsynth evaluate FAKE_DIR [MORE_DIRS or name=DIR ...] --labels LABEL_DIR [--real REAL_DIR]
-o REPORT_DIR`` (or :func:`evaluate` + :meth:`Report.write`) measures, for the images in each
folder (one column per model, all on the same layouts) and — side by side, as their ceiling —
for the real photos of the same layouts:

* **Segmentation consistency**: a frozen segmenter labels every image; the confusion matrix
  against the input layout gives per-class IoU, mIoU and pixel accuracy (see
  :func:`segmentation_scores` for the exact definitions). Images and layouts are both brought to
  the segmenter's own input size (images bilinear, layouts nearest), so every image set is scored
  at the same resolution. Every score has a bootstrap interval over layouts, and two models are
  compared on the same resampled layouts (`consistency.paired_bootstrap`).
* **FID / KID**: the standard FID Inception-v3 (`semsynth.models.inception`) when its weights
  ``pt_inception-2015-12-05-6726825d.pth`` are given (``--inception``) or found by
  `semsynth.weights.resolve` — never downloaded. Always also a Fréchet distance and KID on the
  pooled features of a network that is available here (SqueezeNet 1.1, else the ESPNet encoder),
  named as *non-standard*: it is not comparable to published FIDs. Real photos are first resized
  (antialiased) to the (smallest) synthesized images' resolution. Distances are taken between
  sets of equal size, next to the real photos' split-half floor at that size
  (`distribution.matched_distances`).
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
attribute is a Segmenter, or a factory called with ``device=`` — and ``input_size=`` when
``--segmenter-size`` is given).

Parts: `segmenters` (the judges), `pairing` (files to layouts), `consistency` (segmentation
scores, bootstrap), `distribution` (FD/KID at matched sizes), `diversity`, `report` (`Report`:
JSON, Markdown, HTML), `run` (`evaluate`). The JSON document is described in
docs/evaluate-report.md.
"""

from __future__ import annotations

from .common import EvaluationError
from .consistency import (
    LayoutCounts,
    bootstrap_intervals,
    confusion_matrix,
    evaluation_space,
    paired_bootstrap,
    segmentation_scores,
)
from .distribution import FeatureNet, build_feature_net, matched_distances
from .diversity import PerceptualDistance
from .pairing import Group, pair_files
from .report import Report, write_report
from .run import evaluate
from .segmenters import (
    ESPNetSegmenter,
    Segmenter,
    available_segmenters,
    build_segmenter,
    default_segmenter,
    register_segmenter,
)

__all__ = [
    "Segmenter",
    "ESPNetSegmenter",
    "register_segmenter",
    "build_segmenter",
    "available_segmenters",
    "default_segmenter",
    "confusion_matrix",
    "segmentation_scores",
    "LayoutCounts",
    "bootstrap_intervals",
    "paired_bootstrap",
    "evaluation_space",
    "PerceptualDistance",
    "FeatureNet",
    "build_feature_net",
    "matched_distances",
    "pair_files",
    "Group",
    "evaluate",
    "Report",
    "write_report",
    "EvaluationError",
]
