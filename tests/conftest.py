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
