"""Datasets of (layout, photo) pairs and label-only layouts.

`open_dataset(path)` recognises the common folder layouts (official Cityscapes, generic
`images/` + `labels/`, SegNet CamVid, COCO-Stuff, ADE20K, a plain folder or list of label maps) and
returns a `LayoutDataset` whose samples are dicts::

    {"label": LongTensor (H, W) class indices (void = space.void),
     "image": FloatTensor (3, H, W) RGB in [0, 1]      # absent for label-only datasets
     "name": str (file stem), "label_path": str}

Decoded (and resized) uint8 arrays are cached, in memory by default or as .npy files on disk
(`cache="disk"`), so an epoch never re-decodes PNGs. Photos are resized with PIL's antialiased
bicubic filter (the same Keys a = -0.5 kernel, widened when shrinking, as MATLAB's imresize used by
the original CRN data preparation), labels with nearest neighbour on the decoded class map.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .errors import InputError
from .labels import LabelError, LabelSpace, get_space
from .utils import atomic_path

__all__ = [
    "DatasetError",
    "LayoutDataset",
    "open_dataset",
    "list_label_files",
    "load_image",
    "save_image",
    "resize_label",
    "resize_image",
    "IMAGE_EXTENSIONS",
    "cache_root",
    "cityscapes_frame",
    "CS_PHOTO_SUFFIX",
]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"})
_CACHE_VERSION = 1  # bump when the cached arrays' meaning changes


class DatasetError(LabelError):
    """A dataset folder or file that cannot be used (missing, unpaired, mismatched, empty)."""


@dataclass(frozen=True)
class Item:
    name: str
    label: Path
    image: Path | None


# --------------------------------------------------------------------------- image helpers


MAX_SIDE = 8192  # 4x the largest preset side; 8192x8192 is 64 megapixels


def check_size(size, what: str = "size") -> tuple[int, int] | None:
    """(H, W) as ints in 1..MAX_SIDE, or None; InputError naming `what` otherwise."""
    if size is None:
        return None
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be (height, width), got {size!r}") from None
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise InputError(f"{what} must be two sides of 1..{MAX_SIDE} pixels, got {h} {w}")
    return h, w


def _read_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a photo; grey, paletted and RGBA files are converted."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: image not found")
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))  # writable: tensors are made from it without copies
    except Exception as e:  # PIL raises OSError, SyntaxError, zlib errors ... for broken files
        raise DatasetError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e


def resize_image(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) uint8 with antialiased bicubic (box-widened when shrinking)."""
    h, w = check_size(size)
    if rgb.shape[:2] == (h, w):
        return rgb
    return np.array(Image.fromarray(rgb).resize((w, h), Image.Resampling.BICUBIC))


def resize_label(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) integer class map -> (h, w) by nearest neighbour at pixel centres (no new classes,
    no half-pixel shift). Done on class indices, after decoding, so colour maps and id maps agree."""
    h, w = check_size(size)
    if ids.shape == (h, w):
        return ids
    small = ids.max(initial=0) <= 255 and ids.min(initial=0) >= 0
    im = Image.fromarray(ids.astype(np.uint8 if small else np.int32))
    return np.asarray(im.resize((w, h), Image.Resampling.NEAREST)).astype(ids.dtype)


def load_image(path: str | Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A photo as a (3, H, W) float tensor in [0, 1], optionally resized to `size` = (H, W)."""
    rgb = _read_rgb(path)
    if size is not None:
        rgb = resize_image(rgb, size)
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous().float().div_(255)


