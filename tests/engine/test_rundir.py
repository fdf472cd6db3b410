import math

from ctdl.engine.rundir import read_run_summary, write_run_summary


def test_run_summary_round_trip(tmp_path) -> None:
    assert read_run_summary(tmp_path) is None
    write_run_summary(tmp_path, "segmentation", "unet3d_small", 123, {"dice": 0.5, "hd": math.nan}, {"total_s": 1.5})
    s = read_run_summary(tmp_path)
    assert s == {"task": "segmentation", "model": "unet3d_small", "params": 123, "status": "finished",
                 "metrics": {"dice": 0.5, "hd": None}, "timing": {"total_s": 1.5}}
