"""Task subcommands of the `ctdl` command: train, predict, evaluate, report, models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_train(args: argparse.Namespace) -> int:
    from ctdl import api
    from ctdl.config.load import load_config

    overrides = list(args.set or [])
    if args.data:
        overrides.append(f"data.root={args.data}")
    cfg = load_config(args.config, overrides)
    if args.scale:
        from ctdl.config.scale import apply_scale

        cfg = apply_scale(cfg, args.scale, args.config)
    run = api.train(cfg, resume=args.resume, progress=not args.quiet)
    print(f"run folder: {run}")
    if (run / "metrics_summary.csv").exists():
        _print_summary(run)
    if (run / "report.html").exists():
        print(f"report: {run / 'report.html'}")
    return 0


def _print_summary(run: Path) -> None:
    import csv

    with (run / "metrics_summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        if r.get("metric", "").endswith("_dice"):
            print(f"  {r['metric']}: mean {float(r['mean']):.4f} (min {float(r['min']):.4f}, n={r.get('n', '')})")


def _cmd_predict(args: argparse.Namespace) -> int:
    from ctdl import api

    out = api.predict(args.model, args.input, args.output, device=args.device)
    for p in out:
        print(f"wrote {p}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ctdl import api
    from ctdl.metrics.segmentation import summarize

    rows = api.evaluate(args.pred, args.truth, args.output, kidney_includes_tumor=args.kidney_includes_tumor)
    summary = summarize(rows)
    keys = [k for k in summary if k.endswith(("_dice", "_hd95_mm", "_assd_mm"))]
    for k in keys:
        s = summary[k]
        print(f"{k}: mean {s['mean']:.4f} std {s['std']:.4f} min {s['min']:.4f} max {s['max']:.4f} (n={s['n']})")
    if args.output:
        print(f"wrote {Path(args.output) / 'metrics.csv'} and metrics_summary.csv")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from ctdl import api

    print(f"wrote {api.report(args.run)}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    import torch

    from ctdl.models.summary import layer_summary, model_table

    torch.set_num_threads(1)
    if args.name and args.input_shape:
        rows = layer_summary(args.name, args.input_shape)
        for r in rows:
            print(f"{r['layer']:<48} {r['type']:<22} {str(r['output']):<28} {r['params']:>12,}")
        return 0
    rows = model_table(args.name or "*")
    print(f"{'model':<28}{'task':<14}{'dims':>5}  {'default input':<16}{'params':>14}{'keras params':>14}  description")
    for r in rows:
        print(f"{r['name']:<28}{r['task']:<14}{r['dims']:>5}  {r['default_input']:<16}{r['params']:>14,}"
              f"{r['params_keras']:>14,}  {r['description']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("train", help="train the experiment a YAML/JSON config describes")
    p.add_argument("config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--data", help="dataset root (sets data.root)")
    p.add_argument("--scale", choices=["demo", "full"], help="demo: a reduced version that runs in minutes on a CPU")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("predict", help="segment CT volumes with a trained model; masks keep the input's geometry")
    p.add_argument("input", help="a volume file, a DICOM series folder, a KiTS19 folder or a folder of volumes")
    p.add_argument("--model", required=True, help="run folder or checkpoint (.pt)")
    p.add_argument("-o", "--output", required=True, help="output file (.nii.gz) or folder")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("evaluate", help="Dice, Jaccard, surface distances, detection, volumes per case and class")
    p.add_argument("pred", help="prediction file or folder")
    p.add_argument("truth", help="truth file, folder, or KiTS19 folder")
    p.add_argument("-o", "--output", help="folder for metrics.csv and metrics_summary.csv")
    p.add_argument("--kidney-includes-tumor", action="store_true", help="score kidney as kidney+tumour (KiTS19)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("models", help="list registered models with parameter counts, or summarise one")
    p.add_argument("name", nargs="?", help="a model name (or a glob such as 'unet*')")
    p.add_argument("--input-shape", type=int, nargs="+", metavar="N", help="C [D] H W: print a layer summary")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("report", help="(re)build a run folder's HTML report")
    p.add_argument("run")
    p.set_defaults(func=_cmd_report)
