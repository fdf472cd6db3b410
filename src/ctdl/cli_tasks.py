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
    if getattr(args, "pretrained", None):  # local ImageNet weights (ViPTT-Net: VGG16 features.N.* keys)
        overrides.append(f"model.pretrained={args.pretrained}")
    if getattr(args, "finetune_from", None):  # `ctdl finetune --from CKPT`
        overrides.append(f"classification.finetune_from={args.finetune_from}")
    cfg = load_config(args.config, overrides, scale=args.scale)  # --set wins over the scale's values
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
        if r.get("metric", "").endswith("_dice") or r.get("metric") in ("kappa", "accuracy", "macro_auc", "macro_f1"):
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
    # per class, what DLAE's evaluators report (recall = sensitivity), plus voxel accuracy
    keys = [k for k in summary if k.endswith(("_jaccard", "_dice", "_rvd", "_precision", "_sensitivity", "_mcc",
                                              "_hd95_mm", "_assd_mm")) or k == "accuracy"]
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


def _cmd_serve(args: argparse.Namespace) -> int:
    import ipaddress

    try:
        loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not args.token:
        print(f"error: --host {args.host} would serve other machines; refused without --token "
              "(every request must then carry it)", file=sys.stderr)
        return 2
    import uvicorn

    from ctdl.web.app import create_app

    app = create_app(args.runs_dir, args.data_dir or [], token=args.token, max_parallel=args.max_parallel,
                     upload_limit_mb=args.upload_limit_mb)
    url = f"http://{args.host}:{args.port}/" + (f"?token={args.token}" if args.token else "")
    print(f"ctdl web UI on {url} (runs: {args.runs_dir}; data: {', '.join(args.data_dir or []) or 'none'})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from ctdl import api
    from ctdl.experiments.results import collect_sweep_folder, results_markdown

    out = api.sweep(args.sweep, scale=args.scale, parallel=args.parallel, dry_run=args.dry_run,
                    collect_only=args.collect, overrides=args.set, progress=not args.quiet)
    if args.dry_run:
        import json

        runs = json.loads((out / "sweep.json").read_text())["runs"]
        for r in runs:
            print(f"{r['name']}: {r['model']} <- {Path(r['base']).name} {' '.join(f'{k}={v}' for k, v in r['set'].items())}")
        print(f"{len(runs)} runs valid; wrote {out / 'sweep.json'} (nothing trained)")
        return 0
    table = collect_sweep_folder(out)
    sys.stdout.write(results_markdown(table))
    print(f"wrote {out / 'results.csv'}, results.html and results.md")
    return 0 if all(r["status"] == "finished" for r in table.rows) else 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("train", help="train the experiment a YAML/JSON config describes")
    p.add_argument("config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--data", help="dataset root (sets data.root)")
    p.add_argument("--scale", metavar="NAME",
                   help="apply the config's scales.NAME overrides (recipes define 'demo': minutes on a CPU; 'full' = none)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--pretrained", metavar="PATH", help="local pretrained weights (sets model.pretrained; never downloads)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("finetune", help="train a classifier starting from a checkpoint, its head replaced (video -> CT)")
    p.add_argument("config")
    p.add_argument("--from", dest="finetune_from", required=True, metavar="CKPT",
                   help="checkpoint or run folder (sets classification.finetune_from)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--data", help="dataset root (sets data.root)")
    p.add_argument("--scale", metavar="NAME",
                   help="apply the config's scales.NAME overrides (recipes define 'demo': minutes on a CPU; 'full' = none)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--pretrained", metavar="PATH", help="local pretrained weights (sets model.pretrained)")
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

    p = sub.add_parser("serve", help="local web UI: config builder, runs with live curves, dataset check, CT viewer")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (other than loopback needs --token)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--runs-dir", default="runs", help="folder of run folders (started runs go here)")
    p.add_argument("--data-dir", action="append", metavar="DIR", help="a data folder the UI may read (repeatable)")
    p.add_argument("--token", help="secret every request must carry (required for a non-loopback --host)")
    p.add_argument("--max-parallel", type=int, default=1, help="runs trained at the same time (queue)")
    p.add_argument("--upload-limit-mb", type=float, default=2048.0, help="largest accepted upload")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("sweep", help="run a sweep file (product or list of runs over base configs), rank the results")
    p.add_argument("sweep", help="sweep YAML (base, runs and/or grid, rank_by, columns, output)")
    p.add_argument("--scale", help="apply this scale of every run's config (overrides the file's scale:)")
    p.add_argument("--parallel", type=int, default=1, metavar="N", help="train N runs at a time (default 1)")
    p.add_argument("--dry-run", action="store_true", help="validate every run and write sweep.json; train nothing")
    p.add_argument("--collect", action="store_true", help="only rebuild the results table from the run folders")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key in every run (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("report", help="(re)build a run folder's HTML report")
    p.add_argument("run")
    p.set_defaults(func=_cmd_report)
