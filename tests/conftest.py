"""Shared fixtures: the real data in ../shared (skip when absent) and tiny file writers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

# Tiny tensors: thread start-up costs more than it saves, and CI has two cores to share.
torch.set_num_threads(1)
from PIL import Image

from semsynth.utils import shared_dir


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared folder (data/, weights/, reference/); skips the test when it is absent."""
    d = shared_dir()
    if not (d / "data").is_dir():
        pytest.skip(f"shared data not found at {d} (set SEMSYNTH_SHARED to its location)")
    return d


@pytest.fixture(scope="session")
def data(shared) -> Path:
    return shared / "data"


def write_png(path: Path, arr, mode: str | None = None) -> Path:
    """Write a small array as PNG (creating folders); `mode` e.g. "I;16" for 16-bit ids."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(arr)
    im = Image.fromarray(arr.astype(np.uint16) if mode == "I;16" else arr)
    im.save(path)
    return path


@pytest.fixture
def png():
    """`png(path, array, mode=None)`: write_png as a fixture, so tests need no conftest import."""
    return write_png


@pytest.fixture
def tiny_data(shared, tmp_path):
    """4 real Cityscapes-sequence pairs copied into a paired folder (images/ + labels/)."""
    src = shared / "data" / "cityscapes_sequences"
    stems = sorted(p.stem for p in (src / "labels").glob("*.png"))[:4]
    for sub, ext in (("images", ".jpg"), ("labels", ".png")):
        (tmp_path / "data" / sub).mkdir(parents=True)
        for s in stems:
            (tmp_path / "data" / sub / f"{s}{ext}").write_bytes((src / sub / f"{s}{ext}").read_bytes())
    return tmp_path / "data"


def tiny_cfg(data, **over):
    """crn-tiny at 32x64 with the pixel loss: a training config that runs in a second."""
    from semsynth.config import load_config

    return load_config("crn-tiny", {"data.path": str(data), "data.size": [32, 64], "loss.preset": "pixel",
                                    "log_every": 1, "sample_every": 1000, "save_every": 1000, **over})
