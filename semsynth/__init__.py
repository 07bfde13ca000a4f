"""semsynth: photographs from semantic layouts (CRN and SIMS, faithful and practical).

    import semsynth
    pipe = semsynth.load_pipeline("default")               # or CRNPipeline / SIMSPipeline.from_pretrained
    images = pipe(["layout.png"])                           # per layout: (k, H, W, 3) uint8
    semsynth.train(semsynth.load_config("crn-tiny"), "runs/tiny")
    report = semsynth.evaluate("out/", "labels/")

The names below are imported on first use (module `__getattr__`), so `import semsynth` stays
light and `import semsynth.pipelines` loads no training code.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"  # the one place (pyproject.toml reads it: dynamic version)

# public name -> module that defines it
_EXPORTS = {
    "Pipeline": "pipeline_base",
    "PipelineOutput": "pipeline_base",
    "CRNPipeline": "pipelines",
    "load_pipeline": "pipelines",
    "SIMSPipeline": "sims.pipeline",
    "load_config": "config",
    "open_dataset": "data",
    "build_model": "models",
    "count_parameters": "models",
    "LabelSpace": "labels",
    "LabelError": "labels",
    "get_space": "labels",
    "SemsynthError": "errors",
}
__all__ = sorted([*_EXPORTS, "train", "evaluate"]) + ["__version__"]


# `semsynth.train` and `semsynth.evaluate` are functions *and* submodules of the same name.
# Python binds a submodule to its package attribute when it is first imported, so the
# function would lose to the module depending on import order; instead both modules are made
# callable (forwarding to their function), and the attribute is the same object either way.
_CALLABLE_MODULES = ("train", "evaluate")


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return getattr(self, self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        if name in _CALLABLE_MODULES and isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}":
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name in _CALLABLE_MODULES:
        return importlib.import_module(f".{name}", __name__)  # bound here by _Package.__setattr__
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'semsynth' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | set(_CALLABLE_MODULES))
