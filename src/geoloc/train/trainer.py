"""The CosPlace training loop as the study ran it, made restartable and distributable.

Epoch e trains on group e % groups_num with that group's own classifier and optimizer; only
the active group's classifier lives on the device. Validation on sf_xs/val closes each epoch
and the best model by R@1 is kept. Checkpoints (every `checkpoint_every` iterations and at
each epoch end) let a killed or pre-empted job resume where it stopped; Ctrl-C, SIGTERM,
SIGUSR1 (sent by SLURM before a time limit) and the job's own time limit coming near write one
and stop (geoloc.train.stopping).

On a GPU the loop never waits for the device within a step: the non-finite-loss guard skips
bad steps on the device (geoloc.train.guard), and the host reads the per-step losses every
SYNC_EVERY steps and before each checkpoint. In a distributed run (geoloc.train.distributed)
every rank runs this loop on its slice of each batch; rank 0 alone validates and writes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from geoloc.data.datasets import TestSet, TrainGroupDataset
from geoloc.data.groups import build_groups
from geoloc.data.image_cache import ImageCache
from geoloc.data.images import decode_size, stored_side
from geoloc.data.listing import Listing
from geoloc.device import autocast, channels_last, resolve_device
from geoloc.errors import GeolocError
from geoloc.evaluate.evaluation import checked_positives, evaluate_model
from geoloc.model.backbones import input_size_multiple
from geoloc.model.cost import gflops_per_image
from geoloc.model.losses import build_classifier
from geoloc.model.network import build_model, count_parameters
from geoloc.model.weights import verify_weights
from geoloc.provenance import device_name, fingerprint_of, now, package_versions, peak_memory_mb
from geoloc.train import checkpoint as ckpt
from geoloc.train.augment import augment_batch
from geoloc.train.batchnorm import sync_batchnorm
from geoloc.train.distributed import Ranks
from geoloc.train.events import TrainingEvents
from geoloc.train.fingerprint import trained_images_sha256
from geoloc.train.guard import GuardedStep, StepWindow, adam
from geoloc.train.loader import batches, training_loader
from geoloc.train.sampler import GroupBatchSampler, seed_for
from geoloc.train.settings import RunInfo, TrainSettings
from geoloc.train.stopping import Deadline, StopFlag

log = logging.getLogger(__name__)


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    # Fused Adam keeps its step counts on the parameters' device too.
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                state[key] = value.to(device)


def open_image_cache(listing: Listing, size: int, folder: Path, copy_to: Path | None, num_workers: int,
                      max_bad_images: int) -> ImageCache:
    """The decoded-image cache of the whole training folder (what `geoloc cache-images` builds,
    so the key matches; built here when missing), copied to `copy_to` first if given.

    Undecodable images were found when it was built: more than `max_bad_images` of them stop
    the run before its first iteration.
    """
    cache = ImageCache.build_or_open(listing, size, folder, num_workers=num_workers)
    if copy_to is not None:
        cache = cache.copy_to(copy_to)
    if len(cache.bad_paths) > max_bad_images:
        raise GeolocError(f"{len(cache.bad_paths)} images of {listing.root} cannot be decoded (more than "
                          f"max_bad_images={max_bad_images}); first: {cache.errors[min(cache.errors)]}")
    if cache.bad_paths:
        log.warning("skipping %d training images that cannot be decoded: %s", len(cache.bad_paths),
                    ", ".join(map(str, cache.bad_paths[:10])))
    return cache


@contextlib.contextmanager
def _cudnn_autotuning(device: torch.device):
    """cuDNN times its algorithms once for the fixed training batch shape; not for validation,
    whose images may come in many sizes."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda"
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


