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

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import InputError

__all__ = [
    "LabelError",
    "LabelWarning",
    "LabelSpace",
    "get_space",
    "layout_reader",
    "register_space",
    "available_spaces",
    "one_hot",
    "pyramid",
    "colorize",
]


class LabelError(InputError):
    """A label map that cannot be decoded in the requested label space."""


class LabelWarning(UserWarning):
    """A label map that decoded, but probably not as meant (JPEG artefacts, a likely wrong
    encoding); the CLI prints these as one line each."""


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
        # Class colours win over merged extras. Where two classes share a colour (ADE20K's
        # official palette gives road and skyscraper the same grey) the first, i.e. the more
        # frequent class in frequency-ordered benchmarks, wins: a colour map cannot tell them apart.
        for idx, (r, g, b) in reversed(list(enumerate(self.colors.tolist()))):
            table[(r << 16) | (g << 8) | b] = idx
        return table

    def shared_colors(self) -> dict[tuple[int, int, int], list[int]]:
        """Colours carried by more than one class (colour maps decode them to the first)."""
        seen: dict[tuple[int, int, int], list[int]] = {}
        for idx, c in enumerate(self.colors.tolist()):
            seen.setdefault(tuple(c), []).append(idx)
        return {c: v for c, v in seen.items() if len(v) > 1}

    def _color_lut(self) -> np.ndarray:
        """A 2^24-entry table packed colour -> class index (-1 unknown), built once per space:
        decoding a 2048x1024 colour map is then one gather instead of a sort."""
        table = self.color_table()
        # Keyed by content, not id(self): ids are reused after garbage collection, and equal
        # spaces loaded twice (checkpoint + config) should share one 32 MB table.
        key = np.array(sorted(table.items()), dtype=np.int64).tobytes()
        lut = _COLOR_LUTS.get(key)
        if lut is None:
            lut = np.full(1 << 24, -1, dtype=np.int16)
            packed, idx = zip(*table.items())
            lut[np.array(packed)] = np.array(idx)
            if len(_COLOR_LUTS) >= 4:
                _COLOR_LUTS.pop(next(iter(_COLOR_LUTS)))
            _COLOR_LUTS[key] = lut
        return lut

    def encoding_for(self, path: str | Path | None, encoding: str | None) -> str:
        if encoding and encoding != "auto":
            if encoding not in ("color", "index") and encoding not in self.encodings:
                raise LabelError(
                    f"label space {self.name!r} has no encoding {encoding!r}; "
                    f"choose from {sorted(self.encodings) + ['color', 'index']}"
                )
            return encoding
        name = Path(path).name if path is not None else ""
        for pattern, enc in self.filename_encodings:
            if re.search(pattern, name):
                return enc
        return self.default_encoding

    def file_ids(self, encoding: str | None = None) -> np.ndarray:
        """The inverse of an id encoding (default: the space's own): for class index 0..C (void
        last) the smallest raw value that decodes to it, -1 where none does (a user space without
        void ids). A grey map of `file_ids()[ids]` is read back by `read` as exactly `ids`."""
        enc = encoding or self.default_encoding
        lut = self.index_lut() if enc == "index" else self.encodings[enc]
        raw = np.flatnonzero(lut >= 0)
        out = np.full(self.num_classes + 1, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(out, lut[raw], raw)
        out[out == np.iinfo(np.int64).max] = -1
        return out

    def decode_ids(self, raw: np.ndarray, encoding: str, source: str = "<array>") -> np.ndarray:
        """Map a 2-D array of raw ids through `encoding`; errors name `source`."""
        lut = self.index_lut() if encoding == "index" else self.encodings[encoding]
        raw = np.asarray(raw)
        if raw.dtype.kind == "b":
            raw = raw.astype(np.uint8)
        if raw.dtype.kind not in "ui":
            raise LabelError(f"{source}: id map has dtype {raw.dtype}, expected integers")
        if raw.dtype == np.uint8:  # the common case: one gather through a 256-entry table
            if len(lut) < 256:
                lut = np.concatenate([lut, np.full(256 - len(lut), -1, dtype=lut.dtype)])
            mapped = lut[raw]
        else:
            # Out-of-table values (negative, or 16/32-bit ids beyond the table) are flagged rather
            # than growing the table to max(raw), which a stray 2^31 would make enormous.
            r = raw.astype(np.int64, copy=False)
            inside = (r >= 0) & (r < len(lut))
            mapped = np.where(inside, lut[np.clip(r, 0, len(lut) - 1)], -1)
        bad = mapped < 0
        if bad.any():
            values, counts = np.unique(raw[bad], return_counts=True)
            worst = np.argsort(-counts, kind="stable")[:5]
            desc = ", ".join(f"{int(values[i])} ({int(counts[i]):,} px)" for i in worst)
            valid = np.flatnonzero(lut >= 0)
            raise LabelError(
                f"{source}: value(s) {desc} are not valid {self.name} {encoding}s "
                f"({int(bad.sum()):,} px in {len(values)} value(s); valid: {_ranges(valid)}). "
                f"Wrong --label-space or --label-encoding?"
            )
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
                f"on {int(counts[i]):,} px"
                for i in worst
            )
            grey = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
            hint = (
                " All pixels are grey: is this an id map saved as RGB? Save it as a single-channel (L) PNG."
                if grey
                else ""
            )
            raise LabelError(
                f"{source}: colour(s) {desc} are not in the {self.name} palette "
                f"({int(bad.sum()):,} px in {len(values)} unknown colours). Was the map saved lossily "
                f"(JPEG) or resized with interpolation, or is it in another label space?{hint}"
            )
        return mapped

    def decode(self, arr: np.ndarray, encoding: str | None = None, source: str = "<array>") -> np.ndarray:
        """An in-memory label map: (H, W) integer ids in `encoding` (default: the space's) or an
        (H, W, 3) colour map -> (H, W) int64 class indices."""
        arr = np.asarray(arr)
        if arr.ndim == 3 and arr.shape[-1] in (3, 4):
            if encoding not in (None, "auto", "color"):
                raise LabelError(f"{source}: is a colour map but encoding {encoding!r} was requested")
            return self.decode_colors(arr[..., :3], source=source)
        if arr.ndim != 2:
            raise LabelError(f"{source}: a label map must be (H, W) ids or (H, W, 3) colours, got shape {arr.shape}")
        enc = self.encoding_for(None, encoding)
        if enc == "color":
            raise LabelError(f"{source}: encoding 'color' requested but the map is single-channel")
        return self.decode_ids(arr, enc, source=source)

    def read(self, path: str | Path, encoding: str | None = None) -> np.ndarray:
        """Read a label-map file into an (H, W) int64 array of class indices (void = `self.void`).

        Grey/16-bit maps are id maps in `encoding` (auto: by file name, else the space's default);
        RGB(A) maps are colour maps. Paletted PNGs are decoded through their palette colours (so a
        GTA map whose palette holds the Cityscapes colours decodes exactly), or through their
        palette indices when an id encoding is named explicitly."""
        path = Path(path)
        if not path.is_file():
            raise LabelError(f"{path}: label map not found" if not path.exists() else f"{path}: is not a file")
        explicit_ids = encoding not in (None, "auto", "color")
        try:
            with Image.open(path) as im:
                im.load()
                mode, fmt = im.mode, im.format
                if mode == "P" and explicit_ids:
                    arr = np.asarray(im)  # palette indices are the ids
                elif mode in ("L", "1", "I", "F") or mode.startswith("I;16"):
                    arr = np.asarray(im)  # "F" is rejected by decode_ids with a clear message
                elif mode == "LA":
                    arr = np.asarray(im.getchannel("L"))
                else:
                    arr = np.asarray(im.convert("RGB"))
        except Exception as e:  # PIL raises many types (OSError, SyntaxError, zlib/struct errors)
            raise LabelError(f"{path}: cannot read label map ({type(e).__name__}: {e})") from e
        if arr.ndim == 3:
            if explicit_ids:
                raise LabelError(
                    f"{path}: is a colour image ({mode}) but encoding {encoding!r} was "
                    f"requested; colour maps are decoded with encoding 'color'"
                )
            out = self.decode_colors(arr, source=str(path))
        else:
            enc = self.encoding_for(path, encoding)
            if enc == "color":
                raise LabelError(f"{path}: encoding 'color' requested but the file is single-channel ({mode})")
            out = self.decode_ids(arr, enc, source=str(path))
            if (
                enc == self.default_encoding
                and encoding in (None, "auto")
                and not any(re.search(pat, path.name) for pat, _ in self.filename_encodings)
            ):
                self._warn_if_misread(arr, out, enc, path)
        if fmt == "JPEG":
            warnings.warn(
                LabelWarning(
                    f"{path}: is a JPEG; lossy compression changes label values along edges, so some pixels "
                    f"may have silently changed class. Save label maps as PNG"
                ),
                stacklevel=2,
            )
        return out

    def _warn_if_misread(self, raw: np.ndarray, decoded: np.ndarray, enc: str, path: Path) -> None:
        """The default encoding was assumed (nothing in the file name): if most pixels came out void
        while another encoding reads every pixel with far fewer void ones (a trainIds map read as
        labelIds), say so."""
        void = float((decoded == self.void).mean()) if decoded.size else 0.0
        if void <= 0.5 or raw.dtype.kind not in "ui":
            return
        r = raw.astype(np.int64, copy=False)
        for alt, lut in self.encodings.items():
            if alt == enc or r.min() < 0 or r.max() >= len(lut):
                continue
            mapped = lut[r]
            if (mapped < 0).any():
                continue
            alt_void = float((mapped == self.void).mean())
            if alt_void < void / 2:
                warnings.warn(
                    LabelWarning(
                        f"{path}: read as {self.name} {enc}s (the default when the file name does not say), "
                        f"{void:.1%} of pixels are void; as {alt}s only {alt_void:.1%} would be. If it holds "
                        f"{alt}s, pass --label-encoding {alt}"
                    ),
                    stacklevel=3,
                )
                return

    def to_dict(self) -> dict:
        """JSON-able description; `LabelSpace.from_dict` restores it (checkpoints embed this)."""
        return {
            "name": self.name,
            "classes": [{"name": n, "color": c} for n, c in zip(self.names, self.colors.tolist())],
            "encodings": {k: _lut_to_runs(v) for k, v in self.encodings.items()},
            "default_encoding": self.default_encoding,
            "extra_colors": [[list(c), i] for c, i in self.extra_colors.items()],
            "filename_encodings": [list(p) for p in self.filename_encodings],
        }

    @classmethod
    def from_dict(cls, d: dict) -> LabelSpace:
        return cls(
            name=d["name"],
            names=tuple(c["name"] for c in d["classes"]),
            colors=np.array([c["color"] for c in d["classes"]], dtype=np.uint8).reshape(-1, 3),
            encodings={k: _lut_from_json(v) for k, v in d.get("encodings", {}).items()},
            default_encoding=d.get("default_encoding", "id"),
            extra_colors={tuple(c): int(i) for c, i in d.get("extra_colors", [])},
            filename_encodings=tuple(tuple(p) for p in d.get("filename_encodings", [])),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> LabelSpace:
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
                colors.append(_parse_color(c["color"]))
                ids.append(int(c.get("id", i)))
                if not 0 <= ids[-1] <= _MAX_FILE_ID:
                    raise InputError(f"id {ids[-1]} outside 0..{_MAX_FILE_ID}")
            except KeyError as e:
                raise LabelError(f"{path}: class entry {i} ({c!r}) lacks {e}") from e
            except (TypeError, ValueError, AttributeError) as e:
                raise LabelError(f"{path}: class entry {i} ({c!r}) is invalid: {e}") from e
        void = d.get("void") or {}
        if not isinstance(void, dict):
            raise LabelError(f"{path}: 'void' must be a mapping with 'ids' and/or 'colors', got {void!r}")
        try:
            void_ids = [int(v) for v in void.get("ids", [])]
            void_colors = [_parse_color(c) for c in void.get("colors", [])]
        except (TypeError, ValueError) as e:
            raise LabelError(f"{path}: 'void' entry is invalid: {e}") from e
        n = len(names)
        dup = sorted({v for v in ids if ids.count(v) > 1})
        if dup:
            raise LabelError(f"{path}: class id(s) {dup} are used by several classes")
        clash = sorted(set(ids) & set(void_ids))
        bad_void = [v for v in void_ids if not 0 <= v <= _MAX_FILE_ID]
        if clash or bad_void:
            raise LabelError(
                f"{path}: void id(s) {clash or bad_void} "
                f"{'are also class ids' if clash else f'outside 0..{_MAX_FILE_ID}'}"
            )
        dup_names = sorted({v for v in names if names.count(v) > 1})
        if dup_names:
            raise LabelError(f"{path}: class name(s) {dup_names} appear more than once")
        shared = sorted({tuple(c) for c in colors if colors.count(c) > 1})
        if shared:
            raise LabelError(
                f"{path}: colour(s) {shared} are given to several classes, so colour "
                f"maps could not be decoded; give each class its own colour"
            )
        void_clash = [c for c in void_colors if c in colors]
        if void_clash:
            raise LabelError(f"{path}: void colour(s) {void_clash} are also class colours")
        lut = np.full(max(ids + void_ids) + 1, -1, dtype=np.int64)
        lut[ids] = np.arange(n)
        lut[void_ids] = n
        extra = {tuple(c): n for c in void_colors}
        return cls(
            name=str(d.get("name", path.stem)),
            names=tuple(names),
            colors=np.array(colors, dtype=np.uint8),
            encodings={"id": lut},
            default_encoding="id",
            extra_colors=extra,
        )


_MAX_FILE_ID = 65535  # 16-bit PNGs are the widest id maps in use


def _parse_color(c) -> list[int]:
    col = [int(v) for v in c]
    if len(col) != 3 or not all(0 <= v <= 255 for v in col):
        raise InputError(f"bad colour {c!r}: need [r, g, b] with values 0..255")
    return col


def _lut_to_runs(lut: np.ndarray) -> dict:
    """A lookup table as {"size", "runs": [[start, value, step], ...]}: each run holds
    value, value + step, ... from `start` to the next run. Tables such as Cityscapes instanceIds
    (34,000 entries) shrink to a few dozen runs in checkpoint metadata."""
    lut = np.asarray(lut, dtype=np.int64)
    runs, i, n = [], 0, len(lut)
    # Greedy: a run continues while the difference to the previous entry stays the same (0 or 1).
    d = np.diff(lut)
    while i < n:
        step = int(d[i]) if i < n - 1 and d[i] in (0, 1) else 0
        j = i + 1
        if i < n - 1 and d[i] == step:
            stop = np.flatnonzero(d[i:] != step)
            j = i + 1 + (int(stop[0]) if len(stop) else n - 1 - i)
        runs.append([i, int(lut[i]), step])
        i = j
    return {"size": n, "runs": runs}


def _lut_from_json(v) -> np.ndarray:
    if isinstance(v, dict):
        lut = np.empty(int(v["size"]), dtype=np.int64)
        starts = [r[0] for r in v["runs"]] + [len(lut)]
        for (s, val, step), e in zip(v["runs"], starts[1:]):
            lut[s:e] = val + step * np.arange(e - s)
        return lut
    return np.asarray(v, dtype=np.int64)  # older checkpoints: plain lists


_COLOR_LUTS: dict[bytes, np.ndarray] = {}  # a few spaces at most (32 MB each)


def _ranges(values: np.ndarray) -> str:
    """[0,1,2,3,7,8] -> '0..3, 7..8' for error messages."""
    values = np.asarray(values, dtype=np.int64)
    if not values.size:
        return "none"
    cut = np.flatnonzero(np.diff(values) != 1) + 1
    starts, ends = values[np.r_[0, cut]], values[np.r_[cut - 1, len(values) - 1]]
    return ", ".join(f"{s}" if s == e else f"{s}..{e}" for s, e in zip(starts.tolist(), ends.tolist()))


# ---------------------------------------------------------------------- built-in spaces

# Cityscapes: (labelId, name, trainId or None, colour) from the official label definition.
_CITYSCAPES = [
    (0, "unlabeled", None, (0, 0, 0)),
    (1, "ego vehicle", None, (0, 0, 0)),
    (2, "rectification border", None, (0, 0, 0)),
    (3, "out of roi", None, (0, 0, 0)),
    (4, "static", None, (20, 20, 20)),
    (5, "dynamic", None, (111, 74, 0)),
    (6, "ground", None, (81, 0, 81)),
    (7, "road", 0, (128, 64, 128)),
    (8, "sidewalk", 1, (244, 35, 232)),
    (9, "parking", None, (250, 170, 160)),
    (10, "rail track", None, (230, 150, 140)),
    (11, "building", 2, (70, 70, 70)),
    (12, "wall", 3, (102, 102, 156)),
    (13, "fence", 4, (190, 153, 153)),
    (14, "guard rail", None, (180, 165, 180)),
    (15, "bridge", None, (150, 100, 100)),
    (16, "tunnel", None, (150, 120, 90)),
    (17, "pole", 5, (153, 153, 153)),
    (18, "polegroup", None, (153, 153, 153)),
    (19, "traffic light", 6, (250, 170, 30)),
    (20, "traffic sign", 7, (220, 220, 0)),
    (21, "vegetation", 8, (107, 142, 35)),
    (22, "terrain", 9, (152, 251, 152)),
    (23, "sky", 10, (70, 130, 180)),
    (24, "person", 11, (220, 20, 60)),
    (25, "rider", 12, (255, 0, 0)),
    (26, "car", 13, (0, 0, 142)),
    (27, "truck", 14, (0, 0, 70)),
    (28, "bus", 15, (0, 60, 100)),
    (29, "caravan", None, (0, 0, 90)),
    (30, "trailer", None, (0, 0, 110)),
    (31, "train", 16, (0, 80, 100)),
    (32, "motorcycle", 17, (0, 0, 230)),
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
    # _gtFine_instanceIds.png (16-bit): labelId * 1000 + instance for things, the plain labelId
    # otherwise, so one table maps both ranges.
    inst_lut = np.full(34 * 1000, -1, dtype=np.int64)
    inst_lut[:34] = label_lut
    inst_lut[1000:] = np.repeat(label_lut[1:], 1000)
    return LabelSpace(
        name="cityscapes",
        names=names,
        colors=colors,
        encodings={"labelId": label_lut, "trainId": train_lut, "instanceId": inst_lut},
        default_encoding="labelId",
        extra_colors=extra,
        filename_encodings=((r"labelIds", "labelId"), (r"trainIds", "trainId"), (r"instanceIds", "instanceId")),
    )


_CAMVID = [
    ("sky", (128, 128, 128)),
    ("building", (128, 0, 0)),
    ("pole", (192, 192, 128)),
    ("road", (128, 64, 128)),
    ("pavement", (60, 40, 222)),
    ("tree", (128, 128, 0)),
    ("sign symbol", (192, 128, 128)),
    ("fence", (64, 64, 128)),
    ("car", (64, 0, 128)),
    ("pedestrian", (64, 64, 0)),
    ("bicyclist", (0, 128, 192)),
]


def _camvid() -> LabelSpace:
    lut = np.full(256, -1, dtype=np.int64)
    lut[:11] = np.arange(11)
    lut[11] = 11  # SegNet's "unlabelled"
    return LabelSpace(
        name="camvid",
        names=tuple(n for n, _ in _CAMVID),
        colors=np.array([c for _, c in _CAMVID], dtype=np.uint8),
        encodings={"id": lut},
        default_encoding="id",
        extra_colors={(0, 0, 0): 11},
    )


def _bit_palette(n: int) -> np.ndarray:
    """Colours for classes 0..n-1 of spaces without an official palette: the bits of k = index + 1
    are dealt round-robin to R, G, B from the most significant bit down. Distinct for every k < 2^24,
    never black (black is void), independent of any RNG, and neighbouring classes differ strongly."""
    k = np.arange(1, n + 1, dtype=np.int64)
    rgb = np.zeros((n, 3), dtype=np.int64)
    for bit in range(8):
        for ch in range(3):
            rgb[:, ch] |= ((k >> (3 * bit + ch)) & 1) << (7 - bit)
    return rgb.astype(np.uint8)


# COCO-Stuff (Caesar et al.): the 91 COCO thing ids (11 never annotated, kept as placeholders so
# indices line up) then the 91 stuff classes. Files use "id - 1": value v is class v, 255 unlabelled.
_COCO_THINGS = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    None,
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    None,
    "backpack",
    "umbrella",
    None,
    None,
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    None,
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    None,
    "dining table",
    None,
    None,
    "toilet",
    None,
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    None,
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
    None,
)
_COCO_STUFF = (
    "banner",
    "blanket",
    "branch",
    "bridge",
    "building-other",
    "bush",
    "cabinet",
    "cage",
    "cardboard",
    "carpet",
    "ceiling-other",
    "ceiling-tile",
    "cloth",
    "clothes",
    "clouds",
    "counter",
    "cupboard",
    "curtain",
    "desk-stuff",
    "dirt",
    "door-stuff",
    "fence",
    "floor-marble",
    "floor-other",
    "floor-stone",
    "floor-tile",
    "floor-wood",
    "flower",
    "fog",
    "food-other",
    "fruit",
    "furniture-other",
    "grass",
    "gravel",
    "ground-other",
    "hill",
    "house",
    "leaves",
    "light",
    "mat",
    "metal",
    "mirror-stuff",
    "moss",
    "mountain",
    "mud",
    "napkin",
    "net",
    "paper",
    "pavement",
    "pillow",
    "plant-other",
    "plastic",
    "platform",
    "playingfield",
    "railing",
    "railroad",
    "river",
    "road",
    "rock",
    "roof",
    "rug",
    "salad",
    "sand",
    "sea",
    "shelf",
    "sky-other",
    "skyscraper",
    "snow",
    "solid-other",
    "stairs",
    "stone",
    "straw",
    "structural-other",
    "table",
    "tent",
    "textile-other",
    "towel",
    "tree",
    "vegetable",
    "wall-brick",
    "wall-concrete",
    "wall-other",
    "wall-panel",
    "wall-stone",
    "wall-tile",
    "wall-wood",
    "water-other",
    "waterdrops",
    "window-blind",
    "window-other",
    "wood",
)


def _cocostuff() -> LabelSpace:
    names = tuple(n or f"unused-{i + 1}" for i, n in enumerate(_COCO_THINGS)) + _COCO_STUFF
    n = len(names)
    lut = np.full(256, -1, dtype=np.int64)
    lut[:n] = np.arange(n)
    lut[255] = n
    return LabelSpace(
        name="cocostuff",
        names=names,
        colors=_bit_palette(n),
        encodings={"id": lut},
        default_encoding="id",
        extra_colors={(0, 0, 0): n},
    )


# ADE20K scene-parsing benchmark (SceneParsing150): (name, colour) for file values 1..150, in the
# benchmark's order (by pixel frequency). Names are the first synonym of objectInfo150.csv
# ("television receiver" is its second, as the benchmark's own short list has it); colours are
# color150.mat. Road and skyscraper share (140, 140, 140) in that palette.
_ADE20K = [
    ("wall", (120, 120, 120)),
    ("building", (180, 120, 120)),
    ("sky", (6, 230, 230)),
    ("floor", (80, 50, 50)),
    ("tree", (4, 200, 3)),
    ("ceiling", (120, 120, 80)),
    ("road", (140, 140, 140)),
    ("bed", (204, 5, 255)),
    ("windowpane", (230, 230, 230)),
    ("grass", (4, 250, 7)),
    ("cabinet", (224, 5, 255)),
    ("sidewalk", (235, 255, 7)),
    ("person", (150, 5, 61)),
    ("earth", (120, 120, 70)),
    ("door", (8, 255, 51)),
    ("table", (255, 6, 82)),
    ("mountain", (143, 255, 140)),
    ("plant", (204, 255, 4)),
    ("curtain", (255, 51, 7)),
    ("chair", (204, 70, 3)),
    ("car", (0, 102, 200)),
    ("water", (61, 230, 250)),
    ("painting", (255, 6, 51)),
    ("sofa", (11, 102, 255)),
    ("shelf", (255, 7, 71)),
    ("house", (255, 9, 224)),
    ("sea", (9, 7, 230)),
    ("mirror", (220, 220, 220)),
    ("rug", (255, 9, 92)),
    ("field", (112, 9, 255)),
    ("armchair", (8, 255, 214)),
    ("seat", (7, 255, 224)),
    ("fence", (255, 184, 6)),
    ("desk", (10, 255, 71)),
    ("rock", (255, 41, 10)),
    ("wardrobe", (7, 255, 255)),
    ("lamp", (224, 255, 8)),
    ("bathtub", (102, 8, 255)),
    ("railing", (255, 61, 6)),
    ("cushion", (255, 194, 7)),
    ("base", (255, 122, 8)),
    ("box", (0, 255, 20)),
    ("column", (255, 8, 41)),
    ("signboard", (255, 5, 153)),
    ("chest of drawers", (6, 51, 255)),
    ("counter", (235, 12, 255)),
    ("sand", (160, 150, 20)),
    ("sink", (0, 163, 255)),
    ("skyscraper", (140, 140, 140)),
    ("fireplace", (250, 10, 15)),
    ("refrigerator", (20, 255, 0)),
    ("grandstand", (31, 255, 0)),
    ("path", (255, 31, 0)),
    ("stairs", (255, 224, 0)),
    ("runway", (153, 255, 0)),
    ("case", (0, 0, 255)),
    ("pool table", (255, 71, 0)),
    ("pillow", (0, 235, 255)),
    ("screen door", (0, 173, 255)),
    ("stairway", (31, 0, 255)),
    ("river", (11, 200, 200)),
    ("bridge", (255, 82, 0)),
    ("bookcase", (0, 255, 245)),
    ("blind", (0, 61, 255)),
    ("coffee table", (0, 255, 112)),
    ("toilet", (0, 255, 133)),
    ("flower", (255, 0, 0)),
    ("book", (255, 163, 0)),
    ("hill", (255, 102, 0)),
    ("bench", (194, 255, 0)),
    ("countertop", (0, 143, 255)),
    ("stove", (51, 255, 0)),
    ("palm", (0, 82, 255)),
    ("kitchen island", (0, 255, 41)),
    ("computer", (0, 255, 173)),
    ("swivel chair", (10, 0, 255)),
    ("boat", (173, 255, 0)),
    ("bar", (0, 255, 153)),
    ("arcade machine", (255, 92, 0)),
    ("hovel", (255, 0, 255)),
    ("bus", (255, 0, 245)),
    ("towel", (255, 0, 102)),
    ("light", (255, 173, 0)),
    ("truck", (255, 0, 20)),
    ("tower", (255, 184, 184)),
    ("chandelier", (0, 31, 255)),
    ("awning", (0, 255, 61)),
    ("streetlight", (0, 71, 255)),
    ("booth", (255, 0, 204)),
    ("television receiver", (0, 255, 194)),
    ("airplane", (0, 255, 82)),
    ("dirt track", (0, 10, 255)),
    ("apparel", (0, 112, 255)),
    ("pole", (51, 0, 255)),
    ("land", (0, 194, 255)),
    ("bannister", (0, 122, 255)),
    ("escalator", (0, 255, 163)),
    ("ottoman", (255, 153, 0)),
    ("bottle", (0, 255, 10)),
    ("buffet", (255, 112, 0)),
    ("poster", (143, 255, 0)),
    ("stage", (82, 0, 255)),
    ("van", (163, 255, 0)),
    ("ship", (255, 235, 0)),
    ("fountain", (8, 184, 170)),
    ("conveyer belt", (133, 0, 255)),
    ("canopy", (0, 255, 92)),
    ("washer", (184, 0, 255)),
    ("plaything", (255, 0, 31)),
    ("swimming pool", (0, 184, 255)),
    ("stool", (0, 214, 255)),
    ("barrel", (255, 0, 112)),
    ("basket", (92, 255, 0)),
    ("waterfall", (0, 224, 255)),
    ("tent", (112, 224, 255)),
    ("bag", (70, 184, 160)),
    ("minibike", (163, 0, 255)),
    ("cradle", (153, 0, 255)),
    ("oven", (71, 255, 0)),
    ("ball", (255, 0, 163)),
    ("food", (255, 204, 0)),
    ("step", (255, 0, 143)),
    ("tank", (0, 255, 235)),
    ("trade name", (133, 255, 0)),
    ("microwave", (255, 0, 235)),
    ("pot", (245, 0, 255)),
    ("animal", (255, 0, 122)),
    ("bicycle", (255, 245, 0)),
    ("lake", (10, 190, 212)),
    ("dishwasher", (214, 255, 0)),
    ("screen", (0, 204, 255)),
    ("blanket", (20, 0, 255)),
    ("sculpture", (255, 255, 0)),
    ("hood", (0, 153, 255)),
    ("sconce", (0, 41, 255)),
    ("vase", (0, 255, 204)),
    ("traffic light", (41, 0, 255)),
    ("tray", (41, 255, 0)),
    ("ashcan", (173, 0, 255)),
    ("fan", (0, 245, 255)),
    ("pier", (71, 0, 255)),
    ("crt screen", (122, 0, 255)),
    ("plate", (0, 255, 184)),
    ("monitor", (0, 92, 255)),
    ("bulletin board", (184, 255, 0)),
    ("shower", (0, 133, 255)),
    ("radiator", (255, 214, 0)),
    ("glass", (25, 194, 194)),
    ("clock", (102, 255, 0)),
    ("flag", (92, 0, 255)),
]


def _ade20k() -> LabelSpace:
    n = len(_ADE20K)
    lut = np.full(256, -1, dtype=np.int64)
    lut[0] = n  # "other": pixels outside the 150 classes
    lut[1 : n + 1] = np.arange(n)
    return LabelSpace(
        name="ade20k",
        names=tuple(a for a, _ in _ADE20K),
        colors=np.array([c for _, c in _ADE20K], dtype=np.uint8),
        encodings={"id": lut},
        default_encoding="id",
        extra_colors={(0, 0, 0): n},
    )


_REGISTRY: dict[str, LabelSpace] = {}
# Built on first use: the tables are cheap but the colour look-up (32 MB) should not be paid at import.
_LAZY = {"cityscapes": _cityscapes, "camvid": _camvid, "cocostuff": _cocostuff, "ade20k": _ade20k}


def register_space(space: LabelSpace) -> None:
    _REGISTRY[space.name.lower()] = space


def available_spaces() -> list[str]:
    return sorted(set(_REGISTRY) | set(_LAZY))


def layout_reader(space: LabelSpace, label_space: str | Path | LabelSpace | None = None, encoding: str | None = None):
    """path -> (H, W) class indices of `space` (a model's). Files are decoded in `label_space`
    (default: `space` itself) with `encoding`; another space's classes are mapped to `space`'s by
    name (case-insensitive), so e.g. a user YAML with its own colours for the Cityscapes classes
    works with a Cityscapes model; its classes that `space` lacks are refused."""
    src = space if label_space is None else get_space(label_space)
    if list(src.names) == list(space.names):
        return lambda path: src.read(path, encoding)
    index = {n.lower(): i for i, n in enumerate(space.names)}
    missing = [n for n in src.names if n.lower() not in index]
    if missing:
        raise LabelError(
            f"label space {src.name!r} has class(es) {missing[:5]} that the model's space "
            f"{space.name!r} does not know; its classes: {', '.join(space.names)}"
        )
    lut = np.array([index[n.lower()] for n in src.names] + [space.void], dtype=np.int64)
    return lambda path: lut[src.read(path, encoding)]


def get_space(name: str | Path | LabelSpace | dict) -> LabelSpace:
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
    if p.suffix.lower() in (".yaml", ".yml", ".json"):
        if not p.is_file():
            raise LabelError(f"{p}: label-space file not found")
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
            f"valid 0..{num_classes} (void = {num_classes})"
        )
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
