"""The demo city is a task a network can learn (slow: a few minutes on 2 CPU cores).

The demo's learner, a timm ResNet-10-T from random initialisation whose last stage trains,
trained for 1,000 iterations on CPU (about 2.5x the images/s of the ResNet-18 with four
trainable stages that this test trained for 700 iterations before, in 611 s), must beat the same
network untrained by at least 10 points of R@1 on sf_xs test (measured: 14.0 -> 29.5, in 146 s
against the ResNet-18's 611 s), and tokyo_night must stay harder than tokyo_xs; the untrained
network must stay far from 100 (the task is not trivial). A fixed number of iterations, not a
clock, keeps the check deterministic on a slower machine.
"""

import pytest

from geoloc.data.datasets import TestSet
from geoloc.data.synthetic.write import generate_city
from geoloc.evaluate.evaluation import evaluate_model
from geoloc.train.settings import RunInfo, TrainSettings
from geoloc.train.trainer import Trainer

# config/demo.yaml's runs: the last stage trains on top of random stages, with a larger learning
# rate than the study's 1e-5 (random initialisation).
SETTINGS = TrainSettings(
    backbone="timm:resnet10t",
    epochs=1,
    iterations_per_epoch=1000,
    batch_size=32,
    image_size=64,
    lr=1e-3,
    classifier_lr=1e-2,
    M=10,
    alpha=45,
    N=2,
    L=2,
    min_images_per_class=4,
    groups_num=1,
    fc_output_dim=512,
    trainable_blocks=1,
)
TESTS = ("sf_xs", "tokyo_xs", "tokyo_night")


def r1(model, city, test):
    result = evaluate_model(
        model,
        TestSet(city / test / "test"),
        batch_size=64,
        device="cpu",
        num_workers=0,
        k=20,
        positive_dist_threshold=SETTINGS.positive_dist_threshold,
    )
    return result.recalls[1]


@pytest.mark.slow(minutes=5)
def test_1000_iterations_of_the_demos_learner_beat_the_untrained_network(tmp_path):
    city = tmp_path / "city"
    generate_city(city, seed=0, size="demo")
    trainer = Trainer(
        SETTINGS,
        RunInfo("r", SETTINGS.backbone, "none", "fp32", 0, None),
        train_dir=city / "sf_xs" / "train",
        val_dir=city / "sf_xs" / "val",
        weights=None,
        checkpoint_dir=tmp_path / "ckpt",
        cache_dir=None,
        device="cpu",
        num_workers=1,
        checkpoint_every=10**9,
    )
    untrained = {t: r1(trainer.model, city, t) for t in TESTS}
    trainer.fit()
    trained = {t: r1(trainer.model, city, t) for t in TESTS}
    print({"untrained": untrained, "trained": trained})

    assert untrained["sf_xs"] < 60
    assert trained["sf_xs"] - untrained["sf_xs"] >= 10
    # Night stays the harder condition (this short training does not reach it: 8.0 -> 6.0 measured).
    assert trained["tokyo_night"] < trained["tokyo_xs"]
