"""``ssl3d data``: cohorts (the phantom, importers, split files, checks, pictures)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.cli.arguments import add_settings_arguments, comma_list, load_settings


def command_data_phantom(args: argparse.Namespace) -> None:
    from benchmark.datasets.importers import prepare_output
    from benchmark.datasets.phantom import generate_phantom

    prepare_output(args.out, args.force)
    manifest = generate_phantom(
        args.out,
        labelled=args.labelled,
        unlabelled=args.unlabelled,
        size=args.size,
        seed=args.seed,
        prevalence=args.prevalence,
        difficulty=args.difficulty,
        layout=args.layout,
        workers=args.workers,
    )
    print(f"wrote {manifest}")


def command_data_splits(args: argparse.Namespace) -> None:
    from benchmark.datasets.manifest import read_manifest
    from benchmark.datasets.splits import make_splits, write_splits

    manifest = read_manifest(args.manifest)
    splits = make_splits(
        manifest.table[manifest.table["label"].notna()],
        test=args.test,
        folds=args.folds,
        seeds=tuple(int(s) for s in comma_list(args.seeds)),
        fractions=tuple(float(f) for f in comma_list(args.fractions)),
        test_seed=args.test_seed,
        test_subjects=args.test_subjects,
        test_mode=args.test_mode,
    )
    write_splits(splits, args.out)
    print(f"wrote {args.out}: {splits['subject_id'].nunique()} subjects, {len(splits)} rows")


def command_data_check(args: argparse.Namespace) -> None:
    import tempfile

    from benchmark.datasets.check import report_check, report_unreadable
    from benchmark.datasets.manifest import ManifestError
    from benchmark.rundata import check_data

    args.overrides.append(f"data.manifest={args.manifest}")  # the run would read this one
    cfg = load_settings(args)
    print(f"profile {cfg.profile} ({cfg.profile_reason})")
    with tempfile.TemporaryDirectory(prefix="ssl3d-check-") as scratch:
        try:
            check = check_data(cfg, Path(args.manifest), None if args.keep_cache else scratch)
            report = report_check(check)
        except ManifestError as error:
            report = report_unreadable(args.manifest, error)
    print(report.text)
    if not report.ok:
        for problem in report.problems:
            print(f"problem: {problem}", file=sys.stderr)
        raise SystemExit(1)


def command_data_show(args: argparse.Namespace) -> None:
    from benchmark.datasets.cohort import load_cohort
    from benchmark.datasets.show import draw_examples
    from benchmark.datasets.volumes import Preprocessing

    cohort = load_cohort(args.manifest, Preprocessing(size=args.size, crop=args.crop))
    draw_examples(cohort, args.out, n_per_class=args.examples)
    print(f"wrote {args.out}")


def command_data_import(args: argparse.Namespace) -> None:
    from benchmark.datasets import importers

    if args.source_format == "bids":
        result = importers.import_bids(
            args.source, args.out, args.label_column, args.positive, args.suffix, args.force
        )
    elif args.source_format == "medmnist":
        result = importers.import_medmnist(
            args.source,
            args.out,
            args.positive_class,
            seeds=tuple(int(s) for s in comma_list(args.seeds)),
            fractions=tuple(float(f) for f in comma_list(args.fractions)),
            force=args.force,
        )
    else:
        result = importers.import_folder(
            args.source,
            args.out,
            args.labels,
            args.file_column,
            args.label_column,
            args.positive,
            args.force,
        )
    for note in result.notes:
        print(note)


def _add_import_commands(data_commands: argparse._SubParsersAction) -> None:
    importer = data_commands.add_parser(
        "import", help="write a manifest (and NIfTI files) from BIDS, MedMNIST-3D or a folder"
    )
    formats = importer.add_subparsers(dest="source_format", required=True)
    bids = formats.add_parser("bids", help="a BIDS dataset labelled by participants.tsv")
    bids.add_argument("source", help="the BIDS dataset's root folder")
    bids.add_argument(
        "--label-column", required=True, help="the participants.tsv column with the labels"
    )
    bids.add_argument("--positive", required=True, help="the value that is label 1 (anomalous)")
    bids.add_argument("--suffix", help="keep only *_<SUFFIX>.nii[.gz] images, e.g. T1w")
    medmnist = formats.add_parser("medmnist", help="a MedMNIST-3D .npz archive")
    medmnist.add_argument("source", help="the .npz archive, e.g. nodulemnist3d.npz")
    medmnist.add_argument(
        "--positive-class",
        type=int,
        help="multi-class archives: the class that is label 1, every other class is 0",
    )
    medmnist.add_argument("--seeds", default="0,1,2", help="seeds of the split file")
    medmnist.add_argument(
        "--fractions", default="0.1,0.2,0.4,0.6,0.8,1.0", help="label fractions of the split file"
    )
    folder = formats.add_parser("folder", help="a folder of NIfTI files and a labels CSV")
    folder.add_argument("source", help="the folder of .nii/.nii.gz files")
    folder.add_argument("--labels", required=True, help="CSV with a file name and a label column")
    folder.add_argument("--file-column", default="file", help="the CSV's file name column")
    folder.add_argument("--label-column", default="label", help="the CSV's label column")
    folder.add_argument(
        "--positive", help="the value that is label 1 (default: labels are already 0/1)"
    )
    for parser in (bids, medmnist, folder):
        parser.add_argument("--out", required=True, help="an empty folder for the manifest")
        parser.add_argument("--force", action="store_true", help="write into a non-empty --out")
        parser.set_defaults(handler=command_data_import)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to ``ssl3d``."""
    data = commands.add_parser("data", help="cohorts: phantom, splits, checks, pictures")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    phantom = data_commands.add_parser("phantom", help="generate the built-in phantom cohort")
    phantom.add_argument("--out", required=True)
    phantom.add_argument(
        "--labelled", type=int, default=150, help="labelled subjects (2 sinuses each)"
    )
    phantom.add_argument("--unlabelled", type=int, default=300, help="unlabelled subjects")
    phantom.add_argument("--size", type=int, default=65, help="voxels per side of a sinus volume")
    phantom.add_argument("--seed", type=int, default=0)
    phantom.add_argument(
        "--prevalence", type=float, default=0.55, help="fraction of anomalous sinuses"
    )
    phantom.add_argument("--difficulty", type=float, default=0.5, help="0 (easy) to 1 (hard)")
    phantom.add_argument("--layout", choices=["sinus", "head"], default="sinus")
    phantom.add_argument("--workers", type=int, default=None)
    phantom.add_argument(
        "--force", action="store_true", help="write into a non-empty --out (replaces its cohort)"
    )
    phantom.set_defaults(handler=command_data_phantom)

    _add_import_commands(data_commands)

    splits = data_commands.add_parser(
        "splits", help="make the subject-grouped split file of a manifest"
    )
    splits.add_argument("manifest")
    splits.add_argument("--out", required=True)
    splits.add_argument("--test", type=float, default=0.3)
    splits.add_argument("--folds", type=int, default=5)
    splits.add_argument("--seeds", default="0,1,2")
    splits.add_argument("--fractions", default="0.1,0.2,0.4,0.6,0.8,1.0")
    splits.add_argument("--test-seed", type=int, default=0)
    splits.add_argument(
        "--test-subjects", type=int, default=None, help="exactly this many test subjects"
    )
    splits.add_argument(
        "--test-mode",
        choices=["fixed", "rotating"],
        default="fixed",
        help="fixed: one held-out test set; rotating: every subject tested once per seed",
    )
    splits.set_defaults(handler=command_data_splits)

    check = data_commands.add_parser(
        "check",
        help="run the checks `ssl3d run` makes on a manifest (for a profile); print a summary",
    )
    check.add_argument("manifest")
    add_settings_arguments(check)
    check.add_argument(
        "--keep-cache",
        action="store_true",
        help="keep the preprocessed cohort in data.cache_dir (default: next to the manifest)",
    )
    check.set_defaults(handler=command_data_check)

    show_data = data_commands.add_parser(
        "show", help="draw slices of normal and anomalous examples"
    )
    show_data.add_argument("manifest")
    show_data.add_argument("--out", required=True)
    show_data.add_argument("--size", type=int, default=64)
    show_data.add_argument("--crop", type=int, default=65)
    show_data.add_argument("--examples", type=int, default=3, help="examples per class")
    show_data.set_defaults(handler=command_data_show)
