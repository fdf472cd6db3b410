"""The `ctdl` command. Subcommands parse arguments and call the public API; no logic here.

Heavy modules are imported lazily inside each handler so `ctdl --help` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from ctdl import __version__
from ctdl.errors import CtdlError


def _cmd_data_info(args: argparse.Namespace) -> int:
    from ctdl.data.info import describe, format_info

    info = describe(args.path, series_uid=args.series_uid)
    print(json.dumps(info, indent=2, default=str) if args.json else format_info(info))
    return 0


def _cmd_data_convert(args: argparse.Namespace) -> int:
    from ctdl.io import read_volume, write_volume

    kwargs = {"series_uid": args.series_uid} if args.series_uid else {}
    vol = read_volume(args.input, **kwargs)
    out = write_volume(vol, args.output)
    print(f"wrote {out}: shape {vol.shape} (D, H, W), spacing {tuple(round(s, 4) for s in vol.spacing)} mm")
    return 0


def _cmd_data_synth_kits(args: argparse.Namespace) -> int:
    from ctdl.data.synthetic import select_cases, synth_kits_dataset

    cases: list[str] | int
    if args.cases:
        cases = args.cases
    else:
        cases = select_cases(args.kits, args.n, seed=args.seed)
    spacing = None if args.native else tuple(args.spacing)
    paths = synth_kits_dataset(args.kits, args.output, cases, spacing=spacing, seed=args.seed)
    print(f"{len(paths)} phantom cases in {args.output}")
    return 0


def _cmd_config_validate(args: argparse.Namespace) -> int:
    from ctdl.config import load_config

    cfg = load_config(args.file, overrides=args.set)
    print(f"{args.file}: valid ({cfg.task}, model {cfg.model.name}, {cfg.n_classes} classes)")
    return 0


def _cmd_config_defaults(args: argparse.Namespace) -> int:
    from ctdl.config import commented_defaults

    sys.stdout.write(commented_defaults())
    return 0


Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctdl",
        description="Config-driven deep learning for CT volumes. Arrays are (D, H, W) = (slices, rows, columns).",
    )
    parser.add_argument("--version", action="version", version=f"ctdl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # data ---------------------------------------------------------------------
    data = sub.add_parser("data", help="inspect, convert and synthesise data")
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p = dsub.add_parser("info", help="shape, spacing, orientation, value range, labels; KiTS19 case count")
    p.add_argument("path", help="a volume file, a DICOM series folder, a KiTS19 folder or a DLAE HDF5 file")
    p.add_argument("--series-uid", help="DICOM folder with several series: which one")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_data_info)
    p = dsub.add_parser("convert", help="convert a volume (e.g. a DICOM series to NIfTI), geometry preserved")
    p.add_argument("input")
    p.add_argument("output", help="output file (.nii.gz, .nii, .npz, .npy, .nrrd, .mha)")
    p.add_argument("--series-uid", help="DICOM folder with several series: which one")
    p.set_defaults(func=_cmd_data_convert)
    p = dsub.add_parser("synth-kits", help="render CT-like phantoms from KiTS19 masks (KiTS19 layout)")
    p.add_argument("--kits", default="../shared/data/kits19", help="folder of KiTS19 masks")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("-n", type=int, default=8, help="number of cases (chosen reproducibly)")
    p.add_argument("--cases", nargs="*", help="explicit case ids instead of -n")
    p.add_argument("--spacing", type=float, nargs=3, default=[3.0, 1.5, 1.5], metavar=("D", "H", "W"))
    p.add_argument("--native", action="store_true", help="keep the masks' native spacing")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_data_synth_kits)

    # config -------------------------------------------------------------------
    config = sub.add_parser("config", help="validate configs, print defaults")
    csub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    p = csub.add_parser("validate", help="check a YAML/JSON config against the schema")
    p.add_argument("file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key, e.g. training.epochs=2")
    p.set_defaults(func=_cmd_config_validate)
    p = csub.add_parser("defaults", help="print a complete, commented default config")
    p.set_defaults(func=_cmd_config_defaults)

    _register_extra(sub)
    return parser


def _register_extra(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Subcommands from the task layers (train, predict, evaluate, report, models)."""
    try:
        from ctdl.cli_tasks import register
    except ImportError:
        return
    register(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        # a group without its subcommand: show that group's help
        target = {"data": "data", "config": "config"}.get(args.command or "")
        if target:
            parser.parse_args([target, "--help"])
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return func(args)
    except CtdlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
