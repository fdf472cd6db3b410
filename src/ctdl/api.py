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
    trainer = _task_trainer(cfg.task)
    try:
        return trainer(cfg, resume=resume, progress=progress)
    except BaseException as exc:  # the run folder says it failed (sweeps and the web UI read this)
        from ctdl.engine.rundir import write_run_summary

        if cfg.run_dir.is_dir():
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            write_run_summary(cfg.run_dir, cfg.task, cfg.model.name, None, {}, status=status,
                              error=f"{type(exc).__name__}: {exc}")
        raise


def _task_trainer(task: str) -> Any:
    """The ``train(cfg, resume=, progress=)`` function of a task (each task module has one)."""
    if task == "segmentation":
        from ctdl.tasks.segmentation import train as train_seg

        return train_seg
    raise ConfigError(f"task '{task}' has no trainer in this version of ctdl")


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
