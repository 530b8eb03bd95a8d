"""Published models: each release's state dict, in its own key layout, loads into geoloc's network.

The release layouts are rebuilt here from the reference code's module names (random weights,
no download): CosPlace/EigenPlaces number the ResNet children of an nn.Sequential, MixVPR keeps
torchvision's ResNet as `backbone.model`, BoQ numbers its cut ResNet as `backbone.net`, SALAD
and BoQ hold DINOv2's hub model (`backbone.model` / `backbone.dino`, with its mask_token).
"""

import csv
import hashlib
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

from geoloc.errors import GeolocError
from geoloc.model.aggregators.layers import build_aggregator
from geoloc.model.published import PUBLISHED, load_published
from geoloc.model.weights import lookup

RESNET_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def _random_like(key: str, value: torch.Tensor) -> torch.Tensor:
    if not value.is_floating_point():
        return value
    return torch.rand_like(value) + 0.5 if key.endswith("running_var") else 0.1 * torch.randn_like(value)


def resnet50_state(prefix: str, numbered: bool, last: str) -> dict[str, torch.Tensor]:
    kept = RESNET_CHILDREN[: RESNET_CHILDREN.index(last) + 1]
    state = {}
    for key, value in torchvision.models.resnet50().state_dict().items():
        child, _, rest = key.partition(".")
        if child in kept:
            name = str(RESNET_CHILDREN.index(child)) if numbered else child
            state[f"{prefix}{name}.{rest}"] = _random_like(key, value)
    return state


def dinov2_hub_state(prefix: str) -> dict[str, torch.Tensor]:
    import timm

    vit = timm.create_model("vit_base_patch14_dinov2", pretrained=False)  # the hub model's names, less mask_token
    state = {f"{prefix}{k}": torch.randn_like(v) for k, v in vit.state_dict().items()}
    state[f"{prefix}mask_token"] = torch.zeros(1, vit.embed_dim)
    return state


def aggregator_state(prefix: str, name: str, in_channels: int) -> dict[str, torch.Tensor]:
    # The aggregators' names are the references' (tests/model/test_aggregators.py proves it on their fixtures).
    params = {"in_channels": in_channels, **PUBLISHED[name].params}
    module = build_aggregator(PUBLISHED[name].aggregator, params)
    return {f"{prefix}{k}": torch.randn_like(v) for k, v in module.state_dict().items()}


def cosplace_head(dim: int) -> dict[str, torch.Tensor]:
    # CosPlace/EigenPlaces: aggregation = Sequential(L2Norm, GeM, Flatten, Linear, L2Norm)
    return {
        "aggregation.1.p": torch.tensor([3.2]),
        "aggregation.3.weight": torch.randn(dim, 2048),
        "aggregation.3.bias": torch.randn(dim),
    }


@pytest.fixture
def tiny_dinov2(monkeypatch):
    import timm

    create = timm.create_model
    monkeypatch.setattr(
        timm, "create_model", lambda name, **kw: create(name, **{**kw, "depth": 2, "embed_dim": 64, "num_heads": 2})
    )


RELEASES = {
    "cosplace-resnet50-2048": lambda: {**resnet50_state("backbone.", True, "layer4"), **cosplace_head(2048)},
    "eigenplaces-resnet50-2048": lambda: {**resnet50_state("backbone.", True, "layer4"), **cosplace_head(2048)},
    "mixvpr-resnet50-4096": lambda: {
        "state_dict": {
            **resnet50_state("backbone.model.", False, "layer3"),
            **aggregator_state("aggregator.", "mixvpr-resnet50-4096", 1024),
        }
    },
    "boq-resnet50": lambda: {
        **resnet50_state("backbone.net.", True, "layer3"),
        **aggregator_state("aggregator.", "boq-resnet50", 1024),
    },
    "salad-dinov2": lambda: {
        **dinov2_hub_state("backbone.model."),
        **aggregator_state("aggregator.", "salad-dinov2", 64),
    },
    "boq-dinov2": lambda: {**dinov2_hub_state("backbone.dino."), **aggregator_state("aggregator.", "boq-dinov2", 64)},
}
# (release key, geoloc key, descriptor size) per release
LANDMARKS = {
    "cosplace-resnet50-2048": ("backbone.6.0.conv1.weight", "backbone.layer3.0.conv1.weight", 2048),
    "eigenplaces-resnet50-2048": ("aggregation.1.p", "aggregation.gem.p", 2048),
    "mixvpr-resnet50-4096": ("aggregator.row_proj.weight", "aggregation.row_proj.weight", 4096),
    "boq-resnet50": ("backbone.net.4.0.conv1.weight", "backbone.layer1.0.conv1.weight", 16384),
    "salad-dinov2": ("backbone.model.blocks.1.ls1.gamma", "backbone.body.blocks.1.ls1.gamma", 8448),
    "boq-dinov2": ("aggregator.boqs.1.queries", "aggregation.boqs.1.queries", 12288),
}


