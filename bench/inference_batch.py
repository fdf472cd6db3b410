"""Sliding-window inference time against windows per forward pass (``inference.batch_size``), in one run.

The baseline is one window per pass (MONAI's ``sw_batch_size`` default and ctdl's default before 2026-12-03).
Each setting runs ``ctdl.engine.inference.predict_volume`` (MONAI's ``sliding_window_inference`` inside) with the
demo's network (``unet3d_small``, random weights: the time does not depend on them) on a volume the size of a
kidney crop of the full-resolution bench phantom (58 x 129 x 175 voxels at 3 x 1.5 x 1.5 mm; 8 windows of
48 x 128 x 128), and the coarse localiser's network on a whole CT at 6 x 3 x 3 mm (51 x 157 x 157; ~100 windows
of 16 x 48 x 48). The label maps of every setting are compared with the baseline's.

Usage: python bench/inference_batch.py [--threads 2] [--repeats 3]
Prints seconds per volume (best of the repeats), the ratio to one window per pass, and whether labels agree.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def best_time(model: torch.nn.Module, x: np.ndarray, roi: tuple[int, int, int], batch: int, repeats: int
              ) -> tuple[float, np.ndarray]:
    from ctdl.engine.inference import predict_volume

    best, labels = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        labels, _ = predict_volume(model, x, 3, method="sliding_window", roi_size=roi, overlap=0.25, mode="gaussian",
                                   sw_batch_size=batch, device="cpu")
        best = min(best, time.perf_counter() - t)
    return best, labels  # type: ignore[return-value]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from ctdl.models import create_model

    cases = [
        ("fine (demo net), kidney crop", create_model("unet3d_small"), (1, 58, 129, 175), (48, 128, 128)),
        ("coarse localiser, whole CT", create_model("unet3d_small", channels=[8, 16, 32, 64], strides=[2, 2, 2],
                                                    num_res_units=1), (1, 51, 157, 157), (16, 48, 48)),
    ]
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {args.threads} threads, best of {args.repeats}")
    for name, model, shape, roi in cases:
        torch.manual_seed(0)
        model.eval()
        x = rng.standard_normal(shape).astype(np.float32)
        best_time(model, x, roi, 2, 1)  # warm-up
        base, ref = best_time(model, x, roi, 1, args.repeats)
        print(f"\n{name}: volume {shape[1:]}, window {roi}")
        print(f"  {'windows/pass':>12}{'s/volume':>10}{'ratio':>8}  labels equal to 1/pass")
        print(f"  {1:>12}{base:>10.3f}{1.0:>8.2f}  -")
        for batch in (2, 4, 8):
            t, lab = best_time(model, x, roi, batch, args.repeats)
            same = np.mean(lab == ref)
            print(f"  {batch:>12}{t:>10.3f}{t / base:>8.2f}  {same * 100:.4f} % of voxels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
