"""Experiment generator: run a set of configs derived from base configs, then rank them in one table.

DLAE's experiment generators (``fcn_experiment_generator.py``, manual section 11) are Python scripts
that edit a loaded config in memory for every combination of encoders x losses x alpha and train
each one; nothing is written down, so a crash loses the list and a re-run starts over. Here a sweep
is a YAML file and every run is an ordinary ctdl run folder::

    base: viptt_tb.yaml        # path relative to this file
    scale: demo                # optional, applied to every run like --scale demo (the CLI's --scale wins;
                               # a run's own overrides win over the scale's values)
    runs:                      # listed runs: a name, dotted-key overrides, optionally their own base
      - name: no_pt
        set: {classification.finetune_from: null}
    grid: {optimizer.lr: [1e-3, 1e-4], loss.name: [dice, tversky]}   # product (times runs if both)
    rank_by: kappa             # a key of summary.json's metrics, or params / train_s
    order: max
    columns: [kappa, accuracy] # metric columns; a column may be {key: ..., label: ...}
    output: runs/sweeps/viptt_strategies

A grid axis may also list *named override sets* instead of values, for settings that only make
sense together (a Tversky loss and its alpha/beta, a model and its parameters)::

    grid:
      loss:
        - {name: ce, set: {loss.name: cross_entropy}}
        - {name: tversky_a0.3, set: {loss.name: tversky, loss.params: {alpha: 0.3, beta: 0.7}}}

Run names are ``<run>__<axis>=<value>__...`` (sanitised for folder names). Each run is trained by
``python -m ctdl train BASE --set ... --scale ...`` in its own subprocess and process group (a
crash or a leak in one run cannot take the sweep down; Ctrl-C stops them all), sequentially or
``parallel`` at a time. A run whose folder already holds ``summary.json`` with status
``finished`` is skipped, so an interrupted sweep resumes where it stopped; a failed run is
recorded (``summary.json`` status ``failed`` with the error) and the sweep goes on. The resolved
list of runs is written to ``<output>/sweep.json`` before anything starts, the table
(``results.csv``, ``results.html``, ``results.md``) after the last run.

Relative paths inside configs are taken relative to the working directory, as with
``ctdl train``; the sweep file's ``output`` too. Run folders are ``<output>/<run name>``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ctdl.errors import ConfigError
from ctdl.io.atomic import atomic_write_text

SWEEP_JSON = "sweep.json"
LOG_NAME = "train.log"
MAX_NAME = 100

__all__ = [
    "RunSpec",
    "SweepSpec",
    "load_sweep",
    "train_command",
    "run_sweep",
    "sweep",
    "sanitize_name",
]


# ----------------------------------------------------------------------------- the sweep file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _RunEntry(_Strict):
    name: str = Field(min_length=1, description="run name (a folder under output)")
    base: Optional[str] = Field(None, description="this run's base config, relative to the sweep file")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted-key overrides")


class _NamedSet(_Strict):
    name: str = Field(min_length=1)
    set: dict[str, Any]


class _Column(_Strict):
    key: str = Field(min_length=1, description="metric key of summary.json (or params, train_s, ...)")
    label: Optional[str] = Field(None, description="column heading (default: the key)")


class _SweepFile(_Strict):
    base: Optional[str] = None
    scale: Optional[str] = None
    description: Optional[str] = None
    runs: Optional[list[_RunEntry]] = None
    grid: dict[str, list[Union[_NamedSet, Any]]] = Field(default_factory=dict)
    rank_by: Optional[str] = None
    order: Literal["max", "min"] = "max"
    columns: list[Union[str, _Column]] = Field(default_factory=list)
    output: Optional[str] = None

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for axis, values in v.items():
            if not values:
                raise ValueError(f"grid.{axis}: needs at least one value")
            named = [isinstance(x, _NamedSet) for x in values]
            if any(named) and not all(named):
                raise ValueError(f"grid.{axis}: mixes named override sets ({{name, set}}) and plain values")
        return v


@dataclass
class RunSpec:
    """One run of a sweep: base config + overrides, trained into ``run_dir``."""

    name: str
    base: Path
    overrides: dict[str, Any]
    run_dir: Path
    task: str = "segmentation"
    model: str = ""

    def set_args(self) -> list[str]:
        """The ``--set key=value`` strings (values in YAML flow style, as ``ctdl train`` parses them)."""
        return [f"{k}={_yaml_value(v)}" for k, v in self.overrides.items()]


@dataclass
class SweepSpec:
    """A parsed sweep file with its runs expanded."""

    path: Path
    output: Path
    scale: Optional[str]
    runs: list[RunSpec]
    rank_by: Optional[str] = None
    order: str = "max"
    columns: list[dict[str, str]] = field(default_factory=list)
    description: Optional[str] = None


def _yaml_value(v: Any) -> str:
    text = yaml.safe_dump(v, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("...").strip()


_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)$")


def _numeric(v: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string: make such values numbers, recursively."""
    if isinstance(v, str) and _FLOAT_RE.match(v.strip()):
        return float(v)
    if isinstance(v, dict):
        return {k: _numeric(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_numeric(x) for x in v]
    return v


def sanitize_name(name: str) -> str:
    """A folder-safe run name: letters, digits and ``._=-``; long names keep a hash of the full one."""
    clean = re.sub(r"[^A-Za-z0-9._=+-]+", "_", name).strip("._") or "run"
    clean = re.sub(r"_{3,}", "__", clean)
    if len(clean) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        clean = f"{clean[: MAX_NAME - 9]}-{digest}"
    return clean


def _format_value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "-".join(_format_value(x) for x in v)
    if isinstance(v, dict):
        return "-".join(f"{k}{_format_value(x)}" for k, x in v.items())
    return str(v)


def _axis_labels(axes: Sequence[str]) -> dict[str, str]:
    """Short axis names for run names: the last dotted part (the one before for ``.name``)."""
    def short(key: str) -> str:
        parts = key.split(".")
        return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]

    labels = {a: short(a) for a in axes}
    counts: dict[str, int] = {}
    for s in labels.values():
        counts[s] = counts.get(s, 0) + 1
    return {a: (s if counts[s] == 1 else a) for a, s in labels.items()}


