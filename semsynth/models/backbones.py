"""Frozen feature extractors for perceptual losses.

Every backbone has the same interface::

    net = build_backbone("vgg19-matconvnet", layers=["conv1_2", "conv5_2"])
    feats = net(x)            # x: RGB in [0, 1], (N, 3, H, W)
    feats["input"]            # the backbone's own prepared input (e.g. 255·x − mean)
    feats["conv5_2"]          # post-ReLU features

`net.layers` lists the layers this instance computes (everything up to the deepest requested one;
nothing deeper is built or run). Weights are frozen (requires_grad False, always in eval mode),
but gradients flow to the input. Each backbone converts [0, 1] RGB to its own convention itself,
so loss values are on the scale the original code used.

Backbones (`build_backbone(name)`):

* ``vgg19-matconvnet`` — the original CRN's network (SPEC A.4.1): VGG-19 convs from MatConvNet's
  ``imagenet-vgg-verydeep-19.mat``, 2×2 **average** pooling, post-ReLU features conv1_1…conv5_4,
  input ``255·x − [123.68, 116.779, 103.939]`` (RGB).
* ``vgg19`` — torchvision's ``vgg19-dcbb9e9d.pth`` (``features.N.weight/bias``), input
  ``(x − mean) / std`` (ImageNet statistics); same pooling (``pool="avg"`` by default to match
  CRN, ``pool="max"`` for the network as trained) and the same layer names.
* ``vgg19-normalised`` — the Gatys-normalised VGG-19 truncated after conv3_1
  (``vgg_normalised_conv3_1.pth``): its 1×1 input conv (RGB [0,1] → BGR·255 − mean) is the
  prepared input, then reflection-padded 3×3 convs conv1_1 … conv3_1 as in the file's original
  network. The file's network used max pooling; here pooling defaults to **average**, as CRN's
  loss network (``pool="max"`` restores the original). ``padding="zeros"`` gives VGG's own padding.
* ``squeezenet1_1`` — SqueezeNet v1.1 from the Keras HDF5 file (722,496 parameters); input BGR
  0..255 minus [103.939, 116.779, 123.68]; layers conv1 and fire2 … fire9 (post-ReLU, fire outputs
  are the concatenated [expand1x1, expand3x3] activations). conv1 is 3×3 stride 2 without
  padding; pools are 3×3 stride 2 max pools in ceil mode, as the Caffe network the weights were
  trained in (the Keras port floors instead; this only changes the border row/column).

`pretrained=False` gives the same architecture with seeded random weights (smoke tests only).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError, MissingFileError, UnknownNameError

__all__ = [
    "Backbone",
    "VGG19Features",
    "SqueezeNet11",
    "build_backbone",
    "BACKBONES",
    "load_torchvision_vgg19",
    "load_matconvnet_vgg19",
    "load_normalised_vgg",
    "load_squeezenet_h5",
    "VGG19_CONVS",
    "MATCONVNET_MEAN_RGB",
    "CAFFE_MEAN_BGR",
]

MATCONVNET_MEAN_RGB = (123.68, 116.779, 103.939)  # SPEC A.4.1, RGB, 0..255
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # the same mean in BGR order
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision, RGB in [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)

# (name, in, out); "pool" marks a 2x2 stride-2 pooling.
VGG19_CONVS: list[tuple[str, int, int] | str] = [
    ("conv1_1", 3, 64),
    ("conv1_2", 64, 64),
    "pool",
    ("conv2_1", 64, 128),
    ("conv2_2", 128, 128),
    "pool",
    ("conv3_1", 128, 256),
    ("conv3_2", 256, 256),
    ("conv3_3", 256, 256),
    ("conv3_4", 256, 256),
    "pool",
    ("conv4_1", 256, 512),
    ("conv4_2", 512, 512),
    ("conv4_3", 512, 512),
    ("conv4_4", 512, 512),
    "pool",
    ("conv5_1", 512, 512),
    ("conv5_2", 512, 512),
    ("conv5_3", 512, 512),
    ("conv5_4", 512, 512),
]
_VGG_CONV_NAMES = [e[0] for e in VGG19_CONVS if e != "pool"]
_VGG_SHAPES = {n: (o, i, 3, 3) for n, i, o in (e for e in VGG19_CONVS if e != "pool")}
# Position of each conv in torchvision's `features` Sequential (conv, relu, ..., pool) — the same
# positions as the conv entries of MatConvNet's `layers` list (SPEC A.4.1).
_TORCHVISION_INDEX = dict(zip(_VGG_CONV_NAMES, [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]))

Weights = dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer -> (OIHW weight, bias)


# ----------------------------------------------------------------------------- base class


class Backbone(nn.Module):
    """Frozen feature extractor: forward(x in [0,1] RGB) -> {"input": prepared, layer: feats}."""

    ALL_LAYERS: tuple[str, ...] = ("input",)

    def __init__(self, layers: Iterable[str] | None = None, all_layers: Iterable[str] | None = None):
        super().__init__()
        all_layers = list(all_layers if all_layers is not None else self.ALL_LAYERS)
        self.ALL_LAYERS = tuple(all_layers)
        if layers is None:
            requested = all_layers
        else:
            requested = list(dict.fromkeys(layers))
            unknown = [l for l in requested if l not in all_layers]
            if unknown:
                raise InputError(f"{type(self).__name__} has no layer(s) {unknown}; available: {all_layers}")
        deepest = max((all_layers.index(l) for l in requested), default=0)
        self.layers: list[str] = all_layers[: deepest + 1]
        self.requested: list[str] = ["input"] + [l for l in requested if l != "input"]

    # subclasses: prepare() maps [0,1] RGB to the network's input; extract() runs the convs
    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extract(self, z: torch.Tensor, wanted: set[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise InputError(f"expected RGB images (N, 3, H, W) in [0, 1], got {tuple(x.shape)}")
        z = self.prepare(x)
        wanted = set(self.requested)
        out = {"input": z}
        out.update(self.extract(z, wanted))
        return {k: out[k] for k in self.requested}

    def _finish(self, weights) -> None:
        """End of a subclass constructor: no pooling after the last needed layer, weights, freeze."""
        while self.plan and self.plan[-1] == "pool":
            self.plan.pop()
        if weights is not None:
            self.load_weights(weights)
        self.freeze()

    def freeze(self) -> Backbone:
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> Backbone:  # always eval: frozen statistics
        return super().train(False)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _set_conv(conv: nn.Conv2d, w: torch.Tensor, b: torch.Tensor, name: str) -> None:
    w = torch.as_tensor(w, dtype=torch.float32)
    b = torch.as_tensor(b, dtype=torch.float32).reshape(-1)
    if tuple(w.shape) != tuple(conv.weight.shape) or b.numel() != conv.out_channels:
        raise InputError(
            f"{name}: weight {tuple(w.shape)} / bias {tuple(b.shape)} do not match the "
            f"expected {tuple(conv.weight.shape)} / ({conv.out_channels},)"
        )
    with torch.no_grad():
        conv.weight.copy_(w)
        conv.bias.copy_(b)


# ----------------------------------------------------------------------------- VGG-19


class VGG19Features(Backbone):
    """VGG-19 convs (post-ReLU features conv1_1 … conv5_4) with a choice of input convention.

    input_mode: "matconvnet" (255·x − RGB mean), "torchvision" ((x − mean)/std) or "conv1x1"
    (a learned-from-file 1×1 conv, as the normalised VGG file ships). pool: "avg" (CRN) or "max".
    padding: "zeros" (VGG) or "reflect". max_conv: the last conv the weights provide."""

    ALL_LAYERS = ("input", *_VGG_CONV_NAMES)

    def __init__(
        self,
        layers=None,
        weights: Weights | None = None,
        input_mode: str = "matconvnet",
        pool: str = "avg",
        padding: str = "zeros",
        max_conv: str = "conv5_4",
    ):
        if max_conv not in _VGG_CONV_NAMES:
            raise InputError(f"max_conv {max_conv!r} is not a VGG-19 conv")
        super().__init__(layers, ["input"] + _VGG_CONV_NAMES[: _VGG_CONV_NAMES.index(max_conv) + 1])
        if pool not in ("avg", "max"):
            raise InputError(f"pool must be 'avg' or 'max', got {pool!r}")
        if padding not in ("zeros", "reflect"):
            raise InputError(f"padding must be 'zeros' or 'reflect', got {padding!r}")
        if input_mode not in ("matconvnet", "torchvision", "conv1x1"):
            raise InputError(f"unknown input_mode {input_mode!r}")
        self.pool, self.padding, self.input_mode = pool, padding, input_mode
        if input_mode == "matconvnet":
            self.register_buffer("mean", torch.tensor(MATCONVNET_MEAN_RGB).view(1, 3, 1, 1), persistent=False)
        elif input_mode == "torchvision":
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        else:
            self.prep = nn.Conv2d(3, 3, 1)
        self.plan: list[str] = []  # conv names and "pool", up to the deepest needed layer
        self.convs = nn.ModuleDict()
        for e in VGG19_CONVS:
            if e == "pool":
                self.plan.append("pool")
                continue
            name, cin, cout = e
            if name not in self.layers:
                break
            self.convs[name] = nn.Conv2d(cin, cout, 3, padding=1, padding_mode=padding)
            self.plan.append(name)
        self._finish(weights)

    def load_weights(self, weights: Weights) -> None:
        if self.input_mode == "conv1x1":
            if "prep" not in weights:
                raise InputError("the weights have no 1x1 input conv ('prep')")
            _set_conv(self.prep, *weights["prep"], name="prep")
        for name, conv in self.convs.items():
            if name not in weights:
                raise InputError(f"the weights have no {name} (they reach {sorted(weights)}); request shallower layers")
            _set_conv(conv, *weights[name], name=name)

    def prepare(self, x):
        if self.input_mode == "matconvnet":
            return x * 255.0 - self.mean.to(x.dtype)
        if self.input_mode == "torchvision":
            return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.prep(x)

    def extract(self, z, wanted):
        out, h = {}, z
        for step in self.plan:
            if step == "pool":
                h = F.avg_pool2d(h, 2) if self.pool == "avg" else F.max_pool2d(h, 2)
            else:
                h = F.relu(self.convs[step](h))
                if step in wanted:
                    out[step] = h
        return out


# ----------------------------------------------------------------------------- SqueezeNet 1.1

_FIRES = {  # name: (in, squeeze, expand) per expand branch
    "fire2": (64, 16, 64),
    "fire3": (128, 16, 64),
    "fire4": (128, 32, 128),
    "fire5": (256, 32, 128),
    "fire6": (256, 48, 192),
    "fire7": (384, 48, 192),
    "fire8": (384, 64, 256),
    "fire9": (512, 64, 256),
}
_SQUEEZE_PLAN = [
    "conv1",
    "pool",
    "fire2",
    "fire3",
    "pool",
    "fire4",
    "fire5",
    "pool",
    "fire6",
    "fire7",
    "fire8",
    "fire9",
]


def _squeezenet_shapes() -> dict[str, tuple[int, int, int, int]]:
    shapes = {"conv1": (64, 3, 3, 3)}
    for f, (cin, s, e) in _FIRES.items():
        shapes[f"{f}/squeeze1x1"] = (s, cin, 1, 1)
        shapes[f"{f}/expand1x1"] = (e, s, 1, 1)
        shapes[f"{f}/expand3x3"] = (e, s, 3, 3)
    return shapes


class SqueezeNet11(Backbone):
    """SqueezeNet v1.1 features (conv1, fire2 … fire9), input BGR 0..255 minus the Caffe mean."""

    ALL_LAYERS = ("input", "conv1", *_FIRES)
    NUM_PARAMETERS = 722_496

    def __init__(self, layers=None, weights: Weights | None = None):
        super().__init__(layers)
        self.register_buffer("mean", torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1), persistent=False)
        self.convs = nn.ModuleDict()
        shapes = _squeezenet_shapes()
        self.plan = []
        for step in _SQUEEZE_PLAN:
            if step != "pool" and step not in self.layers:
                break
            self.plan.append(step)
            if step == "conv1":
                self.convs["conv1"] = nn.Conv2d(3, 64, 3, stride=2)
            elif step != "pool":
                for part in ("squeeze1x1", "expand1x1", "expand3x3"):
                    o, i, k, _ = shapes[f"{step}/{part}"]
                    self.convs[f"{step}_{part}"] = nn.Conv2d(i, o, k, padding=k // 2)
        self._finish(weights)

    def load_weights(self, weights: Weights) -> None:
        for key, conv in self.convs.items():
            src = key if key == "conv1" else key.replace("_", "/", 1)
            if src not in weights:
                raise InputError(f"the SqueezeNet weights have no {src}")
            _set_conv(conv, *weights[src], name=src)

    def prepare(self, x):
        return x.flip(1) * 255.0 - self.mean.to(x.dtype)  # RGB -> BGR, 0..255, minus mean

    def extract(self, z, wanted):
        out, h = {}, z
        for step in self.plan:
            if step == "pool":
                h = F.max_pool2d(h, 3, 2, ceil_mode=True)
            elif step == "conv1":
                h = F.relu(self.convs["conv1"](h))
            else:
                s = F.relu(self.convs[f"{step}_squeeze1x1"](h))
                h = torch.cat(
                    [F.relu(self.convs[f"{step}_expand1x1"](s)), F.relu(self.convs[f"{step}_expand3x3"](s))], 1
                )
            if step in wanted:
                out[step] = h
        return out


# ----------------------------------------------------------------------------- weight readers


def _hwio(a) -> torch.Tensor:
    """(H, W, I, O) array -> (O, I, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a, dtype=np.float32))).permute(3, 2, 0, 1).contiguous()


