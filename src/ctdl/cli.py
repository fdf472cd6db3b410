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


def _cmd_config_import_dlae(args: argparse.Namespace) -> int:
    from ctdl.config.dlae import apply_dlae_overrides, dlae_import
    from ctdl.config.load import apply_overrides, config_from_dict, dump_config, read_mapping
    from ctdl.io.atomic import atomic_write_text

    raw, rest = apply_dlae_overrides(read_mapping(args.file), args.set, source=args.file)
    data, notes = dlae_import(raw, args.file)
    cfg = config_from_dict(apply_overrides(data, rest), args.file)
    head = [f"# imported from the DLAE config {args.file} by `ctdl config import-dlae`"]
    head += [f"# note: {n}" for n in notes]
    text = "\n".join(head) + "\n" + dump_config(cfg)
    if args.output:
        atomic_write_text(args.output, text)
        print(f"wrote {args.output}: task {cfg.task}, model {cfg.model.name}" + (f", {len(notes)} notes" if notes else ""))
    else:
        sys.stdout.write(text)
    return 0


def _cmd_data_to_hdf5(args: argparse.Namespace) -> int:
    from ctdl.io.hdf5 import nifti_cases_to_hdf5

    out = nifti_cases_to_hdf5(args.input, args.output_x, args.output_y, context=args.context,
                              cases=args.cases, skip_empty=args.skip_empty, dtype=args.dtype, model=args.model)
    print(f"wrote {out['n_samples']} samples: {out['x']} and {out['y']} (sample shape {out['shape']})")
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
    p = dsub.add_parser("to-hdf5", help="write NIfTI cases (KiTS19 folder or images/labels folders) as a DLAE HDF5 pair")
    p.add_argument("input", help="a KiTS19-style folder (case_XXXXX/imaging + segmentation) or a folder with images/ and labels/")
    p.add_argument("output_x", help="images HDF5 file to write")
    p.add_argument("output_y", help="annotations HDF5 file to write")
    p.add_argument("--context", choices=["2D", "3D"], default="2D", help="2D: one sample per axial slice; 3D: one per volume")
    p.add_argument("--cases", nargs="*", help="only these case ids")
    p.add_argument("--skip-empty", action="store_true", help="2D: leave out slices without any labelled voxel")
    p.add_argument("--dtype", default="float32", help="image dtype in the file (labels are uint8)")
    p.add_argument("--model", choices=["fcn", "cnn_classification", "bbd"], default="fcn",
                   help="annotation layout: fcn label maps, cnn_classification highest label present, bbd boxes per component")
    p.set_defaults(func=_cmd_data_to_hdf5)
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
    p = csub.add_parser("import-dlae", help="convert a DLAE JSON config into a ctdl YAML config (checked against the schema)")
    p.add_argument("file", help="DLAE config (.json)")
    p.add_argument("-o", "--output", help="output YAML (default: print)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a DLAE key (paths.train_X=...) or a ctdl key")
    p.set_defaults(func=_cmd_config_import_dlae)

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
