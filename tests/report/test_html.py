"""Tests for ctdl.report.html: a report is built from a run folder's files."""

from __future__ import annotations

from pathlib import Path

from ctdl.report.html import write_report


def test_report_from_history_and_metrics(tmp_path: Path) -> None:
    (tmp_path / "history.csv").write_text(
        "epoch,lr,train_loss,val_dice_kidney,val_dice_tumor\n0,0.1,1.0,,\n1,0.1,0.8,0.5,0.1\n2,0.1,0.6,,\n3,0.1,0.5,0.7,0.3\n"
    )
    (tmp_path / "metrics_summary.csv").write_text(
        "metric,mean,std,min,max,n,n_nan\nkidney_dice,0.9,0.01,0.89,0.91,2,0\ntumor_dice,0.5,0.1,0.4,0.6,2,0\n"
    )
    (tmp_path / "metrics.csv").write_text("case_id,kidney_dice,tumor_dice\ncase_a,0.89,0.4\ncase_b,0.91,0.6\n")
    out = write_report(tmp_path)
    html = out.read_text()
    assert (tmp_path / "report" / "curves.png").stat().st_size > 1000
    assert "data:image/png;base64" in html
    assert "case_a" in html and "0.91" in html
    assert "<td>kidney</td>" in html and "<td>tumor</td>" in html