def _torch_load(path) -> dict:
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise InputError(f"{path}: expected a state dict, found {type(sd).__name__}")
    return sd


def load_torchvision_vgg19(path) -> Weights:
    """torchvision `vgg19-*.pth` state dict (features.N.weight/bias) -> {conv name: (W, b)}."""
    sd = _torch_load(path)
    out = {}
    for name, idx in _TORCHVISION_INDEX.items():
        w, b = sd.get(f"features.{idx}.weight"), sd.get(f"features.{idx}.bias")
        if w is None or b is None:
            if out:
                break  # a truncated file: keep what it has
            raise InputError(
                f"{path}: no 'features.{idx}.weight' — not a torchvision VGG-19 state dict (keys start {list(sd)[:4]})"
            )
        if tuple(w.shape) != _VGG_SHAPES[name]:
            raise InputError(
                f"{path}: features.{idx}.weight has shape {tuple(w.shape)}, VGG-19 {name} "
                f"needs {_VGG_SHAPES[name]} (a VGG-16 or other network?)"
            )
        out[name] = (w.float(), b.float())
    return out


def load_normalised_vgg(path) -> Weights:
    """The normalised-VGG `nn.Sequential` state dict (0.* 1x1 conv, then 2, 5, 9, 12, 16, …)."""
    sd = _torch_load(path)
    if "0.weight" not in sd or tuple(sd["0.weight"].shape) != (3, 3, 1, 1):
        raise InputError(f"{path}: expected the normalised-VGG layout with a (3,3,1,1) '0.weight'")
    out = {"prep": (sd["0.weight"].float(), sd["0.bias"].float())}
    # Sequential positions: pad+conv+relu per conv, plus a pool after conv1_2, conv2_2, conv3_4, conv4_4
    pos = 1
    for e in VGG19_CONVS:
        if e == "pool":
            pos += 1
            continue
        name = e[0]
        key = f"{pos + 1}.weight"
        if key not in sd:
            break
        if tuple(sd[key].shape) != _VGG_SHAPES[name]:
            raise InputError(f"{path}: {key} has shape {tuple(sd[key].shape)}, {name} needs {_VGG_SHAPES[name]}")
        out[name] = (sd[key].float(), sd[f"{pos + 1}.bias"].float())
        pos += 3
    return out


