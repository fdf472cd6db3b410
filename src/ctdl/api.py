"""The public API: train / predict / evaluate / report as plain functions (the CLI and web call these)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from ctdl.config.load import load_config
from ctdl.config.schema import ExperimentConfig
from ctdl.errors import ConfigError


def train(config: ExperimentConfig | str | Path, overrides: Iterable[str] | None = None, resume: bool = False,
          progress: bool = True) -> Path:
    """Train the experiment a config describes; returns the run folder."""
    cfg = config if isinstance(config, ExperimentConfig) else load_config(config, overrides)
    if cfg.task == "segmentation":
        from ctdl.tasks.segmentation import train as train_seg

        return train_seg(cfg, resume=resume, progress=progress)
    raise ConfigError(f"task '{cfg.task}' has no trainer in this version of ctdl")


def predict(model: str | Path, inputs: str | Path, output: str | Path, device: str = "auto") -> list[Path]:
    """Predict label maps for a file, a DICOM series, a KiTS19 folder or a folder of volumes."""
    from ctdl.tasks.segmentation import predict_paths

    return predict_paths(model, inputs, output, device=device)


def evaluate(pred: str | Path, truth: str | Path, output: str | Path | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Per-case metrics of predictions against truth (files or folders); writes CSVs to ``output``."""
    from ctdl.tasks.segmentation import evaluate_paths

    return evaluate_paths(pred, truth, output, **kwargs)


def report(run_dir: str | Path) -> Path:
    """(Re)build a run's HTML report."""
    from ctdl.report.html import write_report

    return write_report(run_dir)
