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


# task -> module with train(cfg, resume=, progress=) and predict_paths(model, inputs, output, device=)
_TASK_MODULES = {
    "segmentation": "ctdl.tasks.segmentation",
    "classification": "ctdl.tasks.classification",
    "regression": "ctdl.tasks.classification",
    "gan": "ctdl.tasks.gan",
    "detection": "ctdl.tasks.detection",
}


def _task_trainer(task: str) -> Any:
    """The ``train(cfg, resume=, progress=)`` function of a task (each task module has one)."""
    import importlib

    module = _TASK_MODULES.get(task)
    if module is not None:
        try:
            return importlib.import_module(module).train
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    raise ConfigError(f"task '{task}' has no trainer in this version of ctdl")


def predict(model: str | Path, inputs: str | Path, output: str | Path, device: str = "auto") -> list[Path]:
    """Apply a trained model (its checkpoint says which task) to a file, a DICOM series or a folder."""
    import importlib

    from ctdl.engine.trainer import load_checkpoint

    path = Path(model)
    if path.is_dir():  # a run folder: its best checkpoint, else the last one
        path = next((path / n for n in ("best.pt", "last.pt") if (path / n).exists()), path / "best.pt")
    meta = load_checkpoint(path).get("meta") or {}
    task = (meta.get("config") or {}).get("task", "segmentation")
    module = importlib.import_module(_TASK_MODULES.get(task, "ctdl.tasks.segmentation"))
    return module.predict_paths(path, inputs, output, device=device)


def evaluate(pred: str | Path, truth: str | Path, output: str | Path | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Per-case metrics of predictions against truth (files or folders); writes CSVs to ``output``."""
    from ctdl.tasks.segmentation import evaluate_paths

    return evaluate_paths(pred, truth, output, **kwargs)


def sweep(sweep_file: str | Path, scale: str | None = None, parallel: int = 1, dry_run: bool = False,
          collect_only: bool = False, overrides: Iterable[str] | None = None, progress: bool = True) -> Path:
    """Run a sweep file (one ``ctdl train`` subprocess per run, finished runs skipped) and write its
    ranked results table (results.csv/html/md); returns the sweep's output folder."""
    from ctdl.experiments.sweep import sweep as run

    return run(sweep_file, scale=scale, parallel=parallel, dry_run=dry_run, progress=progress,
               collect_only=collect_only, overrides=list(overrides or []))


def report(run_dir: str | Path) -> Path:
    """(Re)build a run's HTML report."""
    from ctdl.report.html import write_report

    return write_report(run_dir)
