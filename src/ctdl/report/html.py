"""`ctdl report RUN`: one self-contained HTML page per run (curves, metric tables, overlays).

PNG figures are written to ``RUN/report/`` and embedded in ``RUN/report.html`` as base64, so the
page can be mailed or opened anywhere.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from ctdl.errors import InputError
from ctdl.io.atomic import atomic_path, atomic_write_text

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:4px 0}.small{color:#666;font-size:.85em}
"""


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _num(v: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _save_fig(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_curves(history: list[dict[str, str]], out: Path) -> Path | None:
    """Loss (left) and validation metrics (right) per epoch."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [_num(r.get("epoch", "nan")) for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for key in history[0]:
        if key.endswith("loss"):
            axes[0].plot(epochs, [_num(r[key]) for r in history], marker="o", ms=3, label=key)
        elif key.startswith("val_") and ("dice" in key or "jacc" in key):
            pts = [(e, _num(r[key])) for e, r in zip(epochs, history) if np.isfinite(_num(r[key]))]
            if pts:  # validation runs every N epochs: connect the epochs that have a value
                axes[1].plot(*zip(*pts), marker="o", ms=3, label=key)
    axes[0].set_title("loss")
    axes[1].set_title("validation")
    axes[1].set_ylim(0, 1)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _save_fig(fig, out)


_COLOURS = {1: (0.1, 0.8, 0.1), 2: (0.95, 0.1, 0.1), 3: (0.1, 0.4, 1.0), 4: (1.0, 0.8, 0.0)}


def _overlay(ax: Any, ct: np.ndarray, lab: np.ndarray | None, title: str, window: tuple[float, float]) -> None:
    lo, hi = window
    ax.imshow(np.clip((ct - lo) / (hi - lo), 0, 1), cmap="gray", interpolation="nearest")
    if lab is not None:
        rgba = np.zeros(lab.shape + (4,))
        for v, c in _COLOURS.items():
            m = lab == v
            rgba[m, :3] = c
            rgba[m, 3] = 0.45
        ax.imshow(rgba, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def plot_case_overlay(image_path: Path, truth_path: Path, pred_path: Path, out: Path, case_id: str,
                      window: tuple[float, float] = (-200, 500), n_slices: int = 3) -> Path:
    """Axial slices through the largest truth tumour/kidney areas: CT | truth | prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ctdl.io import read_volume

    ct = read_volume(image_path).array.astype(np.float32)
    truth = read_volume(truth_path).array
    pred = read_volume(pred_path).array
    area_t = (truth == 2).reshape(truth.shape[0], -1).sum(1)
    area_k = (truth > 0).reshape(truth.shape[0], -1).sum(1)
    order = list(np.argsort(-(area_t * 1000 + area_k)))
    picks: list[int] = []
    for s in order:  # spread the chosen slices apart
        if all(abs(int(s) - p) > 2 for p in picks):
            picks.append(int(s))
        if len(picks) == n_slices:
            break
    picks.sort()
    fig, axes = plt.subplots(len(picks), 3, figsize=(9, 3 * len(picks)), squeeze=False)
    for row, s in enumerate(picks):
        _overlay(axes[row, 0], ct[s], None, f"{case_id} slice {s}", window)
        _overlay(axes[row, 1], ct[s], truth[s], "truth", window)
        _overlay(axes[row, 2], ct[s], pred[s], "prediction", window)
    return _save_fig(fig, out)


def _img_tag(path: Path | None) -> str:
    if path is None or not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def _table(rows: list[dict[str, Any]], columns: list[str] | None = None, digits: int = 4) -> str:
    if not rows:
        return "<p class=small>(none)</p>"
    cols = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            f = _num(v)  # NaN for text such as case ids
            txt = f"{f:.{digits}g}" if np.isfinite(f) else str(v)
            cells.append(f"<td>{html.escape(txt)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def write_report(run_dir: str | Path, n_cases: int | None = None) -> Path:
    """Build ``run_dir/report.html`` from the run folder's files."""
    run = Path(run_dir)
    if not run.is_dir():
        raise InputError(f"{run}: run folder not found")
    if (run / "summary.json").exists() and json.loads((run / "summary.json").read_text()).get("task") in (
            "classification", "regression"):
        from ctdl.report.classification import write_classification_report

        return write_classification_report(run)
    fig_dir = run / "report"
    fig_dir.mkdir(exist_ok=True)
    history = _read_csv(run / "history.csv")
    summary = _read_csv(run / "metrics_summary.csv")
    per_case = _read_csv(run / "metrics.csv")
    timing = json.loads((run / "timing.json").read_text()) if (run / "timing.json").exists() else {}
    cfg_text = (run / "config.yaml").read_text() if (run / "config.yaml").exists() else ""
    test_cases = json.loads((run / "test_cases.json").read_text()) if (run / "test_cases.json").exists() else {}
    if n_cases is None:
        try:
            import yaml

            n_cases = int(yaml.safe_load(cfg_text)["evaluation"]["report_cases"])
        except Exception:
            n_cases = 4

    curves = plot_curves(history, fig_dir / "curves.png")
    overlays = []
    for cid, paths in list(test_cases.items())[:n_cases]:
        pred = run / "predictions" / f"{cid}.nii.gz"
        if pred.exists() and paths.get("image") and paths.get("label"):
            overlays.append(plot_case_overlay(Path(paths["image"]), Path(paths["label"]), pred,
                                              fig_dir / f"overlay_{cid}.png", cid))

    # per-class table: the mean row of the summary, one row per class
    class_rows = []
    if summary:
        stats = {r["metric"]: r for r in summary} if "metric" in summary[0] else {}
        classes = sorted({k.split("_")[0] for k in stats if "_dice" in k})
        for c in classes:
            row: dict[str, Any] = {"class": c}
            for m in ("dice", "jaccard", "assd_mm", "hd95_mm", "assd_vox", "sensitivity", "precision"):
                key = f"{c}_{m}"
                if key in stats:
                    row[f"{m} mean"] = stats[key].get("mean", "")
                    if m == "dice":
                        row["dice std"] = stats[key].get("std", "")
                        row["dice min"] = stats[key].get("min", "")
            class_rows.append(row)
    show_cols = ["case_id"] + [c for c in (per_case[0] if per_case else {}) if c.endswith(("_dice", "_hd95_mm", "_assd_mm"))]
    parts = [
        "<!doctype html><html><head><meta charset=utf-8>",
        f"<title>ctdl report: {html.escape(run.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>ctdl run <code>{html.escape(run.name)}</code></h1>",
        f"<p class=small>folder: {html.escape(str(run.resolve()))}; "
        + ", ".join(f"{k}: {v}" for k, v in timing.items()) + "</p>",
        "<h2>Training curves</h2>", _img_tag(curves) or "<p class=small>(no history.csv)</p>",
        "<h2>Per-class metrics on the test cases (mean over cases)</h2>", _table(class_rows),
        "<h2>Per-case metrics</h2>", _table(per_case, show_cols),
        "<h2>Overlays (CT | truth | prediction; green kidney, red tumour)</h2>",
        "".join(_img_tag(p) for p in overlays) or "<p class=small>(no predictions)</p>",
        "<h2>Summary statistics</h2>", _table(summary),
        f"<h2>Config</h2><pre>{html.escape(cfg_text)}</pre>",
        "</body></html>",
    ]
    out = run / "report.html"
    atomic_write_text(out, "\n".join(parts))
    return out
