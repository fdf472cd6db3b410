"""One results table from many run folders: ranked, written as CSV, HTML and Markdown.

Each run folder follows the contract of :mod:`ctdl.engine.rundir` (``summary.json`` with
``status``, ``model``, ``params``, ``metrics`` and ``timing``). A column's value is looked up in
this order:

1. ``params`` -> ``summary["params"]``; a timing key (``train_s``, ``total_s``, ...) ->
   ``summary["timing"]``;
2. ``summary["metrics"][key]`` (test-set means for segmentation runs, e.g. ``kidney_dice``);
3. the validation history: ``val_<key>`` (or ``<key>``) in ``history.csv`` at the epoch whose
   monitored value (``training.monitor`` of the run's ``config.yaml``) was best -- the model the run
   kept. The thesis' JC_w, for instance, is logged only during validation. Such cells are marked
   ``(val)`` in the heading of the HTML/Markdown table and listed in ``sources`` of the CSV's column.

Ranking: finished runs with a finite value of ``rank_by`` first, best first (``order`` max or
min), numbered 1, 2, ...; then finished runs without that value; then runs that failed, were
interrupted or have not run (with their error), unranked. Ties keep the sweep's run order.

The tables are written by hand rather than with pandas' ``to_html``/``to_markdown`` because each
column needs its own number format (parameters with thousands separators, times as h:mm:ss,
metrics to 4 decimals) and ``to_markdown`` needs the optional ``tabulate`` package.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ctdl.io.atomic import atomic_write_text

__all__ = ["ResultsTable", "collect_results", "results_markdown", "results_html", "results_csv", "write_results",
           "collect_sweep_folder"]

_TIMING_KEYS = ("train_s", "total_s", "coarse_train_s", "test_predict_eval_s")


@dataclass
class ResultsTable:
    """Rows (one per run, ranked) and the metric columns shown between ``params`` and the timings."""

    rows: list[dict[str, Any]]
    columns: list[dict[str, str]]
    rank_by: Optional[str] = None
    order: str = "max"
    from_validation: set[str] = field(default_factory=set)  # column keys with at least one value from history.csv

    def value(self, name: str, key: str) -> Any:
        """The cell of run ``name`` and column ``key`` (None when absent)."""
        for r in self.rows:
            if r["run"] == name:
                return r.get(key)
        raise KeyError(name)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _best_history_row(run_dir: Path) -> Optional[dict[str, float]]:
    """The history.csv row at the best monitored value (the kept model), numbers parsed."""
    hist = run_dir / "history.csv"
    if not hist.exists():
        return None
    monitor, mode = "val_loss", "min"
    cfg_path = run_dir / "config.yaml"
    if cfg_path.exists():
        import yaml

        try:
            cfg = yaml.safe_load(cfg_path.read_text()) or {}
            training = cfg.get("training") or {}
            monitor, mode = training.get("monitor", monitor), training.get("monitor_mode", mode)
        except yaml.YAMLError:
            pass
    rows: list[dict[str, float]] = []
    with hist.open(newline="") as fh:
        for raw in csv.DictReader(fh):
            row: dict[str, float] = {}
            for k, v in raw.items():
                try:
                    row[k] = float(v)
                except (TypeError, ValueError):
                    continue
            rows.append(row)
    scored = [r for r in rows if _finite(r.get(monitor))]
    if not scored:
        return None
    best = max(scored, key=lambda r: r[monitor]) if mode == "max" else min(scored, key=lambda r: r[monitor])
    return best


def _lookup(summary: Mapping[str, Any], run_dir: Path, key: str, history: dict[str, Any]) -> tuple[Any, bool]:
    """(value, came_from_validation) of ``key`` for one run."""
    if key == "params":
        return summary.get("params"), False
    timing = summary.get("timing") or {}
    if key in timing:
        return timing[key], False
    metrics = summary.get("metrics") or {}
    if key in metrics:
        return metrics[key], False
    if "row" not in history:
        history["row"] = _best_history_row(run_dir)
    row = history["row"]
    if row:
        for k in (key if key.startswith("val_") else f"val_{key}", key):
            if k in row:
                return row[k], True
    return None, False


def collect_results(runs: Sequence[tuple[str, str | Path]], columns: Sequence[Mapping[str, str] | str] = (),
                    rank_by: Optional[str] = None, order: str = "max") -> ResultsTable:
    """Read each ``(name, run folder)`` and rank the runs by ``rank_by`` (see the module docstring)."""
    if order not in ("max", "min"):
        raise ValueError(f"order must be 'max' or 'min', got {order!r}")
    cols = [{"key": c, "label": c} if isinstance(c, str) else {"key": c["key"], "label": c.get("label") or c["key"]}
            for c in columns]
    keys = [c["key"] for c in cols]
    if rank_by and rank_by not in keys and rank_by not in ("params", "train_s", "total_s"):
        cols.append({"key": rank_by, "label": rank_by})
        keys.append(rank_by)
    table = ResultsTable(rows=[], columns=cols, rank_by=rank_by, order=order)
    for name, run_dir in runs:
        run_dir = Path(run_dir)
        summary = _read_json(run_dir / "summary.json")
        row: dict[str, Any] = {"rank": None, "run": name, "folder": str(run_dir)}
        if summary is None:
            row.update(status="running" if (run_dir / "config.yaml").exists() else "not run", model=None, params=None)
        else:
            row.update(status=summary.get("status", "unknown"), model=summary.get("model"))
        history: dict[str, Any] = {}
        for key in ["params", *keys, "train_s", "total_s"]:
            if summary is None:
                row.setdefault(key, None)
                continue
            value, from_val = _lookup(summary, run_dir, key, history)
            row[key] = value if _finite(value) else None
            if from_val and row[key] is not None:
                table.from_validation.add(key)
        row["error"] = (summary or {}).get("error")
        table.rows.append(row)
    _rank(table)
    return table


def _rank(table: ResultsTable) -> None:
    key = table.rank_by
    finished = [r for r in table.rows if r["status"] == "finished"]
    others = [r for r in table.rows if r["status"] != "finished"]
    if key:
        scored = [r for r in finished if r.get(key) is not None]
        unscored = [r for r in finished if r.get(key) is None]
        scored.sort(key=lambda r: r[key], reverse=table.order == "max")  # stable: ties keep the run order
        for i, r in enumerate(scored, start=1):
            r["rank"] = i
        table.rows = scored + unscored + others
    else:
        table.rows = finished + others


# ----------------------------------------------------------------------------- rendering


def _fmt_time(s: Any) -> str:
    if s is None:
        return "-"
    s = int(round(float(s)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _fmt(key: str, v: Any) -> str:
    if v is None:
        return "-"
    if key == "params":
        return f"{int(v):,}"
    if key.endswith("_s"):
        return _fmt_time(v)
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def _header(table: ResultsTable) -> list[tuple[str, str]]:
    """(key, heading) of every displayed column, in order."""
    head = [("rank", "rank"), ("run", "run"), ("model", "model"), ("params", "parameters")]
    for c in table.columns:
        label = c["label"] + (" (val)" if c["key"] in table.from_validation else "")
        head.append((c["key"], label))
    head += [("train_s", "training time"), ("total_s", "total time"), ("status", "status")]
    return head


def results_markdown(table: ResultsTable) -> str:
    """A GitHub-flavoured Markdown table (for docs and closing notes)."""
    head = _header(table)
    lines = ["| " + " | ".join(h for _, h in head) + " |",
             "|" + "|".join("---:" if k in ("rank", "params") or k not in ("run", "model", "status") else "---"
                            for k, _ in head) + "|"]
    for r in table.rows:
        cells = [_fmt(k, r.get(k)).replace("|", "\\|") for k, _ in head]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in table.rows if r.get("error")]
    for r in failed:
        first = str(r["error"]).strip().splitlines()[0] if str(r["error"]).strip() else ""
        lines.append(f"\n- `{r['run']}` {r['status']}: {first}")
    return "\n".join(lines) + "\n"


def results_html(table: ResultsTable, title: str = "Sweep results", description: str | None = None,
                 link_from: str | Path | None = None) -> str:
    """A self-contained HTML page with the ranked table (failed runs show their error).

    With ``link_from`` (the folder the page is written to) each run name links to its run's
    ``report.html`` where one exists.
    """
    head = _header(table)
    esc = html.escape
    out = [
        "<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td.t,th.t{text-align:left}"
        "tr.failed{background:#fee}tr.best{background:#efe}pre{margin:0;font-size:smaller;text-align:left}</style>",
        "</head><body>", f"<h1>{esc(title)}</h1>",
    ]
    if description:
        out.append(f"<p>{esc(description)}</p>")
    if table.rank_by:
        out.append(f"<p>Ranked by <b>{esc(table.rank_by)}</b> ({'higher' if table.order == 'max' else 'lower'} is better)."
                   " Columns marked (val) come from the validation history at the kept epoch.</p>")
    text_cols = ("run", "model", "status")
    out.append("<table><thead><tr>" + "".join(
        f"<th class='{'t' if k in text_cols else ''}'>{esc(h)}</th>" for k, h in head) + "</tr></thead><tbody>")
    for r in table.rows:
        cls = "failed" if r["status"] in ("failed", "interrupted") else "best" if r.get("rank") == 1 else ""
        cells = "".join(f"<td class='{'t' if k in text_cols else ''}'>{_cell(r, k, link_from)}</td>" for k, _ in head)
        out.append(f"<tr class='{cls}'>{cells}</tr>")
        if r.get("error"):
            out.append(f"<tr class='failed'><td colspan='{len(head)}'><pre>{esc(str(r['error']))}</pre></td></tr>")
    out.append("</tbody></table></body></html>")
    return "\n".join(out) + "\n"


def _cell(row: Mapping[str, Any], key: str, link_from: str | Path | None) -> str:
    text = html.escape(_fmt(key, row.get(key)))
    if key == "run" and link_from is not None and row.get("folder"):
        report = Path(row["folder"]) / "report.html"
        if report.exists():
            href = Path(os.path.relpath(report, Path(link_from))).as_posix()
            return f"<a href='{html.escape(href)}'>{text}</a>"
    return text


def results_csv(table: ResultsTable) -> str:
    """CSV text: raw numbers (seconds, counts), one row per run in rank order, then status and error."""
    keys = ["rank", "run", "model", "params", *[c["key"] for c in table.columns], "train_s", "total_s", "status",
            "error", "folder"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(keys)
    for r in table.rows:
        writer.writerow(["" if r.get(k) is None else r.get(k) for k in keys])
    return buf.getvalue()


def write_results(table: ResultsTable, folder: str | Path, title: str = "Sweep results",
                  description: str | None = None) -> dict[str, Path]:
    """Write ``results.csv``, ``results.html`` and ``results.md`` into ``folder``, each atomically."""
    folder = Path(folder)
    paths = {"csv": folder / "results.csv", "html": folder / "results.html", "md": folder / "results.md"}
    atomic_write_text(paths["csv"], results_csv(table))
    atomic_write_text(paths["html"], results_html(table, title, description, link_from=folder))
    atomic_write_text(paths["md"], results_markdown(table))
    return paths


def collect_sweep_folder(folder: str | Path) -> ResultsTable:
    """Rebuild the table of a sweep from its ``sweep.json`` (no sweep file needed)."""
    folder = Path(folder)
    data = _read_json(folder / "sweep.json")
    if data is None:
        from ctdl.errors import InputError

        raise InputError(f"{folder}: no readable sweep.json (not a sweep output folder?)")
    runs = [(r["name"], r["run_dir"]) for r in data.get("runs", [])]
    return collect_results(runs, data.get("columns") or [], data.get("rank_by"), data.get("order") or "max")