def load_sweep(path: str | Path, scale: str | None = None, output: str | Path | None = None,
               validate: bool = True, overrides: Sequence[str] | None = None) -> SweepSpec:
    """Read a sweep file and expand its runs (``scale`` overrides the file's ``scale``).

    ``overrides`` (``key=value`` strings, as ``ctdl train --set``) apply to every run after the
    run's own settings, e.g. ``data.root=/data/kits19`` to point a whole sweep at real data.

    With ``validate`` every run's config is loaded, overridden and scaled here, so a typo in any run
    is an error before the first one starts (naming the sweep file, the run and the key). A run's own
    values win over the scale's (``ctdl train`` applies ``--scale`` before ``--set``).
    """
    from ctdl.config.load import read_mapping

    path = Path(path)
    raw = read_mapping(path)
    try:
        spec = _SweepFile.model_validate(raw)
    except ValidationError as exc:
        from ctdl.config.load import format_validation_error

        raise ConfigError(format_validation_error(exc, str(path)).replace("invalid config", "invalid sweep file")) from None
    here = path.resolve().parent
    scale = scale or spec.scale
    out = Path(output) if output is not None else Path(spec.output) if spec.output else Path("runs/sweeps") / path.stem
    out = out.resolve()

    entries: list[tuple[str, Optional[str], dict[str, Any], str]] = []
    if spec.runs:
        for i, r in enumerate(spec.runs):
            entries.append((r.name, r.base, _numeric(dict(r.set)), f"runs[{i}] ({r.name})"))
    else:
        entries.append(("", None, {}, "base"))
    axes = list(spec.grid)
    labels = _axis_labels(axes)
    combos: list[tuple[str, dict[str, Any]]] = []
    for values in itertools.product(*(spec.grid[a] for a in axes)):
        parts, over = [], {}
        for axis, v in zip(axes, values):
            if isinstance(v, _NamedSet):
                parts.append(f"{labels[axis]}={v.name}")
                over.update(_numeric(dict(v.set)))
            else:
                v = _numeric(v)
                parts.append(f"{labels[axis]}={_format_value(v)}")
                over[axis] = v
        combos.append(("__".join(parts), over))

    common: dict[str, Any] = {}
    if overrides:
        from ctdl.config.load import apply_overrides

        flat: dict[str, Any] = {}
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected key.path=value")
            key, raw_value = item.split("=", 1)
            flat[key.strip()] = apply_overrides({}, [f"v={raw_value}"])["v"]
        common = _numeric(flat)
    runs: list[RunSpec] = []
    seen: dict[str, str] = {}
    for run_name, run_base, run_set, where in entries:
        base_str = run_base or spec.base
        if not base_str:
            raise ConfigError(f"{path}: {where}: no base config (set 'base:' at the top or in the run)")
        base = (here / base_str).resolve()
        if not base.is_file():
            raise ConfigError(f"{path}: {where}: base config {base_str} not found (looked for {base})")
        for combo_name, combo_set in combos:
            name = sanitize_name("__".join(p for p in (run_name, combo_name) if p) or base.stem)
            if name in seen:
                raise ConfigError(f"{path}: run name '{name}' occurs twice ({seen[name]} and {where}); "
                                  "give the runs distinct names")
            seen[name] = where
            over = {**run_set, **combo_set, **common}
            for key in ("name", "output_dir"):
                if key in over:
                    raise ConfigError(f"{path}: {where}: '{key}' is set by the sweep (run folders are {out}/<run name>)")
            runs.append(RunSpec(name=name, base=base, overrides=over, run_dir=out / name))
    if not runs:
        raise ConfigError(f"{path}: the sweep has no runs")
    columns = [{"key": c, "label": c} if isinstance(c, str) else {"key": c.key, "label": c.label or c.key}
               for c in spec.columns]
    result = SweepSpec(path=path, output=out, scale=scale, runs=runs, rank_by=spec.rank_by, order=spec.order,
                       columns=columns, description=spec.description)
    if validate:
        for run in runs:
            _check_run(result, run)
    return result


