"""Results tables: lookup order, ranking, failed and missing runs, CSV/HTML/Markdown output."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from ctdl.engine.rundir import write_run_summary
from ctdl.experiments.results import (
    collect_results,
    collect_sweep_folder,
    results_html,
    results_markdown,
    write_results,
)


def make_run(root: Path, name: str, metrics: dict | None = None, params: int | None = 1000, train_s: float = 60.0,
             status: str = "finished", error: str | None = None, history: str | None = None,
             monitor: str = "val_weighted_jaccard") -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"training:\n  monitor: {monitor}\n  monitor_mode: max\n")
    if history is not None:
        (run / "history.csv").write_text(history)
    extra = {"error": error} if error else {}
    write_run_summary(run, "segmentation", f"model_{name}", params, metrics or {}, {"train_s": train_s,
                                                                                   "total_s": train_s + 5}, status,
                      **extra)
    return run


@pytest.fixture
def runs(tmp_path: Path) -> list[tuple[str, Path]]:
    hist = "epoch,val_weighted_jaccard,val_dice_mean\n0,0.5,0.1\n1,0.8,0.2\n2,0.7,0.9\n"
    out = [
        ("a", make_run(tmp_path, "a", {"kidney_dice": 0.80, "tumor_dice": 0.40}, params=2_465_619, train_s=3725,
                       history=hist)),
        ("b", make_run(tmp_path, "b", {"kidney_dice": 0.90, "tumor_dice": float("nan")}, params=500, train_s=10)),
        ("c", make_run(tmp_path, "c", {"tumor_dice": 0.70}, params=7000, train_s=20)),  # no kidney_dice
        ("d", make_run(tmp_path, "d", status="failed", error="RuntimeError: <out of memory> & more\nline 2")),
        ("e", make_run(tmp_path, "e", {"kidney_dice": 0.85}, params=100, train_s=30)),
        ("f", tmp_path / "f"),  # never ran: no folder
    ]
    return out


def test_rank_max_min_and_unranked_rows(runs: list[tuple[str, Path]]) -> None:
    table = collect_results(runs, ["kidney_dice", "tumor_dice"], rank_by="kidney_dice", order="max")
    assert [(r["rank"], r["run"], r["status"]) for r in table.rows] == [
        (1, "b", "finished"), (2, "e", "finished"), (3, "a", "finished"),
        (None, "c", "finished"), (None, "d", "failed"), (None, "f", "not run")]
    assert table.value("a", "kidney_dice") == 0.80 and table.value("a", "params") == 2_465_619
    assert table.value("b", "tumor_dice") is None  # NaN in summary.json is stored as null
    assert table.value("a", "train_s") == 3725
    low = collect_results(runs, ["kidney_dice"], rank_by="kidney_dice", order="min")
    assert [r["run"] for r in low.rows[:3]] == ["a", "e", "b"]
    by_params = collect_results(runs, ["kidney_dice"], rank_by="params", order="min")
    assert [r["run"] for r in by_params.rows[:4]] == ["e", "b", "c", "a"]
    by_time = collect_results(runs, [], rank_by="train_s", order="min")
    assert [r["run"] for r in by_time.rows[:4]] == ["b", "c", "e", "a"]
    with pytest.raises(ValueError, match="order"):
        collect_results(runs, [], rank_by="params", order="best")


def test_validation_history_fallback_uses_the_kept_epoch(runs: list[tuple[str, Path]]) -> None:
    cols = [{"key": "weighted_jaccard", "label": "JC_w"}, {"key": "dice_mean", "label": "mean Dice"}]
    table = collect_results(runs, cols, rank_by="weighted_jaccard")
    # epoch 1 has the best monitored val_weighted_jaccard (0.8): its val_dice_mean is 0.2, not the column max 0.9
    assert table.value("a", "weighted_jaccard") == 0.8 and table.value("a", "dice_mean") == 0.2
    assert table.from_validation == {"weighted_jaccard", "dice_mean"}
    assert table.rows[0]["run"] == "a" and table.rows[0]["rank"] == 1
    assert "JC_w (val)" in results_markdown(table)


def test_ties_keep_run_order(tmp_path: Path) -> None:
    runs = [(n, make_run(tmp_path, n, {"m": 0.5})) for n in ("x", "y", "z")]
    table = collect_results(runs, ["m"], rank_by="m")
    assert [r["run"] for r in table.rows] == ["x", "y", "z"] and [r["rank"] for r in table.rows] == [1, 2, 3]


def test_written_tables(runs: list[tuple[str, Path]], tmp_path: Path) -> None:
    table = collect_results(runs, [{"key": "kidney_dice", "label": "Dice kidney"}, "tumor_dice"], "kidney_dice")
    paths = write_results(table, tmp_path / "sweep", title="T <1>", description="demo & test")
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["results.csv", "results.html", "results.md"]
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["run"] for r in rows] == ["b", "e", "a", "c", "d", "f"]
    assert rows[0]["rank"] == "1" and float(rows[0]["kidney_dice"]) == 0.9 and rows[0]["tumor_dice"] == ""
    assert int(rows[2]["params"]) == 2_465_619 and float(rows[2]["train_s"]) == 3725.0
    assert rows[4]["status"] == "failed" and rows[4]["error"].startswith("RuntimeError: <out of memory>")
    md = paths["md"].read_text().splitlines()
    assert md[0] == ("| rank | run | model | parameters | Dice kidney | tumor_dice | training time | total time"
                     " | status |")
    assert md[4] == "| 3 | a | model_a | 2,465,619 | 0.8000 | 0.4000 | 1:02:05 | 1:02:10 | finished |"
    assert md[7] == "| - | f | - | - | - | - | - | - | not run |"
    assert any(line.startswith("- `d` failed: RuntimeError: <out of memory>") for line in md)
    page = paths["html"].read_text()
    assert "<title>T &lt;1&gt;</title>" in page and "demo &amp; test" in page
    assert "RuntimeError: &lt;out of memory&gt; &amp; more" in page and "<tr class='best'>" in page
    assert page.count("<tr class='failed'>") == 2  # the failed row and its error line
    assert results_html(table).count("<tr") == 1 + 6 + 1
    # run names link to the run's report where there is one
    (runs[1][1] / "report.html").write_text("<html></html>")
    page = results_html(table, link_from=tmp_path / "sweep")
    assert "<a href='../b/report.html'>b</a>" in page and "<a href='../a/" not in page


def test_collect_sweep_folder_reads_sweep_json(runs: list[tuple[str, Path]], tmp_path: Path) -> None:
    sweep = tmp_path / "sw"
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps({
        "rank_by": "tumor_dice", "order": "max", "columns": [{"key": "tumor_dice", "label": "Dice tumour"}],
        "runs": [{"name": n, "run_dir": str(p)} for n, p in runs]}))
    table = collect_sweep_folder(sweep)
    assert [r["run"] for r in table.rows[:3]] == ["c", "a", "b"]
    assert table.rows[0]["tumor_dice"] == 0.7 and math.isclose(table.rows[1]["tumor_dice"], 0.4)
    from ctdl.errors import InputError

    with pytest.raises(InputError, match="sweep.json"):
        collect_sweep_folder(tmp_path / "nothing")
