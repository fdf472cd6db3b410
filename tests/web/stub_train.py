"""A stand-in for `ctdl train CONFIG --quiet` used by the web API tests of the queue (test_app.py; the browser
test starts a real run): follows the run-folder contract.

Reads the config's output_dir/name, appends one history.csv row every STUB_EPOCH_S seconds for
training.epochs epochs (loss falling as 1/(epoch+1)), then writes summary.json. With STUB_CHILD=1 it
first starts a sleeping child process (writing its pid to child.pid) so a test can check that cancel
stops the whole process group. With STUB_FAIL=1 it raises after the first epoch.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

cfg = yaml.safe_load(Path(sys.argv[1]).read_text())
run = Path(cfg["output_dir"]) / cfg["name"]
run.mkdir(parents=True, exist_ok=True)
(run / "config.yaml").write_text(yaml.safe_dump(cfg))
if os.environ.get("STUB_CHILD"):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (run / "child.pid").write_text(str(child.pid))
epochs = int(cfg["training"]["epochs"])
delay = float(os.environ.get("STUB_EPOCH_S", "0.3"))
with (run / "history.csv").open("w") as fh:
    fh.write("epoch,lr,train_loss,val_dice_mean\n")
    fh.flush()
    for e in range(epochs):
        time.sleep(delay)
        fh.write(f"{e},0.001,{1.0 / (e + 1):.6f},{0.1 * e:.3f}\n")
        fh.flush()
        print(f"epoch {e} loss {1.0 / (e + 1):.4f}", flush=True)
        if os.environ.get("STUB_FAIL"):
            raise RuntimeError("stub failure: the GPU caught fire")
summary = {"task": "segmentation", "model": cfg["model"]["name"], "params": 1, "status": "finished",
           "metrics": {"kidney_dice": 0.5}, "timing": {}}
(run / "summary.json").write_text(json.dumps(summary))
(run / "report.html").write_text("<html><body><h1>stub report</h1><img src='report/curves.png'></body></html>")
