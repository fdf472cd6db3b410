"""Are bfloat16 gradients on this CPU close to float32 ones? Per convolution, for the demo's networks.

For a few batches of phantom patches, computes every convolution weight's gradient twice on the same batch and
weights (float32, then bfloat16 autocast with normalization layers in float32, as ``training.amp`` trains) and
prints the worst cosine similarity per network and the layers under 0.98. The float32 gradient is the baseline.

Usage: python bench/amp_gradient_check.py [--kits ../shared/data/kits19] [--batches 3]
Measured on this project's AMD EPYC (AVX512-BF16), 2026-12-03: the demo's fine network (unet3d_small 16-128,
24 x 64 x 64 patches) >= 0.996 everywhere; the coarse localiser (unet3d_small 8-64, 16 x 48 x 48 at 6 x 3 x 3 mm)
had its bottleneck convolution at 0.0-0.77 (sometimes NaN); the FCN-PPM demo network 0.2-0.97, falling toward
the input. Hence ``training.amp`` is forced off for the coarse localiser and left off in the FCN-PPM recipe.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent

NETS = {  # name: (registry name, kwargs, patch, phantom spacing)
    "demo fine": ("unet3d_small", {}, (24, 64, 64), (3.0, 1.5, 1.5)),
    "coarse localiser": ("unet3d_small", {"channels": [8, 16, 32, 64]}, (16, 48, 48), (6.0, 3.0, 3.0)),
    "fcn_ppm3d demo": ("fcn_ppm3d", {"stem_channels": 16, "widths": [32, 64, 128, 128], "ppm_channels": 32,
                                     "head_channels": 64, "dropout": 0.0}, (24, 64, 64), (4.0, 2.0, 2.0)),
}


def phantoms(kits: Path, spacing: tuple[float, float, float], n: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    from ctdl.data.synthetic import synth_kits_case
    from ctdl.io import read_volume

    out = []
    for case in sorted(p for p in kits.iterdir() if (p / "segmentation.nii.gz").exists())[:n]:
        img, lab = synth_kits_case(read_volume(case / "segmentation.nii.gz"), spacing=spacing, seed=0, margin_slices=4)
        out.append(((np.clip(img.array.astype(np.float32), -200, 500) + 200) / 700, lab.array))
    return out


def check(name: str, data: list, batches: int) -> None:
    from ctdl.engine.trainer import _norms_in_float32
    from ctdl.losses.registry import create_loss
    from ctdl.models import create_model

    reg, kw, patch, _ = NETS[name]
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = create_model(reg, **kw)
    _norms_in_float32(model)
    loss_fn = create_loss("dice_ce")
    worst: dict[str, float] = {}
    for _ in range(batches):
        xs, ys = [], []
        for _ in range(4):
            im, la = data[rng.integers(len(data))]
            corner = [int(rng.integers(0, max(1, s - p + 1))) for s, p in zip(im.shape, patch)]
            sl = tuple(slice(c, c + p) for c, p in zip(corner, patch))
            pad = [(0, p - c) for p, c in zip(patch, im[sl].shape)]  # a volume shorter than the patch
            xs.append(np.pad(im[sl], pad, mode="edge"))
            ys.append(np.pad(la[sl], pad))
        x, y = torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ys)).long()
        model.zero_grad()
        loss_fn(model(x), y).backward()
        ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.dim() == 5}
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        loss_fn(out.float(), y).backward()
        for n, p in model.named_parameters():
            if n in ref:
                c = float(torch.nn.functional.cosine_similarity(ref[n].flatten(), p.grad.flatten(), dim=0))
                worst[n] = min(worst.get(n, 1.0), c) if np.isfinite(c) else float("nan")
    low = {n: round(c, 3) for n, c in worst.items() if not c >= 0.98}
    print(f"{name}: {len(worst)} convolutions, worst cosine {np.nanmin(list(worst.values())):.3f}, "
          f"{len(low)} under 0.98{': ' + str(low) if low else ''}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kits", default=str(REPO.parent / "shared" / "data" / "kits19"))
    ap.add_argument("--batches", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    for name, (_, _, _, spacing) in NETS.items():
        check(name, phantoms(Path(args.kits), spacing), args.batches)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