def _mat_str(v) -> str | None:
    """A MATLAB char array read by loadmat (possibly nested in 1x1 arrays) -> str."""
    while isinstance(v, np.ndarray) and v.dtype == object and v.size == 1:
        v = v.flat[0]
    if isinstance(v, np.ndarray):
        if v.dtype.kind == "U":
            return "".join(v.ravel().tolist()) if v.size else ""
        return None
    return v if isinstance(v, str) else None


def _mat_unwrap(v):
    """Drill through 1-element object/struct wrappers."""
    while isinstance(v, np.ndarray) and v.size == 1 and (v.dtype == object or v.dtype.names):
        v = v.flat[0]
    return v


def _mat_weight_pair(v):
    """A MatConvNet `weights` cell {filters (H,W,I,O), biases} -> (filters, biases) or None."""
    while isinstance(v, np.ndarray) and v.dtype == object and v.size == 1:
        v = v.flat[0]
    if isinstance(v, np.ndarray) and v.dtype == object and v.size == 2:
        f, b = (np.asarray(_mat_unwrap(e)) for e in v.ravel())
        if f.ndim == 4 and b.size == f.shape[3]:
            return f, b
    return None


def _mat_records(layers):
    """The per-layer structs of a MatConvNet `layers` field, in order."""
    layers = np.asarray(layers)
    recs = []
    for item in layers.ravel():
        rec = _mat_unwrap(item) if layers.dtype == object else item
        recs.append(rec)
    return recs