def _run_overrides(spec: SweepSpec, run: RunSpec) -> list[str]:
    return run.set_args() + [f"name={_yaml_value(run.name)}", f"output_dir={_yaml_value(str(spec.output))}"]


def _check_run(spec: SweepSpec, run: RunSpec) -> None:
    """Load the run's config as ``ctdl train`` will (the scale first, then the run's overrides, which win)."""
    from ctdl.config.load import load_config

    where = f"{spec.path}: run '{run.name}' (base {run.base.name})"
    try:
        cfg = load_config(run.base, _run_overrides(spec, run), scale=spec.scale)
    except ConfigError as exc:
        raise ConfigError(f"{where}:\n{exc}") from None
    if cfg.run_dir.resolve() != run.run_dir:
        raise ConfigError(f"{where}: run folder {cfg.run_dir} is not {run.run_dir} (does the scale set name/output_dir?)")
    run.task, run.model = cfg.task, cfg.model.name


# ----------------------------------------------------------------------------- running


def train_command(run: RunSpec, spec: SweepSpec) -> list[str]:
    """The command that trains one run: ``python -m ctdl train BASE --set ... [--scale S] --quiet``."""
    cmd = [sys.executable, "-m", "ctdl", "train", str(run.base)]
    for item in _run_overrides(spec, run):
        cmd += ["--set", item]
    if spec.scale:
        cmd += ["--scale", spec.scale]
    return cmd + ["--quiet"]


def run_status(run_dir: Path) -> Optional[str]:
    """``finished`` / ``failed`` / ``interrupted`` from the run's summary.json, None without one."""
    from ctdl.engine.rundir import read_run_summary

    try:
        summary = read_run_summary(run_dir)
    except (OSError, json.JSONDecodeError):
        return None
    return None if summary is None else str(summary.get("status"))


def _write_sweep_json(spec: SweepSpec, parallel: int, command: Callable[[RunSpec, SweepSpec], list[str]]) -> Path:
    data = {
        "sweep_file": str(spec.path.resolve()),
        "scale": spec.scale,
        "parallel": parallel,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "rank_by": spec.rank_by,
        "order": spec.order,
        "columns": spec.columns,
        "description": spec.description,
        "runs": [{"name": r.name, "base": str(r.base), "set": r.overrides, "run_dir": str(r.run_dir),
                  "task": r.task, "model": r.model, "command": command(r, spec)} for r in spec.runs],
    }
    path = spec.output / SWEEP_JSON
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")
    return path


@dataclass
class RunOutcome:
    name: str
    status: str  # finished, failed, interrupted, skipped
    seconds: float = 0.0
    returncode: Optional[int] = None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _finish(run: RunSpec, proc: subprocess.Popen, seconds: float,  # type: ignore[type-arg]
            interrupted: bool = False) -> RunOutcome:
    """Record a finished subprocess: trust the run's summary.json; write one when it has none (``failed``, or
    ``interrupted`` when the sweep itself stopped it, e.g. a Ctrl-C that arrived while the run was starting)."""
    from ctdl.engine.rundir import write_run_summary

    status = run_status(run.run_dir)
    if status == "finished":
        return RunOutcome(run.name, "finished", seconds, proc.returncode)
    if status not in ("failed", "interrupted"):
        # died before ctdl could say so (bad config, killed, out of memory): say it here, with the log's end
        reason = f"exit status {proc.returncode}" if proc.returncode else "exited without writing summary.json"
        if interrupted:
            reason = f"stopped by the sweep (Ctrl-C); {reason}"
        tail = _tail(run.run_dir / LOG_NAME)
        status = "interrupted" if interrupted else "failed"
        write_run_summary(run.run_dir, run.task, run.model, None, {}, status=status,
                          error=f"{reason}; last lines of {LOG_NAME}:\n{tail}" if tail else reason)
    return RunOutcome(run.name, str(status), seconds, proc.returncode)


