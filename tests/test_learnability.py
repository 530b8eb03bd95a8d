"""The demo city is a task a network can learn (slow: about five minutes on 2 CPU cores).

A ResNet-18 from random initialisation, trained three minutes on CPU, must beat the same
network untrained by at least 10 points of R@1 on sf_xs test, and also on tokyo_night, which
must stay harder than tokyo_xs; the untrained network must stay far from 100 (not trivial).
"""

import time

import pytest
import torch

import geoloc.train as train_module

from geoloc.data import TestSet
from geoloc.evaluate import evaluate_model
from geoloc.synthetic import generate_city
from geoloc.train import RunInfo, Trainer, TrainSettings

TRAIN_SECONDS = 180
SETTINGS = TrainSettings(backbone="resnet18", epochs=1, iterations_per_epoch=100_000, batch_size=32,
                         image_size=64, lr=3e-4, M=10, alpha=45, N=2, L=1, min_images_per_class=4,
                         groups_num=1, fc_output_dim=128)


def r1(model, city, test):
    result = evaluate_model(model, TestSet(city / test / "test"), image_size=SETTINGS.image_size,
                            batch_size=64, device="cpu", precision="fp32")
    return result.recalls[1]


@pytest.mark.slow
def test_three_minutes_of_cpu_training_beat_the_untrained_network(tmp_path, monkeypatch):
    city = tmp_path / "city"
    generate_city(city, seed=0, size="demo")
    trainer = Trainer(SETTINGS, RunInfo("r", "resnet18", "none", "fp32", 0, None),
                      train_dir=city / "sf_xs" / "train", val_dir=city / "sf_xs" / "val", weights=None,
                      checkpoint_dir=tmp_path / "ckpt", cache_dir=None, device="cpu", num_workers=1,
                      checkpoint_every=10**9)
    tests = ("sf_xs", "tokyo_xs", "tokyo_night")
    untrained = {t: r1(trainer.model.eval(), city, t) for t in tests}

    # One long epoch, cut after TRAIN_SECONDS; the model in memory is what three minutes gave.
    deadline = time.monotonic() + TRAIN_SECONDS
    real_augment = train_module.augment_batch

    def stop_at_deadline(*args, **kwargs):
        if time.monotonic() > deadline:
            raise TimeUp
        return real_augment(*args, **kwargs)

    monkeypatch.setattr(train_module, "augment_batch", stop_at_deadline)
    with pytest.raises(TimeUp):
        trainer.fit()
    trained = {t: r1(trainer.model.eval(), city, t) for t in tests}
    print({"untrained": untrained, "trained": trained})

    assert untrained["sf_xs"] < 60
    assert trained["sf_xs"] - untrained["sf_xs"] >= 10
    assert trained["tokyo_night"] > untrained["tokyo_night"]
    assert trained["tokyo_night"] < trained["tokyo_xs"]
    assert torch.isfinite(next(trainer.model.parameters())).all()


class TimeUp(Exception):
    pass