def save_image(path: str | Path, img, **options) -> Path:
    """Write an image atomically: every photo semsynth writes goes through here. Tensors are
    (3, H, W) (or (1, 3, H, W)), NumPy arrays (H, W, 3); floats are taken as [0, 1], clipped and
    rounded to uint8; a PIL image (e.g. a palette one) is written as it is. The format follows the
    suffix; `options` go to PIL's save (e.g. optimize=True)."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: unknown image extension {path.suffix!r}")
    im = img if isinstance(img, Image.Image) else Image.fromarray(_uint8_pixels(img))
    with atomic_path(path) as tmp:
        im.save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}), **options)
    return path


def _uint8_pixels(img) -> np.ndarray:
    if isinstance(img, torch.Tensor):
        t = img.detach().cpu()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise InputError(f"save_image expects a (3, H, W) tensor, got shape {tuple(img.shape)}")
        arr = t.permute(1, 2, 0).numpy()
    else:
        arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        if arr.dtype.kind != "f":
            raise InputError(f"save_image expects float [0, 1] or uint8 pixels, got {arr.dtype}")
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return arr


# --------------------------------------------------------------------------- file discovery

# Cityscapes file names, the one place they are spelled: photos <frame>_leftImg8bit.png, ground
# truth <frame>_<gtFine|gtCoarse>_<kind>.png. The kinds read as label maps, in order of preference;
# cityscapesScripts' labelTrainIds maps are plain label files here, but their suffix is a frame's.
CS_PHOTO_SUFFIX = "_leftImg8bit"
_CS_PREFERENCE = ("labelIds", "trainIds", "color", "instanceIds")
_CS_KINDS = {"labelId": "labelIds", "trainId": "trainIds", "color": "color", "instanceId": "instanceIds"}
_CS_LABEL = re.compile(rf"^(?P<stem>.+)_(?P<gt>gtFine|gtCoarse)_(?P<kind>{'|'.join(_CS_PREFERENCE)})$")
_CS_SUFFIX = re.compile(rf"(_leftImg8bit|_gt(Fine|Coarse)_(labelTrainIds|{'|'.join(_CS_PREFERENCE)}))$")


def cityscapes_frame(stem: str) -> str:
    """A file stem without its Cityscapes suffix (`aachen_000000_000019_gtFine_labelIds` ->
    `aachen_000000_000019`); other stems unchanged."""
    return _CS_SUFFIX.sub("", stem)


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _scan(folder: Path) -> list[Path]:
    """Image files under `folder`, recursive, sorted; hidden files (e.g. our temp files) skipped."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not _is_hidden(p, folder)
    )


def _keyed(folder: Path, files: Iterable[Path], strip: str = "") -> dict[str, Path]:
    """relative path without extension (and without a suffix such as '_leftImg8bit') -> file."""
    out: dict[str, Path] = {}
    for f in files:
        rel = f.relative_to(folder).with_suffix("").as_posix()
        if strip and rel.endswith(strip):
            rel = rel[: -len(strip)]
        if rel in out:
            raise DatasetError(f"{folder}: {out[rel].name} and {f.name} have the same name; keep one of them")
        out[rel] = f
    return out


def _pick_cityscapes(files: Sequence[Path], encoding: str | None) -> list[Path]:
    """One label file per Cityscapes frame: the kind asked for, else labelIds > trainIds > color >
    instanceIds. Files that are not Cityscapes ground truth pass through unchanged."""
    best: dict[tuple, tuple[int, Path]] = {}
    others = []
    want = _CS_KINDS.get(encoding) if encoding else None
    for f in files:
        m = _CS_LABEL.match(f.stem)
        if not m:
            if not f.stem.endswith(CS_PHOTO_SUFFIX):  # Cityscapes photos are never label maps
                others.append(f)
            continue
        if want and m["kind"] != want:
            continue
        rank = _CS_PREFERENCE.index(m["kind"])
        key = (f.parent, m["stem"], m["gt"])
        if key not in best or rank < best[key][0]:
            best[key] = (rank, f)
    return sorted(others + [f for _, f in best.values()])


