"""The local web UI of `ctdl serve` (FastAPI): :func:`create_app` builds it.

Modules, one concept each: :mod:`~ctdl.web.app` (routes, token guard, SSE), :mod:`~ctdl.web.runs` (run queue and
run-folder reader), :mod:`~ctdl.web.configs` (schema, registry choices, validation with field paths),
:mod:`~ctdl.web.datacheck` (dataset check), :mod:`~ctdl.web.volumes` (previews, label volumes, error maps,
uploads), :mod:`~ctdl.web.paths` (confinement to the runs and data folders). The page is ``static/``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:  # lazy: `import ctdl.web` stays cheap
    if name == "create_app":
        from ctdl.web.app import create_app

        return create_app
    raise AttributeError(name)
