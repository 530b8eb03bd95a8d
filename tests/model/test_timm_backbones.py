"""timm backbones at any image size they can take: ViTs (DeiT, DINOv2 with and without register
tokens) through timm's dynamic image size, Swin at a size it was not built for, and the refusal
of sizes a model cannot take, before any job runs. Random weights, 32-64 px. And backbone
names: `timm:<model>` or a study backbone, parsed and refused in one place."""

import subprocess
import sys

import pytest
import torch

from geoloc.errors import GeolocError
from geoloc.model.backbones import BackboneName, block_count, check_backbone, input_size_problem, parse_backbone
from geoloc.model.network import backbone_spec, build_model, load_model, save_model

DIM = 16


@pytest.fixture(scope="module")
def vit_tiny():
    torch.manual_seed(0)
    return build_model("timm:vit_tiny_patch16_224", DIM).eval()


def patch_tokens(vit, images: torch.Tensor) -> torch.Tensor:
    """timm's own forward_features of the same network (its final, normed tokens), class and
    register tokens dropped, laid out on the patch grid as NCHW."""
    with torch.no_grad():
        tokens = vit.forward_features(images)[:, vit.num_prefix_tokens :]
    side = images.shape[-1] // vit.patch_embed.patch_size[0]
    return tokens.transpose(1, 2).reshape(len(images), -1, side, side)


@pytest.mark.parametrize(
    "model_name, size, channels, prefix_tokens",
    [
        ("deit_tiny_patch16_224", 48, 192, 1),
        ("vit_small_patch14_dinov2", 56, 384, 1),
        ("vit_small_patch14_reg4_dinov2", 42, 384, 5),  # four register tokens and the class token
    ],
)
def test_a_vit_gives_its_patch_tokens_as_a_map_for_gem(model_name, size, channels, prefix_tokens):
    torch.manual_seed(0)
    model = build_model(f"timm:{model_name}", DIM).eval()
    images = torch.rand(2, 3, size, size)
    with torch.no_grad():
        feature_map = model.backbone(images)
        descriptors = model(images)
    side = size // (14 if "patch14" in model_name else 16)
    assert feature_map.shape == (2, channels, side, side)
    assert model.backbone.body.num_prefix_tokens == prefix_tokens
    torch.testing.assert_close(feature_map, patch_tokens(model.backbone.body, images))
    assert descriptors.shape == (2, DIM) and model.aggregation.fc.in_features == channels
    torch.testing.assert_close(descriptors.norm(dim=1), torch.ones(2))


