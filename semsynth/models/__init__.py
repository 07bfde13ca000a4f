"""Model registry: `build_model("crn-256p")` returns the named network.

Every preset is a plain dict of constructor arguments, so a checkpoint stores
`{"arch": ..., **config}` and `build_model(that_dict)` rebuilds the same network. Architectures
and presets register themselves in `registry.py` where they are defined (`@register_arch`,
`register_presets`); importing every model module here, at the top, completes the registry.
"""
from __future__ import annotations

from . import sims  # noqa: F401  (its @register_arch / register_presets lines run on import)
from .crn import CRN, CRNConfig
from .registry import ARCHS, PRESETS, build_model, count_parameters, model_config, register_arch, register_presets

__all__ = ["ARCHS", "PRESETS", "build_model", "count_parameters", "model_config", "register_arch",
           "register_presets", "CRN_PRESETS"]

# The CRN's registration lines belong beside its class in crn.py; they sit here until crn.py
# (being optimised elsewhere) takes them. Official totals (released TF checkpoints) in comments.
register_arch("crn", CRNConfig)(CRN)
CRN_PRESETS = register_presets({
    "crn-256p": {"arch": "crn", "levels": 7, "k": 9},          # 97,875,483 parameters
    "crn-512p": {"arch": "crn", "levels": 8, "k": 1},          # 98,622,851
    "crn-1024p": {"arch": "crn", "levels": 9, "k": 1},         # 98,674,531
    "crn-gta-256p": {"arch": "crn", "levels": 7, "k": 9},      # same structure as crn-256p
    "crn-tiny": {"arch": "crn", "levels": 5, "k": 3, "width_mult": 1 / 32},  # 64x128 smoke tests
})
