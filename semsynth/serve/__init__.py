"""`semsynth serve`: paint a layout in the browser and see photographs, offline.

`app.py` is the FastAPI application (the JSON API, its limits and refusals, the per-model worker
queues); `static/` is the page, plain JavaScript served from this folder only. Importing this
package does not import FastAPI; `create_app`, `load_models` and `run` do.
"""

from __future__ import annotations

__all__ = ["create_app", "load_models", "run", "Limits"]


def __getattr__(name):
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(name)
