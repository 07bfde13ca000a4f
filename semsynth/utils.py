"""Small shared helpers: where shared data lives, atomic writes, device choice, seeding."""
from __future__ import annotations

import os
import random
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch


def shared_dir() -> Path:
    """Folder with data/weights/reference; `SEMSYNTH_SHARED` overrides `<repo>/../shared`."""
    env = os.environ.get("SEMSYNTH_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared"


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path`; rename it over `path` only if the block succeeds.

    A crash mid-write never leaves a truncated file where a good one used to be."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
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


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def config_from_dict(cls, d: dict):
    """Rebuild a config dataclass from a stored (JSON/YAML) dict: lists come back as tuples."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
