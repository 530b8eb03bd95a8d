"""`geoloc train`: the CosPlace training loop as the study ran it, made restartable.

Epoch e trains on group e % groups_num with that group's own classifier and optimizer; only
the active group's classifier lives on the device. Validation on sf_xs/val closes each epoch
and the best model by R@1 is kept. Checkpoints (every `checkpoint_every` iterations and at
each epoch end) let a killed or pre-empted job resume where it stopped; SIGTERM and SIGUSR1
(sent by SLURM before a time limit) write one and exit non-zero.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import logging
import resource
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from geoloc.atomic import atomic_write_text
from geoloc.data.datasets import TestSet, TrainGroupDataset
from geoloc.data.groups import build_groups
from geoloc.data.image_cache import ImageCache
from geoloc.device import PRECISIONS, autocast, resolve_device
from geoloc.errors import GeolocError
from geoloc.evaluate.evaluation import checked_positives, evaluate_model
from geoloc.model.cost import gflops_per_image
from geoloc.model.losses import LOSSES, build_classifier
from geoloc.model.network import build_model, count_parameters, save_model
from geoloc.model.weights import sha256_file
from geoloc.provenance import device_name, package_versions
from geoloc.train import checkpoint as ckpt
from geoloc.train.augment import augment_batch

log = logging.getLogger(__name__)

class TrainingInterrupted(GeolocError):
    """A stop signal arrived; the state was checkpointed and the next run resumes from it."""


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines a training run's result (the checkpoint fingerprint)."""

    backbone: str = "resnet18"
    weights_format: str | None = None
    precision: str = "fp32"
    seed: int = 0
    epochs: int = 3
    iterations_per_epoch: int = 10_000
    batch_size: int = 32
    image_size: int = 512
    lr: float = 1e-5  # backbone + head
    classifier_lr: float = 0.01
    loss: str = "cosface"
    M: int = 10  # metres per class cell, east and north
    alpha: int = 30  # degrees per heading bin
    N: int = 5  # cells between two classes of the same group, east and north
    L: int = 2  # heading bins between two classes of the same group
    min_images_per_class: int = 10
    groups_num: int = 1
    fc_output_dim: int = 512
    trainable_blocks: int | None = None  # None: the study's default for the backbone
    max_bad_steps: int = 20  # consecutive non-finite losses before giving up
    positive_dist_threshold: float = 25.0

    def check(self) -> None:
        positive = ("epochs", "iterations_per_epoch", "batch_size", "image_size", "M", "alpha", "N", "L",
                    "min_images_per_class", "groups_num", "fc_output_dim", "max_bad_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise GeolocError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "classifier_lr", "positive_dist_threshold"):
            if not getattr(self, name) > 0:
                raise GeolocError(f"{name} must be positive, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise GeolocError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.loss not in LOSSES:
            raise GeolocError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.alpha > 360:
            raise GeolocError(f"alpha must be at most 360 degrees, got {self.alpha}")
        if self.groups_num > self.N * self.N * self.L:
            raise GeolocError(f"groups_num={self.groups_num} exceeds N*N*L={self.N * self.N * self.L}")


@dataclass(frozen=True)
class RunInfo:
    name: str
    backbone: str
    pretraining: str
    precision: str
    seed: int
    tag: str | None


class StopFlag:
    """Turns SIGTERM/SIGUSR1 into a flag the loop checks between iterations."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.signal = signum


def _ignore_stop_signals(_worker_id: int) -> None:
    # Loader workers leave stop signals to the main process, which checkpoints and shuts them down.
    for sig in StopFlag.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _mix(*numbers: int) -> int:
    """A seed for one (run seed, epoch, iteration, stream), independent of the order runs happen in."""
    value = 0x9E3779B97F4A7C15
    for n in numbers:
        value = (value ^ (n + 0x632BE59BD9B4E019 + (value << 6) + (value >> 2))) & (2**63 - 1)
    return value


class GroupBatchSampler:
    """Batches of (class, image) pairs: `batch_size` distinct classes, one random image each.

    Each batch is drawn from a generator seeded by (seed, epoch, iteration), so a resumed run
    draws exactly the batches the uninterrupted run would have.
    """

    def __init__(self, images_per_class: list[int], batch_size: int, seed: int, epoch: int,
                 start: int, stop: int) -> None:
        self.counts = torch.tensor(images_per_class, dtype=torch.float64)
        self.batch_size, self.seed, self.epoch, self.start, self.stop = batch_size, seed, epoch, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        for iteration in range(self.start, self.stop):
            g = torch.Generator().manual_seed(_mix(self.seed, self.epoch, iteration, 0))
            classes = torch.randperm(len(self.counts), generator=g)[: self.batch_size]
            picks = (torch.rand(self.batch_size, generator=g, dtype=torch.float64) * self.counts[classes]).long()
            yield list(zip(classes.tolist(), picks.tolist()))


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and key != "step":
                state[key] = value.to(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _listing_hash(train_dir: Path, groups: list[list[list[Path]]]) -> str:
    """sha256 of the trained classes' image names, relative to the training folder."""
    digest = hashlib.sha256()
    for group in groups:
        for images in group:
            digest.update("\0".join(str(Path(p).relative_to(train_dir)) for p in images).encode())
            digest.update(b"\1")
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Trainer:
    def __init__(self, settings: TrainSettings, run: RunInfo, *, train_dir: Path, val_dir: Path,
                 weights: Path | None, checkpoint_dir: Path, cache_dir: Path | None, device: str,
                 num_workers: int, checkpoint_every: int, image_cache_dir: Path | None = None,
                 max_bad_images: int = 0) -> None:
        settings.check()
        if checkpoint_every < 1:
            raise GeolocError(f"checkpoint_every must be at least 1, got {checkpoint_every}")
        self.s, self.run = settings, run
        self.device = resolve_device(device)
        self.num_workers, self.checkpoint_every = num_workers, checkpoint_every
        self.checkpoint_dir = checkpoint_dir
        self.weights = weights
        self.weights_sha256 = sha256_file(weights) if weights else None

        groups = build_groups(train_dir, M=settings.M, alpha=settings.alpha, N=settings.N, L=settings.L,
                              min_images_per_class=settings.min_images_per_class, cache_dir=cache_dir)
        if settings.groups_num > len(groups):
            raise GeolocError(f"groups_num={settings.groups_num} but {train_dir} has only {len(groups)} "
                              "non-empty groups with these M, alpha, N, L")
        cache = None
        if image_cache_dir is not None:
            # Decode and resize every training image once; unreadable ones are found here, up front.
            used = sorted({p for group in groups[: settings.groups_num] for images in group for p in images})
            cache = ImageCache.build_or_open(used, settings.image_size, image_cache_dir, num_workers=num_workers)
            if len(cache.bad_paths) > max_bad_images:
                raise GeolocError(f"{len(cache.bad_paths)} training images cannot be decoded (more than "
                                  f"max_bad_images={max_bad_images}); first: {cache.errors[min(cache.errors)]}")
            if cache.bad_paths:
                log.warning("skipping %d training images that cannot be decoded: %s", len(cache.bad_paths),
                            ", ".join(map(str, cache.bad_paths[:10])))
        self.datasets = [TrainGroupDataset(groups[g], settings.image_size, cache=cache)
                         for g in range(settings.groups_num)]
        for g, ds in enumerate(self.datasets):
            if settings.batch_size > len(ds):
                raise GeolocError(f"batch_size={settings.batch_size} is larger than the {len(ds)} classes "
                                  f"of group {g} in {train_dir}; lower batch_size or min_images_per_class")
        self.val_set = TestSet(val_dir)
        # A swapped or positive-less validation set must stop the run now, not after an epoch.
        checked_positives(self.val_set, settings.positive_dist_threshold)
        self.data_fingerprint = _listing_hash(train_dir, groups[: settings.groups_num])

        torch.manual_seed(settings.seed)
        self.model = build_model(settings.backbone, settings.fc_output_dim, weights=weights,
                                 weights_format=settings.weights_format,
                                 trainable_blocks=settings.trainable_blocks).to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.classifiers = [build_classifier(settings.loss, settings.fc_output_dim, len(ds)) for ds in self.datasets]
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.model_opt = torch.optim.Adam(trainable, lr=settings.lr)
        self.classifier_opts = [torch.optim.Adam(c.parameters(), lr=settings.classifier_lr) for c in self.classifiers]
        self.scaler = torch.amp.GradScaler("cuda", enabled=settings.precision == "amp" and self.device.type == "cuda")
        self.criterion = torch.nn.CrossEntropyLoss()

    # -- state ------------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        # The data too: resuming onto other classes would silently mix two trainings.
        return {**dataclasses.asdict(self.s), "weights_sha256": self.weights_sha256,
                "train_images": self.data_fingerprint}

    def _fresh_progress(self) -> dict[str, Any]:
        return {"epoch": 0, "iteration": 0, "global_iteration": 0, "history": [], "loss_sum": 0.0,
                "loss_count": 0, "bad_steps": 0, "train_seconds": 0.0, "val_seconds": 0.0,
                "epoch_train_seconds": 0.0, "best_r1": None, "best_epoch": None, "best_state": None,
                "started_at": _now(), "resumed_from_iteration": None}

    def _state(self, progress: dict[str, Any]) -> dict[str, Any]:
        state = {"fingerprint": self.fingerprint(), "progress": progress,
                 "model": self.model.state_dict(),
                 "classifiers": [c.state_dict() for c in self.classifiers],
                 "model_opt": self.model_opt.state_dict(),
                 "classifier_opts": [o.state_dict() for o in self.classifier_opts],
                 "scaler": self.scaler.state_dict(), "cpu_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def _restore(self, state: dict[str, Any]) -> dict[str, Any]:
        self.model.load_state_dict(state["model"])
        for classifier, saved in zip(self.classifiers, state["classifiers"]):
            classifier.load_state_dict(saved)
        self.model_opt.load_state_dict(state["model_opt"])
        for opt, saved in zip(self.classifier_opts, state["classifier_opts"]):
            opt.load_state_dict(saved)
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["cpu_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        progress = state["progress"]
        progress["resumed_from_iteration"] = progress["global_iteration"]
        return progress

    def _save(self, progress: dict[str, Any]) -> None:
        ckpt.save_checkpoint(self.checkpoint_dir, progress["global_iteration"], self._state(progress))

    # -- loop -------------------------------------------------------------------------------
    def fit(self, fresh: bool = False) -> dict[str, Any]:
        if fresh:
            ckpt.discard_checkpoints(self.checkpoint_dir)
        state = ckpt.load_latest_checkpoint(self.checkpoint_dir, self.fingerprint())
        progress = self._restore(state) if state else self._fresh_progress()
        if state:
            log.info("resumed at epoch %d iteration %d", progress["epoch"], progress["iteration"])
        with StopFlag() as stop:
            while progress["epoch"] < self.s.epochs:
                self._train_epoch(progress, stop)
                self._validate(progress)
                progress["epoch"] += 1
                progress["iteration"] = 0
                self._save(progress)
                if stop.signal is not None:
                    raise TrainingInterrupted(f"stopped by signal {stop.signal} after epoch "
                                              f"{progress['epoch'] - 1}; checkpoint saved, rerun to resume")
        return progress

    def _train_epoch(self, progress: dict[str, Any], stop: StopFlag) -> None:
        s, device, epoch = self.s, self.device, progress["epoch"]
        group = epoch % s.groups_num
        classifier, classifier_opt = self.classifiers[group].to(device), self.classifier_opts[group]
        _move_optimizer_state(classifier_opt, device)
        dataset = self.datasets[group]
        sampler = GroupBatchSampler(dataset.images_per_class, s.batch_size, s.seed, epoch,
                                    progress["iteration"], s.iterations_per_epoch)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=self.num_workers,
                            pin_memory=device.type == "cuda", worker_init_fn=_ignore_stop_signals,
                            prefetch_factor=4 if self.num_workers else None,
                            # Its own generator: creating a loader must not advance the global RNG.
                            generator=torch.Generator())
        self.model.train()
        log.info("epoch %d: training group %d (%d classes) for %d iterations", epoch, group, len(dataset),
                 s.iterations_per_epoch - progress["iteration"])
        bar = tqdm(total=s.iterations_per_epoch, initial=progress["iteration"], desc=f"epoch {epoch}",
                   unit="it", mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr)
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            aug_gen = torch.Generator(device=device).manual_seed(
                _mix(s.seed, epoch, progress["iteration"], 1))
            x = augment_batch(images, s.image_size, aug_gen)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, s.precision):
                descriptors = self.model(x)
                loss = self.criterion(classifier(descriptors, labels), labels)
            self.model_opt.zero_grad(set_to_none=True)
            classifier_opt.zero_grad(set_to_none=True)
            # One scalar check a step: a non-finite loss must never reach the weights.
            if not torch.isfinite(loss).item():
                progress["bad_steps"] += 1
                if progress["bad_steps"] >= s.max_bad_steps:
                    raise GeolocError(
                        f"training diverged: {progress['bad_steps']} consecutive non-finite losses at "
                        f"epoch {epoch} iteration {progress['iteration']}; the last good checkpoint in "
                        f"{self.checkpoint_dir} is kept and no model.pt is written (lower lr or use fp32)")
            else:
                progress["bad_steps"] = 0
                self.scaler.scale(loss).backward()
                self.scaler.step(self.model_opt)
                self.scaler.step(classifier_opt)
                self.scaler.update()
                loss_sum += loss.detach().float()
                progress["loss_count"] += 1
            progress["iteration"] += 1
            progress["global_iteration"] += 1
            bar.update(1)
            if progress["iteration"] % 20 == 0:
                bar.set_postfix(loss=f"{(progress['loss_sum'] + loss_sum.item()) / max(progress['loss_count'], 1):.3f}",
                                img_s=f"{bar.n * s.batch_size / max(bar.format_dict['elapsed'], 1e-9):.0f}",
                                refresh=False)
            # Never checkpoint inside a streak of non-finite losses: its state may be poisoned
            # (batch-norm statistics update even on skipped steps).
            due = progress["global_iteration"] % self.checkpoint_every == 0 or stop.signal is not None
            if due and progress["bad_steps"] == 0:
                self._close_segment(progress, loss_sum, start)
                loss_sum.zero_()
                start = time.perf_counter()
                self._save(progress)
                if stop.signal is not None:
                    bar.close()
                    raise TrainingInterrupted(
                        f"stopped by signal {stop.signal} at epoch {epoch} iteration {progress['iteration']}; "
                        "checkpoint saved, rerun to resume")
        bar.close()
        self._close_segment(progress, loss_sum, start)
        self.classifiers[group] = classifier.cpu()
        _move_optimizer_state(classifier_opt, torch.device("cpu"))

    def _close_segment(self, progress: dict[str, Any], loss_sum: torch.Tensor, start: float) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        progress["train_seconds"] += elapsed
        progress["epoch_train_seconds"] += elapsed
        progress["loss_sum"] += float(loss_sum)

    def _validate(self, progress: dict[str, Any]) -> None:
        s = self.s
        start = time.perf_counter()
        result = evaluate_model(self.model, self.val_set, batch_size=s.batch_size, device=self.device,
                                num_workers=self.num_workers, k=min(20, len(self.val_set.database_paths)),
                                positive_dist_threshold=s.positive_dist_threshold)
        val_seconds = time.perf_counter() - start
        progress["val_seconds"] += val_seconds
        recalls = {f"r{k}": float(v) for k, v in result.recalls.items()}
        train_seconds = progress["epoch_train_seconds"]
        epoch_log = {"epoch": progress["epoch"], "group": progress["epoch"] % s.groups_num,
                     "loss": progress["loss_sum"] / max(progress["loss_count"], 1),
                     "iterations": s.iterations_per_epoch, "train_seconds": train_seconds,
                     "val_seconds": val_seconds,
                     "images_per_second": s.iterations_per_epoch * s.batch_size / max(train_seconds, 1e-9),
                     "val_recalls": recalls}
        progress["history"].append(epoch_log)
        progress["loss_sum"], progress["loss_count"], progress["epoch_train_seconds"] = 0.0, 0, 0.0
        log.info("epoch %d: loss %.4f, val %s", progress["epoch"], epoch_log["loss"],
                 ", ".join(f"{k}={v:.1f}" for k, v in recalls.items()))
        r1 = recalls["r1"]
        if progress["best_r1"] is None or r1 > progress["best_r1"]:
            progress["best_r1"], progress["best_epoch"] = r1, progress["epoch"]
            progress["best_state"] = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def summary(self, progress: dict[str, Any]) -> dict[str, Any]:
        total, trainable = count_parameters(self.model)
        train_s, val_s = progress["train_seconds"], progress["val_seconds"]
        iterations = self.s.epochs * self.s.iterations_per_epoch
        return {
            "run": dataclasses.asdict(self.run),
            "hyperparameters": {**dataclasses.asdict(self.s), "checkpoint_every": self.checkpoint_every,
                                "num_workers": self.num_workers},
            "weights": None if self.weights is None else {
                "path": str(self.weights), "sha256": self.weights_sha256, "format": self.s.weights_format},
            "epochs": progress["history"],
            "best_epoch": progress["best_epoch"], "best_val_r1": progress["best_r1"],
            "train_seconds": train_s, "val_seconds": val_s, "training_time_seconds": train_s + val_s,
            "images_per_second": iterations * self.s.batch_size / max(train_s, 1e-9),
            "peak_memory_mb": _peak_memory_mb(self.device), "device": device_name(self.device),
            "params": total, "trainable_params": trainable,
            "gflops_per_image": gflops_per_image(self.model, self.s.image_size),
            "resumed_from_iteration": progress["resumed_from_iteration"],
            "versions": package_versions(), "started_at": progress["started_at"], "finished_at": _now(),
        }


# -- command line -----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainSettings()
    io = parser.add_argument_group("data and outputs")
    io.add_argument("--train-dir", type=Path, required=True, help="e.g. DATASETS/sf_xs/train")
    io.add_argument("--val-dir", type=Path, required=True, help="e.g. DATASETS/sf_xs/val")
    io.add_argument("--out-dir", type=Path, required=True, help="gets model.pt and train.json")
    io.add_argument("--checkpoint-dir", type=Path, required=True, help="resumable state (not an output)")
    io.add_argument("--cache-dir", type=Path, default=None, help="cache of the class/group lists")
    io.add_argument("--image-cache", type=Path, default=None,
                    help="folder of the decoded-image cache (decode each training image once); default: none")
    io.add_argument("--max-bad-images", type=int, default=0,
                    help="training images that may be undecodable and skipped (needs --image-cache)")
    run = parser.add_argument_group("run")
    run.add_argument("--run-name", required=True)
    run.add_argument("--backbone", default=d.backbone)
    run.add_argument("--pretraining", default="none", help="label of the weights source")
    run.add_argument("--tag", default=None)
    run.add_argument("--weights", default="none", help="pretrained weights file, or 'none'")
    run.add_argument("--weights-format", default=None)
    run.add_argument("--precision", choices=PRECISIONS, default=d.precision)
    run.add_argument("--seed", type=int, default=d.seed)
    run.add_argument("--device", default="auto", help="auto, cpu or cuda")
    run.add_argument("--num-workers", type=int, default=4)
    run.add_argument("--checkpoint-every", type=int, default=500, help="iterations between checkpoints")
    run.add_argument("--fresh", action="store_true", help="discard existing checkpoints and start over")
    hp = parser.add_argument_group("hyperparameters (defaults: the study's)")
    for field in dataclasses.fields(TrainSettings):
        if field.name in ("backbone", "weights_format", "precision", "seed"):
            continue
        kind = {"int": int, "float": float, "str": str}[field.type.split(" ")[0]]
        hp.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, type=kind,
                        default=getattr(d, field.name),
                        **({"choices": LOSSES} if field.name == "loss" else {}))


def run(args: argparse.Namespace) -> int:
    settings = TrainSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSettings)
                                if f.name not in ("weights_format",)},
                             weights_format=args.weights_format)
    weights = None if args.weights in ("none", "", None) else Path(args.weights)
    if weights is not None and not weights.is_file():
        raise GeolocError(f"weights file {weights} does not exist (run the fetch_weights rule first)")
    info = RunInfo(args.run_name, settings.backbone, args.pretraining, settings.precision, settings.seed, args.tag)
    trainer = Trainer(settings, info, train_dir=args.train_dir, val_dir=args.val_dir, weights=weights,
                      checkpoint_dir=args.checkpoint_dir, cache_dir=args.cache_dir, device=args.device,
                      num_workers=args.num_workers, checkpoint_every=args.checkpoint_every,
                      image_cache_dir=args.image_cache, max_bad_images=args.max_bad_images)
    progress = trainer.fit(fresh=args.fresh)
    summary = trainer.summary(progress)
    best = copy.deepcopy(trainer.model).cpu()
    best.load_state_dict(progress["best_state"])
    save_model(args.out_dir / "model.pt", best)
    try:
        atomic_write_text(args.out_dir / "train.json", json.dumps(summary, indent=2) + "\n")
    except BaseException:
        # Both outputs or neither: a model without its train.json would look finished.
        (args.out_dir / "model.pt").unlink(missing_ok=True)
        raise
    # The outputs are complete: the checkpoints have done their job, and leaving them would
    # block a retraining with changed settings (they would be refused as another run's).
    ckpt.discard_checkpoints(args.checkpoint_dir)
    log.info("best val R@1 %.2f at epoch %d; training time %.1f s", summary["best_val_r1"],
             summary["best_epoch"], summary["training_time_seconds"])
    return 0
