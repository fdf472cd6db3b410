"""The run-folder contract every task follows, read by sweeps, reports and the web UI.

A finished run folder holds ``config.yaml`` (the resolved config), ``history.csv`` (one row per epoch),
``timing.json`` and ``summary.json``::

    {"task": "segmentation", "model": "unet3d_small", "params": 1234, "status": "finished",
     "metrics": {"kidney_dice": 0.91, ...},   # flat name -> number (means over test cases)
     "timing": {"train_s": 400.3, "total_s": 449.6}}

A run that failed writes ``summary.json`` with ``"status": "failed"`` and ``"error"``; a running one has none.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from ctdl.io.atomic import atomic_write_text

SUMMARY = "summary.json"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy / torch scalars
        return _clean(value.item())
    return value


def write_run_summary(run_dir: str | Path, task: str, model: str, params: int | None,
                      metrics: Mapping[str, Any], timing: Mapping[str, Any] | None = None,
                      status: str = "finished", **extra: Any) -> Path:
    """Write ``summary.json`` atomically (non-finite numbers become null)."""
    path = Path(run_dir) / SUMMARY
    data = {"task": task, "model": model, "params": params, "status": status,
            "metrics": {k: _clean(v) for k, v in metrics.items()},
            "timing": {k: _clean(v) for k, v in (timing or {}).items()}, **extra}
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def read_run_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's summary, or None while it has none (running, or killed before the end)."""
    path = Path(run_dir) / SUMMARY
    if not path.exists():
        return None
    return json.loads(path.read_text())
