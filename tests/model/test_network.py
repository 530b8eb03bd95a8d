"""The backbone registry and the CosPlace network: shapes, what trains, save/load."""

import pickle

import pytest
import torch

from geoloc.errors import GeolocError
from geoloc.model.aggregators.layers import GeM
from geoloc.model.backbones import STUDY_BACKBONES, input_size_problem
from geoloc.model.network import (
    BACKBONES,
    backbone_spec,
    build_model,
    count_parameters,
    load_model,
    save_model,
)

DIM = 32

# What the study trains in each backbone (DESIGN.md), as parameter-name prefixes, and the
# channels of its last feature map.
STUDY = {
    "resnet18": (("backbone.layer3.", "backbone.layer4."), 512),
    "efficientnet_b0": (("backbone.features.7.", "backbone.features.8."), 1280),
    "efficientnet_b1": (("backbone.features.7.", "backbone.features.8."), 1280),
    "efficientnet_b2": (("backbone.features.7.", "backbone.features.8."), 1408),
    "efficientnet_v2_s": (("backbone.features.6.", "backbone.features.7."), 1280),
    "mobilenet_v3_small": (("backbone.features.10.", "backbone.features.11.", "backbone.features.12."), 576),
    "mobilenet_v3_large": (("backbone.features.14.", "backbone.features.15.", "backbone.features.16."), 960),
    "convnext_tiny": (("backbone.features.7.",), 768),
    "swin_tiny": (("backbone.features.7.", "backbone.norm."), 768),
}


@pytest.fixture(scope="module")
def models():
    """Every registered backbone, built once (random init) for the whole module."""
    torch.manual_seed(0)
    return {name: build_model(name, fc_output_dim=DIM).eval() for name in BACKBONES}


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.rand(2, 3, 64, 64)


def test_registry_holds_the_nine_study_backbones():
    assert set(BACKBONES) == set(STUDY)


@pytest.mark.parametrize("name", list(STUDY))
def test_each_entry_counts_the_blocks_that_trainable_blocks_counts(models, name):
    # The workflow refuses a too large trainable_blocks from the torch-free entry alone.
    blocks = backbone_spec(name).block_parameters(models[name].backbone)
    assert STUDY_BACKBONES[name].blocks == len(blocks)
    build_model(name, DIM, trainable_blocks=len(blocks))
    with pytest.raises(GeolocError, match=f"between 0 and {len(blocks)}, got {len(blocks) + 1}"):
        build_model(name, DIM, trainable_blocks=len(blocks) + 1)


@pytest.mark.parametrize("name", list(STUDY))
def test_each_entry_knows_the_smallest_size_its_network_takes(models, name):
    smallest = STUDY_BACKBONES[name].min_image_size
    assert input_size_problem(name, smallest) is None
    with torch.no_grad():
        assert models[name](torch.rand(1, 3, smallest, smallest)).shape == (1, DIM)
    if smallest > 1:
        assert input_size_problem(name, smallest - 1) == (
            f"backbone {name} needs images of at least {smallest} px, not {smallest - 1}"
        )
        with pytest.raises(RuntimeError):
            with torch.no_grad():
                models[name](torch.rand(1, 3, smallest - 1, smallest - 1))


@pytest.mark.parametrize("name", list(STUDY))
def test_backbone_gives_unit_norm_descriptors(models, images, name):
    with torch.no_grad():
        descriptors = models[name](images)
    assert descriptors.shape == (2, DIM)
    assert torch.isfinite(descriptors).all()
    torch.testing.assert_close(descriptors.norm(dim=1), torch.ones(2))
    assert not torch.allclose(descriptors[0], descriptors[1])


@pytest.mark.parametrize("name", list(STUDY))
def test_backbone_feature_map_has_the_registered_channels_in_nchw(models, images, name):
    model = models[name]
    with torch.no_grad():
        features = model.backbone(images)
    channels = STUDY[name][1]
    assert features.shape[:2] == (2, channels)
    assert model.aggregation.fc.in_features == channels


@pytest.mark.parametrize("name", list(STUDY))
def test_backbone_trains_exactly_the_study_layers(models, name):
    trainable_prefixes = STUDY[name][0]
    backbone = {n: p for n, p in models[name].named_parameters() if n.startswith("backbone.")}
    for param_name, param in backbone.items():
        assert param.requires_grad == param_name.startswith(trainable_prefixes), param_name
    for prefix in trainable_prefixes:
        assert any(n.startswith(prefix) for n in backbone), f"no parameter under {prefix}"
    head = [p for n, p in models[name].named_parameters() if n.startswith("aggregation.")]
    assert len(head) == 3 and all(p.requires_grad for p in head)  # GeM p, fc weight and bias


