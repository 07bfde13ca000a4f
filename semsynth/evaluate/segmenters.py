"""Segmenters: frozen networks that judge synthesized images by labelling them.

A `Segmenter` maps (B, 3, H, W) RGB in [0, 1] to (B, H, W) class indices of its label space.
Built in: the released ESPNet models; plug-ins register with `register_segmenter` or are named
``module:attribute`` on the command line (the package docstring shows DRN-D-105)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..labels import LabelSpace, get_space
from .common import EvaluationError


class Segmenter:
    """A frozen semantic segmenter used as a judge.

    Subclasses set `name`, `space` (the label space of their predictions) and `input_size`
    ((H, W) the network expects; the evaluator resizes images to it, None = any size) and
    implement `predict(images)`: (B, 3, H, W) RGB in [0, 1] -> (B, H, W) integer class indices of
    `space`, `space.void` where the network predicts void/ignore."""

    def __init__(self, name: str, space: LabelSpace | str, input_size: tuple[int, int] | None = None):
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
                f"outside 0..{self.space.void} of label space {self.space.name!r}"
            )
        return out

    def describe(self) -> dict:
        return {
            "name": self.name,
            "label_space": self.space.name,
            "input_size": list(self.input_size) if self.input_size else None,
        }


class ESPNetSegmenter(Segmenter):
    """The released ESPNet (p=2, q=8) models, `espnet-cityscapes` (1024x512) and `espnet-camvid`
    (480x360). Their void output is the space's void. `input_size` overrides the resolution the
    network runs at (multiples of 8; smaller = faster, less accurate)."""

    def __init__(
        self, preset: str = "espnet-cityscapes", device=None, path=None, input_size: tuple[int, int] | None = None
    ):
        from ..models.espnet import ESPNET_PRESETS, load_espnet

        cfg = ESPNET_PRESETS[preset]
        size = tuple(input_size) if input_size is not None else cfg["size"]
        if size[0] % 8 or size[1] % 8:
            raise EvaluationError(f"{preset}: input size {size} must be multiples of 8")
        super().__init__(preset, cfg["space"], input_size=size)
        if cfg["classes"] != self.space.num_classes + 1:
            raise EvaluationError(
                f"{preset}: {cfg['classes']} outputs do not match the "
                f"{self.space.name} space ({self.space.num_classes} classes + void)"
            )
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.net = load_espnet(preset, path).to(self.device)
        self.mean, self.std = cfg["mean"], cfg["std"]

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        from ..models.espnet import espnet_preprocess

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
    "espnet-cityscapes": lambda device=None, input_size=None: ESPNetSegmenter(
        "espnet-cityscapes", device, input_size=input_size
    ),
    "espnet-camvid": lambda device=None, input_size=None: ESPNetSegmenter(
        "espnet-camvid", device, input_size=input_size
    ),
}
_DEFAULT_FOR_SPACE = {"cityscapes": "espnet-cityscapes", "camvid": "espnet-camvid"}


def register_segmenter(name: str, factory: Callable[..., Segmenter], default_for: str | None = None) -> None:
    """Make `factory(device=...) -> Segmenter` available as `name`; `default_for` = a label-space
    name for which it becomes the default judge. A factory that also takes `input_size=` lets
    ``--segmenter-size`` choose the resolution it runs at."""
    _SEGMENTERS[name] = factory
    if default_for:
        _DEFAULT_FOR_SPACE[default_for] = name


def available_segmenters() -> list[str]:
    return sorted(_SEGMENTERS)


def default_segmenter(space: str) -> str | None:
    return _DEFAULT_FOR_SPACE.get(space)


def _build(factory: Callable[..., Segmenter], name: str, device, input_size) -> Segmenter:
    if input_size is None:
        return factory(device=device)
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        params = []
    if not any(p.name == "input_size" or p.kind is p.VAR_KEYWORD for p in params):
        raise EvaluationError(f"segmenter {name!r} does not take an input size; it runs at its own")
    return factory(device=device, input_size=tuple(int(v) for v in input_size))


def build_segmenter(name: str | Segmenter, device=None, input_size: tuple[int, int] | None = None) -> Segmenter:
    """A registered segmenter by name, or ``module:attribute`` (a Segmenter or a factory);
    `input_size` (H, W) = the resolution it runs at, for factories that take one."""
    if isinstance(name, Segmenter):
        if input_size is not None and tuple(input_size) != name.input_size:
            raise EvaluationError(
                f"segmenter {name.name!r} is already built for {name.input_size}; "
                f"build it with input size {tuple(input_size)} instead"
            )
        return name
    if name in _SEGMENTERS:
        obj = _build(_SEGMENTERS[name], name, device, input_size)
    elif ":" in name:
        mod, _, attr = name.partition(":")
        try:
            target = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise EvaluationError(f"cannot import segmenter {name!r}: {e}") from e
        if isinstance(target, Segmenter):
            obj = build_segmenter(target, input_size=input_size)
        else:
            obj = _build(target, name, device, input_size)
    else:
        raise EvaluationError(
            f"unknown segmenter {name!r}; registered: {available_segmenters()}, or give module:attribute"
        )
    if not isinstance(obj, Segmenter):
        raise EvaluationError(f"segmenter {name!r} built a {type(obj).__name__}, not a Segmenter")
    return obj
