"""Full-resolution prediction benchmark: ctdl predict (ROI and whole-volume modes) vs MONAI.

Builds a full-resolution phantom from KiTS19 ``case_00000`` (611 x 512 x 512 at 0.5 x 0.92 x 0.92 mm),
then, each in its own process so peak RSS is measured per mode, times:

* ``roi``:    ctdl two-stage prediction (coarse localiser -> the model only on the kidney box),
* ``whole``:  ctdl prediction over the whole volume (MONAI sliding window inside),
* ``monai``:  the named baseline: the same network and weights, the same preprocessing (resample to the
              model's training spacing, HU window, normalization), then ``monai.inferers.sliding_window_inference``
              over the whole volume (same window, overlap 0.25, Gaussian blending, and as many windows per forward
              pass as the run's ``inference.batch_size``), argmax, nearest resampling
              back to the input grid, NIfTI written.

Each mode reads the NIfTI and writes a NIfTI mask, so all three include IO. Every mode runs ``--repeats``
times (default 3), the modes interleaved (roi, whole, monai, roi, ...) so a change in machine speed hits all
of them; the table gives the median wall time (and the range), peak RSS, Dice against the phantom's truth,
and the ratios of the medians to the MONAI baseline's. Single runs of a few seconds varied by up to 40 %
on this 2-core machine (ROI 4.2 to 5.2 s, MONAI 8.5 to 9.9 s, back to back).

Usage: python bench/predict_fullres.py --run runs/demo   (a run trained with inference.two_stage: true)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def make_phantom(kits: Path, out: Path) -> tuple[Path, Path]:
    from ctdl.data.synthetic import synth_kits_case
    from ctdl.io import read_nifti, write_nifti

    import hashlib

    from ctdl.data.synthetic import PhantomParams

    tag = hashlib.sha1(json.dumps(PhantomParams().to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:8]
    out = out / f"phantom_{tag}"  # re-rendered when the phantom defaults change
    out.mkdir(parents=True, exist_ok=True)
    img_p, seg_p = out / "imaging.nii.gz", out / "segmentation.nii.gz"
    if not img_p.exists():
        mask = read_nifti(kits / "case_00000" / "segmentation.nii.gz")
        img, seg = synth_kits_case(mask, spacing=None, seed=0)
        write_nifti(seg, seg_p)
        write_nifti(img, img_p)
    return img_p, seg_p


def run_mode(mode: str, run: Path, image: Path, out: Path) -> dict:
    import torch

    from ctdl.io import read_volume, write_volume
    from ctdl.tasks.segmentation import Predictor

    torch.set_num_threads(2)
    t0 = time.time()
    pred = Predictor.from_checkpoint(run)
    if mode in ("roi", "whole"):
        vol = read_volume(image)
        mask = pred.predict_volume(vol, roi=(mode == "roi"))
        write_volume(mask, out)
        extra = {"roi_boxes": [[[s.start, s.stop] for s in box] for box in pred.last_rois]}
    else:
        from monai.inferers import sliding_window_inference

        from ctdl.io import Volume

        vol = read_volume(image)
        img_s, _, ctx = pred.pre.geometry(vol, None)
        x = torch.from_numpy(pred.pre.intensity(img_s.array))[None]
        roi = tuple(pred.cfg.inference.roi_size or pred.cfg.sampling.patch_size)
        with torch.inference_mode():
            logits = sliding_window_inference(x, roi, pred.cfg.inference.batch_size, pred.model, overlap=0.25,
                                              mode="gaussian")
        labels = logits.argmax(1)[0].numpy().astype(np.uint8)
        del logits
        write_volume(pred.pre.restore(labels, ctx), out)
        extra = {}
    wall = time.time() - t0
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return {"mode": mode, "wall_s": round(wall, 1), "peak_rss_gib": round(rss_gib, 2), **extra}


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    s = x.sum() + y.sum()
    return 1.0 if s == 0 else float(2 * (x & y).sum() / s)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(REPO / "runs" / "demo"), help="run folder trained with two_stage")
    ap.add_argument("--kits", default=str(REPO.parent / "shared" / "data" / "kits19"))
    ap.add_argument("--work", default=str(REPO / "runs" / "bench_fullres"))
    ap.add_argument("--modes", nargs="*", default=["roi", "whole", "monai"])
    ap.add_argument("--repeats", type=int, default=3, help="runs per mode (the median is reported)")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args._child:  # the parent's phantom (phantom_<params hash>/imaging.nii.gz), found the same way
        image, _ = make_phantom(Path(args.kits), work)
        res = run_mode(args._child, Path(args.run), image, work / f"pred_{args._child}.nii.gz")
        print("RESULT " + json.dumps(res))
        return 0

    t = time.time()
    image, truth = make_phantom(Path(args.kits), work)
    print(f"phantom: {image} ({time.time() - t:.1f} s to build or find)")
    runs: dict[str, list[dict]] = {m: [] for m in args.modes}
    for _ in range(max(1, args.repeats)):
        for mode in args.modes:
            proc = subprocess.run([sys.executable, __file__, "--run", args.run, "--work", str(work), "--kits",
                                   args.kits, "--_child", mode], capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                print(proc.stderr[-3000:])
                raise SystemExit(f"mode {mode} failed")
            runs[mode].append(json.loads(line[0][7:]))
    results = {}
    for mode, rs in runs.items():
        walls = sorted(r["wall_s"] for r in rs)
        results[mode] = {**rs[-1], "wall_s": float(np.median(walls)), "wall_runs_s": walls,
                         "peak_rss_gib": max(r["peak_rss_gib"] for r in rs)}

    from ctdl.io import read_volume

    gt = read_volume(truth).array
    print(f"\n{'mode':<8}{'median s':>9}{'range s':>14}{'peak RSS GiB':>14}{'Dice kidney':>13}{'Dice tumour':>13}"
          f"{'time / MONAI':>14}")
    base = results.get("monai", {}).get("wall_s")
    for mode, r in results.items():
        pred = read_volume(work / f"pred_{mode}.nii.gz").array
        assert pred.shape == gt.shape
        r["dice_kidney"], r["dice_tumor"] = dice(pred, gt, 1), dice(pred, gt, 2)
        ratio = f"{r['wall_s'] / base:.2f}" if base else "-"
        rng = f"{r['wall_runs_s'][0]:.1f}-{r['wall_runs_s'][-1]:.1f}"
        print(f"{mode:<8}{r['wall_s']:>9.1f}{rng:>14}{r['peak_rss_gib']:>14.2f}{r['dice_kidney']:>13.4f}"
              f"{r['dice_tumor']:>13.4f}{ratio:>14}")
    (work / "results.json").write_text(json.dumps(results, indent=2))
    if "roi" in results and "monai" in results:
        print(f"\nROI mode / MONAI sliding window: {results['roi']['wall_s'] / base:.2f} x the time (target <= 0.5), "
              f"peak RSS {results['roi']['peak_rss_gib']:.2f} GiB (target < 6)")
    print("context: nnU-Net v2 3d_fullres on this case on a 2-core CPU ~ 1 h 52 min without TTA "
          "(../shared/reference/nnunet_cpu_anchor.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