def test_trainable_blocks_overrides_how_many_trailing_blocks_train():
    def trained_layers(trainable_blocks):
        model = build_model("resnet18", DIM, trainable_blocks=trainable_blocks)
        return {n.split(".")[1] for n, p in model.named_parameters() if n.startswith("backbone.") and p.requires_grad}

    assert trained_layers(3) == {"layer2", "layer3", "layer4"}
    assert trained_layers(0) == set()
    # conv1, bn1 and the four layers hold parameters (relu and maxpool do not)
    assert trained_layers(6) == {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}
    with pytest.raises(GeolocError, match="between 0 and 6, got 7"):
        build_model("resnet18", DIM, trainable_blocks=7)


def test_model_normalises_images_with_imagenet_statistics(models):
    model = models["resnet18"]
    seen = []
    hook = model.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        model(mean.expand(1, 3, 8, 8))
        model((mean + std).expand(1, 3, 8, 8))
    hook.remove()
    torch.testing.assert_close(seen[0], torch.zeros(1, 3, 8, 8))
    torch.testing.assert_close(seen[1], torch.ones(1, 3, 8, 8))


def test_gem_is_the_cube_root_of_the_mean_cube():
    feature_map = torch.tensor([1.0, 2.0, 2.0, 3.0]).view(1, 1, 2, 2)
    pooled = GeM()(feature_map)
    assert pooled.item() == pytest.approx(((1 + 8 + 8 + 27) / 4) ** (1 / 3), rel=1e-5)


def test_unknown_backbone_is_refused_naming_the_known_ones():
    with pytest.raises(GeolocError, match="unknown backbone 'resnet19'.*resnet18.*swin_tiny.*timm:"):
        build_model("resnet19")


def test_save_and_load_round_trip_gives_identical_descriptors(models, images, tmp_path):
    model = models["mobilenet_v3_small"]
    path = tmp_path / "out" / "model.pt"
    save_model(path, model)
    loaded = load_model(path).eval()
    assert (loaded.backbone_name, loaded.fc_output_dim, loaded.trainable_blocks) == ("mobilenet_v3_small", DIM, 3)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))
    assert [p.requires_grad for p in loaded.parameters()] == [p.requires_grad for p in model.parameters()]
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_load_model_refuses_a_file_that_is_not_a_geoloc_model(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(GeolocError, match="not a geoloc model"):
        load_model(plain)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(GeolocError, match="not a readable PyTorch file"):
        load_model(garbage)
    with pytest.raises(GeolocError, match="does not exist"):
        load_model(tmp_path / "missing.pt")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_load_model_never_runs_code_from_the_file(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save({"format": "geoloc-model/1", "payload": _Exploit(marker)}, path)
    with pytest.raises(GeolocError, match="was refused: loading it would run the Python code"):
        load_model(path)
    assert not marker.exists()


def test_timm_backbone_works_and_trains_its_last_stage(images, tmp_path):
    torch.manual_seed(0)
    model = build_model("timm:resnet10t", fc_output_dim=DIM).eval()
    with torch.no_grad():
        descriptors = model(images)
    assert descriptors.shape == (2, DIM)
    torch.testing.assert_close(descriptors.norm(dim=1), torch.ones(2))
    assert model.aggregation.fc.in_features == 512
    trained = {n.split(".")[2] for n, p in model.named_parameters() if n.startswith("backbone.") and p.requires_grad}
    assert trained == {"layer4"}
    path = tmp_path / "timm.pt"
    save_model(path, model)
    with torch.no_grad():
        assert torch.equal(load_model(path).eval()(images), descriptors)


def test_timm_stages_include_the_modules_between_feature_points():
    # mobilenetv3 lists feature points at blocks.3 and blocks.5: the last stage is blocks.4-5.
    model = build_model("timm:mobilenetv3_small_050", fc_output_dim=DIM)
    trained = {
        ".".join(n.split(".")[2:4])
        for n, p in model.named_parameters()
        if n.startswith("backbone.") and p.requires_grad
    }
    assert trained == {"blocks.4", "blocks.5"}


def test_unknown_timm_model_is_a_clear_error():
    with pytest.raises(GeolocError, match="timm model no_such_net: Unknown model"):
        build_model("timm:no_such_net")


def test_count_parameters_separates_trainable_ones():
    layer = torch.nn.Linear(3, 2)  # 6 weights + 2 biases
    layer.bias.requires_grad = False
    assert count_parameters(layer) == (8, 6)


def test_exploit_fixture_really_runs_code_when_unpickled_unsafely(tmp_path):
    # Keeps the refusal test honest: the payload does create its marker if trusted.
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_Exploit(marker))).close()
    assert marker.exists()


