"""Where pretrained weight files come from.

`resolve(name)` turns a weight name (an alias such as ``"vgg19"`` or a file name such as
``"vgg19-dcbb9e9d.pth"``) into a local path. It looks, in this order, in

1. the folder named by the ``SEMSYNTH_WEIGHTS`` environment variable,
2. the torch hub cache, ``torch.hub.get_dir()/checkpoints`` (where torchvision keeps its files),
3. ``shared_dir()/weights`` (the project's shared folder),

checks the file's sha256 prefix where it is known (the table below; other files whose name ends in a
torch-hub style hash, ``name-1a2b3c4d.pth``, get a warning on a mismatch), and — for files with a public URL,
unless ``SEMSYNTH_OFFLINE=1`` — downloads a missing file into the hub cache
(``torch.hub.download_url_to_file`` writes a temporary file and renames it, so a broken download
never leaves a truncated file behind). When a file cannot be found or fetched, the
FileNotFoundError says which file to put in which folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import InputError, MissingFileError
from .utils import shared_dir

__all__ = ["WeightFile", "WEIGHTS", "resolve", "verify", "search_dirs", "sha256", "offline"]


@dataclass(frozen=True)
class WeightFile:
    filename: str
    sha256: str | None = None  # hex prefix (any length) of the file's sha256
    url: str | None = None  # public download location, None where there is none
    what: str = ""
    alternative: str = ""  # a sentence on what else can be used instead


_MATCONVNET_URL = "http://www.vlfeat.org/matconvnet/models/beta16/imagenet-vgg-verydeep-19.mat"

WEIGHTS: dict[str, WeightFile] = {
    "vgg19": WeightFile(
        "vgg19-dcbb9e9d.pth",
        "dcbb9e9d",
        "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
        "torchvision's ImageNet VGG-19, 548 MB",
        "Alternatively, for the original CRN network, put MatConvNet's imagenet-vgg-verydeep-19.mat "
        f"({_MATCONVNET_URL}) in one of these folders and use the backbone 'vgg19-matconvnet'.",
    ),
    "vgg19-matconvnet": WeightFile(
        "imagenet-vgg-verydeep-19.mat",
        None,
        _MATCONVNET_URL,
        "MatConvNet's ImageNet VGG-19 as the original CRN code loads it, 510 MB",
        "Alternatively put torchvision's vgg19-dcbb9e9d.pth "
        "(https://download.pytorch.org/models/vgg19-dcbb9e9d.pth) there and use the backbone 'vgg19'.",
    ),
    "vgg19-normalised": WeightFile(
        "vgg_normalised_conv3_1.pth", "4ffff49ad5cdc333", None, "Gatys-normalised VGG-19 truncated after conv3_1"
    ),
    "vgg19-normalised-conv2_1": WeightFile("vgg_normalised_conv2_1.pth", "0d345a57453279ba"),
    "vgg19-normalised-conv1_1": WeightFile("vgg_normalised_conv1_1.pth", "1bc4ad2ae2a3e5e5"),
    "squeezenet1_1": WeightFile(
        "squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "17154246284f5555",
        "https://github.com/rcmalli/keras-squeezenet/releases/download/v1.0/"
        "squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "SqueezeNet v1.1 ImageNet weights (Keras HDF5, no classifier)",
    ),
    "espnet-cityscapes": WeightFile(
        "decoder_espnet_p_2_q_8.pth", "343b0e77e8545d36", None, "ESPNet (p=2, q=8) Cityscapes segmenter"
    ),
    "espnet-camvid": WeightFile(
        "decoder_espnet_p_2_q_8_camvid.pth", "7d354a257170322", None, "ESPNet (p=2, q=8) CamVid segmenter"
    ),
    "espnet-encoder": WeightFile(
        "encoder_espnet_p_2_q_8.pth", "836f28a2a31bd4fc", None, "ESPNet-C encoder (Cityscapes)"
    ),
}

_BY_FILENAME = {w.filename: w for w in WEIGHTS.values()}
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")
_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, per process


def offline() -> bool:
    return os.environ.get("SEMSYNTH_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def search_dirs() -> list[Path]:
    """The folders `resolve` looks in, in order."""
    dirs = []
    env = os.environ.get("SEMSYNTH_WEIGHTS")
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(hub_checkpoints())
    dirs.append(shared_dir() / "weights")
    return dirs


def sha256(path: str | os.PathLike) -> str:
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _VERIFIED[key] = h.hexdigest()
    return _VERIFIED[key]


def expected_sha256(path: str | os.PathLike) -> tuple[str | None, bool]:
    """(known sha256 prefix, whether it is certain): from the table (certain), else from a
    torch-hub style hash in the file name (a convention some publishers do not follow)."""
    name = Path(path).name
    if name in _BY_FILENAME and _BY_FILENAME[name].sha256:
        return _BY_FILENAME[name].sha256, True
    m = _HASH_IN_NAME.search(name)
    return (m.group(1), False) if m else (None, False)


def verify(path: str | os.PathLike) -> Path:
    """Check `path` against its known sha256 prefix: ValueError on a mismatch for the files in
    `WEIGHTS`, a warning for a mismatching hash-like suffix in any other file name."""
    path = Path(path)
    want, certain = expected_sha256(path)
    if want:
        got = sha256(path)
        if not got.startswith(want):
            msg = (
                f"{path}: sha256 {got[:16]}… does not start with the expected {want}; the file is "
                f"corrupt, truncated or a different version. Delete it and fetch it again."
            )
            if certain:
                raise InputError(msg)
            warnings.warn(msg + " (The expected hash was read from the file name.)", stacklevel=2)
    return path


def _entry(name: str) -> WeightFile:
    if name in WEIGHTS:
        return WEIGHTS[name]
    if name in _BY_FILENAME:
        return _BY_FILENAME[name]
    return WeightFile(name, None, None)


def _missing_message(entry: WeightFile, reason: str) -> str:
    dirs = search_dirs()
    hub = hub_checkpoints()
    env = os.environ.get("SEMSYNTH_WEIGHTS")
    what = f" ({entry.what})" if entry.what else ""
    lines = [
        f"weight file {entry.filename!r}{what} not found; {reason}.",
        "Looked in: " + ", ".join(str(d) for d in dirs) + ".",
    ]
    get = f"Download {entry.url} and put" if entry.url else "Put"
    lines.append(
        f"{get} it at {hub / entry.filename} (the torch hub cache), or into a folder of "
        f"your choice and set SEMSYNTH_WEIGHTS to that folder "
        f"(now {'SEMSYNTH_WEIGHTS=' + env if env else 'unset'})."
    )
    if entry.alternative:
        lines.append(entry.alternative)
    return "\n".join(lines)


def resolve(name: str, download: bool = True) -> Path:
    """Local path of the weight file `name` (alias from `WEIGHTS` or a file name).

    Raises FileNotFoundError (naming the file and the folders) when it is absent and cannot be
    downloaded, ValueError when a found file fails its sha256 check."""
    p = Path(name).expanduser()
    if p.is_absolute() or (len(p.parts) > 1 and p.exists()):
        if not p.is_file():
            raise MissingFileError(f"weight file {p} does not exist")
        return verify(p)
    entry = _entry(name)
    for d in search_dirs():
        cand = d / entry.filename
        if cand.is_file():
            return verify(cand)
    if not entry.url:
        raise MissingFileError(_missing_message(entry, "it has no public download URL"))
    if not download or offline():
        why = "SEMSYNTH_OFFLINE is set" if offline() else "downloading was not allowed"
        raise MissingFileError(_missing_message(entry, why))
    dst = hub_checkpoints() / entry.filename
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(entry.url, str(dst), hash_prefix=entry.sha256, progress=True)
    except Exception as e:  # no network, HTTP error, hash mismatch (the temp file is removed)
        raise MissingFileError(_missing_message(entry, f"downloading failed ({e})")) from e
    return verify(dst)