def list_label_files(inputs: str | Path | Iterable[str | Path]) -> list[Path]:
    """Label-map files from files and folders (folders: recursive, sorted, by image extension; of
    Cityscapes ground truth only one file per frame). Errors on a missing path or a folder without
    label maps."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    out: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            files = _pick_cityscapes(_scan(p), None)
            if not files:
                raise DatasetError(
                    f"{p}: folder holds no label maps (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
                )
            out.extend(files)
        elif p.is_file():
            out.append(p)
        else:
            raise DatasetError(f"{p}: no such file or folder")
    seen: set[Path] = set()
    return [f for f in out if not (f.resolve() in seen or seen.add(f.resolve()))]


def _examples(keys: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def _pair(
    img_dir: Path, lab_dir: Path, photos: dict[str, Path], labels: dict[str, Path], require_images: bool
) -> list[Item]:
    if not labels:
        raise DatasetError(f"{lab_dir}: no label maps found")
    if require_images:
        no_photo = sorted(set(labels) - set(photos))
        no_label = sorted(set(photos) - set(labels))
        problems = []
        if no_photo:
            problems.append(
                f"{len(no_photo)} label map(s) in {lab_dir} have no photo in {img_dir}: {_examples(no_photo)}"
            )
        if no_label:
            problems.append(
                f"{len(no_label)} photo(s) in {img_dir} have no label map in {lab_dir}: {_examples(no_label)}"
            )
        if problems:
            raise DatasetError(
                "; ".join(problems) + ". Remove or add the files (or pass "
                "require_images=False to use the label maps alone)."
            )
    keys = sorted(labels)
    stems = [k.rsplit("/", 1)[-1] for k in keys]
    # Names are file stems; only if two subfolders hold the same stem does the relative path
    # become the name, so outputs named after samples cannot collide.
    unique = len(set(stems)) == len(stems)
    return [Item(s if unique else k, labels[k], photos[k] if require_images else None) for k, s in zip(keys, stems)]


def _need_dir(path: Path, what: str, hint: str = "") -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} not found{hint}")
    return path


def _splits_hint(root: Path, pattern: str) -> str:
    rx = re.compile(pattern)
    found = sorted(m[1] for d in root.iterdir() if d.is_dir() and (m := rx.fullmatch(d.name)))
    return f" (splits here: {', '.join(found)})" if found else ""


def _detect(root: Path, split: str, require_images: bool, encoding: str | None):
    """-> (layout name, natural label space, items)."""
    # Official Cityscapes: gtFine/<split>/<city>/<frame>_gtFine_*.png, leftImg8bit/<split>/<city>/...
    if (root / "gtFine").is_dir() or (root / "gtCoarse").is_dir():
        gt_root = root / "gtFine" if (root / "gtFine").is_dir() else root / "gtCoarse"
        lab_dir = _need_dir(gt_root / split, f"Cityscapes split {split!r}", _splits_hint(gt_root, r"(.+)"))
        files = [f for f in _pick_cityscapes(_scan(lab_dir), encoding) if _CS_LABEL.match(f.stem)]
        if not files:
            kinds = "_" + _CS_KINDS[encoding] if encoding in _CS_KINDS else "_labelIds / _trainIds / _color"
            raise DatasetError(f"{lab_dir}: no *{kinds}.png label maps found")
        labels = {}
        for f in files:
            rel = f.relative_to(lab_dir).parent / _CS_LABEL.match(f.stem)["stem"]
            labels[rel.as_posix()] = f
        photos = {}
        img_dir = root / "leftImg8bit" / split
        if require_images:
            _need_dir(
                img_dir,
                "Cityscapes photo folder",
                f": split {split!r} has {len(labels)} label maps but no photos here; pass "
                f"require_images=False to use the label maps alone",
            )
            photos = _keyed(
                img_dir, [p for p in _scan(img_dir) if p.stem.endswith(CS_PHOTO_SUFFIX)], strip=CS_PHOTO_SUFFIX
            )
        return "cityscapes", "cityscapes", _pair(img_dir, lab_dir, photos, labels, require_images)

    candidates = [
        # (layout, natural space, label folder, photo folder)
        ("cocostuff", "cocostuff", root / f"{split}_label", root / f"{split}_img"),
        ("camvid", "camvid", root / f"{split}annot", root / split),
    ]
    for layout, natural, lab_name in [("ade20k", "ade20k", "annotations"), ("paired", "cityscapes", "labels")]:
        lab, img = root / lab_name, root / "images"
        if not lab.is_dir():
            continue
        # Flat folders, or one subfolder per split (ADEChallengeData2016: training/, validation/).
        subs = sorted(d.name for d in lab.iterdir() if d.is_dir() and not d.name.startswith("."))
        for sub in (split, {"train": "training", "val": "validation"}.get(split, split)):
            if sub in subs:
                lab, img = lab / sub, img / sub
                break
        else:
            if subs and not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in lab.iterdir()):
                raise DatasetError(f"{lab}: no subfolder for split {split!r} (splits here: {', '.join(subs)})")
        candidates.append((layout, natural, lab, img))
    for layout, natural, lab_dir, img_dir in candidates:
        if not lab_dir.is_dir():
            continue
        labels = _keyed(lab_dir, _pick_cityscapes(_scan(lab_dir), encoding))
        photos = {}
        if require_images:
            _need_dir(
                img_dir,
                f"photo folder of the {layout} layout",
                f" (labels are in {lab_dir}); pass require_images=False to use the label maps alone",
            )
            photos = _keyed(img_dir, _scan(img_dir))
        return layout, natural, _pair(img_dir, lab_dir, photos, labels, require_images)

    markers = [d.name for d in root.iterdir() if d.is_dir() and re.fullmatch(r".+_label|.+annot", d.name)]
    if not require_images and not markers:
        files = _pick_cityscapes(_scan(root), encoding)
        if not files:
            raise DatasetError(f"{root}: folder holds no label maps")
        return "labels", "cityscapes", _pair(root, root, {}, _keyed(root, files), False)
    hint = _splits_hint(root, r"(.+)_label") or _splits_hint(root, r"(.+)annot")
    raise DatasetError(
        f"{root}: no dataset layout for split {split!r} found{hint}. Expected Cityscapes (gtFine/ + "
        f"leftImg8bit/), images/ + labels/, CamVid (<split>/ + <split>annot/), COCO-Stuff "
        f"(<split>_img/ + <split>_label/) or ADE20K (images/ + annotations/); for a folder of "
        f"label maps alone pass require_images=False"
    )


# --------------------------------------------------------------------------- dataset


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where `cache="disk"` arrays go: `cache_dir`, else $SEMSYNTH_CACHE, else ~/.cache/semsynth."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("SEMSYNTH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "semsynth"


def _stat_key(path: Path | None) -> list:
    if path is None:
        return [None]
    st = path.stat()
    return [str(path.resolve()), st.st_mtime_ns, st.st_size]


class LayoutDataset(Dataset):
    """Label maps (and photos) as tensors; see the module docstring for the sample format.

    cache: True (in this process's memory; each DataLoader worker fills its own), "disk" (one .npy
    per array under `cache_root()`, memory-mapped, shared by workers and later runs; keyed by file
    path, mtime and size, the label space, encoding and target size, so edits invalidate it), or
    False. flip: random horizontal flip of label and photo together, from torch's RNG. vivid: the
    original CRN's tone mapping of the photos (`semsynth.vivid`, after resizing; cached)."""

    def __init__(
        self,
        items: Sequence[Item],
        space: LabelSpace | str,
        *,
        size=None,
        flip: bool = False,
        cache: bool | str = True,
        label_encoding: str | None = None,
        layout: str = "custom",
        root: str | Path | None = None,
        cache_dir: str | Path | None = None,
        vivid: bool = False,
    ):
        if cache not in (True, False, "disk", "memory"):
            raise InputError(f"cache must be True, False or 'disk', got {cache!r}")
        if not items:
            raise DatasetError(f"{root or 'dataset'}: no samples")
        self.items = list(items)
        self.space = get_space(space)
        if label_encoding not in (None, "auto"):
            self.space.encoding_for(None, label_encoding)  # fail now on an unknown encoding
        self.size = check_size(size)
        self.flip = bool(flip)
        self.vivid = bool(vivid)
        self.cache = "memory" if cache is True else cache
        self.label_encoding = None if label_encoding == "auto" else label_encoding
        self.layout = layout
        self.root = Path(root) if root is not None else None
        self.cache_dir = cache_root(cache_dir) / "arrays" if self.cache == "disk" else None
        self._memory: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        self._space_key = hashlib.sha1(json.dumps(self.space.to_dict(), sort_keys=True).encode()).hexdigest()
        self._label_dtype = np.uint8 if self.space.void <= 255 else np.int32

    @property
    def has_images(self) -> bool:
        return self.items[0].image is not None

    @property
    def names(self) -> list[str]:
        return [it.name for it in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return (
            f"LayoutDataset({self.layout}, {len(self)} samples, space={self.space.name}, "
            f"size={self.size}, images={self.has_images}, cache={self.cache})"
        )

    # ------------------------------------------------------------------ decoding + cache
    def _decode(self, it: Item) -> tuple[np.ndarray, np.ndarray | None]:
        ids = self.space.read(it.label, self.label_encoding)
        rgb = None
        if it.image is not None:
            rgb = _read_rgb(it.image)
            if rgb.shape[:2] != ids.shape:
                raise DatasetError(
                    f"{it.image} is {rgb.shape[1]}x{rgb.shape[0]} (WxH) but its label map {it.label} "
                    f"is {ids.shape[1]}x{ids.shape[0]}; photo and label must have the same size"
                )
        if self.size is not None:
            ids = resize_label(ids, self.size)
            rgb = resize_image(rgb, self.size) if rgb is not None else None
        if self.vivid and rgb is not None:  # after resizing, as the original (SPEC A.1.2)
            from .vivid import vivid

            rgb = vivid(rgb)
        return ids.astype(self._label_dtype), rgb

    def _disk_paths(self, it: Item) -> tuple[Path, Path]:
        key = json.dumps(
            [_CACHE_VERSION, _stat_key(it.label), _stat_key(it.image), self._space_key, self.label_encoding, self.size]
            + (["vivid"] if self.vivid else [])
        )
        h = hashlib.sha1(key.encode()).hexdigest()
        base = self.cache_dir / h[:2] / h
        return base.with_name(h + "-label.npy"), base.with_name(h + "-image.npy")

    def _from_disk(self, it: Item):
        lab_p, img_p = self._disk_paths(it)
        try:
            ids = np.load(lab_p, mmap_mode="r")
            rgb = np.load(img_p, mmap_mode="r") if it.image is not None else None
            return ids, rgb
        except (OSError, ValueError, EOFError):  # absent (or, after a crash elsewhere, unreadable)
            pass
        ids, rgb = self._decode(it)
        # Image first, label last: the label file's presence marks a complete entry. Concurrent
        # workers may write the same entry; each write is atomic and the contents identical.
        if rgb is not None:
            with atomic_path(img_p) as tmp, open(tmp, "wb") as f:
                np.save(f, rgb)
        with atomic_path(lab_p) as tmp, open(tmp, "wb") as f:
            np.save(f, ids)
        return ids, rgb

    def arrays(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(class map (H, W) uint8/int32, photo (H, W, 3) uint8 or None), decoded once and cached.
        The arrays may be shared with the cache (or read-only memory maps): do not modify them."""
        it = self.items[i]
        if self.cache == "memory":
            if i not in self._memory:
                self._memory[i] = self._decode(it)
            return self._memory[i]
        if self.cache == "disk":
            return self._from_disk(it)
        return self._decode(it)

    def __getitem__(self, i: int) -> dict:
        i = range(len(self.items))[i]  # negative indices; IndexError past the end
        ids, rgb = self.arrays(i)
        label = torch.from_numpy(np.array(ids, dtype=np.int64))  # copy: the cache stays untouched
        image = None
        if rgb is not None:  # .float() copies; only read-only memory maps need a copy first
            image = torch.from_numpy(rgb if rgb.flags.writeable else np.array(rgb))
            image = image.permute(2, 0, 1).float().div_(255)
        if self.flip and bool(torch.rand(()) < 0.5):
            label = label.flip(-1)
            image = image.flip(-1) if image is not None else None
        it = self.items[i]
        out = {"label": label.contiguous(), "name": it.name, "label_path": str(it.label)}
        if image is not None:
            out["image"] = image.contiguous()
            out["image_path"] = str(it.image)
        return out

    def verify(self) -> None:
        """Check every pair's sizes from the file headers (fast: nothing is decoded)."""
        for it in self.items:
            if it.image is None:
                continue
            try:
                with Image.open(it.label) as a, Image.open(it.image) as b:
                    la, lb = a.size, b.size
            except Exception as e:
                raise DatasetError(f"{it.label} / {it.image}: cannot read ({e})") from e
            if la != lb:
                raise DatasetError(
                    f"{it.image} is {lb[0]}x{lb[1]} (WxH) but its label map {it.label} "
                    f"is {la[0]}x{la[1]}; photo and label must have the same size"
                )


def open_dataset(
    path: str | Path | Sequence[str | Path],
    space: str | LabelSpace | None = None,
    split: str = "train",
    size=None,
    flip: bool = False,
    require_images: bool = True,
    cache: bool | str = True,
    label_encoding: str | None = None,
    exclude: Iterable[str] | None = None,
    cache_dir: str | Path | None = None,
    vivid: bool = False,
) -> LayoutDataset:
    """Open a dataset folder, detecting its layout (see the module docstring), or a list of label
    files (label-only; needs require_images=False).

    space: a LabelSpace or its name; None takes the layout's own (camvid, cocostuff, ade20k,
    else cityscapes). require_images=False gives label maps alone, e.g. Cityscapes splits without
    photos. size: (H, W) to resize to. exclude: sample names or glob patterns to leave out.
    vivid: tone-map the photos as the original 512p/1024p recipe did (SPEC A.1.2)."""
    if isinstance(path, (list, tuple)):
        if require_images:
            raise DatasetError("a list of label files has no photos; pass require_images=False")
        files = list_label_files(path)
        items = [Item(f.stem, f, None) for f in files]
        layout, natural, root = "files", "cityscapes", None
    else:
        root = Path(path)
        if not root.exists():
            raise DatasetError(f"{root}: dataset folder not found")
        if root.is_file():
            if require_images:
                raise DatasetError(
                    f"{root}: is a single file; pass require_images=False to use it as a label-only dataset"
                )
            layout, natural, items = "files", "cityscapes", [Item(root.stem, root, None)]
        else:
            layout, natural, items = _detect(root, split, require_images, label_encoding)
    if exclude:
        pats = [str(p) for p in ([exclude] if isinstance(exclude, str) else exclude)]
        items = [it for it in items if not any(fnmatch.fnmatchcase(it.name, p) for p in pats)]
        if not items:
            raise DatasetError(f"{root or 'the given files'}: every sample is excluded by {pats}")
    return LayoutDataset(
        items,
        space if space is not None else natural,
        size=size,
        flip=flip,
        cache=cache,
        label_encoding=label_encoding,
        layout=layout,
        root=root,
        cache_dir=cache_dir,
        vivid=vivid,
    )
