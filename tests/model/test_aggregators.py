"""The aggregators: equal to their reference implementations, and usable in the network."""

from pathlib import Path

import pytest
import torch

from geoloc.errors import GeolocError
from geoloc.model.aggregators import AGGREGATORS, aggregator_entry
from geoloc.model.aggregators.layers import (
    build_aggregator,
    from_reference,
    sinkhorn_log_plan,
)
from geoloc.model.aggregators.sizes import input_size_problem
from geoloc.model.network import build_model, load_model, save_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "aggregators"


def load_fixture(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}.pt", weights_only=True)


@pytest.mark.parametrize("name", list(AGGREGATORS))
def test_each_aggregator_gives_its_reference_implementations_output(name):
    # Fixtures: tests/fixtures/aggregators/make_fixtures.py, the reference code on random weights.
    fixture = load_fixture(name)
    module = build_aggregator(name, dict(fixture["hyperparameters"])).eval()
    module.load_state_dict({k: v.float() for k, v in from_reference(name, fixture["state_dict"]).items()})
    token = None if fixture["token"] is None else fixture["token"].float()
    with torch.no_grad():
        output = module(fixture["x"].float(), token)
    assert output.shape == fixture["output"].shape
    torch.testing.assert_close(output, fixture["output"], atol=1e-5, rtol=0)
    assert module.out_dim == output.shape[1]


def test_the_fixtures_name_the_reference_and_its_commit():
    for name in AGGREGATORS:
        repo_commit, _, file = load_fixture(name)["reference"].partition(":")
        repo, _, commit = repo_commit.partition("@")
        assert len(commit) == 40 and file.endswith(".py") and repo in AGGREGATORS[name].reference


def test_fidelity_is_not_blind_to_a_changed_weight():
    fixture = load_fixture("salad")
    module = build_aggregator("salad", dict(fixture["hyperparameters"])).eval()
    state = {k: v.float() for k, v in fixture["state_dict"].items()}
    state["score.0.weight"] = state["score.0.weight"] * 1.1  # the Sinkhorn assignment
    module.load_state_dict(state)
    with torch.no_grad():
        output = module(fixture["x"].float(), fixture["token"].float())
    assert (output - fixture["output"]).abs().max() > 1e-4


@pytest.mark.parametrize("name", list(AGGREGATORS))
def test_each_aggregator_trains_and_saves_on_a_cnn(tmp_path, name):
    torch.manual_seed(0)
    model = build_model("resnet18", 16, aggregator=name, image_size=64, trainable_blocks=1)
    images = torch.rand(2, 3, 64, 64)
    model.train()
    model(images).sum().backward()
    head = [p for p in model.aggregation.parameters() if p.requires_grad]
    assert head and all(p.grad is not None for p in head)
    model.eval()
    save_model(tmp_path / "model.pt", model)
    loaded = load_model(tmp_path / "model.pt").eval()
    assert loaded.aggregator == name and loaded.aggregator_params == model.aggregator_params
    with torch.no_grad():
        # evaluation at another resolution: MixVPR's network resizes to its training size itself
        expected, got = model(torch.rand(1, 3, 96, 80)), loaded(torch.rand(1, 3, 96, 80))
        torch.testing.assert_close(model(images), loaded(images))
    assert got.shape == expected.shape == (1, model.descriptor_dim)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(1))


def test_descriptor_sizes_follow_the_references():
    sizes = {}
    for name in AGGREGATORS:
        model = build_model("resnet18", 256, aggregator=name, image_size=320)
        sizes[name] = model.descriptor_dim
    # gem and netvlad end in the linear layer; the others as their papers' ResNet models
    assert sizes == {"gem": 256, "netvlad": 256, "convap": 4096, "mixvpr": 4096, "salad": 8448, "boq": 16384}