def load_matconvnet_vgg19(path) -> Weights:
    """MatConvNet `imagenet-vgg-verydeep-19.mat` -> {conv name: (W OIHW, b)}.

    Handles the SimpleNN forms (a `layers` cell of structs whose filters are in a `weights`
    cell — field index 2 in the file the CRN code reads, index 0 in the "beta16" file — or in
    older `filters`/`biases` fields) and the DagNN form (`layers` with `params` names plus a
    top-level `params` struct of name/value). Layers are matched by name, or by order of the
    3×3 conv filters when names are absent; shapes are checked."""
    from scipy.io import loadmat

    data = loadmat(str(path), squeeze_me=False, struct_as_record=True)
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    if "params" in data and "layers" in data and "value" in (np.asarray(data["params"]).dtype.names or ()):
        params = {}  # DagNN
        for p in _mat_records(data["params"]):
            params[_mat_str(p["name"])] = np.asarray(_mat_unwrap(p["value"]))
        for name in _VGG_CONV_NAMES:
            fs = [k for k in params if k and k.startswith(name) and params[k].ndim == 4]
            bs = [k for k in params if k and k.startswith(name) and params[k].ndim < 4 and k not in fs]
            if fs and bs:
                found[name] = (params[fs[0]], params[bs[0]])
    elif "layers" in data:
        unnamed = []
        for rec in _mat_records(data["layers"]):
            names = rec.dtype.names or ()
            pair = None
            if "weights" in names:
                pair = _mat_weight_pair(rec["weights"])
            elif "filters" in names and "biases" in names:
                pair = (np.asarray(_mat_unwrap(rec["filters"])), np.asarray(_mat_unwrap(rec["biases"])))
            else:  # no field names we know: the CRN code's field index 2, then 0, then any
                order = [2, 0] + [i for i in range(len(names)) if i not in (0, 2)]
                for i in order:
                    if i < len(names):
                        pair = _mat_weight_pair(rec[names[i]])
                        if pair is not None:
                            break
            if pair is None or np.asarray(pair[0]).ndim != 4:
                continue
            lname = _mat_str(rec["name"]) if "name" in names else None
            if lname in _VGG_SHAPES:
                found[lname] = pair
            elif np.asarray(pair[0]).shape[:2] == (3, 3):
                unnamed.append(pair)
        if not found:
            found = dict(zip(_VGG_CONV_NAMES, unnamed))
    else:
        raise InputError(
            f"{path}: no 'layers' variable; not a MatConvNet network "
            f"(variables: {[k for k in data if not k.startswith('__')]})"
        )

    out = {}
    for name in _VGG_CONV_NAMES:
        if name not in found:
            break
        f, b = found[name]
        w = _hwio(f)
        if tuple(w.shape) != _VGG_SHAPES[name]:
            raise InputError(
                f"{path}: {name} filters have shape {tuple(np.shape(f))} (HWIO), expected "
                f"{tuple(_VGG_SHAPES[name][i] for i in (2, 3, 1, 0))}"
            )
        out[name] = (w, torch.from_numpy(np.asarray(b, dtype=np.float32).reshape(-1).copy()))
    if not out:
        raise InputError(f"{path}: found no VGG-19 conv filters in the MatConvNet layers")
    return out


