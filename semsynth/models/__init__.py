"""Model registry: `build_model("crn-256p")` returns the named network.

Every preset is a plain dict of constructor arguments, so a checkpoint stores
`{"arch": ..., **config}` and `build_model(that_dict)` rebuilds the same network. Architectures
and presets register themselves in `registry.py` where they are defined (`@register_arch`,
`register_presets`); importing every model module here, at the top, completes the registry.
"""

from __future__ import annotations

from . import crn, sims  # noqa: F401  (their @register_arch / register_presets lines run on import)
from .crn import CRN_PRESETS
from .registry import ARCHS, PRESETS, build_model, count_parameters, model_config, register_arch, register_presets

__all__ = [
    "ARCHS",
    "PRESETS",
    "build_model",
    "count_parameters",
    "model_config",
    "register_arch",
    "register_presets",
    "CRN_PRESETS",
]