def test_every_published_model_has_a_release_layout_here():
    assert set(RELEASES) == set(PUBLISHED) == set(LANDMARKS)
    assert {
        "cosplace-resnet50-2048",
        "eigenplaces-resnet50-2048",
        "mixvpr-resnet50-4096",
        "salad-dinov2",
        "boq-dinov2",
        "boq-resnet50",
    } <= set(PUBLISHED)


@pytest.mark.parametrize("name", list(RELEASES))
def test_a_release_state_dict_loads_into_geolocs_network(tiny_dinov2, tmp_path, name):
    torch.manual_seed(0)
    release = RELEASES[name]()
    torch.save(release, tmp_path / "release.pth")
    model = load_published(name, tmp_path / "release.pth")
    state = release.get("state_dict", release)
    release_key, geoloc_key, dim = LANDMARKS[name]
    assert torch.equal(model.state_dict()[geoloc_key], state[release_key])
    size = PUBLISHED[name].image_size
    with torch.no_grad():
        descriptors = model(torch.rand(1, 3, 70, 84))  # resized to the release's protocol size, if it has one
    assert descriptors.shape == (1, dim) and model.input_size == size
    torch.testing.assert_close(descriptors.norm(dim=1), torch.ones(1))


def test_the_weights_registry_says_where_each_release_is():
    registry = Path(__file__).resolve().parents[2] / "resources" / "weights.yaml"
    for name in PUBLISHED:
        entry = lookup(registry, "published", name)
        assert entry["format"] == "published" and entry["url"].startswith("https://")
    assert set(yaml.safe_load(registry.read_text())["published"]) == set(PUBLISHED)


def test_a_file_of_another_release_is_refused_naming_its_tensors(tmp_path):
    torch.save({**resnet50_state("backbone.net.", True, "layer3")}, tmp_path / "boq.pth")
    with pytest.raises(
        GeolocError,
        match="cosplace-resnet50-2048: the file holds tensors this release does not have: backbone.net.0.weight",
    ):
        load_published("cosplace-resnet50-2048", tmp_path / "boq.pth")
    with pytest.raises(GeolocError, match="unknown published model 'netvlad-vgg16'; known: cosplace-resnet50-2048"):
        load_published("netvlad-vgg16", tmp_path / "boq.pth")


def test_evaluate_runs_a_published_model_from_its_release_file(tiny_city, tmp_path, capsys):
    from geoloc.cli import main

    torch.manual_seed(0)
    release = tmp_path / "ResNet50_2048_cosplace.pth"
    torch.save(RELEASES["cosplace-resnet50-2048"](), release)
    test_set = f"t={tiny_city / 'sf_xs' / 'test'}"
    code = main(
        [
            "evaluate",
            "--published",
            "cosplace-resnet50-2048",
            "--weights",
            str(release),
            "--test-set",
            test_set,
            "--out-dir",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    with open(tmp_path / "out" / "t.csv", newline="") as handle:
        (row,) = csv.DictReader(handle)
    assert (row["kind"], row["model_sha256"]) == ("published", hashlib.sha256(release.read_bytes()).hexdigest())
    assert (
        main(
            [
                "evaluate",
                "--published",
                "cosplace-resnet50-2048",
                "--test-set",
                test_set,
                "--out-dir",
                str(tmp_path / "out2"),
            ]
        )
        != 0
    )
    assert "--published takes its file as --weights and none of --backbone" in capsys.readouterr().err
