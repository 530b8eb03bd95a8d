"""The training loop on the tiny synthetic city: outputs, resume, AMP, divergence, bad settings."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from geoloc.errors import GeolocError
from geoloc.model.network import load_model
from geoloc.train import trainer as train_mod
from geoloc.train.settings import RunInfo, TrainSettings
from geoloc.train.stopping import TrainingInterrupted
from geoloc.train.trainer import Trainer

SETTINGS = TrainSettings(
    backbone="resnet18",
    epochs=2,
    iterations_per_epoch=6,
    batch_size=4,
    image_size=32,
    lr=1e-3,
    M=10,
    alpha=45,
    N=2,
    L=1,
    min_images_per_class=3,
    groups_num=1,
    fc_output_dim=16,
)
RUN = RunInfo("resnet18-none-fp32-s0", "resnet18", "none", "fp32", 0, None)


def make_trainer(city, tmp_path, settings=SETTINGS, name="ckpt", checkpoint_every=4, **runtime):
    return Trainer(
        settings,
        RUN,
        train_dir=city / "sf_xs" / "train",
        val_dir=city / "sf_xs" / "val",
        weights=None,
        checkpoint_dir=tmp_path / name,
        cache_dir=tmp_path / "cache",
        device="cpu",
        num_workers=0,
        checkpoint_every=checkpoint_every,
        **runtime,
    )


def test_training_records_every_epoch_and_keeps_the_best(tiny_city, tmp_path):
    trainer = make_trainer(tiny_city, tmp_path)
    progress = trainer.fit()
    summary = trainer.summary(progress)
    assert [e["epoch"] for e in summary["epochs"]] == [0, 1]
    best = max(summary["epochs"], key=lambda e: e["val_recalls"]["r1"])
    assert summary["best_val_r1"] == best["val_recalls"]["r1"]
    assert all(torch.isfinite(torch.tensor(e["loss"])) and e["loss"] > 0 for e in summary["epochs"])
    assert summary["training_time_seconds"] == pytest.approx(summary["train_seconds"] + summary["val_seconds"])
    assert summary["train_seconds"] > 0 and summary["images_per_second"] > 0
    assert summary["trainable_params"] < summary["params"]  # conv1..layer2 frozen
    assert summary["resumed_from_iteration"] is None
    # ResNet-18 at 32 px: 3.64 GFLOPs at 224 px scaled by (32/224)^2, plus the small head.
    assert summary["gflops_per_image"] == pytest.approx(3.64 * (32 / 224) ** 2, rel=0.1)


def test_trained_weights_change_only_trainable_layers(tiny_city, tmp_path):
    trainer = make_trainer(tiny_city, tmp_path)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    after = trainer.model.state_dict()
    changed = {
        k
        for k in before
        if not torch.equal(before[k], after[k]) and before[k].is_floating_point() and "running" not in k
    }
    frozen = {n for n, p in trainer.model.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert changed & frozen == set()
    assert changed & trainable  # something learned


def _interrupt_at(monkeypatch, call_number):
    calls = {"n": 0}
    real = train_mod.augment_batch

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call_number:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "augment_batch", wrapped)


def test_resumed_run_ends_exactly_like_an_uninterrupted_one(tiny_city, tmp_path, monkeypatch):
    straight = make_trainer(tiny_city, tmp_path, name="straight")
    straight.fit()

    _interrupt_at(monkeypatch, 9)  # epoch 1, iteration 2 (after the checkpoint at iteration 8)
    first = make_trainer(tiny_city, tmp_path, name="resumed")
    with pytest.raises(TrainingInterrupted, match="signal"):
        first.fit()
    monkeypatch.undo()
    second = make_trainer(tiny_city, tmp_path, name="resumed")
    progress = second.fit()

    assert progress.resumed_from_iteration == 9
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key
    assert [e["val_recalls"] for e in progress.history] == [
        e["val_recalls"] for e in straight.summary(straight.fit())["epochs"]
    ]


def test_amp_trains_on_cpu_with_bfloat16_in_channels_last(tiny_city, tmp_path, monkeypatch):
    settings = TrainSettings(**{**SETTINGS.__dict__, "precision": "amp", "epochs": 1})
    trainer = make_trainer(tiny_city, tmp_path, settings)
    seen = []
    forward = trainer.train_model.forward

    def recording(x):
        seen.append(
            (
                x.is_contiguous(memory_format=torch.channels_last),
                torch.get_autocast_dtype("cpu"),
                torch.is_autocast_enabled("cpu"),
            )
        )
        return forward(x)

    monkeypatch.setattr(trainer.train_model, "forward", recording)
    summary = trainer.summary(trainer.fit())
    assert summary["hyperparameters"]["precision"] == "amp"
    assert summary["epochs"][0]["loss"] > 0 and summary["best_val_r1"] is not None
    # bf16 convolutions take oneDNN's channels-last path on a CPU (geoloc.device.channels_last);
    # validation embeds in fp32 (autocast off), as CosPlace tests.
    training = [call for call in seen if call[2]]
    assert training and set(training) == {(True, torch.bfloat16, True)}


def test_fp32_training_on_cpu_keeps_contiguous_tensors(tiny_city, tmp_path):
    trainer = make_trainer(tiny_city, tmp_path, TrainSettings(**{**SETTINGS.__dict__, "epochs": 1}))
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous() and not conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_non_finite_loss_stops_training_and_keeps_last_good_checkpoint(tiny_city, tmp_path, monkeypatch):
    settings = TrainSettings(**{**SETTINGS.__dict__, "epochs": 1})
    trainer = make_trainer(tiny_city, tmp_path, settings, checkpoint_every=2, max_bad_steps=3)
    calls = {"n": 0}
    real = trainer.criterion

    def poisoned(logits, labels):
        calls["n"] += 1
        loss = real(logits, labels)
        return loss * float("nan") if calls["n"] > 2 else loss

    trainer.criterion = poisoned
    with pytest.raises(GeolocError, match="3 consecutive non-finite losses"):
        trainer.fit()
    # No checkpoint is written during a streak of bad steps: the last one is from before it.
    ckpts = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert ckpts == ["ckpt-000000002.pt"]
    state = torch.load(tmp_path / "ckpt" / ckpts[0], weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_checkpoint_of_other_settings_is_refused(tiny_city, tmp_path):
    make_trainer(tiny_city, tmp_path, TrainSettings(**{**SETTINGS.__dict__, "epochs": 1})).fit()
    other = TrainSettings(**{**SETTINGS.__dict__, "epochs": 1, "loss": "arcface"})
    with pytest.raises(GeolocError, match="loss: 'cosface' -> 'arcface'"):
        make_trainer(tiny_city, tmp_path, other).fit()
    make_trainer(tiny_city, tmp_path, other).fit(fresh=True)  # told to start over


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_size": 10_000}, "larger than the"),
        ({"iterations_per_epoch": -1}, "iterations_per_epoch must be at least 1"),
        ({"groups_num": 5}, "exceeds N\\*N\\*L"),
        ({"min_images_per_class": 10_000}, "min_images_per_class"),
    ],
)
def test_out_of_range_settings_are_clear_errors(tiny_city, tmp_path, change, message):
    with pytest.raises(GeolocError, match=message):
        make_trainer(tiny_city, tmp_path, TrainSettings(**{**SETTINGS.__dict__, **change}))


def _cli_args(city, tmp_path, *extra):
    return [
        "--train-dir",
        str(city / "sf_xs" / "train"),
        "--val-dir",
        str(city / "sf_xs" / "val"),
        "--out-dir",
        str(tmp_path / "run"),
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        "--run-name",
        "r",
        "--backbone",
        "resnet18",
        "--weights",
        "none",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--num-workers",
        "0",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--M",
        "10",
        "--alpha",
        "45",
        "--N",
        "2",
        "--L",
        "1",
        "--min-images-per-class",
        "3",
        "--fc-output-dim",
        "16",
        "--lr",
        "1e-3",
        *extra,
    ]


def test_sigterm_checkpoints_exits_nonzero_and_the_rerun_resumes(tiny_city, tmp_path):
    args = _cli_args(
        tiny_city, tmp_path, "--epochs", "1", "--iterations-per-epoch", "400", "--checkpoint-every", "1000"
    )
    proc = subprocess.Popen([sys.executable, "-m", "geoloc.cli", "train", *args], stderr=subprocess.PIPE, text=True)
    # Wait for the loop to start (the progress bar's first line), then ask it to stop.
    for line in proc.stderr:
        if "epoch 0: training" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3 and err.strip().splitlines()[-1].endswith("checkpoint saved, rerun to resume")
    assert not (tmp_path / "run" / "model.pt").exists()
    ckpts = list((tmp_path / "ckpt").iterdir())
    assert len(ckpts) == 1

    from geoloc.cli import main

    assert main(["train", *args]) == 0
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["resumed_from_iteration"] == int(ckpts[0].stem.split("-")[1]) > 0
    model = load_model(tmp_path / "run" / "model.pt")
    assert model.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 16)


@pytest.mark.slow
def test_compiled_training_reports_its_compile_time_apart(tiny_city, tmp_path):
    # torch.compile on a CPU builds C++ kernels: tens of seconds, hence slow.
    settings = TrainSettings(**{**SETTINGS.__dict__, "epochs": 1, "iterations_per_epoch": 3})
    trainer = Trainer(
        settings,
        RUN,
        train_dir=tiny_city / "sf_xs" / "train",
        val_dir=tiny_city / "sf_xs" / "val",
        weights=None,
        checkpoint_dir=tmp_path / "ckpt",
        cache_dir=tmp_path / "cache",
        device="cpu",
        num_workers=0,
        checkpoint_every=100,
        compile=True,
    )
    summary = trainer.summary(trainer.fit())
    assert summary["compile_seconds"] > 1.0  # the first step, compilation included
    assert summary["train_seconds"] < summary["compile_seconds"]  # the other two steps, compiled
    assert summary["epochs"][0]["loss"] > 0


def test_training_writes_tensorboard_scalars_and_a_fresh_run_starts_a_clean_folder(tiny_city, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events_dir = tmp_path / "tensorboard"
    events_dir.mkdir()
    (events_dir / "events.out.tfevents.0.old.1.0").write_bytes(b"an old run's events")

    def train():
        trainer = Trainer(
            SETTINGS,
            RUN,
            train_dir=tiny_city / "sf_xs" / "train",
            val_dir=tiny_city / "sf_xs" / "val",
            weights=None,
            checkpoint_dir=tmp_path / "ckpt",
            cache_dir=tmp_path / "cache",
            device="cpu",
            num_workers=0,
            checkpoint_every=4,
            events_dir=events_dir,
        )
        return trainer.fit(fresh=True)

    train()
    assert not (events_dir / "events.out.tfevents.0.old.1.0").exists()
    events = EventAccumulator(str(events_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "train/loss",
        "train/lr_backbone",
        "train/lr_classifier",
        "train/images_per_second",
        "train/gem_p",
        "val/R@1",
        "val/R@5",
        "val/R@10",
        "val/R@20",
    } <= tags
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 13))  # every iteration, no repeat
    assert [e.step for e in events.Scalars("val/R@1")] == [6, 12]  # each epoch's end
    assert events.Scalars("train/lr_backbone")[0].value == pytest.approx(SETTINGS.lr)
    assert events.Scalars("train/gem_p")[0].value == pytest.approx(3.0, abs=0.1)
