"""Model registry: `build_model("crn-256p")` returns the named network.

Every preset is a plain dict of constructor arguments, so a checkpoint stores
`{"arch": ..., **config}` and `build_model(that_dict)` rebuilds the same network.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..utils import config_from_dict
from .crn import CRN, CRNConfig
from ..errors import UnknownNameError

# name -> (architecture, config). Official totals (released TF checkpoints) in comments.
PRESETS: dict[str, dict] = {
    "crn-256p": {"arch": "crn", "levels": 7, "k": 9},          # 97,875,483 parameters
    "crn-512p": {"arch": "crn", "levels": 8, "k": 1},          # 98,622,851
    "crn-1024p": {"arch": "crn", "levels": 9, "k": 1},         # 98,674,531
    "crn-gta-256p": {"arch": "crn", "levels": 7, "k": 9},      # same structure as crn-256p
    "crn-tiny": {"arch": "crn", "levels": 5, "k": 3, "width_mult": 1 / 32},  # 64x128 smoke tests
}

ARCHS: dict[str, Callable[[dict], nn.Module]] = {
    "crn": lambda cfg: CRN(config_from_dict(CRNConfig, cfg)),
}


def register_arch(name: str, builder: Callable[[dict], nn.Module]) -> None:
    ARCHS[name] = builder


def model_config(name_or_config: "str | dict", **overrides) -> dict:
    """Resolve a preset name or config dict (plus overrides) to a full {"arch", ...} dict."""
    if isinstance(name_or_config, str):
        if name_or_config not in PRESETS:
            raise UnknownNameError(f"unknown model {name_or_config!r}; presets: {sorted(PRESETS)}")
        cfg = dict(PRESETS[name_or_config])
    else:
        cfg = dict(name_or_config)
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


def build_model(name_or_config: "str | dict", **overrides) -> nn.Module:
    """Build a network from a preset name (`crn-256p`, ...) or a stored config dict."""
    cfg = model_config(name_or_config, **overrides)
    arch = cfg.pop("arch")
    if arch not in ARCHS:
        raise UnknownNameError(f"unknown architecture {arch!r}; known: {sorted(ARCHS)}")
    return ARCHS[arch](cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


from . import sims as _sims  # noqa: E402,F401  (registers the SIMS archs and presets)