def test_a_vit_trained_at_one_size_embeds_images_at_another(vit_tiny, tmp_path):
    model = vit_tiny
    path = tmp_path / "model.pt"
    save_model(path, model)
    loaded = load_model(path).eval()
    for height, width in ((32, 32), (64, 48)):  # the test protocol: each image at its own size
        images = torch.rand(1, 3, height, width)
        with torch.no_grad():
            assert torch.equal(loaded(images), model(images))
            assert model.backbone(images).shape == (1, 192, height // 16, width // 16)


def test_a_vit_trains_its_last_transformer_blocks_and_final_norm(vit_tiny):
    def trained(model):
        return {
            ".".join(name.split(".")[2:4])
            for name, param in model.named_parameters()
            if name.startswith("backbone.") and param.requires_grad
        }

    blocks = backbone_spec("timm:vit_tiny_patch16_224").block_parameters(vit_tiny.backbone)
    assert len(blocks) == 12  # its depth
    assert trained(vit_tiny) == {"blocks.11", "norm.weight", "norm.bias"}  # the default: 1
    assert trained(build_model("timm:vit_tiny_patch16_224", DIM, trainable_blocks=2)) == {
        "blocks.10",
        "blocks.11",
        "norm.weight",
        "norm.bias",
    }
    everything = trained(build_model("timm:vit_tiny_patch16_224", DIM, trainable_blocks=12))
    assert {"cls_token", "pos_embed", "patch_embed.proj", "blocks.0"} <= everything


def test_timm_swin_takes_a_size_it_was_not_built_for():
    torch.manual_seed(0)
    model = build_model("timm:swin_tiny_patch4_window7_224", DIM).eval()
    with torch.no_grad():
        assert model.backbone(torch.rand(1, 3, 64, 64)).shape == (1, 768, 2, 2)  # built for 224
    assert input_size_problem("timm:swin_tiny_patch4_window7_224", 64) is None


def test_a_size_the_patch_size_does_not_divide_is_one_clear_error(vit_tiny):
    with pytest.raises(GeolocError) as error:
        with torch.no_grad():
            vit_tiny(torch.rand(1, 3, 50, 50))
    assert str(error.value) == (
        "timm model vit_tiny_patch16_224 cannot take 50x50 images: "
        "Input height (50) should be divisible by patch size (16)."
    )


@pytest.mark.parametrize(
    "backbone, size, problem",
    [
        ("timm:vit_tiny_patch16_224", 64, None),
        (
            "timm:vit_tiny_patch16_224",
            50,
            "timm model vit_tiny_patch16_224 cannot take 50x50 images: "
            "Input height (50) should be divisible by patch size (16).",
        ),
        ("timm:vit_small_patch14_dinov2", 56, None),
        ("timm:vit_small_patch14_dinov2", 64, "should be divisible by patch size (14)"),
        ("timm:swin_tiny_patch4_window7_224", 50, "should be divisible by patch size (4)"),
        (
            "timm:mixer_s16_224",
            64,
            "timm model mixer_s16_224 cannot take 64x64 images: Input height (64) doesn't match model (224).",
        ),
        ("timm:mixer_s16_224", 224, None),
        ("timm:resnet10t", 33, None),
        ("timm:no_such_net", 64, "timm model no_such_net: Unknown model (no_such_net)"),
        ("convnext_tiny", 16, "backbone convnext_tiny needs images of at least 32 px, not 16"),
        ("resnet18", 37, None),
        ("resnet19", 64, "unknown backbone 'resnet19'"),
    ],
)
def test_input_size_problem_says_which_sizes_a_backbone_cannot_take(backbone, size, problem):
    found = input_size_problem(backbone, size)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_a_size_input_size_problem_accepts_really_trains_and_one_it_refuses_really_fails():
    # The meta-tensor check and the real network agree, both ways.
    for backbone, good, bad in (("timm:vit_small_patch14_dinov2", 28, 32), ("timm:mixer_s16_224", 224, 32)):
        model = build_model(backbone, DIM)
        assert input_size_problem(backbone, good) is None and input_size_problem(backbone, bad) is not None
        model(torch.rand(2, 3, good, good)).sum().backward()
        with pytest.raises(GeolocError):
            model(torch.rand(2, 3, bad, bad))


def test_the_backbone_registry_asks_torch_and_timm_only_for_timm_backbones():
    code = (
        "import sys; from geoloc.model.backbones import input_size_problem as p; "
        "assert p('swin_tiny', 64) is None and p('convnext_tiny', 8); "
        "assert 'torch' not in sys.modules and 'timm' not in sys.modules, 'imported'; "
        "assert p('timm:resnet10t', 64) is None and 'timm' in sys.modules; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr


@pytest.mark.parametrize(
    "name, parsed",
    [
        ("resnet18", BackboneName(None, "resnet18")),
        ("timm:convnext_small.fb_in22k", BackboneName("timm", "convnext_small.fb_in22k")),  # timm's tag kept
    ],
)
def test_a_backbone_name_is_split_into_its_source_and_model(name, parsed):
    assert parse_backbone(name) == parsed
    assert check_backbone(name) == parsed


@pytest.mark.parametrize("name", ["resnet19", "timm:", "hf-hub:timm/resnet18", "ResNet18"])
def test_an_unknown_backbone_is_the_same_error_wherever_it_is_met(name):
    expected = (
        f"unknown backbone {name!r}; known backbones: convnext_tiny, efficientnet_b0, efficientnet_b1, "
        "efficientnet_b2, efficientnet_v2_s, mobilenet_v3_large, mobilenet_v3_small, resnet18, swin_tiny, "
        "or timm:<timm model name>"
    )
    for meet in (check_backbone, backbone_spec, lambda name: build_model(name, DIM), block_count):
        with pytest.raises(GeolocError) as error:
            meet(name)
        assert str(error.value) == expected
    assert input_size_problem(name, 64) == expected


def test_the_known_study_backbones_can_be_narrowed():
    assert check_backbone("resnet18", known={"resnet18"}) == BackboneName(None, "resnet18")
    assert check_backbone("timm:resnet10t", known={"resnet18"}) == BackboneName("timm", "resnet10t")
    with pytest.raises(GeolocError, match="^unknown backbone 'swin_tiny'; known backbones: resnet18, or timm:"):
        check_backbone("swin_tiny", known={"resnet18"})


def test_trainable_blocks_of_a_timm_backbone_are_counted_only_once_it_is_built():
    assert block_count("resnet18") == 6  # conv1, bn1, layer1-4
    assert block_count("swin_tiny") == 9
    assert block_count("timm:vit_tiny_patch16_224") is None
