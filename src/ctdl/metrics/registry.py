"""Metric registry: plain NumPy functions by name, e.g. ``get_metric("dice")(pred, truth, label=2)``.

Metrics register themselves in :mod:`ctdl.metrics.segmentation`; the helpers here import
that module explicitly (no folder scanning) so the registry is always filled. Each entry's
metadata holds ``higher_is_better`` and ``kind`` (``"label"``: called as
``fn(pred, truth, label=..., **kw)`` on integer label maps).
"""

from __future__ import annotations

from typing import Any, Callable

from ctdl.registry import Registry

METRICS: Registry[Any] = Registry("metric")


def _ensure_registered() -> None:
    """Import the modules that register metrics (idempotent)."""
    import ctdl.metrics.segmentation  # noqa: F401
    import ctdl.metrics.detection  # noqa: F401
    import ctdl.metrics.classification  # noqa: F401
    import ctdl.metrics.image  # noqa: F401


def get_metric(name: str) -> Callable[..., Any]:
    """The metric function registered as ``name``."""
    _ensure_registered()
    return METRICS.get(name)


def list_metrics(pattern: str = "*") -> list[str]:
    """Sorted names of the registered metrics matching a glob ``pattern``."""
    _ensure_registered()
    return METRICS.names(pattern)
