"""Sweeps: expansion of runs and grids, validation, skip-finished, failures, parallel runs, the CLI.

Most tests train with a fake trainer (tests/experiments/fake_train.py, one subprocess per run as
the real one); one slow test runs real ``ctdl train`` subprocesses on tiny phantoms.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml

from ctdl.cli import main
from ctdl.errors import ConfigError
from ctdl.experiments import sweep as sw
from ctdl.experiments.sweep import load_sweep, run_sweep, sanitize_name, train_command

REPO = Path(__file__).resolve().parents[2]
FAKE = Path(__file__).with_name("fake_train.py")

BASE = {
    "name": "base",
    "data": {"format": "synthetic_kits", "synth_source": "nowhere/kits19", "cases": 4},
    "optimizer": {"lr": 0.01},
    "training": {"epochs": 1},
    "scales": {"demo": {"training.epochs": 2, "training.batch_size": 1}},
}


def fake_command(run: sw.RunSpec, spec: sw.SweepSpec) -> list[str]:
    return [sys.executable, str(FAKE), str(run.run_dir), json.dumps(run.overrides)]


def write(tmp: Path, name: str, data: dict) -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def sweep_file(tmp: Path, **over) -> Path:
    write(tmp, "base.yaml", BASE)
    data = {"base": "base.yaml", "output": str(tmp / "out"), **over}
    return write(tmp, "sweep.yaml", data)


# ----------------------------------------------------------------------------- expansion


def test_grid_names_values_and_product(tmp_path: Path) -> None:
    path = sweep_file(tmp_path, grid={"optimizer.lr": ["1e-3", 1e-4], "loss.name": ["dice", "tversky"]})
    spec = load_sweep(path)
    names = [r.name for r in spec.runs]
    assert names == ["lr=0.001__loss=dice", "lr=0.001__loss=tversky", "lr=0.0001__loss=dice", "lr=0.0001__loss=tversky"]
    # YAML reads 1e-3 as a string: the sweep makes it the number it means
    assert spec.runs[0].overrides == {"optimizer.lr": 0.001, "loss.name": "dice"}
    assert all(r.run_dir == (tmp_path / "out" / r.name).resolve() for r in spec.runs)
    # each run's command is ctdl train with --set for the overrides, name and output_dir
    cmd = train_command(spec.runs[0], spec)
    assert cmd[:4] == [sys.executable, "-m", "ctdl", "train"] and cmd[4] == str((tmp_path / "base.yaml").resolve())
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    assert sets == ["optimizer.lr=0.001", "loss.name=dice", "name=lr=0.001__loss=dice", f"output_dir={spec.output}"]
    assert "--scale" not in cmd


def test_runs_times_grid_named_sets_and_per_run_base(tmp_path: Path) -> None:
    write(tmp_path, "other.yaml", {**BASE, "name": "other", "seed": 7})
    path = sweep_file(
        tmp_path,
        scale="demo",
        runs=[{"name": "a", "set": {"model.name": "unet2d"}}, {"name": "b", "base": "other.yaml", "set": {}}],
        grid={"loss": [{"name": "ce", "set": {"loss.name": "cross_entropy"}},
                       {"name": "tv0.3", "set": {"loss.name": "tversky", "loss.params": {"alpha": 0.3, "beta": 0.7}}}]},
    )
    spec = load_sweep(path)
    assert [r.name for r in spec.runs] == ["a__loss=ce", "a__loss=tv0.3", "b__loss=ce", "b__loss=tv0.3"]
    assert spec.runs[1].overrides == {"model.name": "unet2d", "loss.name": "tversky",
                                      "loss.params": {"alpha": 0.3, "beta": 0.7}}
    assert spec.runs[2].base == (tmp_path / "other.yaml").resolve() and spec.runs[0].model == "unet2d"
    assert spec.scale == "demo" and train_command(spec.runs[0], spec)[-3:] == ["--scale", "demo", "--quiet"]
    # the CLI's --scale wins over the file's
    assert load_sweep(path, scale="full").scale == "full"


def test_sanitize_name() -> None:
    assert sanitize_name("lr=0.001__loss=dice") == "lr=0.001__loss=dice"
    assert sanitize_name("a/b c:{x}") == "a_b_c_x"
    long = sanitize_name("x" * 300)
    assert len(long) == sw.MAX_NAME and long != sanitize_name("x" * 299)


@pytest.mark.parametrize(
    "over, message",
    [
        ({"grid": {"optimizer.lr": [0.1]}, "colums": ["a"]}, "colums: unknown key"),
        ({"grid": {"optimizer.lrr": [0.1]}}, "optimizer.lrr: unknown key"),
        ({"grid": {"optimizer.lr": []}}, "grid.optimizer.lr: needs at least one value"),
        ({"runs": [{"name": "x", "set": {}}, {"name": "x", "set": {}}]}, "run name 'x' occurs twice"),
        ({"runs": [{"name": "x", "base": "missing.yaml"}]}, "base config missing.yaml not found"),
        ({"runs": [{"name": "x", "set": {"output_dir": "elsewhere"}}]}, "'output_dir' is set by the sweep"),
        ({"scale": "huge", "grid": {"optimizer.lr": [0.1]}}, "scales.huge is not defined"),
    ],
)
def test_errors_name_the_file_and_key(tmp_path: Path, over: dict, message: str) -> None:
    path = sweep_file(tmp_path, **over)
    with pytest.raises(ConfigError) as exc:
        load_sweep(path)
    assert message in str(exc.value) and str(path) in str(exc.value)


# ----------------------------------------------------------------------------- running (fake trainer)


def test_sequential_sweep_ranks_records_failures_and_skips_finished(tmp_path: Path) -> None:
    path = sweep_file(
        tmp_path,
        runs=[{"name": "ok", "set": {}}, {"name": "crash", "set": {"fail": "crash"}},
              {"name": "reported", "set": {"fail": "report"}}],
        grid={"optimizer.lr": [0.001, 0.003]},
        rank_by="score", order="max", columns=["score", {"key": "extra", "label": "extra metric"}],
    )
    # 'fail' is not a config key: validation would refuse it, so the fake's runs skip validation
    spec = load_sweep(path, validate=False)
    out = run_sweep(spec, progress=False, command=fake_command, poll_s=0.05)
    status = {o.name: o.status for o in out}
    assert status == {"ok__lr=0.001": "finished", "ok__lr=0.003": "finished", "crash__lr=0.001": "failed",
                      "crash__lr=0.003": "failed", "reported__lr=0.001": "failed", "reported__lr=0.003": "failed"}
    # sweep.json lists the resolved runs before they start
    saved = json.loads((spec.output / "sweep.json").read_text())
    assert [r["name"] for r in saved["runs"]] == [r.name for r in spec.runs]
    assert saved["runs"][1]["set"] == {"optimizer.lr": 0.003}
    # a crash without summary.json gets one written by the sweep, with the log's last lines
    crash = json.loads((spec.output / "crash__lr=0.001" / "summary.json").read_text())
    assert crash["status"] == "failed" and "exit status 3" in crash["error"] and "out of memory" in crash["error"]
    reported = json.loads((spec.output / "reported__lr=0.001" / "summary.json").read_text())
    assert reported["error"] == "ValueError: bad data"
    assert "training ok__lr=0.001" in (spec.output / "ok__lr=0.001" / "train.log").read_text()

    from ctdl.experiments.results import collect_results, write_results

    table = collect_results([(r.name, r.run_dir) for r in spec.runs], spec.columns, spec.rank_by, spec.order)
    write_results(table, spec.output)
    rows = list(csv.DictReader((spec.output / "results.csv").open()))
    assert [(r["rank"], r["run"], r["status"]) for r in rows[:2]] == [("1", "ok__lr=0.003", "finished"),
                                                                       ("2", "ok__lr=0.001", "finished")]
    assert float(rows[0]["score"]) == pytest.approx(3.0) and float(rows[1]["score"]) == pytest.approx(1.0)
    assert float(rows[0]["extra"]) == 5.0  # from history.csv at the best val_score epoch (1), not its max 7
    assert {r["status"] for r in rows[2:]} == {"failed"} and all(r["rank"] == "" for r in rows[2:])

    # run again: finished runs are skipped, failed ones are tried afresh
    calls_before = (spec.output / "calls.txt").read_text().split()
    out2 = run_sweep(spec, progress=False, command=fake_command, poll_s=0.05)
    assert [o.status for o in out2 if o.name.startswith("ok")] == ["skipped", "skipped"]
    calls_after = (spec.output / "calls.txt").read_text().split()
    assert sorted(calls_after[len(calls_before):]) == sorted(n for n in status if not n.startswith("ok"))


def test_parallel_two_processes_overlap_in_own_process_groups(tmp_path: Path) -> None:
    path = sweep_file(tmp_path, grid={"optimizer.lr": [0.001, 0.002, 0.003, 0.004], "sleep": [1.5]})
    spec = load_sweep(path, validate=False)
    t0 = time.time()
    out = run_sweep(spec, parallel=2, progress=False, command=fake_command, poll_s=0.05)
    wall = time.time() - t0
    assert [o.status for o in out] == ["finished"] * 4
    info = [json.loads((r.run_dir / "summary.json").read_text())["fake"] for r in spec.runs]
    # every run is its own process-group leader
    assert all(i["pgid"] == i["pid"] for i in info)
    assert len({i["pid"] for i in info}) == 4
    # at most two at a time, and two did run at the same time
    events = sorted([(i["start"], 1) for i in info] + [(i["end"], -1) for i in info])
    level, peak = 0, 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    assert peak == 2
    assert wall < 4 * 1.5 + 3  # sequential would need >= 6 s of sleeping alone
    # each parallel run gets its share of the cores (unless the environment fixes it)
    if "OMP_NUM_THREADS" not in os.environ:
        assert {i["omp"] for i in info} == {str(max(1, (os.cpu_count() or 1) // 2))}


def test_ctrl_c_interrupts_every_running_process_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = sweep_file(tmp_path, grid={"optimizer.lr": [0.001, 0.002, 0.003], "sleep": [60]})
    spec = load_sweep(path, validate=False)
    real_sleep, started, pressed = time.sleep, time.time(), []

    def sleep(s: float) -> None:  # the user presses Ctrl-C once, when both runs are well under way
        real_sleep(s)
        if time.time() - started > 5.0 and not pressed:
            pressed.append(True)
            raise KeyboardInterrupt

    monkeypatch.setattr(sw.time, "sleep", sleep)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, parallel=2, progress=False, command=fake_command, poll_s=0.05)
    assert time.time() - started < 30
    first, second, third = (json.loads((r.run_dir / "summary.json").read_text()) if (r.run_dir / "summary.json").exists()
                            else None for r in spec.runs)
    assert first["status"] == second["status"] == "interrupted"
    assert third is None  # never started


# ----------------------------------------------------------------------------- CLI and recipes


def test_cli_dry_run_and_collect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = sweep_file(tmp_path, grid={"optimizer.lr": [0.001, 0.002]}, rank_by="score", columns=["score"])
    assert main(["sweep", str(path), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "lr=0.001: unet3d_small <- base.yaml optimizer.lr=0.001" in text and "2 runs valid" in text
    assert not (tmp_path / "out" / "lr=0.001").exists()
    # --collect builds the table from whatever the run folders hold
    spec = load_sweep(path, validate=False)
    run_sweep(spec, progress=False, command=fake_command, poll_s=0.05)
    assert main(["sweep", str(path), "--collect"]) == 0
    text = capsys.readouterr().out
    assert text.index("| 1 | lr=0.002 |") < text.index("| 2 | lr=0.001 |")
    assert (tmp_path / "out" / "results.html").exists() and (tmp_path / "out" / "results.md").exists()


def test_dlae_fcn_sweep_recipe_expands() -> None:
    spec = load_sweep(REPO / "recipes" / "dlae_fcn_sweep.yaml", scale="demo")
    assert len(spec.runs) == 9
    losses = {(r.overrides["loss.name"], json.dumps(r.overrides["loss.params"], sort_keys=True)) for r in spec.runs}
    # DLAE's rule: cross-entropy once per encoder, Tversky with beta = 1 - alpha for each alpha
    assert losses == {("cross_entropy", "{}"), ("tversky", '{"alpha": 0.3, "beta": 0.7}'),
                      ("tversky", '{"alpha": 0.7, "beta": 0.3}')}
    assert len({r.model for r in spec.runs}) == 3
    assert spec.rank_by == "kidney_dice"
    # DLAE's own encoders at full size: 7 backbones x (4 once-only losses + 3 Tversky alphas)
    full = load_sweep(REPO / "recipes" / "dlae_fcn_sweep_full.yaml")
    assert len(full.runs) == 49 and {r.model for r in full.runs} >= {"vgg16_unet", "xception_unet", "dlae_unet2d"}
    assert sum(r.overrides["loss.name"] == "tversky" for r in full.runs) == 21


def test_kits19_compare_recipe_expands() -> None:
    spec = load_sweep(REPO / "recipes" / "kits19_compare.yaml", scale="demo")
    assert [r.base.name for r in spec.runs] == [
        "kits19_unet2d.yaml", "kits19_unet3d.yaml", "kits19_pspnet_small.yaml", "kits19_pspnet_big.yaml",
        "kits19_denseunet_small.yaml", "kits19_denseunet_big.yaml", "kits19_deeplabv3plus.yaml"]
    assert [c["key"] for c in spec.columns] == ["weighted_jaccard", "kidney_dice", "tumor_dice"]


# ----------------------------------------------------------------------------- real training


@pytest.mark.slow
def test_real_sweep_two_parallel_ctdl_train_runs(tmp_path: Path) -> None:
    from conftest import DATA

    if not (DATA / "kits19").exists():
        pytest.skip("shared data missing")
    base = {
        "name": "tiny", "seed": 0, "output_dir": "unused",
        "data": {"format": "synthetic_kits", "synth_source": str(DATA / "kits19"), "synth_spacing": [6.0, 3.0, 3.0],
                 "synth_margin_slices": 1, "cases": ["case_00038", "case_00061", "case_00148"],
                 "cache_dir": str(tmp_path / "cache"), "split": {"train": 0.34, "val": 0.33, "test": 0.33}},
        "preprocessing": {"inplane_size": [32, 32], "remove_background_slices": True},
        "sampling": {"mode": "slices2d"},
        "model": {"name": "unet2d", "params": {"base_channels": 4, "depth": 2}},
        "training": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "threads": 1},
        "inference": {"method": "slices2d"},
        "checkpoint": {"tensorboard": False}, "evaluation": {"report_cases": 0},
    }
    write(tmp_path, "tiny.yaml", base)
    path = write(tmp_path, "sweep.yaml", {"base": "tiny.yaml", "grid": {"optimizer.lr": [0.01, 0.001]},
                                          "rank_by": "kidney_dice", "columns": ["kidney_dice", "tumor_dice"],
                                          "output": str(tmp_path / "sweep")})
    out = sw.sweep(path, parallel=2, progress=False)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["status"] for r in rows] == ["finished", "finished"]
    assert {r["run"] for r in rows} == {"lr=0.01", "lr=0.001"}
    for r in rows:
        summary = json.loads((out / r["run"] / "summary.json").read_text())
        assert summary["model"] == "unet2d" and summary["params"] > 0 and "kidney_mcc" in summary["metrics"]
        assert float(r["kidney_dice"]) == pytest.approx(summary["metrics"]["kidney_dice"])
        cfg = yaml.safe_load((out / r["run"] / "config.yaml").read_text())
        assert cfg["name"] == r["run"] and cfg["optimizer"]["lr"] == float(r["run"].split("=")[1])


def test_swept_key_wins_over_the_scale(tmp_path: Path) -> None:
    from ctdl.config.load import load_config

    path = sweep_file(tmp_path, scale="demo", grid={"training.epochs": [1, 3]})
    spec = load_sweep(path)  # the base's demo scale sets training.epochs too: no longer refused
    assert len(spec.runs) == 2
    cfg = load_config(spec.runs[1].base, ["training.epochs=3"], scale="demo")
    assert cfg.training.epochs == 3  # --set is applied after --scale