def load_squeezenet_h5(path) -> Weights:
    """Keras SqueezeNet v1.1 HDF5 -> {"conv1" | "fireN/part": (W OIHW, b)}; kernels found by shape."""
    import h5py

    shapes = _squeezenet_shapes()
    out = {}
    with h5py.File(str(path), "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        for key, (o, i, kh, kw) in shapes.items():
            if key not in root:
                raise InputError(f"{path}: no HDF5 group {key!r}; not the Keras SqueezeNet v1.1 weights")
            arrays = []
            root[key].visititems(lambda n, obj: arrays.append(obj[()]) if isinstance(obj, h5py.Dataset) else None)
            kern = [a for a in arrays if a.ndim == 4 and a.shape == (kh, kw, i, o)]
            bias = [a for a in arrays if a.ndim == 1 and a.shape == (o,)]
            if len(kern) != 1 or len(bias) != 1:
                raise InputError(
                    f"{path}: group {key!r} should hold one ({kh},{kw},{i},{o}) kernel and "
                    f"one ({o},) bias; found shapes {[a.shape for a in arrays]}"
                )
            out[key] = (_hwio(kern[0]), torch.from_numpy(np.asarray(bias[0], dtype=np.float32)))
    n = sum(w.numel() + b.numel() for w, b in out.values())
    if n != SqueezeNet11.NUM_PARAMETERS:
        raise InputError(f"{path}: {n:,} parameters, SqueezeNet v1.1 has {SqueezeNet11.NUM_PARAMETERS:,}")
    return out


# ----------------------------------------------------------------------------- registry


# backbone name -> (weights alias in semsynth.weights, reader, constructor)
class Pixels(Backbone):
    """No network: the "input" layer is the image on the 0..255 scale of the original's pixel
    term. Needs no weight file, so smoke tests and CI can train without any download."""

    def __init__(self, layers=None, weights=None):
        super().__init__(layers=layers)

    def prepare(self, x):
        return x * 255.0

    def extract(self, z, wanted):
        return {}


BACKBONES: dict[str, dict] = {
    "pixels": {"weights": None, "reader": None, "cls": Pixels, "options": {}},
    "vgg19-matconvnet": {
        "weights": "vgg19-matconvnet",
        "reader": load_matconvnet_vgg19,
        "cls": VGG19Features,
        "options": {"input_mode": "matconvnet", "pool": "avg"},
    },
    "vgg19": {
        "weights": "vgg19",
        "reader": load_torchvision_vgg19,
        "cls": VGG19Features,
        "options": {"input_mode": "torchvision", "pool": "avg"},
    },
    "vgg19-normalised": {
        "weights": "vgg19-normalised",
        "reader": load_normalised_vgg,
        "cls": VGG19Features,
        "options": {"input_mode": "conv1x1", "pool": "avg", "padding": "reflect", "max_conv": "conv3_1"},
    },
    "squeezenet1_1": {"weights": "squeezenet1_1", "reader": load_squeezenet_h5, "cls": SqueezeNet11, "options": {}},
}
_ALIASES = {
    "vgg19-torchvision": "vgg19",
    "normalised-vgg": "vgg19-normalised",
    "vgg19-normalized": "vgg19-normalised",
    "squeezenet": "squeezenet1_1",
}


def build_backbone(
    name: str,
    path: str | os.PathLike | None = None,
    layers: Iterable[str] | None = None,
    pretrained: bool = True,
    **options,
) -> Backbone:
    """A frozen backbone computing `layers` (and everything before them, nothing after).

    path: the weight file (default: `semsynth.weights.resolve` of the backbone's file).
    options: e.g. pool="max" for the VGGs, padding="zeros" for the normalised VGG.
    pretrained=False: seeded random weights, for smoke tests without weight files."""
    key = _ALIASES.get(name, name)
    if key not in BACKBONES:
        raise UnknownNameError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)} (aliases {sorted(_ALIASES)})")
    spec = BACKBONES[key]
    opts = {**spec["options"], **options}
    layers = list(layers) if layers is not None else None
    if not pretrained or spec["weights"] is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = spec["cls"](layers=layers, **opts)
        if getattr(net, "input_mode", None) == "conv1x1":  # the normalised VGG's fixed input map
            w = torch.zeros(3, 3, 1, 1)
            w[0, 2], w[1, 1], w[2, 0] = 255.0, 255.0, 255.0
            _set_conv(net.prep, w, -torch.tensor(CAFFE_MEAN_BGR), "prep")
        net.name = key
        return net
    from .. import weights as W

    if path is not None:
        if not Path(path).is_file():
            raise MissingFileError(f"weight file {path} for backbone {key!r} does not exist")
        file = W.verify(Path(path))
    else:
        file = W.resolve(spec["weights"])
    weights = spec["reader"](file)
    if spec["cls"] is VGG19Features and "max_conv" not in options:
        opts["max_conv"] = [n for n in _VGG_CONV_NAMES if n in weights][-1]
    net = spec["cls"](layers=layers, weights=weights, **opts)
    net.name = key
    net.weights_path = str(file)
    return net