def test_mixvpr_is_built_for_the_feature_map_of_the_training_size():
    model = build_model("resnet18", 16, aggregator="mixvpr", image_size=320)
    assert (model.aggregator_params["in_h"], model.aggregator_params["in_w"]) == (10, 10)
    assert model.input_size == (320, 320)
    with pytest.raises(GeolocError, match="built for one input size: give the training image_size"):
        build_model("resnet18", 16, aggregator="mixvpr")


def test_parse_time_check_says_why_a_size_is_refused():
    assert input_size_problem("mixvpr", "resnet18", 320) is None
    assert input_size_problem("mixvpr", "resnet18", 32) == (
        "aggregator mixvpr projects the backbone's feature positions to 4 rows, but resnet18 gives a 1x1 map "
        "at 32 px; use a larger image_size"
    )
    assert input_size_problem("gem", "resnet18", 32) is None
    assert input_size_problem("mixvpr", "convnext_tiny", 16) == (
        "backbone convnext_tiny needs images of at least 32 px, not 16"
    )
    assert input_size_problem("vlad", "resnet18", 320) == (
        "unknown aggregator 'vlad'; known aggregators: gem, netvlad, convap, mixvpr, salad, boq"
    )
    with pytest.raises(GeolocError, match="unknown aggregator 'vlad'"):
        aggregator_entry("vlad")


def test_salad_stays_finite_on_maps_with_fewer_positions_than_clusters():
    # The reference's dustbin would take n - K <= 0 mass there (NaN); tiny test images give such maps.
    plan = sinkhorn_log_plan(torch.randn(2, 64, 4), torch.tensor(1.0))
    assert plan.shape == (2, 65, 4) and torch.isfinite(plan).all()


def test_netvlad_residuals_match_the_definition():
    torch.manual_seed(0)
    head = build_aggregator("netvlad", {"in_channels": 3, "fc_output_dim": 2, "clusters": 2}).netvlad
    x = torch.rand(1, 3, 2, 2)
    with torch.no_grad():
        got = head(x)
        local = torch.nn.functional.normalize(x, dim=1).flatten(2)[0].T  # (4, 3)
        assign = (local @ head.conv.weight[:, :, 0, 0].T).softmax(dim=1)  # (4, 2)
        vlad = torch.stack([(assign[:, k : k + 1] * (local - head.centroids[k])).sum(0) for k in range(2)])
        expected = torch.nn.functional.normalize(torch.nn.functional.normalize(vlad, dim=1).flatten(), dim=0)
    torch.testing.assert_close(got[0], expected)


@pytest.mark.parametrize("name", ["mixvpr", "boq"])  # a fixed input size; attention (FLOPs counted)
def test_each_aggregator_trains_with_cosplaces_recipe_on_the_tiny_city(tiny_city, tmp_path, name):
    from geoloc.train.settings import RunInfo, TrainSettings
    from geoloc.train.trainer import Trainer

    settings = TrainSettings(
        backbone="resnet18",
        epochs=1,
        iterations_per_epoch=2,
        batch_size=4,
        image_size=64,
        lr=1e-3,
        alpha=45,
        N=2,
        L=1,
        min_images_per_class=3,
        fc_output_dim=16,
        aggregator=name,
    )
    trainer = Trainer(
        settings,
        RunInfo(f"resnet18-none-fp32-s0-{name}", "resnet18", "none", "fp32", 0, None),
        train_dir=tiny_city / "sf_xs" / "train",
        val_dir=tiny_city / "sf_xs" / "val",
        weights=None,
        checkpoint_dir=tmp_path / "ckpt",
        cache_dir=tmp_path / "cache",
        device="cpu",
        num_workers=0,
        checkpoint_every=2,
    )
    summary = trainer.summary(trainer.fit())
    assert trainer.model.aggregator == name
    assert torch.isfinite(torch.tensor(summary["epochs"][0]["loss"]))
    assert 0 <= summary["epochs"][0]["val_recalls"]["r1"] <= 100
