"""Shared fixtures: the real data in ../shared (skip when absent), a synthetic paired dataset
(tests/synthetic.py) for everything that needs a dataset but not real photos, and tiny file writers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semsynth.utils import shared_dir

# Tiny tensors: thread start-up costs more than it saves, and CI has two cores to share.
torch.set_num_threads(1)


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


@pytest.fixture(scope="session")
def synthetic_paired(tmp_path_factory) -> Path:
    """4 synthetic street pairs at 128x256 in a paired folder (images/*.jpg + labels/*.png
    labelIds), built once per session: training needs a dataset, not real photos."""
    from synthetic import write_paired

    return write_paired(tmp_path_factory.mktemp("synthetic_paired") / "data", n=4)


@pytest.fixture(scope="session")
def synthetic_cityscapes(tmp_path_factory) -> Path:
    """The shape of the Cityscapes sample in ../shared, synthetic: 8 train pairs
    (leftImg8bit/ + gtFine/ labelIds, 512x1024) and 15 val label maps (256x512) without photos."""
    from synthetic import write_cityscapes

    return write_cityscapes(tmp_path_factory.mktemp("synthetic_cityscapes") / "cityscapes")


@pytest.fixture(scope="session")
def cityscapes_sample(request) -> Path:
    """The Cityscapes sample: the real one in ../shared/data/cityscapes when present, otherwise
    its synthetic stand-in (same folder layout and counts), so the test runs everywhere."""
    real = shared_dir() / "data" / "cityscapes"
    if (real / "leftImg8bit").is_dir():
        return real
    return request.getfixturevalue("synthetic_cityscapes")


@pytest.fixture
def tiny_data(synthetic_paired, tmp_path):
    """The 4 synthetic pairs copied into this test's own folder (images/ + labels/)."""
    return Path(shutil.copytree(synthetic_paired, tmp_path / "data"))


def tiny_cfg(data, **over):
    """crn-tiny at 32x64 with the pixel loss: a training config that runs in a second."""
    from semsynth.config import load_config

    return load_config(
        "crn-tiny",
        {
            "data.path": str(data),
            "data.size": [32, 64],
            "loss.preset": "pixel",
            "log_every": 1,
            "sample_every": 1000,
            "save_every": 1000,
            **over,
        },
    )
