"""A stand-in for ``ctdl train`` in sweep tests: ``python fake_train.py RUN_DIR OVERRIDES_JSON``.

It writes a run folder the way a task's ``train()`` does (config.yaml, history.csv, summary.json)
with ``score = 1000 * optimizer.lr`` (+ ``bonus``), records its start/end time and process group,
and misbehaves on request: ``fail: crash`` exits 3 without a summary, ``fail: report`` writes a
failed summary itself (as ``ctdl.api.train`` does), ``sleep: S`` sleeps S seconds first. On
SIGINT it writes an ``interrupted`` summary like ``ctdl.api.train``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from ctdl.engine.rundir import write_run_summary
from ctdl.io.atomic import atomic_write_text


def main() -> int:
    run_dir, over = Path(sys.argv[1]), json.loads(sys.argv[2])
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with (run_dir.parent / "calls.txt").open("a") as fh:
        fh.write(run_dir.name + "\n")
    try:
        time.sleep(float(over.get("sleep", 0)))
    except KeyboardInterrupt:
        write_run_summary(run_dir, "segmentation", "fake", None, {}, status="interrupted", error="KeyboardInterrupt")
        return 130
    print(f"training {run_dir.name}")
    atomic_write_text(run_dir / "config.yaml", "training: {monitor: val_score, monitor_mode: max}\n")
    atomic_write_text(run_dir / "history.csv", "epoch,val_score,val_extra\n0,0.1,7\n1,0.9,5\n2,0.5,3\n")
    if over.get("fail") == "crash":
        print("Traceback (most recent call last):\nRuntimeError: out of memory <simulated>", file=sys.stderr)
        return 3
    if over.get("fail") == "report":
        write_run_summary(run_dir, "segmentation", "fake", None, {}, status="failed", error="ValueError: bad data")
        return 1
    score = 1000 * float(over.get("optimizer.lr", 0.0)) + float(over.get("bonus", 0.0))
    info = {"start": t0, "end": time.time(), "pid": os.getpid(), "pgid": os.getpgid(0),
            "omp": os.environ.get("OMP_NUM_THREADS")}
    write_run_summary(run_dir, "segmentation", over.get("model.name", "fake"), 1234 + int(score),
                      {"score": score, "kidney_dice": score / 10}, {"train_s": 65.0 + score, "total_s": 70.0 + score},
                      fake=info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
