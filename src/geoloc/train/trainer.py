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
from geoloc.train.progress import Progress
from geoloc.train.sampler import GroupBatchSampler, seed_for
from geoloc.train.settings import RunInfo, TrainSettings
from geoloc.train.stopping import Deadline, StopFlag

log = logging.getLogger(__name__)


class Trainer:
    """One training run. `settings` make its result; every other argument is a runtime knob.

    weights_sha256: the registry's pinned digest of `weights` (or a prefix); a file with another
    one is refused before anything else. image_cache_dir: the decoded-image cache, read from
    `image_cache_copy_to` (node-local scratch) when given. deadline: when to checkpoint and
    stop before a SLURM time limit (geoloc.train.stopping).

    Built in CosPlace's order: the data (one training set per group, the validation set), the
    model, one classifier per group and the optimizers; `fit` then resumes from the latest
    checkpoint, if any, and runs the loop.
    """

    def __init__(
        self,
        settings: TrainSettings,
        run: RunInfo,
        *,
        train_dir: Path,
        val_dir: Path,
        weights: Path | None,
        checkpoint_dir: Path,
        cache_dir: Path | None,
        device: str,
        num_workers: int,
        checkpoint_every: int,
        weights_sha256: str | None = None,
        image_cache_dir: Path | None = None,
        image_cache_copy_to: Path | None = None,
        max_bad_images: int = 0,
        max_bad_steps: int = 20,
        events_dir: Path | None = None,
        compile: bool = False,
        deadline: Deadline | None = None,
        ranks: Ranks = Ranks(),
    ) -> None:
        settings.check()
        _check_runtime_options(
            settings,
            ranks,
            checkpoint_every=checkpoint_every,
            max_bad_steps=max_bad_steps,
            image_cache_dir=image_cache_dir,
            image_cache_copy_to=image_cache_copy_to,
            max_bad_images=max_bad_images,
            weights=weights,
            weights_sha256=weights_sha256,
        )
        self.settings, self.run, self.ranks = settings, run, ranks
        self.device = ranks.device(resolve_device(device))
        self.num_workers, self.checkpoint_every, self.max_bad_steps = num_workers, checkpoint_every, max_bad_steps
        self.checkpoint_dir, self.events_dir, self.deadline = checkpoint_dir, events_dir, deadline
        self.weights = weights
        # A file other than the registry's is refused now, not after an hour of listing and decoding.
        self.weights_sha256 = verify_weights(weights, weights_sha256) if weights else None
        if ranks.is_main:
            ckpt.remove_stale_checkpoint_files(checkpoint_dir)

        self._load_data(train_dir, val_dir, cache_dir, image_cache_dir, image_cache_copy_to, max_bad_images)

        # Seeded here: one seed gives the same model and classifiers, on every rank and on a rerun.
        torch.manual_seed(settings.seed)
        self.model = self._build_model()
        self.classifiers = [build_classifier(settings.loss, self.model.descriptor_dim, len(ds)) for ds in self.datasets]

        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.model_opt = adam(trainable, settings.lr, self.device)
        self.classifier_opts = [adam(c.parameters(), settings.classifier_lr, self.device) for c in self.classifiers]
        self.step = GuardedStep(self.device, settings.precision)
        self.criterion = torch.nn.CrossEntropyLoss()

        # What the loop runs: the model shared among the ranks (DDP), compiled when asked.
        self.train_model = ranks.wrap(self.model, self.device)
        self.compile, self._compiled = compile, False
        if compile:
            self.train_model = torch.compile(self.train_model)

    # -- data, model ------------------------------------------------------------------------
    def _load_data(
        self,
        train_dir: Path,
        val_dir: Path,
        cache_dir: Path | None,
        image_cache_dir: Path | None,
        image_cache_copy_to: Path | None,
        max_bad_images: int,
    ) -> None:
        """The training set of each group (CosPlace's classes and groups) and the validation set."""
        settings = self.settings
        groups = build_groups(
            train_dir,
            M=settings.M,
            alpha=settings.alpha,
            N=settings.N,
            L=settings.L,
            min_images_per_class=settings.min_images_per_class,
            cache_dir=cache_dir,
        )
        if settings.groups_num > len(groups):
            raise GeolocError(
                f"groups_num={settings.groups_num} but {train_dir} has only {len(groups)} "
                "non-empty groups with these M, alpha, N, L"
            )
        # Decoded large enough that a random-resized crop keeps the stored images' detail.
        self.decode_size = decode_size(settings.image_size, stored_side(groups.listing[0]))
        cache = None
        if image_cache_dir is not None:
            cache = open_image_cache(
                groups.listing, self.decode_size, image_cache_dir, image_cache_copy_to, self.num_workers, max_bad_images
            )
        self.image_cache_build_seconds = None if cache is None else cache.build_seconds
        self.datasets = [
            TrainGroupDataset(groups[g], self.decode_size, cache=cache) for g in range(settings.groups_num)
        ]
        for g, ds in enumerate(self.datasets):
            if settings.batch_size > len(ds):
                raise GeolocError(
                    f"batch_size={settings.batch_size} is larger than the {len(ds)} classes "
                    f"of group {g} in {train_dir}; lower batch_size or min_images_per_class"
                )
        self.val_set = TestSet(val_dir)
        # A swapped or positive-less validation set must stop the run now, not after an epoch.
        checked_positives(self.val_set, settings.positive_dist_threshold)
        # The images trained on: what the groups hold, less what the image cache could not decode.
        self.data_fingerprint = trained_images_sha256(ds.classes for ds in self.datasets)

    def _build_model(self) -> torch.nn.Module:
        """The network with its pretrained weights, on the device, in the memory format it trains in."""
        settings = self.settings
        model = build_model(
            settings.backbone,
            settings.fc_output_dim,
            weights=self.weights,
            weights_format=settings.weights_format,
            trainable_blocks=settings.trainable_blocks,
            aggregator=settings.aggregator,
            image_size=settings.image_size,
        )
        if self.ranks.world > 1:
            model = sync_batchnorm(model, self.device)
        model = model.to(self.device)
        self.channels_last = channels_last(self.device, settings.precision)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    # -- checkpoints ------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        # The data too: resuming onto other classes would silently mix two trainings.
        return {
            **dataclasses.asdict(self.settings),
            "weights_sha256": self.weights_sha256,
            "train_images": self.data_fingerprint,
        }

    def _resume_or_start(self, fresh: bool) -> Progress:
        """The progress of the latest checkpoint, with the weights and optimizers restored; or a
        fresh start when there is none (or `fresh` discards them)."""
        if fresh and self.ranks.is_main:
            ckpt.discard_checkpoints(self.checkpoint_dir)
        self.ranks.barrier()  # every rank reads the checkpoints rank 0 kept
        state = ckpt.load_latest_checkpoint(self.checkpoint_dir, self.fingerprint())
        if state is None:
            return Progress()
        self._restore(state)
        progress = Progress.resumed(state["progress"])
        log.info("resumed at epoch %d iteration %d", progress.epoch, progress.iteration)
        return progress

    def _state(self, progress: Progress) -> dict[str, Any]:
        state = {
            "fingerprint": self.fingerprint(),
            "progress": progress.as_dict(),
            "model": self.model.state_dict(),
            "classifiers": [c.state_dict() for c in self.classifiers],
            "model_opt": self.model_opt.state_dict(),
            "classifier_opts": [o.state_dict() for o in self.classifier_opts],
            "scaler": self.step.scaler.state_dict(),
            "cpu_rng": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def _restore(self, state: dict[str, Any]) -> None:
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
            raise GeolocError(
                f"checkpoint {state['path']} does not fit this training ({exc}); rerun with --fresh to start over"
            ) from exc

    def _save(self, progress: Progress) -> None:
        if self.ranks.is_main:
            ckpt.save_checkpoint(self.checkpoint_dir, progress.global_iteration, self._state(progress))

    # -- loop -------------------------------------------------------------------------------
    def fit(self, fresh: bool = False) -> Progress:
        """Train the remaining epochs, validating and checkpointing after each; the final progress."""
        progress = self._resume_or_start(fresh)
        events = TrainingEvents(self.events_dir if self.ranks.is_main else None, progress.resumed_from_iteration)
        try:
            with StopFlag(self.deadline) as stop:
                while progress.epoch < self.settings.epochs:
                    self._train_epoch(progress, stop, events)
                    self._validate(progress, events)
                    progress.start_next_epoch()
                    self._save(progress)
                    # After the last epoch only a signal stops: writing the outputs takes seconds,
                    # a requeue to write them after the deadline would wait in the queue again.
                    last = progress.epoch == self.settings.epochs
                    if self._agree_to_stop(stop.signal is not None if last else stop.asked):
                        raise stop.interrupted(f"after epoch {progress.epoch - 1}")
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

    def _train_epoch(self, progress: Progress, stop: StopFlag, events: TrainingEvents) -> None:
        """Train the epoch's group from `progress.iteration` on, checkpointing every
        `checkpoint_every` iterations and when asked to stop."""
        settings, device, epoch = self.settings, self.device, progress.epoch
        group = epoch % settings.groups_num
        # Only the active group's classifier, and its optimizer's state, live on the device.
        classifier, classifier_opt = self.classifiers[group].to(device), self.classifier_opts[group]
        _move_optimizer_state(classifier_opt, device)
        classifier_step = self.ranks.wrap(classifier, device)
        dataset = self.datasets[group]
        rows = self.ranks.part(settings.batch_size)
        sampler = GroupBatchSampler(
            dataset.images_per_class,
            settings.batch_size,
            settings.seed,
            epoch,
            progress.iteration,
            settings.iterations_per_epoch,
            part=rows,
        )
        loader = training_loader(dataset, sampler, self.decode_size, self.num_workers, device)
        self.model.train()
        log.info(
            "epoch %d: training group %d (%d classes) for %d iterations",
            epoch,
            group,
            len(dataset),
            settings.iterations_per_epoch - progress.iteration,
        )
        window = StepWindow(device)
        # The bar is closed before any error propagates: an error line must be the last one.
        with self._progress_bar(progress) as bar, _cudnn_autotuning(device):
            start = time.perf_counter()
            for images, labels in batches(loader):
                first_compiled_step = self.compile and not self._compiled
                step_start = time.perf_counter()
                window.add(self._train_step(images, labels, classifier_step, classifier_opt, progress, rows))
                if first_compiled_step:
                    start += self._time_compilation(progress, step_start)
                progress.finish_step()
                bar.update(1)
                due = progress.global_iteration % self.checkpoint_every == 0
                asked = stop.asked and self.ranks.world == 1
                if not (due or asked or window.full):
                    continue
                stopping = self._read_window(progress, window, stop, events, bar)
                # Never checkpoint inside a streak of non-finite losses: its state may be poisoned
                # (batch-norm statistics update even on skipped steps).
                if (due or stopping) and progress.bad_steps == 0:
                    progress.add_training_time(self._seconds_since(start))
                    start = time.perf_counter()
                    self._save(progress)
                    if stopping:
                        self.ranks.barrier()  # rank 0's checkpoint is written before any rank exits
                        raise stop.interrupted(f"at epoch {epoch} iteration {progress.iteration}")
            if window.count:
                self._read_window(progress, window, stop, events, bar)
        progress.add_training_time(self._seconds_since(start))
        self.classifiers[group] = classifier.cpu()
        _move_optimizer_state(classifier_opt, torch.device("cpu"))

    def _progress_bar(self, progress: Progress) -> tqdm:
        return tqdm(
            total=self.settings.iterations_per_epoch,
            initial=progress.iteration,
            desc=f"epoch {progress.epoch}",
            unit="it",
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
            file=sys.stderr,
            disable=not self.ranks.is_main,
        )

    def _train_step(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        classifier: torch.nn.Module,
        classifier_opt: torch.optim.Optimizer,
        progress: Progress,
        rows: tuple[int, int],
    ) -> torch.Tensor:
        """One optimizer step on this rank's `rows` of the batch. Returns the rank's share of the
        batch's mean loss, on the device (read later: reading it now would wait for the device)."""
        settings, device = self.settings, self.device
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        aug_gen = torch.Generator(device=device).manual_seed(
            seed_for(settings.seed, progress.epoch, progress.iteration, 1)
        )
        x = augment_batch(images, settings.image_size, aug_gen, rows=(rows[0], settings.batch_size))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, settings.precision):
            loss = self.criterion(classifier(self.train_model(x), labels), labels)
        self.model_opt.zero_grad(set_to_none=True)
        classifier_opt.zero_grad(set_to_none=True)
        # The rank's share of the batch's mean loss, times the number of ranks: DDP's gradient
        # average is then the gradient of that mean, whatever the slices' sizes.
        share = (rows[1] - rows[0]) / settings.batch_size
        self.step(loss * (share * self.ranks.world), [self.model_opt, classifier_opt])
        return loss * share

    def _time_compilation(self, progress: Progress, step_start: float) -> float:
        """Seconds of the first compiled step (torch.compile's work dominates it), kept apart
        from the training time."""
        seconds = self._seconds_since(step_start)
        progress.compile_seconds = (progress.compile_seconds or 0.0) + seconds
        self._compiled = True
        return seconds

    def _seconds_since(self, start: float) -> float:
        """Seconds since `start` (time.perf_counter), the device's queued work included."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    def _read_window(
        self, progress: Progress, window: StepWindow, stop: StopFlag, events: TrainingEvents, bar: tqdm
    ) -> bool:
        """Account the steps since the last read, in order, as the host would have step by step.

        Raises the divergence error at the step where the streak of non-finite losses reached
        max_bad_steps. Returns whether the ranks agree to stop now.
        """
        batch_size = self.settings.batch_size
        losses, stopping, seconds = window.read(stop.asked, self.ranks.all_reduce)
        first = progress.global_iteration - len(losses)
        iteration = progress.iteration - len(losses)
        for offset, loss in enumerate(losses):
            if progress.add_loss(loss):
                events.scalars(first + offset + 1, {"train/loss": loss})
            elif progress.bad_steps >= self.max_bad_steps:
                raise GeolocError(
                    f"training diverged: {progress.bad_steps} consecutive non-finite losses at "
                    f"epoch {progress.epoch} iteration {iteration + offset}; the last good checkpoint in "
                    f"{self.checkpoint_dir} is kept and no model.pt is written (lower lr or use fp32)"
                )
        scalars = {
            "train/lr_backbone": self.model_opt.param_groups[0]["lr"],
            "train/lr_classifier": self.classifier_opts[0].param_groups[0]["lr"],
            **(
                {"train/gem_p": float(self.model.aggregation.gem.p.detach())}
                if hasattr(self.model.aggregation, "gem")
                else {}
            ),
        }
        if losses:
            scalars["train/images_per_second"] = len(losses) * batch_size / max(seconds, 1e-9)
        events.scalars(progress.global_iteration, scalars)
        bar.set_postfix(
            loss=f"{progress.mean_loss:.3f}",
            img_s=f"{bar.n * batch_size / max(bar.format_dict['elapsed'], 1e-9):.0f}",
            refresh=False,
        )
        return stopping

    def _validate(self, progress: Progress, events: TrainingEvents) -> None:
        """Rank 0 validates; the others wait for it (the best model is rank 0's to keep)."""
        settings = self.settings
        start = time.perf_counter()
        if self.ranks.is_main:
            result = evaluate_model(
                self.model,
                self.val_set,
                batch_size=settings.batch_size,
                device=self.device,
                num_workers=self.num_workers,
                k=min(20, len(self.val_set.database_paths)),
                positive_dist_threshold=settings.positive_dist_threshold,
            )
            recalls = {f"r{k}": float(v) for k, v in result.recalls.items()}
        self.ranks.barrier()
        val_seconds = time.perf_counter() - start
        loss, train_seconds = progress.close_epoch(val_seconds)
        if not self.ranks.is_main:
            return
        images = settings.iterations_per_epoch * settings.batch_size
        progress.history.append(
            {
                "epoch": progress.epoch,
                "group": progress.epoch % settings.groups_num,
                "loss": loss,
                "iterations": settings.iterations_per_epoch,
                "train_seconds": train_seconds,
                "val_seconds": val_seconds,
                "images_per_second": images / max(train_seconds, 1e-9),
                "val_recalls": recalls,
            }
        )
        events.scalars(progress.global_iteration, {f"val/R@{k[1:]}": v for k, v in recalls.items()})
        events.flush()
        log.info(
            "epoch %d: loss %.4f, val %s", progress.epoch, loss, ", ".join(f"{k}={v:.1f}" for k, v in recalls.items())
        )
        progress.keep_if_best(recalls["r1"], self.model)

    # -- outputs ----------------------------------------------------------------------------
    def best_model(self, progress: Progress) -> torch.nn.Module:
        best = copy.deepcopy(self.model).cpu()
        best.load_state_dict(progress.best_state)
        return best

    def summary(self, progress: Progress) -> dict[str, Any]:
        """train.json, less `model_sha256` (the command adds it once model.pt is written)."""
        settings = self.settings
        total, trainable = count_parameters(self.model)
        train_s, val_s = progress.train_seconds, progress.val_seconds
        iterations = settings.epochs * settings.iterations_per_epoch
        return {
            "run": dataclasses.asdict(self.run),
            "fingerprint": fingerprint_of(self.fingerprint()),
            "hyperparameters": {
                **dataclasses.asdict(settings),
                "checkpoint_every": self.checkpoint_every,
                "num_workers": self.num_workers,
                "max_bad_steps": self.max_bad_steps,
            },
            "weights": None
            if self.weights is None
            else {"path": str(self.weights), "sha256": self.weights_sha256, "format": settings.weights_format},
            "epochs": progress.history,
            "best_epoch": progress.best_epoch,
            "best_val_r1": progress.best_r1,
            "train_seconds": train_s,
            "val_seconds": val_s,
            "training_time_seconds": train_s + val_s,
            "images_per_second": iterations * settings.batch_size / max(train_s, 1e-9),
            "compile_seconds": progress.compile_seconds,
            "image_cache_build_seconds": self.image_cache_build_seconds,
            "peak_memory_mb": peak_memory_mb(self.device),
            "device": device_name(self.device),
            "device_type": self.device.type,
            "world_size": self.ranks.world,
            "gpus": self.ranks.world if self.device.type == "cuda" else 0,
            "params": total,
            "trainable_params": trainable,
            "gflops_per_image": gflops_per_image(self.model, settings.image_size),
            "descriptor_dim": self.model.descriptor_dim,
            # Validation (and evaluation) resize each image to the nearest multiple of this (a ViT's patch).
            "eval_size_multiple": input_size_multiple(self.model),
            "decode_size": self.decode_size,  # training images' side before the random-resized crop
            "resumed_from_iteration": progress.resumed_from_iteration,
            "versions": package_versions(),
            "started_at": progress.started_at,
            "finished_at": now(),
        }


def _check_runtime_options(
    settings: TrainSettings,
    ranks: Ranks,
    *,
    checkpoint_every: int,
    max_bad_steps: int,
    image_cache_dir: Path | None,
    image_cache_copy_to: Path | None,
    max_bad_images: int,
    weights: Path | None,
    weights_sha256: str | None,
) -> None:
    """The runtime knobs that contradict each other or the settings, refused before any work."""
    for name, value in (("checkpoint_every", checkpoint_every), ("max_bad_steps", max_bad_steps)):
        if value < 1:
            raise GeolocError(f"{name} must be at least 1, got {value}")
    if image_cache_dir is None and max_bad_images:
        raise GeolocError(
            f"max_bad_images={max_bad_images} needs the image cache (training.image_cache, "
            "--image-cache): undecodable images are found while it is filled; without it "
            "the first one stops the training"
        )
    if image_cache_dir is None and image_cache_copy_to is not None:
        raise GeolocError(f"--image-cache-copy-to {image_cache_copy_to} needs --image-cache: there is no cache to copy")
    if settings.batch_size < ranks.world:
        raise GeolocError(
            f"batch_size={settings.batch_size} is smaller than the {ranks.world} training "
            "processes: each needs at least one image of every batch"
        )
    if weights is None and weights_sha256 is not None:
        raise GeolocError(f"--weights-sha256 {weights_sha256} is given but no --weights file")


def open_image_cache(
    listing: Listing, size: int, folder: Path, copy_to: Path | None, num_workers: int, max_bad_images: int
) -> ImageCache:
    """The decoded-image cache of the whole training folder (what `geoloc cache-images` builds,
    so the key matches; built here when missing), copied to `copy_to` first if given.

    Undecodable images were found when it was built: more than `max_bad_images` of them stop
    the run before its first iteration.
    """
    cache = ImageCache.build_or_open(listing, size, folder, num_workers=num_workers)
    if copy_to is not None:
        cache = cache.copy_to(copy_to)
    if len(cache.bad_paths) > max_bad_images:
        raise GeolocError(
            f"{len(cache.bad_paths)} images of {listing.root} cannot be decoded (more than "
            f"max_bad_images={max_bad_images}); first: {cache.errors[min(cache.errors)]}"
        )
    if cache.bad_paths:
        log.warning(
            "skipping %d training images that cannot be decoded: %s",
            len(cache.bad_paths),
            ", ".join(map(str, cache.bad_paths[:10])),
        )
    return cache


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    # Fused Adam keeps its step counts on the parameters' device too.
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                state[key] = value.to(device)


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