class Trainer:
    """One training run. `settings` make its result; every other argument is a runtime knob.

    weights_sha256: the registry's pinned digest of `weights` (or a prefix); a file with another
    one is refused before anything else. image_cache_dir: the decoded-image cache, read from
    `image_cache_copy_to` (node-local scratch) when given. deadline: when to checkpoint and
    stop before a SLURM time limit (geoloc.train.stopping).
    """

    def __init__(self, settings: TrainSettings, run: RunInfo, *, train_dir: Path, val_dir: Path,
                 weights: Path | None, checkpoint_dir: Path, cache_dir: Path | None, device: str,
                 num_workers: int, checkpoint_every: int, weights_sha256: str | None = None,
                 image_cache_dir: Path | None = None, image_cache_copy_to: Path | None = None,
                 max_bad_images: int = 0, max_bad_steps: int = 20, events_dir: Path | None = None,
                 compile: bool = False, deadline: Deadline | None = None, ranks: Ranks = Ranks()) -> None:
        settings.check()
        for name, value in (("checkpoint_every", checkpoint_every), ("max_bad_steps", max_bad_steps)):
            if value < 1:
                raise GeolocError(f"{name} must be at least 1, got {value}")
        if image_cache_dir is None and max_bad_images:
            raise GeolocError(f"max_bad_images={max_bad_images} needs the image cache (training.image_cache, "
                              "--image-cache): undecodable images are found while it is filled; without it "
                              "the first one stops the training")
        if image_cache_dir is None and image_cache_copy_to is not None:
            raise GeolocError(f"--image-cache-copy-to {image_cache_copy_to} needs --image-cache: there is no "
                              "cache to copy")
        if settings.batch_size < ranks.world:
            raise GeolocError(f"batch_size={settings.batch_size} is smaller than the {ranks.world} training "
                              "processes: each needs at least one image of every batch")
        self.s, self.run, self.ranks = settings, run, ranks
        self.device = ranks.device(resolve_device(device))
        self.num_workers, self.checkpoint_every = num_workers, checkpoint_every
        self.checkpoint_dir, self.events_dir = checkpoint_dir, events_dir
        self.max_bad_steps, self.deadline = max_bad_steps, deadline
        self.weights = weights
        if weights is None and weights_sha256 is not None:
            raise GeolocError(f"--weights-sha256 {weights_sha256} is given but no --weights file")
        # A file other than the registry's is refused now, not after an hour of listing and decoding.
        self.weights_sha256 = verify_weights(weights, weights_sha256) if weights else None
        if ranks.is_main:
            ckpt.remove_stale_checkpoint_files(checkpoint_dir)

        groups = build_groups(train_dir, M=settings.M, alpha=settings.alpha, N=settings.N, L=settings.L,
                              min_images_per_class=settings.min_images_per_class, cache_dir=cache_dir)
        if settings.groups_num > len(groups):
            raise GeolocError(f"groups_num={settings.groups_num} but {train_dir} has only {len(groups)} "
                              "non-empty groups with these M, alpha, N, L")
        # Decoded large enough that a random-resized crop keeps the stored images' detail.
        self.decode_size = decode_size(settings.image_size, stored_side(groups.listing[0]))
        cache = None
        if image_cache_dir is not None:
            cache = open_image_cache(groups.listing, self.decode_size, image_cache_dir, image_cache_copy_to,
                                      num_workers, max_bad_images)
        self.image_cache_build_seconds = None if cache is None else cache.build_seconds
        self.datasets = [TrainGroupDataset(groups[g], self.decode_size, cache=cache)
                         for g in range(settings.groups_num)]
        for g, ds in enumerate(self.datasets):
            if settings.batch_size > len(ds):
                raise GeolocError(f"batch_size={settings.batch_size} is larger than the {len(ds)} classes "
                                  f"of group {g} in {train_dir}; lower batch_size or min_images_per_class")
        self.val_set = TestSet(val_dir)
        # A swapped or positive-less validation set must stop the run now, not after an epoch.
        checked_positives(self.val_set, settings.positive_dist_threshold)
        # The images trained on: what the groups hold, less what the image cache could not decode.
        self.data_fingerprint = trained_images_sha256(ds.classes for ds in self.datasets)

        torch.manual_seed(settings.seed)
        model = build_model(settings.backbone, settings.fc_output_dim, weights=weights,
                            weights_format=settings.weights_format, trainable_blocks=settings.trainable_blocks,
                            aggregator=settings.aggregator, image_size=settings.image_size)
        if ranks.world > 1:
            model = sync_batchnorm(model, self.device)
        self.model = model.to(self.device)
        self.channels_last = channels_last(self.device, settings.precision)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.classifiers = [build_classifier(settings.loss, model.descriptor_dim, len(ds)) for ds in self.datasets]
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.model_opt = adam(trainable, settings.lr, self.device)
        self.classifier_opts = [adam(c.parameters(), settings.classifier_lr, self.device) for c in self.classifiers]
        self.step = GuardedStep(self.device, settings.precision)
        self.criterion = torch.nn.CrossEntropyLoss()
        self.train_model = ranks.wrap(self.model, self.device)
        self.compile = compile
        if compile:
            self.train_model = torch.compile(self.train_model)
        self._compiled = False

    # -- state ------------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        # The data too: resuming onto other classes would silently mix two trainings.
        return {**dataclasses.asdict(self.s), "weights_sha256": self.weights_sha256,
                "train_images": self.data_fingerprint}

    def _fresh_progress(self) -> dict[str, Any]:
        return {"epoch": 0, "iteration": 0, "global_iteration": 0, "history": [], "loss_sum": 0.0,
                "loss_count": 0, "bad_steps": 0, "train_seconds": 0.0, "val_seconds": 0.0,
                "epoch_train_seconds": 0.0, "compile_seconds": None, "best_r1": None, "best_epoch": None,
                "best_state": None, "started_at": now(), "resumed_from_iteration": None}

    def _state(self, progress: dict[str, Any]) -> dict[str, Any]:
        state = {"fingerprint": self.fingerprint(), "progress": progress,
                 "model": self.model.state_dict(),
                 "classifiers": [c.state_dict() for c in self.classifiers],
                 "model_opt": self.model_opt.state_dict(),
                 "classifier_opts": [o.state_dict() for o in self.classifier_opts],
                 "scaler": self.step.scaler.state_dict(), "cpu_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def _restore(self, state: dict[str, Any]) -> dict[str, Any]:
        try:
            self.model.load_state_dict(state["model"])
            for classifier, saved in zip(self.classifiers, state["classifiers"], strict=True):
                classifier.load_state_dict(saved)
            self.model_opt.load_state_dict(state["model_opt"])
            for opt, saved in zip(self.classifier_opts, state["classifier_opts"], strict=True):
                opt.load_state_dict(saved)
            self.step.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["cpu_rng"])
            if "cuda_rng" in state and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise GeolocError(f"checkpoint {state['path']} does not fit this training ({exc}); rerun with "
                              "--fresh to start over") from exc
        progress = state["progress"]
        progress["resumed_from_iteration"] = progress["global_iteration"]
        return progress

    def _save(self, progress: dict[str, Any]) -> None:
        if self.ranks.is_main:
            ckpt.save_checkpoint(self.checkpoint_dir, progress["global_iteration"], self._state(progress))

    # -- loop -------------------------------------------------------------------------------
    def fit(self, fresh: bool = False) -> dict[str, Any]:
        if fresh and self.ranks.is_main:
            ckpt.discard_checkpoints(self.checkpoint_dir)
        self.ranks.barrier()  # every rank reads the checkpoints rank 0 kept
        state = ckpt.load_latest_checkpoint(self.checkpoint_dir, self.fingerprint())
        progress = self._restore(state) if state else self._fresh_progress()
        if state:
            log.info("resumed at epoch %d iteration %d", progress["epoch"], progress["iteration"])
        events = TrainingEvents(self.events_dir if self.ranks.is_main else None, progress["resumed_from_iteration"])
        try:
            with StopFlag(self.deadline) as stop:
                while progress["epoch"] < self.s.epochs:
                    self._train_epoch(progress, stop, events)
                    self._validate(progress, events)
                    progress["epoch"] += 1
                    progress["iteration"] = 0
                    self._save(progress)
                    # After the last epoch only a signal stops: writing the outputs takes seconds,
                    # a requeue to write them after the deadline would wait in the queue again.
                    last = progress["epoch"] == self.s.epochs
                    if self._agree_to_stop(stop.signal is not None if last else stop.asked):
                        raise stop.interrupted(f"after epoch {progress['epoch'] - 1}")
        finally:
            events.close()
        return progress

    def _agree_to_stop(self, asked: bool) -> bool:
        """Whether any rank was `asked` to stop; waits until rank 0's checkpoint is written."""
        flag = torch.tensor([float(asked)], device=self.device)
        self.ranks.all_reduce(flag)
        stopping = flag.item() > 0
        if stopping:
            self.ranks.barrier()
        return stopping

    def _train_epoch(self, progress: dict[str, Any], stop: StopFlag, events: TrainingEvents) -> None:
        s, device, epoch = self.s, self.device, progress["epoch"]
        group = epoch % s.groups_num
        classifier, classifier_opt = self.classifiers[group].to(device), self.classifier_opts[group]
        _move_optimizer_state(classifier_opt, device)
        classifier_step = self.ranks.wrap(classifier, device)
        dataset = self.datasets[group]
        start_row, stop_row = self.ranks.part(s.batch_size)
        # Each rank's share of the global batch's mean loss, times the number of ranks: DDP's
        # gradient average is then the gradient of that mean, whatever the slices' sizes.
        loss_weight = (stop_row - start_row) / s.batch_size
        sampler = GroupBatchSampler(dataset.images_per_class, s.batch_size, s.seed, epoch,
                                    progress["iteration"], s.iterations_per_epoch, part=(start_row, stop_row))
        loader = training_loader(dataset, sampler, self.decode_size, self.num_workers, device)
        self.model.train()
        log.info("epoch %d: training group %d (%d classes) for %d iterations", epoch, group, len(dataset),
                 s.iterations_per_epoch - progress["iteration"])
        window = StepWindow(device)
        bar = tqdm(total=s.iterations_per_epoch, initial=progress["iteration"], desc=f"epoch {epoch}",
                   unit="it", mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr,
                   disable=not self.ranks.is_main)
        # The bar is closed before any error propagates: an error line must be the last one.
        with bar, _cudnn_autotuning(device):
            start = time.perf_counter()
            for images, labels in batches(loader):
                first_compiled_step = self.compile and not self._compiled
                step_start = time.perf_counter()
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                aug_gen = torch.Generator(device=device).manual_seed(seed_for(s.seed, epoch, progress["iteration"], 1))
                x = augment_batch(images, s.image_size, aug_gen, rows=(start_row, s.batch_size))
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(device, s.precision):
                    loss = self.criterion(classifier_step(self.train_model(x), labels), labels)
                self.model_opt.zero_grad(set_to_none=True)
                classifier_opt.zero_grad(set_to_none=True)
                self.step(loss * (loss_weight * self.ranks.world), [self.model_opt, classifier_opt])
                window.add(loss * loss_weight)
                if first_compiled_step:
                    start += self._time_compilation(progress, step_start)
                progress["iteration"] += 1
                progress["global_iteration"] += 1
                bar.update(1)
                due = progress["global_iteration"] % self.checkpoint_every == 0
                asked = stop.asked and self.ranks.world == 1
                if not (due or asked or window.full):
                    continue
                stopping = self._read_window(progress, window, stop, events, bar)
                # Never checkpoint inside a streak of non-finite losses: its state may be poisoned
                # (batch-norm statistics update even on skipped steps).
                if (due or stopping) and progress["bad_steps"] == 0:
                    self._close_segment(progress, start)
                    start = time.perf_counter()
                    self._save(progress)
                    if stopping:
                        self.ranks.barrier()  # rank 0's checkpoint is written before any rank exits
                        raise stop.interrupted(f"at epoch {epoch} iteration {progress['iteration']}")
            if window.count:
                self._read_window(progress, window, stop, events, bar)
        self._close_segment(progress, start)
        self.classifiers[group] = classifier.cpu()
        _move_optimizer_state(classifier_opt, torch.device("cpu"))

    def _time_compilation(self, progress: dict[str, Any], step_start: float) -> float:
        """Seconds of the first compiled step (torch.compile's work dominates it), kept apart
        from the training time."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - step_start
        progress["compile_seconds"] = (progress["compile_seconds"] or 0.0) + seconds
        self._compiled = True
        return seconds

    def _read_window(self, progress: dict[str, Any], window: StepWindow, stop: StopFlag,
                     events: TrainingEvents, bar: tqdm) -> bool:
        """Account the steps since the last read, in order, as the host would have step by step.

        Raises the divergence error at the step where the streak of non-finite losses reached
        max_bad_steps. Returns whether the ranks agree to stop now.
        """
        s = self.s
        losses, stopping, seconds = window.read(stop.asked, self.ranks.all_reduce)
        first = progress["global_iteration"] - len(losses)
        iteration = progress["iteration"] - len(losses)
        for offset, loss in enumerate(losses):
            if math.isfinite(loss):
                progress["bad_steps"] = 0
                progress["loss_sum"] += loss
                progress["loss_count"] += 1
                events.scalars(first + offset + 1, {"train/loss": loss})
                continue
            progress["bad_steps"] += 1
            if progress["bad_steps"] >= self.max_bad_steps:
                raise GeolocError(
                    f"training diverged: {progress['bad_steps']} consecutive non-finite losses at "
                    f"epoch {progress['epoch']} iteration {iteration + offset}; the last good checkpoint in "
                    f"{self.checkpoint_dir} is kept and no model.pt is written (lower lr or use fp32)")
        mean = progress["loss_sum"] / max(progress["loss_count"], 1)
        scalars = {"train/lr_backbone": self.model_opt.param_groups[0]["lr"],
                   "train/lr_classifier": self.classifier_opts[0].param_groups[0]["lr"],
                   **({"train/gem_p": float(self.model.aggregation.gem.p.detach())}
                      if hasattr(self.model.aggregation, "gem") else {})}
        if losses:
            scalars["train/images_per_second"] = len(losses) * s.batch_size / max(seconds, 1e-9)
        events.scalars(progress["global_iteration"], scalars)
        bar.set_postfix(loss=f"{mean:.3f}",
                        img_s=f"{bar.n * s.batch_size / max(bar.format_dict['elapsed'], 1e-9):.0f}", refresh=False)
        return stopping

    def _close_segment(self, progress: dict[str, Any], start: float) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        progress["train_seconds"] += elapsed
        progress["epoch_train_seconds"] += elapsed

    def _validate(self, progress: dict[str, Any], events: TrainingEvents) -> None:
        """Rank 0 validates; the others wait for it (the best model is rank 0's to keep)."""
        s = self.s
        start = time.perf_counter()
        if self.ranks.is_main:
            result = evaluate_model(self.model, self.val_set, batch_size=s.batch_size, device=self.device,
                                    num_workers=self.num_workers, k=min(20, len(self.val_set.database_paths)),
                                    positive_dist_threshold=s.positive_dist_threshold)
            recalls = {f"r{k}": float(v) for k, v in result.recalls.items()}
        self.ranks.barrier()
        val_seconds = time.perf_counter() - start
        progress["val_seconds"] += val_seconds
        train_seconds = progress["epoch_train_seconds"]
        loss = progress["loss_sum"] / max(progress["loss_count"], 1)
        progress["loss_sum"], progress["loss_count"], progress["epoch_train_seconds"] = 0.0, 0, 0.0
        if not self.ranks.is_main:
            return
        epoch_log = {"epoch": progress["epoch"], "group": progress["epoch"] % s.groups_num, "loss": loss,
                     "iterations": s.iterations_per_epoch, "train_seconds": train_seconds,
                     "val_seconds": val_seconds,
                     "images_per_second": s.iterations_per_epoch * s.batch_size / max(train_seconds, 1e-9),
                     "val_recalls": recalls}
        progress["history"].append(epoch_log)
        events.scalars(progress["global_iteration"], {f"val/R@{k[1:]}": v for k, v in recalls.items()})
        events.flush()
        log.info("epoch %d: loss %.4f, val %s", progress["epoch"], epoch_log["loss"],
                 ", ".join(f"{k}={v:.1f}" for k, v in recalls.items()))
        r1 = recalls["r1"]
        if progress["best_r1"] is None or r1 > progress["best_r1"]:
            progress["best_r1"], progress["best_epoch"] = r1, progress["epoch"]
            progress["best_state"] = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def best_model(self, progress: dict[str, Any]) -> torch.nn.Module:
        best = copy.deepcopy(self.model).cpu()
        best.load_state_dict(progress["best_state"])
        return best

    def summary(self, progress: dict[str, Any]) -> dict[str, Any]:
        """train.json, less `model_sha256` (the command adds it once model.pt is written)."""
        total, trainable = count_parameters(self.model)
        train_s, val_s = progress["train_seconds"], progress["val_seconds"]
        iterations = self.s.epochs * self.s.iterations_per_epoch
        fingerprint = self.fingerprint()
        return {
            "run": dataclasses.asdict(self.run),
            "fingerprint": fingerprint_of(fingerprint),
            "hyperparameters": {**dataclasses.asdict(self.s), "checkpoint_every": self.checkpoint_every,
                                "num_workers": self.num_workers, "max_bad_steps": self.max_bad_steps},
            "weights": None if self.weights is None else {
                "path": str(self.weights), "sha256": self.weights_sha256, "format": self.s.weights_format},
            "epochs": progress["history"],
            "best_epoch": progress["best_epoch"], "best_val_r1": progress["best_r1"],
            "train_seconds": train_s, "val_seconds": val_s, "training_time_seconds": train_s + val_s,
            "images_per_second": iterations * self.s.batch_size / max(train_s, 1e-9),
            "compile_seconds": progress["compile_seconds"],
            "image_cache_build_seconds": self.image_cache_build_seconds,
            "peak_memory_mb": peak_memory_mb(self.device), "device": device_name(self.device),
            "device_type": self.device.type, "world_size": self.ranks.world,
            "gpus": self.ranks.world if self.device.type == "cuda" else 0,
            "params": total, "trainable_params": trainable,
            "gflops_per_image": gflops_per_image(self.model, self.s.image_size),
            # Validation (and evaluation) resize each image to the nearest multiple of this (a ViT's patch).
            "eval_size_multiple": input_size_multiple(self.model),
            "decode_size": self.decode_size,  # training images' side before the random-resized crop
            "resumed_from_iteration": progress["resumed_from_iteration"],
            "versions": package_versions(), "started_at": progress["started_at"], "finished_at": now(),
        }