def _stop_all(active: dict[subprocess.Popen, tuple[RunSpec, float]], grace_s: float = 15.0) -> None:  # type: ignore[type-arg]
    """Ctrl-C: interrupt each run's process group, then kill what is left after ``grace_s``."""
    for proc in active:
        try:
            os.killpg(proc.pid, signal.SIGINT)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.time() + grace_s
    for proc in active:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except (subprocess.TimeoutExpired, KeyboardInterrupt):  # too slow, or a second Ctrl-C: kill
            deadline = 0.0
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()


def run_sweep(spec: SweepSpec, parallel: int = 1, progress: bool = True,
              command: Callable[[RunSpec, SweepSpec], list[str]] | None = None,
              poll_s: float = 0.2) -> list[RunOutcome]:
    """Train every run not finished yet, ``parallel`` at a time; returns one outcome per run.

    ``command(run, spec)`` builds a run's command line (default :func:`train_command`; tests pass a
    fake trainer). Each run's stdout and stderr go to ``<run folder>/train.log``. With ``parallel``
    > 1 every run gets ``OMP_NUM_THREADS = cores // parallel`` (unless the environment sets it) so
    the runs do not fight over the same cores.
    """
    from tqdm.auto import tqdm

    if parallel < 1:
        raise ConfigError(f"--parallel must be at least 1, got {parallel}")
    command = command or train_command
    spec.output.mkdir(parents=True, exist_ok=True)
    _write_sweep_json(spec, parallel, command)
    outcomes: dict[str, RunOutcome] = {}
    pending: list[RunSpec] = []
    for run in spec.runs:
        if run_status(run.run_dir) == "finished":
            outcomes[run.name] = RunOutcome(run.name, "skipped")
        else:
            pending.append(run)
    env = dict(os.environ)
    if parallel > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    active: dict[subprocess.Popen, tuple[RunSpec, float]] = {}  # type: ignore[type-arg]
    bar = tqdm(total=len(spec.runs), initial=len(outcomes), desc="sweep", unit="run", disable=not progress)
    try:
        while pending or active:
            while pending and len(active) < parallel:
                run = pending.pop(0)
                run.run_dir.mkdir(parents=True, exist_ok=True)
                stale = run.run_dir / "summary.json"
                if stale.exists():  # an earlier failed/interrupted attempt: this one starts afresh
                    stale.unlink()
                log = open(run.run_dir / LOG_NAME, "w")
                try:
                    proc = subprocess.Popen(command(run, spec), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)
                finally:
                    log.close()
                active[proc] = (run, time.time())
            time.sleep(poll_s)
            for proc in [p for p in active if p.poll() is not None]:
                run, t0 = active.pop(proc)
                out = _finish(run, proc, time.time() - t0)
                outcomes[run.name] = out
                bar.update(1)
                bar.write(f"{run.name}: {out.status} ({out.seconds:.0f} s)")
    except KeyboardInterrupt:
        _stop_all(active)
        for proc, (run, t0) in active.items():
            outcomes[run.name] = _finish(run, proc, time.time() - t0, interrupted=True)
        raise
    finally:
        bar.close()
    return [outcomes[r.name] for r in spec.runs]


def sweep(path: str | Path, scale: str | None = None, parallel: int = 1, dry_run: bool = False,
          progress: bool = True, collect_only: bool = False, overrides: Sequence[str] | None = None,
          command: Callable[[RunSpec, SweepSpec], list[str]] | None = None) -> Path:
    """Run a sweep file end to end and write its results table; returns the sweep's output folder.

    ``dry_run`` validates every run and writes ``sweep.json`` without training; ``collect_only``
    rebuilds the table from the run folders as they are.
    """
    from ctdl.experiments.results import collect_results, write_results

    spec = load_sweep(path, scale=scale, overrides=overrides)
    if dry_run or collect_only:
        spec.output.mkdir(parents=True, exist_ok=True)
        _write_sweep_json(spec, parallel, command or train_command)
        if dry_run:
            return spec.output
    else:
        run_sweep(spec, parallel=parallel, progress=progress, command=command)
    table = collect_results([(r.name, r.run_dir) for r in spec.runs], spec.columns, spec.rank_by, spec.order)
    write_results(table, spec.output, title=f"Sweep {spec.path.name}" + (f" (scale {spec.scale})" if spec.scale else ""),
                  description=spec.description)
    return spec.output
