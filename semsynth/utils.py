"""Small shared helpers: where shared data lives, atomic writes, device choice, seeding."""

from __future__ import annotations

import glob
import os
import random
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .errors import DeviceError, OutputError


def shared_dir() -> Path:
    """Folder with data/weights/reference; `SEMSYNTH_SHARED` overrides `<repo>/../shared`."""
    env = os.environ.get("SEMSYNTH_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared"


TMP_MARK = ".semsynth-tmp"  # in every temporary name, so stale ones can be found and removed


def temp_glob(path: str | os.PathLike) -> str:
    """Glob pattern of `atomic_path`'s temporary files for `path` (in the same folder)."""
    path = Path(path)
    return f".{glob.escape(path.name)}.*{TMP_MARK}{glob.escape(path.suffix)}"


def remove_stale_temps(folder: str | os.PathLike, pattern: str = f".*{TMP_MARK}*") -> int:
    """Delete temporary files a killed process left in `folder` (all of semsynth's by default)."""
    n = 0
    for f in Path(folder).glob(pattern):
        if f.is_file():
            f.unlink(missing_ok=True)
            n += 1
    return n


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path`; rename it over `path` only if the block succeeds.

    A crash mid-write never leaves a truncated file where a good one used to be. A kill -9 can
    leave the temporary file itself; the next write of the same `path` removes it (its name is
    `.<name>.<random>.semsynth-tmp<suffix>`, the real suffix last so writers that go by the
    suffix pick the right format)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise OutputError(f"{path.parent}: cannot create the output folder: a file is in the way ({e.filename})") from e
    except PermissionError as e:
        raise OutputError(f"{path.parent}: cannot create the output folder: permission denied") from e
    remove_stale_temps(path.parent, temp_glob(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f"{TMP_MARK}{path.suffix}")
    except PermissionError as e:
        raise OutputError(f"{path.parent}: output folder is not writable (permission denied)") from e
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes 0600 files; give the result the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Prove, before any work starts, that files can be written in folder `path` (so a read-only
    or misplaced output fails in a second, not after minutes of computing). Creates nothing: when
    `path` does not exist yet, its nearest existing parent must be a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: {what} is a file, not a folder")
    probe_dir = path
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise OutputError(f"{path}: cannot create the {what}: {probe_dir} is a file")
    try:
        fd, probe = tempfile.mkstemp(dir=probe_dir, prefix=".write-test.", suffix=TMP_MARK)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        where = "" if probe_dir == path else f" (its parent {probe_dir} is not writable)"
        raise OutputError(f"{path}: {what} is not writable{where}: {e.strerror or e}") from None
    return path


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The named device (checked to exist here), or the best available one when None."""
    if device is None or device == "":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"unknown device {str(device)!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {str(device)!r}: CUDA is not available here "
                f"(torch {torch.__version__}, {'built without CUDA' if torch.version.cuda is None else 'no GPU found'}); "
                f"use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DeviceError(f"device {str(device)!r}: MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise DeviceError(f"device {str(device)!r} is not supported; use cpu, cuda, cuda:N or mps")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def config_from_dict(cls, d: dict):
    """Rebuild a config dataclass from a stored (JSON/YAML) dict: lists come back as tuples."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
