"""The model registry: architectures and presets, registered where they are defined.

    @register_arch("sims-order", OrderConfig)       # on the network class
    class SIMSOrder(nn.Module): ...

    register_presets({"sims-order": {"arch": "sims-order"}})   # beside the architecture

`models/__init__.py` imports every model module at its top, so the registry is complete
whenever `build_model` can be called. (As in timm's `register_model`.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from ..errors import UnknownNameError
from ..utils import config_from_dict

# arch name -> builder(config dict without "arch") -> nn.Module
ARCHS: dict[str, Callable[[dict], nn.Module]] = {}
# preset name -> {"arch": ..., **constructor arguments}
PRESETS: dict[str, dict] = {}


def register_arch(name: str, config_cls=None):
    """Class decorator: `build_model({"arch": name, ...})` builds `cls(config_cls(**rest))`
    (the config dataclass checks the keys), or `cls(rest)` without a config class."""

    def deco(cls):
        if name in ARCHS:
            raise ValueError(f"architecture {name!r} is registered twice")
        ARCHS[name] = (lambda cfg: cls(config_from_dict(config_cls, cfg))) if config_cls else cls
        return cls

    return deco


def register_presets(presets: dict[str, dict]) -> dict[str, dict]:
    """Add named configs (each with its "arch"); returns them, so a module can keep its table."""
    for name, cfg in presets.items():
        if name in PRESETS:
            raise ValueError(f"model preset {name!r} is registered twice")
        if "arch" not in cfg:
            raise ValueError(f"model preset {name!r} names no arch")
        PRESETS[name] = cfg
    return presets


def model_config(name_or_config: str | dict, **overrides) -> dict:
    """Resolve a preset name or config dict (plus overrides) to a full {"arch", ...} dict."""
    if isinstance(name_or_config, str):
        if name_or_config not in PRESETS:
            raise UnknownNameError(f"unknown model {name_or_config!r}; presets: {sorted(PRESETS)}")
        cfg = dict(PRESETS[name_or_config])
    else:
        cfg = dict(name_or_config)
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


def build_model(name_or_config: str | dict, **overrides) -> nn.Module:
    """Build a network from a preset name (`crn-256p`, ...) or a stored config dict."""
    cfg = model_config(name_or_config, **overrides)
    arch = cfg.pop("arch")
    if arch not in ARCHS:
        raise UnknownNameError(f"unknown architecture {arch!r}; known: {sorted(ARCHS)}")
    return ARCHS[arch](cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
