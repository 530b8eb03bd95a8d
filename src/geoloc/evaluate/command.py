"""`geoloc evaluate`: one model on several test sets in one process; every CSV pair, or none.

The model is loaded once (`--model`), or built as training would start it (`--untrained`: the
baseline of a backbone and pretraining, with its baseline.json). Every test set is checked
before the first descriptor is computed; a database that two test sets share (the same
relative file names and sizes: Tokyo-Night's is Tokyo-XS's) is embedded once. All outputs are
written together at the end (geoloc.evaluate.writing.write_all_or_none).
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import functools
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from geoloc.arguments import integer, number
from geoloc.data.datasets import TestSet
from geoloc.device import DEVICES, channels_last, resolve_device
from geoloc.errors import GeolocError
from geoloc.evaluate.baseline import baseline_summary, build_baseline
from geoloc.evaluate.batches import upright_size
from geoloc.evaluate.descriptors import nearest_multiple
from geoloc.evaluate.evaluation import Embedding, checked_k, checked_positives, embed, score
from geoloc.evaluate.writing import Provenance, recall_row, write_all_or_none, write_queries, write_recalls
from geoloc.grid import NO_PRETRAINING
from geoloc.locking import locked
from geoloc.model.backbones import input_size_multiple
from geoloc.model.network import load_model
from geoloc.model.published import PUBLISHED, load_published
from geoloc.model.weights import FORMATS, sha256_file
from geoloc.provenance import checked_model, device_name

log = logging.getLogger(__name__)

# A test set's name becomes NAME.csv and NAME.queries.csv: a plain file name, never a path,
# never one test set's per-query file name for another's recalls.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_MAX_NAME = 200  # with ".queries.csv" and the temporary name's affixes, below 255 bytes
_UNTRAINED_ONLY = ("backbone", "pretraining", "weights", "weights_format", "fc_output_dim", "seed", "summary_out")
_DEFAULT_FC_OUTPUT_DIM, _DEFAULT_SEED = 512, 0


def test_set_argument(text: str) -> tuple[str, Path]:
    """An argparse type: NAME=DIR, NAME a safe file name."""
    name, equals, folder = text.partition("=")
    if not equals or not folder:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=DIR")
    if not _NAME.fullmatch(name) or len(name) > _MAX_NAME or name.lower().endswith(".queries"):
        raise argparse.ArgumentTypeError(
            f"test set name {name!r} is not a safe file name: letters, digits and _ . + - (not first), "
            f"at most {_MAX_NAME} characters, not ending in .queries"
        )
    return name, Path(folder)


test_set_argument.__test__ = False  # not a pytest test despite its name


def _named(kind: Callable[[str], object], metavar: str) -> Callable[[str], tuple[str, object]]:
    """An argparse type: NAME=VALUE, VALUE read by `kind`."""

    def parse(text: str) -> tuple[str, object]:
        name, equals, value = text.partition("=")
        if not equals or not name or not value:
            raise argparse.ArgumentTypeError(f"{text!r} is not NAME={metavar}")
        return name, kind(value)

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("the model: --model, or --untrained and what builds it")
    source = model.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="model.pt written by geoloc train")
    source.add_argument(
        "--untrained",
        action="store_true",
        help="the network as training starts it (seeded, pretrained weights, random GeM/fc)",
    )
    source.add_argument(
        "--published",
        choices=list(PUBLISHED),
        help="a released model (geoloc.model.published), its file given by --weights",
    )
    model.add_argument("--backbone", help="with --untrained: a study backbone or timm:<name>")
    model.add_argument(
        "--pretraining", help=f"with --untrained: the weights' label ({NO_PRETRAINING!r}: random initialisation)"
    )
    model.add_argument("--weights", type=Path, help="with --untrained: the pretrained weights file")
    model.add_argument("--weights-format", choices=FORMATS, help="with --weights (default: the backbone's)")
    model.add_argument(
        "--fc-output-dim",
        type=integer(minimum=1),
        help=f"with --untrained: descriptor size (default {_DEFAULT_FC_OUTPUT_DIM})",
    )
    model.add_argument(
        "--seed",
        type=integer(minimum=0, maximum=2**64 - 1),  # torch.manual_seed's range
        help=f"with --untrained: the training seed (default {_DEFAULT_SEED})",
    )
    model.add_argument("--summary-out", type=Path, help="with --untrained: the baseline.json to write")
    data = parser.add_argument_group("test sets and outputs")
    data.add_argument(
        "--test-set",
        dest="test_sets",
        type=test_set_argument,
        action="append",
        required=True,
        metavar="NAME=DIR",
        help="DIR holds database/ and queries/; repeat for more test sets",
    )
    data.add_argument(
        "--out-dir", type=Path, required=True, help="gets NAME.csv and NAME.queries.csv for every NAME, all or none"
    )
    protocol = parser.add_argument_group("protocol (changes the recalls; defaults: CosPlace's test.py)")
    protocol.add_argument(
        "--resize",
        type=integer(minimum=1),
        nargs=2,
        metavar=("H", "W"),
        help="resize every image to H x W (default: each at its own resolution)",
    )
    protocol.add_argument(
        "--autocast", action="store_true", help="forward pass under autocast, as amp trains (default: fp32)"
    )
    protocol.add_argument(
        "--k", type=integer(minimum=1), default=20, help="neighbours retrieved per query (at most the database size)"
    )
    protocol.add_argument(
        "--positive-dist-threshold",
        type=number(exclusive_minimum=0),
        default=25.0,
        help="metres (UTM) within which a database image is a correct match",
    )
    protocol.add_argument(
        "--set-threshold",
        dest="set_thresholds",
        action="append",
        default=[],
        type=_named(number(exclusive_minimum=0), "METRES"),
        metavar="NAME=METRES",
        help="test set NAME's threshold (default: --positive-dist-threshold); repeatable",
    )
    protocol.add_argument(
        "--set-queries",
        dest="set_queries",
        action="append",
        default=[],
        type=_named(Path, "FILE"),
        metavar="NAME=FILE",
        help="keep only the queries FILE lists (one file name a line) in test set NAME; repeatable",
    )
    runtime = parser.add_argument_group("runtime (does not change the recalls)")
    runtime.add_argument("--batch-size", type=integer(minimum=1), default=32, help="images of one size per batch")
    runtime.add_argument("--num-workers", type=integer(minimum=0), default=0, help="image decoding processes")
    runtime.add_argument("--device", default="auto", choices=DEVICES)


def run(args: argparse.Namespace) -> int:
    _check_model_flags(args)
    _check_outputs(args)
    folders = {args.out_dir.resolve(): "--out-dir"}
    if args.untrained:  # a baseline folder that holds the recalls folder stands for both
        summary_folder = args.summary_out.parent.resolve()
        folders = {
            summary_folder: "--summary-out's folder",
            **{folder: flag for folder, flag in folders.items() if not folder.is_relative_to(summary_folder)},
        }
    with contextlib.ExitStack() as locks:  # a second evaluation into the same files is refused
        for folder, flag in folders.items():
            locks.enter_context(locked(folder, flag))
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    queries_files = _per_set(args, "--set-queries", args.set_queries)
    test_sets = {name: TestSet(folder, queries_files.get(name)) for name, folder in args.test_sets}
    # One spelling in messages and CSVs: 25.0
    thresholds = {name: float(args.positive_dist_threshold) for name in test_sets}
    thresholds |= {name: float(value) for name, value in _per_set(args, "--set-threshold", args.set_thresholds).items()}
    positives = {}
    for name, test_set in test_sets.items():
        positives[name] = checked_positives(test_set, thresholds[name])
        checked_k(test_set, args.k)
        _check_file_names(test_set)

    seed = _DEFAULT_SEED if args.seed is None else args.seed
    model, model_sha256 = _model(args, seed, device)
    resize = tuple(args.resize) if args.resize else None
    kind = "baseline" if args.untrained else "published" if args.published else "trained"
    provenance = functools.partial(
        Provenance,
        model_sha256=model_sha256,
        k=args.k,  # the threshold: per set
        resize=resize,
        autocast=args.autocast,
        device=device_name(device),
        kind=kind,
    )
    embed_images = functools.partial(
        embed,
        model,
        batch_size=args.batch_size,
        device=device,
        num_workers=args.num_workers,
        resize=resize,
        autocast=args.autocast,
    )

    databases: list[tuple[TestSet, Embedding]] = []
    recall_files, query_files = [], []
    for name, folder in args.test_sets:
        test_set = test_sets[name]
        database = next((done for earlier, done in databases if _same_database(earlier, test_set)), None)
        if database is None:
            database = embed_images(test_set.database_paths)
            databases.append((test_set, database))
        else:
            log.info("%s: its database is an earlier test set's; embedded once", name)
        result = score(test_set, positives[name], database, embed_images(test_set.queries_paths), args.k)
        log.info("%s: %s", name, ", ".join(f"R@{n} {value:.1f}" for n, value in result.recalls.items()))
        row = recall_row(result, name, folder, provenance(positive_dist_threshold=thresholds[name]))
        recall_files.append((args.out_dir / f"{name}.csv", functools.partial(write_recalls, row=row)))
        query_files.append(
            (args.out_dir / f"{name}.queries.csv", functools.partial(write_queries, result=result, test_set=test_set))
        )

    summary_files = []
    if args.untrained:
        first_image = next(iter(test_sets.values())).database_paths[0]
        summary = baseline_summary(
            model,
            pretraining=args.pretraining,
            seed=seed,
            weights=args.weights,
            weights_format=args.weights_format,
            device=device,
            image_size=nearest_multiple(resize or upright_size(first_image), input_size_multiple(model)),
        )
        text = json.dumps(summary, indent=2) + "\n"
        summary_files.append((args.summary_out, lambda handle: handle.write(text)))
    # Renamed last to first: the per-query files, then the recall CSVs, then baseline.json.
    write_all_or_none(summary_files + recall_files + query_files)
    return 0


def _per_set(args: argparse.Namespace, flag: str, given: list[tuple[str, object]]) -> dict[str, object]:
    """`given` NAME=VALUE pairs as a dict; GeolocError for a name given twice or not a --test-set."""
    names = [name for name, _ in args.test_sets]
    values: dict[str, object] = {}
    for name, value in given:
        if name not in names:
            raise GeolocError(f"{flag} {name}=...: {name!r} is not a --test-set name ({', '.join(names)})")
        if name in values:
            raise GeolocError(f"{flag}: test set {name!r} is given twice")
        values[name] = value
    return values


def _model(args: argparse.Namespace, seed: int, device: torch.device) -> tuple[torch.nn.Module, str]:
    """The model on `device` and the sha256 of its file ("" for the untrained baseline)."""
    if args.untrained:
        fc_output_dim = _DEFAULT_FC_OUTPUT_DIM if args.fc_output_dim is None else args.fc_output_dim
        model = build_baseline(
            args.backbone,
            fc_output_dim=fc_output_dim,
            seed=seed,
            weights=args.weights,
            weights_format=args.weights_format,
        ).to(device)
        model_sha256 = ""
    elif args.published:
        model = load_published(args.published, args.weights).to(device)
        model_sha256 = sha256_file(args.weights)
    else:
        model_sha256 = checked_model(args.model)  # before a changed file is unpickled
        model = load_model(args.model, map_location=device)
    if channels_last(device, "amp" if args.autocast else "fp32"):
        model = model.to(memory_format=torch.channels_last)
    return model, model_sha256


def _check_model_flags(args: argparse.Namespace) -> None:
    given = [name for name in _UNTRAINED_ONLY if getattr(args, name) is not None]
    if args.published:
        if args.weights is None or given != ["weights"]:
            others = (f"--{name.replace('_', '-')}" for name in _UNTRAINED_ONLY if name != "weights")
            raise GeolocError(f"--published takes its file as --weights and none of {', '.join(others)}")
        return
    if not args.untrained:
        if given:
            raise GeolocError(f"--{given[0].replace('_', '-')} goes with --untrained, not --model")
        return
    missing = [
        f"--{name.replace('_', '-')}"
        for name in ("backbone", "pretraining", "summary_out")
        if getattr(args, name) is None
    ]
    if missing:
        raise GeolocError(
            f"--untrained needs --backbone, --pretraining and --summary-out (missing: {', '.join(missing)})"
        )
    if (args.pretraining == NO_PRETRAINING) != (args.weights is None):
        raise GeolocError(
            f"--pretraining {args.pretraining} "
            + (
                "is random initialisation: it takes no --weights"
                if args.weights is not None
                else f"needs its --weights file (or --pretraining {NO_PRETRAINING} for random initialisation)"
            )
        )
    if args.weights_format is not None and args.weights is None:
        raise GeolocError("--weights-format goes with --weights")


def _check_outputs(args: argparse.Namespace) -> None:
    seen: dict[str, str] = {}
    for name, _ in args.test_sets:
        # Case-insensitive file systems (macOS) would write Tokyo.csv over tokyo.csv.
        if (earlier := seen.get(name.casefold())) is not None:
            raise GeolocError(
                f"--test-set: the name {name!r} is given twice"
                if earlier == name
                else f"--test-set: the names {earlier!r} and {name!r} are one file on a case-insensitive disk"
            )
        seen[name.casefold()] = name
    _check_folder("--out-dir", args.out_dir)
    if args.untrained:
        if args.summary_out.is_dir():
            raise GeolocError(f"--summary-out {args.summary_out} is a folder, not a file name")
        _check_folder("--summary-out", args.summary_out.parent)
        outputs = {
            (args.out_dir / f"{name}{suffix}").resolve()
            for name, _ in args.test_sets
            for suffix in (".csv", ".queries.csv")
        }
        if args.summary_out.resolve() in outputs:
            raise GeolocError(f"--summary-out {args.summary_out} is one of the CSVs --out-dir gets")


def _check_folder(flag: str, folder: Path) -> None:
    """The folder exists or can be made: its nearest existing ancestor is a folder (found now,
    not after all the embedding)."""
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not existing.is_dir():
        raise GeolocError(
            f"{flag} {folder} is not a folder" if existing == folder else f"{flag} {folder}: {existing} is not a folder"
        )


def _check_file_names(test_set: TestSet) -> None:
    # Every name goes into a UTF-8 CSV; a name that is not valid UTF-8 (bytes that
    # os.fsdecode turned into surrogates) could not be written, after all the embedding.
    for path in (*test_set.database_paths, *test_set.queries_paths):
        try:
            str(path).encode("utf-8")
        except UnicodeEncodeError:
            raise GeolocError(f"image file name {path!r} is not valid UTF-8: rename it") from None


def _same_database(a: TestSet, b: TestSet) -> bool:
    """Whether two test sets' databases hold the same images: the same relative file names and
    sizes (Tokyo-Night's is a copy of Tokyo-XS's), and, only then, the same bytes (two
    databases of one city can share names and sizes, but not content)."""
    folders = a.folder / "database", b.folder / "database"
    names = [
        [path.relative_to(folder) for path in paths]
        for folder, paths in zip(folders, (a.database_paths, b.database_paths))
    ]
    if names[0] != names[1]:
        return False
    if os.path.samefile(*folders):
        return True
    return all(filecmp.cmp(x, y, shallow=False) for x, y in zip(a.database_paths, b.database_paths))