def test_a_model_file_written_before_aggregators_loads_as_gem(models, images, tmp_path):
    # The format of model.pt before aggregators and normalisation were recorded.
    model = models["resnet18"]
    path = tmp_path / "old.pt"
    torch.save(
        {
            "format": "geoloc-model/1",
            "backbone": "resnet18",
            "fc_output_dim": DIM,
            "trainable_blocks": 2,
            "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        },
        path,
    )
    loaded = load_model(path).eval()
    assert loaded.aggregator == "gem" and loaded.aggregator_params["p"] == 3.0
    assert loaded.normalization == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


def test_model_file_records_the_aggregator_and_the_normalisation(tmp_path):
    model = build_model("resnet18", DIM, aggregator="netvlad")
    save_model(tmp_path / "model.pt", model)
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    assert payload["aggregator"] == {
        "name": "netvlad",
        "params": {"in_channels": 512, "clusters": 64, "normalize_input": True, "fc_output_dim": DIM},
    }
    assert (payload["mean"], payload["std"]) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    payload["aggregator"] = {"name": "netvlad", "params": {"in_channels": 512, "centres": 3, "fc_output_dim": DIM}}
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(GeolocError, match="edited.pt is damaged: its aggregator hyperparameters do not fit"):
        load_model(tmp_path / "edited.pt")
    payload["aggregator"] = "netvlad"
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(GeolocError, match="aggregator must be a mapping with a name and params, got 'netvlad'"):
        load_model(tmp_path / "edited.pt")


TINY_DINOV2 = "timm:vit_small_patch14_dinov2"


@pytest.mark.parametrize("aggregator", ["gem", "salad", "boq"])
def test_a_dinov2_vit_feeds_its_patch_tokens_to_the_aggregator(monkeypatch, tmp_path, aggregator):
    import timm

    create = timm.create_model

    def tiny(name, **kwargs):  # DINOv2 ViT-S/14's layout, 2 blocks of width 64, no download
        return create(name, **kwargs, depth=2, embed_dim=64, num_heads=2, img_size=56)

    monkeypatch.setattr(timm, "create_model", tiny)
    torch.manual_seed(0)
    model = build_model(TINY_DINOV2, DIM, aggregator=aggregator, trainable_blocks=1).eval()
    seen = []
    model.aggregation.register_forward_hook(lambda module, inputs, output: seen.append(inputs))
    with torch.no_grad():
        descriptors = model(torch.rand(2, 3, 56, 70))
    features = seen[0]
    assert features[0].shape == (2, 64, 4, 5)  # the patch grid of 56 x 70 px, 14 px patches
    assert len(features) == (2 if aggregator == "salad" else 1) and features[-1].shape[0] == 2
    if aggregator == "salad":
        assert features[1].shape == (2, 64)  # the class token
    torch.testing.assert_close(descriptors.norm(dim=1), torch.ones(2))
    # trainable_blocks counts transformer blocks: the last one trains with the final norm
    trained = {
        ".".join(n.split(".")[2:4])
        for n, p in model.named_parameters()
        if n.startswith("backbone.") and p.requires_grad
    }
    assert trained == {"blocks.1", "norm.weight", "norm.bias"}
    if aggregator == "boq":
        assert model.aggregator_params["proj_channels"] == 384  # as BoQ's released DINOv2 model
    # by default SALAD and BoQ train the last 4 transformer blocks (here: both of the 2), GeM the last one
    default = build_model(TINY_DINOV2, DIM, aggregator=aggregator).trainable_blocks
    assert default == (1 if aggregator == "gem" else 2)
    save_model(tmp_path / "model.pt", model)
    images = torch.rand(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "model.pt").eval()(images), model(images))


def test_a_timm_backbone_is_normalised_with_its_own_pretrained_statistics(monkeypatch, tmp_path):
    import timm

    create = timm.create_model

    def clip_like(name, **kwargs):
        model = create(name, **kwargs)
        model.pretrained_cfg = {**model.pretrained_cfg, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
        return model

    monkeypatch.setattr(timm, "create_model", clip_like)
    model = build_model("timm:resnet10t", DIM).eval()
    assert model.normalization == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    seen = []
    hook = model.backbone.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    with torch.no_grad():
        model(torch.full((1, 3, 32, 32), 0.75))
    hook.remove()
    torch.testing.assert_close(seen[0], torch.ones(1, 3, 32, 32))
    save_model(tmp_path / "model.pt", model)
    monkeypatch.setattr(timm, "create_model", create)  # statistics come from the file, not from timm
    assert load_model(tmp_path / "model.pt").normalization == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
