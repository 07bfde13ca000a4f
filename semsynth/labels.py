"""Label spaces: decoding label-map files into class indices, and encoding them for networks.

Inside semsynth a layout is always an integer map of *class indices* 0..C-1 plus one void index C
(`space.void`). Files arrive in many conventions — Cityscapes labelIds or trainIds, colour maps
(including the CRN palette), paletted PNGs (the GTA sample), CamVid ids, COCO-Stuff "id-1" maps,
ADE20K 0=other maps — and `LabelSpace.read` turns each into that one form, or raises `LabelError`
naming the file, the offending value or colour and how many pixels carry it.

Networks see `one_hot(ids, C)`: C class channels plus a void channel (CRN's 19 + 1 = 20), and the
coarser CRN modules see `pyramid(...)`, the area-downsampled (soft) versions of it.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

__all__ = [
    "LabelError", "LabelSpace", "get_space", "register_space", "available_spaces",
    "one_hot", "pyramid", "colorize",
]


class LabelError(ValueError):
    """A label map that cannot be decoded in the requested label space."""


@dataclass(frozen=True)
class LabelSpace:
    """A set of C classes plus void, and how files encode them.

    names/colors: class index -> name / RGB. `encodings` maps an encoding name (e.g. "labelId",
    "trainId") to a lookup table raw value -> class index, with `void` for values that mean void
    and -1 for values that are invalid (an error). `extra_colors` are colours that are legitimate in
    colour maps but not classes of their own (merged into a class or void).
    """

    name: str
    names: tuple[str, ...]
    colors: np.ndarray  # (C, 3) uint8
    encodings: dict[str, np.ndarray] = field(default_factory=dict)
    default_encoding: str = "id"
    extra_colors: dict[tuple[int, int, int], int] = field(default_factory=dict)
    filename_encodings: tuple[tuple[str, str], ...] = ()  # (regex on file name, encoding name)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def void(self) -> int:
        return self.num_classes

    @property
    def channels(self) -> int:
        """Channels of the network input: classes plus void."""
        return self.num_classes + 1

    # ------------------------------------------------------------------ decoding
    def index_lut(self) -> np.ndarray:
        """The "index" encoding every space has: class index as the value, 255 = void."""
        lut = np.full(max(256, self.num_classes + 1), -1, dtype=np.int64)
        lut[: self.num_classes] = np.arange(self.num_classes)
        lut[255 if self.num_classes < 255 else self.num_classes] = self.void
        return lut

    def color_table(self) -> dict[int, int]:
        """Packed 0xRRGGBB -> class index for every colour accepted in colour maps."""
        table = {}
        for (r, g, b), idx in self.extra_colors.items():
            table[(r << 16) | (g << 8) | b] = idx
        for idx, (r, g, b) in enumerate(self.colors.tolist()):
            table[(r << 16) | (g << 8) | b] = idx  # class colours win over merged extras
        return table

    def _color_lut(self) -> np.ndarray:
        """A 2^24-entry table packed colour -> class index (-1 unknown), built once per space:
        decoding a 2048x1024 colour map is then one gather instead of a sort."""
        lut = _COLOR_LUTS.get(id(self))
        if lut is None:
            lut = np.full(1 << 24, -1, dtype=np.int16)
            for packed, idx in self.color_table().items():
                lut[packed] = idx
            _COLOR_LUTS[id(self)] = lut
        return lut

    def encoding_for(self, path: str | Path | None, encoding: str | None) -> str:
        if encoding and encoding != "auto":
            if encoding not in ("color", "index") and encoding not in self.encodings:
                raise LabelError(
                    f"label space {self.name!r} has no encoding {encoding!r}; "
                    f"choose from {sorted(self.encodings) + ['color', 'index']}")
            return encoding
        name = Path(path).name if path is not None else ""
        for pattern, enc in self.filename_encodings:
            if re.search(pattern, name):
                return enc
        return self.default_encoding

    def decode_ids(self, raw: np.ndarray, encoding: str, source: str = "<array>") -> np.ndarray:
        """Map a 2-D array of raw ids through `encoding`; errors name `source`."""
        lut = self.index_lut() if encoding == "index" else self.encodings[encoding]
        raw = np.asarray(raw)
        if raw.dtype.kind not in "ui":
            raise LabelError(f"{source}: id map has dtype {raw.dtype}, expected integers")
        if raw.size and (int(raw.min()) < 0 or int(raw.max()) >= len(lut)):
            lut = np.concatenate([lut, np.full(int(raw.max()) + 1 - len(lut), -1, dtype=np.int64)]) \
                if int(raw.max()) >= len(lut) else lut
        safe = np.clip(raw, 0, len(lut) - 1) if raw.size and int(raw.min()) < 0 else raw
        mapped = lut[safe]
        bad = (mapped < 0) | (raw < 0) if raw.size and int(raw.min()) < 0 else mapped < 0
        if bad.any():
            values, counts = np.unique(raw[bad], return_counts=True)
            worst = np.argsort(-counts)[:5]
            desc = ", ".join(f"{int(values[i])} ({int(counts[i]):,} px)" for i in worst)
            valid = np.flatnonzero(lut >= 0)
            raise LabelError(
                f"{source}: value(s) {desc} are not valid {self.name} {encoding}s "
                f"(valid: {_ranges(valid)}). Wrong --label-space or --label-encoding?")
        return mapped

    def decode_colors(self, rgb: np.ndarray, source: str = "<array>") -> np.ndarray:
        """Map an (H, W, 3) colour map to class indices by exact colour."""
        rgb = np.asarray(rgb, dtype=np.uint8)
        packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
        mapped = self._color_lut()[packed].astype(np.int64)
        bad = mapped < 0
        if bad.any():
            values, counts = np.unique(packed[bad], return_counts=True)
            worst = np.argsort(-counts)[:5]
            desc = ", ".join(
                f"({int(values[i]) >> 16}, {(int(values[i]) >> 8) & 255}, {int(values[i]) & 255}) "
                f"on {int(counts[i]):,} px" for i in worst)
            raise LabelError(
                f"{source}: colour(s) {desc} are not in the {self.name} palette "
                f"({len(values)} unknown colours). Was the map saved lossily (JPEG) or resized "
                f"with interpolation, or is it in another label space?")
        return mapped

    def read(self, path: str | Path, encoding: str | None = None) -> np.ndarray:
        """Read a label-map file into an (H, W) int64 array of class indices (void = `self.void`).

        Grey/16-bit maps are id maps in `encoding` (auto: by file name, else the space's default);
        RGB(A) maps are colour maps; paletted PNGs are decoded through their palette colours
        (so a GTA map whose palette holds the Cityscapes colours decodes exactly)."""
        path = Path(path)
        if not path.is_file():
            raise LabelError(f"{path}: label map not found")
        try:
            with Image.open(path) as im:
                im.load()
                mode = im.mode
                if mode == "P":
                    arr = np.asarray(im.convert("RGB"))
                elif mode in ("RGBA", "LA"):
                    arr = np.asarray(im.convert("RGB"))
                else:
                    arr = np.asarray(im)
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise LabelError(f"{path}: cannot read label map ({e})") from e
        if arr.ndim == 3:
            if encoding not in (None, "auto", "color"):
                raise LabelError(f"{path}: is a colour image but encoding {encoding!r} was requested")
            return self.decode_colors(arr[..., :3], source=str(path))
        enc = self.encoding_for(path, encoding)
        if enc == "color":
            raise LabelError(f"{path}: encoding 'color' requested but the file is single-channel ({mode})")
        if mode == "I;16" or arr.dtype == np.uint16 or mode == "I":
            arr = arr.astype(np.int64)
        return self.decode_ids(arr, enc, source=str(path))

    def to_dict(self) -> dict:
        """JSON-able description; `LabelSpace.from_dict` restores it (checkpoints embed this)."""
        return {
            "name": self.name,
            "classes": [{"name": n, "color": c} for n, c in zip(self.names, self.colors.tolist())],
            "encodings": {k: v.tolist() for k, v in self.encodings.items()},
            "default_encoding": self.default_encoding,
            "extra_colors": [[list(c), i] for c, i in self.extra_colors.items()],
            "filename_encodings": [list(p) for p in self.filename_encodings],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "LabelSpace":
        return cls(
            name=d["name"],
            names=tuple(c["name"] for c in d["classes"]),
            colors=np.array([c["color"] for c in d["classes"]], dtype=np.uint8).reshape(-1, 3),
            encodings={k: np.asarray(v, dtype=np.int64) for k, v in d.get("encodings", {}).items()},
            default_encoding=d.get("default_encoding", "id"),
            extra_colors={tuple(c): int(i) for c, i in d.get("extra_colors", [])},
            filename_encodings=tuple(tuple(p) for p in d.get("filename_encodings", [])),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "LabelSpace":
        """A user-defined space from YAML or JSON::

            name: my-space
            classes:                      # class index = position in this list
              - {name: road, id: 7, color: [128, 64, 128]}
              - {name: car,  id: 26, color: [0, 0, 142]}
            void: {ids: [0, 255], colors: [[0, 0, 0]]}   # optional

        `id` is the value the class has in grey id maps (default: its position)."""
        import yaml

        path = Path(path)
        try:
            d = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise LabelError(f"{path}: cannot read label-space file ({e})") from e
        if not isinstance(d, dict) or not isinstance(d.get("classes"), list) or not d["classes"]:
            raise LabelError(f"{path}: a label-space file needs a non-empty 'classes' list")
        names, colors, ids = [], [], []
        for i, c in enumerate(d["classes"]):
            try:
                names.append(str(c["name"]))
                col = [int(v) for v in c["color"]]
                if len(col) != 3 or not all(0 <= v <= 255 for v in col):
                    raise ValueError(f"bad colour {c['color']}")
                colors.append(col)
                ids.append(int(c.get("id", i)))
            except (KeyError, TypeError, ValueError) as e:
                raise LabelError(f"{path}: class entry {i} ({c!r}) is invalid: {e}") from e
        void = d.get("void") or {}
        void_ids = [int(v) for v in void.get("ids", [])]
        n = len(names)
        lut = np.full(max(ids + void_ids + [0]) + 1, -1, dtype=np.int64)
        if len(set(ids)) != len(ids):
            raise LabelError(f"{path}: duplicate class ids {ids}")
        lut[ids] = np.arange(n)
        lut[void_ids] = n
        extra = {tuple(int(v) for v in c): n for c in void.get("colors", [])}
        return cls(name=str(d.get("name", path.stem)), names=tuple(names),
                   colors=np.array(colors, dtype=np.uint8), encodings={"id": lut},
                   default_encoding="id", extra_colors=extra)


_COLOR_LUTS: dict[int, np.ndarray] = {}


def _ranges(values: np.ndarray) -> str:
    """[0,1,2,3,7,8] -> '0..3, 7..8' for error messages."""
    out, start, prev = [], None, None
    for v in list(values) + [None]:
        if start is None:
            start = prev = v
        elif v is not None and v == prev + 1:
            prev = v
        else:
            out.append(f"{start}" if start == prev else f"{start}..{prev}")
            start = prev = v
    return ", ".join(out)


# ---------------------------------------------------------------------- built-in spaces

# Cityscapes: (labelId, name, trainId or None, colour) from the official label definition.
_CITYSCAPES = [
    (0, "unlabeled", None, (0, 0, 0)), (1, "ego vehicle", None, (0, 0, 0)),
    (2, "rectification border", None, (0, 0, 0)), (3, "out of roi", None, (0, 0, 0)),
    (4, "static", None, (20, 20, 20)), (5, "dynamic", None, (111, 74, 0)),
    (6, "ground", None, (81, 0, 81)), (7, "road", 0, (128, 64, 128)),
    (8, "sidewalk", 1, (244, 35, 232)), (9, "parking", None, (250, 170, 160)),
    (10, "rail track", None, (230, 150, 140)), (11, "building", 2, (70, 70, 70)),
    (12, "wall", 3, (102, 102, 156)), (13, "fence", 4, (190, 153, 153)),
    (14, "guard rail", None, (180, 165, 180)), (15, "bridge", None, (150, 100, 100)),
    (16, "tunnel", None, (150, 120, 90)), (17, "pole", 5, (153, 153, 153)),
    (18, "polegroup", None, (153, 153, 153)), (19, "traffic light", 6, (250, 170, 30)),
    (20, "traffic sign", 7, (220, 220, 0)), (21, "vegetation", 8, (107, 142, 35)),
    (22, "terrain", 9, (152, 251, 152)), (23, "sky", 10, (70, 130, 180)),
    (24, "person", 11, (220, 20, 60)), (25, "rider", 12, (255, 0, 0)),
    (26, "car", 13, (0, 0, 142)), (27, "truck", 14, (0, 0, 70)), (28, "bus", 15, (0, 60, 100)),
    (29, "caravan", None, (0, 0, 90)), (30, "trailer", None, (0, 0, 110)),
    (31, "train", 16, (0, 80, 100)), (32, "motorcycle", 17, (0, 0, 230)),
    (33, "bicycle", 18, (119, 11, 32)),
]


def _cityscapes() -> LabelSpace:
    train = sorted((t, n, c) for _, n, t, c in _CITYSCAPES if t is not None)
    names = tuple(n for _, n, _ in train)
    colors = np.array([c for _, _, c in train], dtype=np.uint8)
    void = len(names)
    label_lut = np.full(34, void, dtype=np.int64)
    for lid, _, tid, _ in _CITYSCAPES:
        if tid is not None:
            label_lut[lid] = tid
    # polegroup -> pole, as the colour-based decoding of the original CRN does implicitly.
    label_lut[18] = 5
    train_lut = np.full(256, -1, dtype=np.int64)
    train_lut[:void] = np.arange(void)
    train_lut[255] = void
    # 'static' is (0,0,0) in the _color.png files but (20,20,20) in some palettes (GTA sample).
    extra = {(0, 0, 0): void, (20, 20, 20): void}
    for _, _, tid, c in _CITYSCAPES:
        if tid is None and c not in extra:
            extra[c] = 5 if c == (153, 153, 153) else void
    return LabelSpace(
        name="cityscapes", names=names, colors=colors,
        encodings={"labelId": label_lut, "trainId": train_lut},
        default_encoding="labelId", extra_colors=extra,
        filename_encodings=((r"labelIds", "labelId"), (r"trainIds", "trainId")),
    )


_CAMVID = [
    ("sky", (128, 128, 128)), ("building", (128, 0, 0)), ("pole", (192, 192, 128)),
    ("road", (128, 64, 128)), ("pavement", (60, 40, 222)), ("tree", (128, 128, 0)),
    ("sign symbol", (192, 128, 128)), ("fence", (64, 64, 128)), ("car", (64, 0, 128)),
    ("pedestrian", (64, 64, 0)), ("bicyclist", (0, 128, 192)),
]


def _camvid() -> LabelSpace:
    lut = np.full(256, -1, dtype=np.int64)
    lut[:11] = np.arange(11)
    lut[11] = 11  # SegNet's "unlabelled"
    return LabelSpace(
        name="camvid", names=tuple(n for n, _ in _CAMVID),
        colors=np.array([c for _, c in _CAMVID], dtype=np.uint8),
        encodings={"id": lut}, default_encoding="id", extra_colors={(0, 0, 0): 11})


def _distinct_colors(n: int, seed: int) -> np.ndarray:
    """Deterministic, well-spread colours for spaces without an official palette."""
    rng = np.random.default_rng(seed)
    colors = rng.integers(0, 256, size=(n, 3), dtype=np.int64)
    while len({tuple(c) for c in colors.tolist()}) < n or (colors.sum(1) == 0).any():
        colors = rng.integers(0, 256, size=(n, 3), dtype=np.int64)
    return colors.astype(np.uint8)


_REGISTRY: dict[str, LabelSpace] = {}
_LAZY = {"cityscapes": _cityscapes, "camvid": _camvid}


def register_space(space: LabelSpace) -> None:
    _REGISTRY[space.name] = space


def available_spaces() -> list[str]:
    return sorted(set(_REGISTRY) | set(_LAZY))


def get_space(name: "str | Path | LabelSpace | dict") -> LabelSpace:
    """A built-in space by name, a user space from a YAML/JSON file, or a stored dict."""
    if isinstance(name, LabelSpace):
        return name
    if isinstance(name, dict):
        return LabelSpace.from_dict(name)
    key = str(name).lower()
    if key in _REGISTRY:
        return _REGISTRY[key]
    if key in _LAZY:
        _REGISTRY[key] = _LAZY[key]()
        return _REGISTRY[key]
    p = Path(name)
    if p.suffix.lower() in (".yaml", ".yml", ".json") and p.is_file():
        return LabelSpace.from_file(p)
    raise LabelError(f"unknown label space {name!r}; built in: {available_spaces()}, or give a .yaml file")


# ---------------------------------------------------------------------- encoding


def one_hot(ids: torch.Tensor, num_classes: int, dtype=torch.float32) -> torch.Tensor:
    """(B, H, W) class indices with void = num_classes -> (B, num_classes + 1, H, W).

    The last channel is void, so every pixel sums to 1 (the original builds void as 1 - sum)."""
    if ids.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16):
        raise TypeError(f"one_hot expects integer ids, got {ids.dtype}")
    ids = ids.long()
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) > num_classes):
        raise LabelError(
            f"class index out of range: found {int(ids.min())}..{int(ids.max())}, "
            f"valid 0..{num_classes} (void = {num_classes})")
    out = torch.zeros(ids.shape[0], num_classes + 1, *ids.shape[1:], dtype=dtype, device=ids.device)
    return out.scatter_(1, ids.unsqueeze(1), 1.0)


def area_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TF's resize_area: box average; exact 2x2 average pooling for factor-2 reductions."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if h == 2 * size[0] and w == 2 * size[1]:
        return F.avg_pool2d(x, 2)
    return F.interpolate(x, size=size, mode="area")


def pyramid(onehot: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Area-downsampled versions of `onehot` at `sizes` (fine to coarse), each computed from the
    next finer one, as the CRN recursion does. Coarse levels are soft class maps."""
    out, cur = [], onehot
    for s in sizes:
        cur = area_resize(cur, s)
        out.append(cur)
    return out


def colorize(ids: np.ndarray | torch.Tensor, space: LabelSpace, void_color=(0, 0, 0)) -> np.ndarray:
    """Class indices -> (H, W, 3) uint8 colour map in the space's palette (void black)."""
    if isinstance(ids, torch.Tensor):
        ids = ids.cpu().numpy()
    palette = np.vstack([space.colors, np.array([void_color], dtype=np.uint8)])
    return palette[np.asarray(ids, dtype=np.int64)]


def save_label(path: str | Path, ids: np.ndarray, space: LabelSpace, color: bool = True) -> None:
    """Write class indices as a colour map, or as a grey "index" map (255 = void)."""
    from .utils import atomic_path

    ids = np.asarray(ids)
    arr = colorize(ids, space) if color else np.where(ids == space.void, 255, ids).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
