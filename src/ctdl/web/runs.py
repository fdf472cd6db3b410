"""Runs for the web UI: a queue of training processes and a reader of run folders.

Each started run is one ``ctdl train`` subprocess in its own process group (``start_new_session``), so
cancelling it signals the whole group (data-loader workers included). A queue starts at most
``max_parallel`` (default 1) at a time. The state of a web-started run lives in its folder
(``web_job.json``: queued / running with pid), so a restarted server finds queued, running and finished
runs again from the folders alone; everything else follows the run-folder contract of
:mod:`ctdl.engine.rundir` (``summary.json`` once finished, failed or interrupted; ``history.csv`` grows
while it runs).
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from ctdl.engine.rundir import read_run_summary, write_run_summary
from ctdl.io.atomic import atomic_write_text

JOB_FILE = "web_job.json"
CONFIG_FILE = "web_config.yaml"
LOG_FILE = "log.txt"
# `python -m ctdl` needs a __main__ module; calling the CLI entry point directly needs nothing extra.
DEFAULT_TRAIN_CMD = (sys.executable, "-c", "import sys; from ctdl.cli import main; sys.exit(main())", "train")


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def _num(v: str | None) -> float | None:
    if v is None or v == "":
        return None
    try:
        x = float(v)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def read_history(run_dir: Path) -> dict[str, list[float | None]]:
    """``history.csv`` as columns (empty cells and non-finite values are None)."""
    path = run_dir / "history.csv"
    if not path.exists():
        return {}
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    cols: dict[str, list[float | None]] = {}
    for row in rows:
        if None in row.values() and len(row) > 1 and row.get("epoch") in (None, ""):
            continue  # a half-written last line
        for k, v in row.items():
            if k is not None:
                cols.setdefault(k, []).append(_num(v))
    return cols


def tail(path: Path, n_bytes: int = 20000) -> str:
    """The last ``n_bytes`` of a text file ('' if absent); progress-bar carriage returns keep the last frame."""
    if not path.exists():
        return ""
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - n_bytes))
        text = fh.read().decode("utf-8", "replace")
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


def find_error(log: str) -> str | None:
    """The last traceback or ``error:`` line of a log (DLAE's error log), or None."""
    lines = log.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("Traceback (most recent call last)"):
            return "\n".join(lines[i:]).strip()
    errs = [ln for ln in lines if ln.startswith("error:")]
    return errs[-1] if errs else None


class RunManager:
    """Starts, queues, cancels and describes runs in ``runs_dir``."""

    def __init__(self, runs_dir: Path, train_cmd: Sequence[str] | None = None, max_parallel: int = 1,
                 workdir: Path | None = None, poll_s: float = 0.5) -> None:
        self.runs_dir = Path(runs_dir)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.train_cmd = list(train_cmd or DEFAULT_TRAIN_CMD)
        self.max_parallel = max(1, int(max_parallel))
        self.workdir = Path(workdir or Path.cwd())
        self.poll_s = poll_s
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- folders
    def run_dirs(self) -> list[Path]:
        if not self.runs_dir.is_dir():
            return []
        out = []
        for d in sorted(self.runs_dir.iterdir()):
            if not d.is_dir() or d.name.startswith((".", "_")):
                continue
            if any((d / f).exists() for f in ("summary.json", "history.csv", "config.yaml", JOB_FILE)):
                out.append(d)
        return out

    def run_dir(self, name: str) -> Path:
        d = self.runs_dir / name
        if "/" in name or name.startswith((".", "_")) or not d.is_dir():
            raise KeyError(name)
        return d

    def _job(self, d: Path) -> dict[str, Any]:
        p = d / JOB_FILE
        try:
            return json.loads(p.read_text()) if p.exists() else {}
        except json.JSONDecodeError:
            return {}

    def _write_job(self, d: Path, job: dict[str, Any]) -> None:
        atomic_write_text(d / JOB_FILE, json.dumps(job, indent=2) + "\n")

    def status(self, d: Path) -> str:
        """queued, running, finished, failed, interrupted, cancelled or unknown (the folder decides)."""
        summary = read_run_summary(d)
        job = self._job(d)
        if job.get("state") == "running" and _pid_alive(job.get("pid")):
            return "running"  # the summary comes before the report: finished means the process has exited
        if summary is not None:
            return str(summary.get("status", "finished"))
        if job.get("state") == "queued":
            return "queued"
        if job.get("state") == "cancelled":
            return "cancelled"
        if job.get("state") == "running":
            return "running" if _pid_alive(job.get("pid")) else ("failed" if job.get("returncode") else "interrupted")
        if (d / "history.csv").exists():
            # not started from this UI: a fresh history means a CLI run is still going
            age = time.time() - (d / "history.csv").stat().st_mtime
            return "running" if age < 600 else "interrupted"
        return "unknown"

    def describe(self, d: Path) -> dict[str, Any]:
        """One row of the runs list: status, epoch, best monitored value, error."""
        status = self.status(d)  # first: a finished status then implies a complete history
        summary = read_run_summary(d) or {}
        hist = read_history(d)
        cfg = self.read_config(d)
        monitor = ((cfg.get("training") or {}).get("monitor")) or "val_dice_mean"
        mode = ((cfg.get("training") or {}).get("monitor_mode")) or "max"
        vals = [v for v in hist.get(monitor, []) if v is not None]
        best = (max(vals) if mode == "max" else min(vals)) if vals else None
        epochs = hist.get("epoch", [])
        job = self._job(d)
        error = summary.get("error")
        if status in ("failed",) and not error:
            error = find_error(tail(d / LOG_FILE))
        return {
            "name": d.name, "status": status, "task": summary.get("task") or cfg.get("task"),
            "model": summary.get("model") or (cfg.get("model") or {}).get("name"),
            "epoch": int(epochs[-1]) if epochs and epochs[-1] is not None else None,
            "epochs": (cfg.get("training") or {}).get("epochs"),
            "monitor": monitor, "best": best, "metrics": summary.get("metrics") or {},
            "has_report": (d / "report.html").exists(), "has_previews": (d / "previews").is_dir(), "error": error,
            "queued_at": job.get("queued_at"), "started_at": job.get("started_at"),
            "mtime": max((p.stat().st_mtime for p in d.iterdir() if p.is_file()), default=0.0),
        }

    def list_runs(self) -> list[dict[str, Any]]:
        return [self.describe(d) for d in self.run_dirs()]

    @staticmethod
    def read_config(d: Path) -> dict[str, Any]:
        for name in ("config.yaml", CONFIG_FILE):
            p = d / name
            if p.exists():
                try:
                    data = yaml.safe_load(p.read_text())
                except yaml.YAMLError:
                    return {}
                return data if isinstance(data, dict) else {}
        return {}

    # ------------------------------------------------------------------ queue
    def submit(self, cfg_dict: dict[str, Any]) -> str:
        """Queue a validated config (a dict); its run folder is ``runs_dir/<name>`` (name made unique)."""
        base = str(cfg_dict.get("name") or "run")
        name = base
        with self._lock:
            i = 1
            while (self.runs_dir / name).exists():
                i += 1
                name = f"{base}_{i}"
            d = self.runs_dir / name
            d.mkdir(parents=True)
            cfg = dict(cfg_dict)
            cfg["name"] = name
            cfg["output_dir"] = str(self.runs_dir.resolve())
            atomic_write_text(d / CONFIG_FILE, yaml.safe_dump(cfg, sort_keys=False))
            self._write_job(d, {"state": "queued", "queued_at": time.time()})
        self.pump()
        return name

    def _queued(self) -> list[Path]:
        q = [(self._job(d).get("queued_at", 0.0), d) for d in self.run_dirs() if self._job(d).get("state") == "queued"]
        return [d for _, d in sorted(q)]

    def _running(self) -> list[Path]:
        return [d for d in self.run_dirs() if self._job(d).get("state") == "running" and _pid_alive(self._job(d).get("pid"))]

    def pump(self) -> None:
        """Reap finished processes and start queued runs while fewer than ``max_parallel`` run."""
        with self._lock:
            for name, proc in list(self._procs.items()):
                rc = proc.poll()
                if rc is not None:
                    d = self.runs_dir / name
                    job = self._job(d)
                    if job.get("state") == "running":
                        job.update(state="exited", returncode=rc, ended_at=time.time())
                        self._write_job(d, job)
                        if rc != 0 and read_run_summary(d) is None:
                            err = find_error(tail(d / LOG_FILE)) or f"process exited with code {rc}"
                            write_run_summary(d, task="?", model="?", params=None, metrics={}, status="failed", error=err)
                    del self._procs[name]
            free = self.max_parallel - len(self._running())
            for d in self._queued()[: max(0, free)]:
                self._start(d)

    def _start(self, d: Path) -> None:
        log = (d / LOG_FILE).open("ab")
        cmd = [*self.train_cmd, str((d / CONFIG_FILE).resolve()), "--quiet"]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=self.workdir, env=env, start_new_session=True)
        log.close()
        self._procs[d.name] = proc
        job = self._job(d)
        job.update(state="running", pid=proc.pid, pgid=proc.pid, started_at=time.time(), command=cmd)
        self._write_job(d, job)

    def cancel(self, name: str, grace_s: float = 5.0) -> str:
        """Cancel a queued run, or stop a running one: SIGINT to its group (the trainer checkpoints), then SIGKILL."""
        d = self.run_dir(name)
        with self._lock:
            job = self._job(d)
            if job.get("state") == "queued":
                job.update(state="cancelled", ended_at=time.time())
                self._write_job(d, job)
                return "cancelled"
            if job.get("state") != "running" or not _pid_alive(job.get("pid")):
                raise ValueError(f"run {name!r} is not running (status {self.status(d)})")
            pgid = int(job.get("pgid") or job["pid"])
            try:
                os.killpg(pgid, signal.SIGINT)
            except ProcessLookupError:
                pass
            deadline = time.time() + grace_s
            while time.time() < deadline and _pid_alive(job["pid"]):
                proc = self._procs.get(name)
                if proc is not None:
                    proc.poll()
                time.sleep(0.05)
            try:
                os.killpg(pgid, signal.SIGKILL)  # whatever is left of the group
            except (ProcessLookupError, PermissionError):
                pass
            proc = self._procs.pop(name, None)
            if proc is not None:
                proc.wait(timeout=5)
            job.update(state="cancelled", ended_at=time.time())
            self._write_job(d, job)
            if read_run_summary(d) is None:
                cfg = self.read_config(d)
                write_run_summary(d, task=str(cfg.get("task", "?")), model=str((cfg.get("model") or {}).get("name", "?")),
                                  params=None, metrics={}, status="interrupted", error="cancelled from the web UI")
        self.pump()
        return "interrupted"

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Background thread that keeps the queue moving."""
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(self.poll_s):
                try:
                    self.pump()
                except Exception:  # keep the queue alive; errors show in the run's status
                    pass

        self._thread = threading.Thread(target=loop, name="ctdl-web-queue", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}}`` -> ``{'a.b': 1}`` (lists kept as values)."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and v:
                out.update(flatten(v, key))
            else:
                out[key] = v
    return out


def config_diff(configs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Keys whose values differ between runs: ``[{'key': 'optimizer.lr', 'values': {run: value}}]``."""
    flat = {name: flatten(c) for name, c in configs.items()}
    keys = sorted(set().union(*[set(f) for f in flat.values()])) if flat else []
    rows = []
    for k in keys:
        vals = {name: f.get(k) for name, f in flat.items()}
        if len({json.dumps(v, sort_keys=True, default=str) for v in vals.values()}) > 1:
            rows.append({"key": k, "values": vals})
    return rows
