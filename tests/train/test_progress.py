"""The training progress: what a checkpoint stores of it, and the loop's accounting."""

import math

import pytest
import torch

from geoloc.train.checkpoint import PROGRESS_FIELDS, check_fields
from geoloc.train.progress import Progress


def checkpoint_with(progress: Progress) -> dict:
    return {
        "fingerprint": {},
        "progress": progress.as_dict(),
        "model": {"w": torch.zeros(1)},
        "classifiers": [],
        "model_opt": {},
        "classifier_opts": [],
        "scaler": {},
        "cpu_rng": torch.get_rng_state(),
    }


def test_a_checkpoint_holds_the_checked_fields_and_resumes_them():
    progress = Progress(
        epoch=1,
        iteration=2,
        global_iteration=8,
        history=[{"epoch": 0}],
        loss_sum=3.5,
        loss_count=2,
        best_r1=50.0,
        best_epoch=0,
        best_state={"w": torch.ones(1)},
    )
    assert list(progress.as_dict()) == list(PROGRESS_FIELDS)
    check_fields(checkpoint_with(progress), "ckpt-000000008.pt")  # every field of the type it checks
    saved = progress.as_dict()
    assert saved["best_state"] is progress.best_state  # not copied at each checkpoint

    resumed = Progress.resumed({**saved, "a_field_of_another_version": 1})
    assert resumed.resumed_from_iteration == 8
    assert resumed.as_dict() == {**saved, "resumed_from_iteration": 8}


def test_a_fresh_progress_passes_the_checkpoint_check():
    check_fields(checkpoint_with(Progress()), "ckpt-000000001.pt")


def test_non_finite_losses_make_a_streak_that_a_finite_one_ends():
    progress = Progress()
    assert [progress.add_loss(x) for x in (2.0, math.nan, math.inf, 4.0)] == [True, False, False, True]
    assert progress.bad_steps == 0 and progress.mean_loss == 3.0
    progress.add_loss(-math.inf)
    assert progress.bad_steps == 1 and progress.mean_loss == 3.0


def test_closing_an_epoch_returns_its_loss_and_time_and_starts_the_next_from_zero():
    progress = Progress()
    progress.add_loss(1.0)
    progress.add_loss(2.0)
    progress.add_training_time(3.0)
    progress.add_training_time(1.0)
    assert progress.close_epoch(val_seconds=2.0) == (1.5, 4.0)
    assert (progress.train_seconds, progress.val_seconds, progress.epoch_train_seconds) == (4.0, 2.0, 0.0)
    assert progress.mean_loss == 0.0
    progress.finish_step()
    progress.finish_step()
    progress.start_next_epoch()
    assert (progress.epoch, progress.iteration, progress.global_iteration) == (1, 0, 2)


def test_only_a_better_recall_replaces_the_kept_model():
    model = torch.nn.Linear(1, 1, bias=False)
    progress = Progress()
    with torch.no_grad():
        for epoch, (weight, r1) in enumerate([(1.0, 40.0), (2.0, 60.0), (3.0, 60.0), (4.0, 10.0)]):
            progress.epoch = epoch
            model.weight.fill_(weight)
            progress.keep_if_best(r1, model)
    assert (progress.best_epoch, progress.best_r1) == (1, 60.0)
    assert progress.best_state["weight"].item() == pytest.approx(2.0)
