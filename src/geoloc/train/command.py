"""`geoloc train`: train one run and write model.pt and train.json, both or neither.

Every value given on the command line meets the checks of the config schema, in its words
(geoloc.arguments). Run once per rank by srun or torchrun, or with `--nproc N` to start N
local ranks (geoloc.train.distributed); rank 0 writes the outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
from pathlib import Path

from geoloc.arguments import integer
from geoloc.atomic import atomic_outputs, remove_stale_temporaries
from geoloc.device import cpu_budget, resolve_device
from geoloc.errors import GeolocError
from geoloc.locking import locked
from geoloc.model.network import save_model
from geoloc.model.weights import sha256_file
from geoloc.train import checkpoint as ckpt
from geoloc.train import distributed
from geoloc.train.settings import (
    EVALUATION,
    RUN,
    TRAINING,
    RunInfo,
    TrainSettings,
    fields_from,
    option_of,
    parser_options,
)
from geoloc.train.stopping import Deadline, slurm_deadline
from geoloc.train.trainer import Trainer

log = logging.getLogger(__name__)

OUTPUTS = ("model.pt", "train.json")


def _folder(text: str) -> Path:
    # An empty value is what the workflow's "$TMPDIR" becomes where the variable is unset;
    # as a Path it would be the working directory.
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty (an unset variable such as $TMPDIR on this node?)")
    return Path(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    io = parser.add_argument_group("data and outputs")
    io.add_argument("--train-dir", type=Path, required=True, help="e.g. DATASETS/sf_xs/train")
    io.add_argument("--val-dir", type=Path, required=True, help="e.g. DATASETS/sf_xs/val")
    io.add_argument(
        "--out-dir",
        type=Path,
        required=True,
        help="gets model.pt, train.json and the TensorBoard events (tensorboard/)",
    )
    io.add_argument("--checkpoint-dir", type=Path, required=True, help="resumable state (not an output)")
    io.add_argument("--cache-dir", type=Path, default=None, help="cache of the class/group lists")
    io.add_argument(
        "--image-cache",
        type=Path,
        default=None,
        help="folder of the decoded-image cache (decode each training image once); default: none",
    )
    io.add_argument(
        "--image-cache-copy-to",
        type=_folder,
        default=None,
        help="copy the image cache into this folder first (node-local scratch) and read it there",
    )
    io.add_argument(
        "--max-bad-images",
        type=integer(minimum=0),
        default=0,
        help="training images that may be undecodable and skipped (needs --image-cache)",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--run-name", required=True)
    run.add_argument("--pretraining", default="none", help="label of the weights source")
    run.add_argument("--tag", default=None)
    run.add_argument("--weights", default="none", help="pretrained weights file, or 'none'")
    run.add_argument(
        "--weights-sha256",
        default=None,
        help="the registry's pinned sha256 of --weights (or its first 8+ hex digits): another "
        "file is refused before training starts",
    )
    run.add_argument("--device", default="auto", help="auto, cpu or cuda")
    run.add_argument("--num-workers", type=integer(minimum=0), default=4, help="image decoding processes")
    run.add_argument("--checkpoint-every", type=integer(minimum=1), default=500, help="iterations between checkpoints")
    run.add_argument(
        "--max-bad-steps",
        type=integer(minimum=1),
        default=20,
        help="consecutive non-finite losses after which training stops with an error",
    )
    run.add_argument(
        "--stop-margin-seconds",
        type=integer(minimum=1),
        default=None,
        help="inside a SLURM job: checkpoint and stop (exit 3) this long before the job's time "
        "limit; default: only on SLURM's USR1 signal",
    )
    run.add_argument("--fresh", action="store_true", help="discard existing checkpoints and start over")
    run.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the network (its compile time is reported apart, as compile_seconds)",
    )
    run.add_argument(
        "--nproc",
        type=integer(minimum=1),
        default=1,
        help="training processes to start on this machine (one per GPU; gloo on CPUs)",
    )
    for source, title in (
        (RUN, "the run's model"),
        (TRAINING, "hyperparameters (defaults: the study's)"),
        (EVALUATION, "validation"),
    ):
        group = parser.add_argument_group(title)
        for field in fields_from(source):
            group.add_argument(option_of(field.name), **parser_options(field))


def run(args: argparse.Namespace) -> int:
    launched = distributed.ranks_from_environment()
    if launched is None and args.nproc > 1:
        argv = distributed.strip_option(distributed.strip_option(args.argv, "--nproc"), "--threads")
        return distributed.launch_local(args.nproc, argv, max(1, cpu_budget(args.threads) // args.nproc))
    settings = TrainSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSettings)})
    weights = None if args.weights in ("none", "", None) else Path(args.weights)
    if weights is not None and not weights.is_file():
        raise GeolocError(f"weights file {weights} does not exist (run the fetch_weights rule first)")
    # Read first, before start-up eats into it: the job's clock runs from its start.
    deadline = slurm_deadline(args.stop_margin_seconds)
    ranks = distributed.Ranks()
    if launched is not None:
        ranks = distributed.start(*launched, resolve_device(args.device))
    try:
        with contextlib.ExitStack() as locks:
            if ranks.is_main:  # one training per run folder and checkpoint folder, whichever clone started it
                locks.enter_context(locked(args.out_dir, "--out-dir"))
                locks.enter_context(locked(args.checkpoint_dir, "--checkpoint-dir"))
            return _train(args, settings, weights, ranks, deadline)
    finally:
        distributed.stop()


def _train(
    args: argparse.Namespace,
    settings: TrainSettings,
    weights: Path | None,
    ranks: distributed.Ranks,
    deadline: Deadline | None,
) -> int:
    if ranks.is_main:
        _remove_incomplete_outputs(args.out_dir)
    info = RunInfo(args.run_name, settings.backbone, args.pretraining, settings.precision, settings.seed, args.tag)
    trainer = Trainer(
        settings,
        info,
        train_dir=args.train_dir,
        val_dir=args.val_dir,
        weights=weights,
        checkpoint_dir=args.checkpoint_dir,
        cache_dir=args.cache_dir,
        device=args.device,
        num_workers=args.num_workers,
        checkpoint_every=args.checkpoint_every,
        weights_sha256=args.weights_sha256,
        image_cache_dir=args.image_cache,
        image_cache_copy_to=args.image_cache_copy_to,
        max_bad_images=args.max_bad_images,
        max_bad_steps=args.max_bad_steps,
        events_dir=args.out_dir / "tensorboard",
        compile=args.compile,
        deadline=deadline,
        ranks=ranks,
    )
    progress = trainer.fit(fresh=args.fresh)
    if not ranks.is_main:
        return 0
    summary = trainer.summary(progress)
    model_path, json_path = (args.out_dir / name for name in OUTPUTS)
    with atomic_outputs(model_path, json_path) as (model_tmp, json_tmp):
        save_model(model_tmp, trainer.best_model(progress))
        # The digest of the file as written: `geoloc evaluate` records the one it reads (C3).
        summary["model_sha256"] = sha256_file(model_tmp)
        json_tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    # The outputs are complete: the checkpoints have done their job, and leaving them would
    # block a retraining with changed settings (they would be refused as another run's).
    ckpt.discard_checkpoints(args.checkpoint_dir)
    log.info(
        "best val R@1 %.2f at epoch %d; training time %.1f s",
        summary["best_val_r1"],
        summary["best_epoch"],
        summary["training_time_seconds"],
    )
    return 0


def _remove_incomplete_outputs(out_dir: Path) -> None:
    """What a killed run left in `out_dir`: temporary files, or one output without the other."""
    if not out_dir.is_dir():
        return
    for name in OUTPUTS:
        remove_stale_temporaries(out_dir, name)
    present = [out_dir / name for name in OUTPUTS if (out_dir / name).exists()]
    if len(present) == 1:
        log.warning(
            "removing %s: its run was killed before writing %s",
            present[0],
            next(name for name in OUTPUTS if not (out_dir / name).exists()),
        )
        present[0].unlink()
