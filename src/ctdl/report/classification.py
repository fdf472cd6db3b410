"""HTML report of a classification run: training curves, confusion matrix (PNG), a per-class F1 table shaped like
ViPTT-Net's Table 1 (method, kappa, F1 per class), the remaining metrics and the per-sample predictions."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from ctdl.errors import InputError
from ctdl.io.atomic import atomic_write_text
from ctdl.report.html import _CSS, _img_tag, _read_csv, _save_fig, _table, plot_curves


def plot_confusion(cm: np.ndarray, classes: list[str], out: Path, title: str = "confusion matrix") -> Path:
    """Counts with row-normalized colour (truth rows, predicted columns) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(classes)
    rows = cm.sum(1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.1 * k + 2.5, 1.0 * k + 2))
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), classes, rotation=35, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return _save_fig(fig, out)


def table1_row(name: str, metrics: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    """One row of the paper's Table 1: method, kappa, then F1 per class (plus accuracy, Table 2)."""
    row: dict[str, Any] = {"method": name, "kappa": metrics.get("kappa")}
    for c in classes:
        row[c] = metrics.get(f"f1_{c}")
    row["accuracy"] = metrics.get("accuracy")
    return row


def write_classification_report(run_dir: str | Path) -> Path:
    """Build ``run_dir/report.html`` from summary.json, confusion_matrix.csv, predictions.csv and history.csv."""
    run = Path(run_dir)
    if not (run / "summary.json").exists():
        raise InputError(f"{run}: no summary.json (not a finished run folder)")
    summary = json.loads((run / "summary.json").read_text())
    metrics = summary.get("metrics") or {}
    classes = list(summary.get("classes") or [])
    fig_dir = run / "report"
    fig_dir.mkdir(exist_ok=True)
    curves = plot_curves(_read_csv(run / "history.csv"), fig_dir / "curves.png")
    cm_png = None
    if (run / "confusion_matrix.csv").exists():
        with (run / "confusion_matrix.csv").open() as fh:
            rows = list(csv.reader(fh))
        cm = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
        classes = classes or rows[0][1:]
        cm_png = plot_confusion(cm, classes, fig_dir / "confusion_matrix.png",
                                f"{run.name}: {summary.get('eval_split', '')} (n={summary.get('n_eval', '')})")
    per_class = [{"class": c, **{m: metrics.get(f"{m}_{c}") for m in ("precision", "recall", "f1", "auc", "support")}}
                 for c in classes]
    overall = [{k: metrics.get(k) for k in ("kappa", "accuracy", "macro_auc", "macro_f1", "mse", "mae") if k in metrics}]
    preds = _read_csv(run / "predictions.csv")
    timing = summary.get("timing") or {}
    cfg_text = (run / "config.yaml").read_text() if (run / "config.yaml").exists() else ""
    parts = [
        "<!doctype html><html><head><meta charset=utf-8>",
        f"<title>ctdl report: {html.escape(run.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>ctdl classification run <code>{html.escape(run.name)}</code></h1>",
        f"<p class=small>model {html.escape(str(summary.get('model')))}, {summary.get('params')} parameters; "
        f"scored on the {html.escape(str(summary.get('eval_split')))} split (n={summary.get('n_eval')}); "
        f"best epoch {summary.get('best_epoch')}; fine-tuned from {html.escape(str(summary.get('finetuned_from')))}; "
        + ", ".join(f"{k}: {v}" for k, v in timing.items()) + "</p>",
        "<h2>Kappa and per-class F1 (the shape of ViPTT-Net's Table 1)</h2>",
        _table([table1_row(run.name, metrics, classes)], digits=2) if classes else "",
        "<h2>Confusion matrix</h2>", _img_tag(cm_png) or "<p class=small>(regression run)</p>",
        "<h2>Overall</h2>", _table(overall),
        "<h2>Per class</h2>", _table(per_class) if classes else "",
        "<h2>Training curves</h2>", _img_tag(curves) or "<p class=small>(no history.csv)</p>",
        "<h2>Predictions</h2>", _table(preds[:200]),
        f"<h2>Config</h2><pre>{html.escape(cfg_text)}</pre>",
        "</body></html>",
    ]
    out = run / "report.html"
    atomic_write_text(out, "\n".join(parts))
    return out
