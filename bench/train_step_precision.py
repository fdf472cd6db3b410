"""Training-step time of the demo's 3D network on CPU: float32 (the baseline) against bfloat16 autocast and
channels-last layout, in one run, through ``ctdl.engine.Trainer`` (the code path ``training.amp`` and
``training.channels_last`` switch on).

Usage: python bench/train_step_precision.py [--threads 2] [--steps 15]
Prints ms per step for each setting and its ratio to float32. bfloat16 needs a CPU with native bfloat16
(AVX512-BF16 or AMX); elsewhere the trainer falls back to float32 and says so.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import torch


def time_setting(amp: bool, channels_last: bool, steps: int, warmup: int = 3) -> float:
    from ctdl.engine.trainer import Trainer
    from ctdl.losses.registry import create_loss
    from ctdl.models import create_model

    torch.manual_seed(0)
    model = create_model("unet3d_small")  # the demo's network (recipes/demo.yaml)
    x = torch.randn(4, 1, 24, 64, 64)  # the demo's batch: 4 patches of 24 x 64 x 64
    y = torch.randint(0, 3, (4, 24, 64, 64))
    batches = [(x, y)] * (warmup + steps)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = Trainer(model, opt, None, create_loss("dice_ce", batch=True), lambda epoch: iter(()), None, tmp, 1,
                     callbacks=[], amp=amp, channels_last=channels_last, progress=False)
        for b in batches[:warmup]:
            tr._train_step(b, 0)
        t = time.perf_counter()
        for b in batches[warmup:]:
            tr._train_step(b, 0)
        return (time.perf_counter() - t) / steps * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from ctdl.engine.trainer import amp_dtype

    print(f"torch {torch.__version__}, {args.threads} threads, CPU autocast dtype: {amp_dtype(torch.device('cpu'))}")
    base = None
    for amp, cl in [(False, False), (False, True), (True, False), (True, True)]:
        ms = time_setting(amp, cl, args.steps)
        base = base or ms
        print(f"amp={str(amp):<5} channels_last={str(cl):<5} {ms:7.0f} ms/step   {ms / base:5.2f} x float32")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
