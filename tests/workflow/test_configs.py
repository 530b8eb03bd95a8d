"""The configs as shipped validate, the schema fills in defaults, and bad values are named by key."""

from pathlib import Path

import pytest
import yaml

from geoloc import grid

from support.workflow import (
    BLOCK,
    DEMO_CONFIG,
    STUDY_CONFIG,
    TEST_SETS,
    WEIGHTS_REGISTRY,
    schema_error,
)

STUDY_RUNS = [
    "resnet18-imagenet-fp32-s0",
    "resnet18-places365-fp32-s0",
    "resnet18-gldv2-fp32-s0",
    "resnet18-imagenet-amp-s0",
    "efficientnet_b0-imagenet-amp-s0",
    "efficientnet_b1-imagenet-amp-s0",
    "efficientnet_b2-imagenet-amp-s0",
    "efficientnet_v2_s-imagenet-amp-s0",
    "mobilenet_v3_small-imagenet-amp-s0",
    "mobilenet_v3_large-imagenet-amp-s0",
    "convnext_tiny-imagenet-amp-s0",
    "swin_tiny-imagenet-amp-s0",
    "efficientnet_v2_s-imagenet-amp-s0-sphereface",
    "mobilenet_v3_large-imagenet-amp-s0-4ep",
]


def load_validated(path: Path, **site) -> dict:
    config = {**yaml.safe_load(path.read_text()), **site}
    assert schema_error(config) == ""
    return config


def test_study_config_is_the_fourteen_runs_of_the_published_study_on_cuda():
    assert "datasets_root" not in yaml.safe_load(STUDY_CONFIG.read_text())  # the user sets it
    config = load_validated(STUDY_CONFIG, datasets_root="/datasets")
    runs = grid.expand_grid(config["grid"], config["training"])
    assert list(runs) == STUDY_RUNS
    assert config["reference"] == "resnet18-imagenet-fp32-s0"
    assert config["test_sets"] == list(TEST_SETS)
    assert config["device"] == "cuda"  # a GPU job never trains on a CPU by accident
    study = {
        "epochs": 3,
        "iterations_per_epoch": 10000,
        "batch_size": 32,
        "image_size": 512,
        "lr": 1e-5,
        "classifier_lr": 0.01,
        "loss": "cosface",
        "M": 10,
        "alpha": 30,
        "N": 5,
        "L": 2,
        "min_images_per_class": 10,
        "groups_num": 1,
        "fc_output_dim": 512,
    }
    for name, run in runs.items():
        expected = dict(study)
        if name.endswith("-sphereface"):
            expected["loss"] = "sphereface"
        if name.endswith("-4ep"):
            expected["epochs"] = 4
        assert {key: run.training[key] for key in study} == expected, name
    assert list(grid.baselines_of(runs.values())) == [
        "resnet18-imagenet",
        "resnet18-places365",
        "resnet18-gldv2",
        "efficientnet_b0-imagenet",
        "efficientnet_b1-imagenet",
        "efficientnet_b2-imagenet",
        "efficientnet_v2_s-imagenet",
        "mobilenet_v3_small-imagenet",
        "mobilenet_v3_large-imagenet",
        "convnext_tiny-imagenet",
        "swin_tiny-imagenet",
    ]


def test_shipped_weights_registry_covers_every_pretrained_study_run():
    from geoloc.model.network import BACKBONES
    from geoloc.model.weights import lookup

    config = load_validated(STUDY_CONFIG, datasets_root="/datasets")
    runs = grid.expand_grid(config["grid"], config["training"])
    files = grid.weights_files(runs.values(), lambda b, p: lookup(WEIGHTS_REGISTRY, b, p))
    assert len(files) == 11  # ResNet-18 x 3 pretrainings + 8 other backbones with ImageNet
    assert {f.format for name, f in files.items() if name.startswith("resnet18-")} == {
        "torchvision",
        "places365",
        "gldv2",
    }
    assert set(BACKBONES) == {run.backbone for run in runs.values()}


def test_demo_config_is_random_initialisation_with_two_seeds_a_sweep_and_both_precisions():
    config = load_validated(DEMO_CONFIG)
    runs = grid.expand_grid(config["grid"], config["training"])
    assert list(runs) == [
        "timm_resnet10t-none-fp32-s0-it1000",
        "timm_resnet10t-none-fp32-s1-it1000",
        "timm_resnet10t-none-fp32-s0-it1300",
        "timm_resnet10t-none-amp-s0-short",
    ]
    assert {run.pretraining for run in runs.values()} == {"none"}
    assert config["reference"] == "timm_resnet10t-none-fp32-s0-it1000"
    assert config["synthetic"]["enabled"] and config["results"] == "results/demo"
    assert config["datasets_root"].startswith("results/demo/")


def test_schema_fills_in_the_defaults():
    config = {
        "datasets_root": "/d",
        "grid": [{"backbones": ["resnet18"], "pretrainings": ["none"], "precisions": ["fp32"], "seeds": [0]}],
        "reference": "resnet18-none-fp32-s0",
        "resources": {"train": {"mem_mb": 64000}},
    }
    assert schema_error(config) == ""
    assert config["results"] == "results"
    assert config["test_sets"] == list(TEST_SETS)
    assert config["training"]["iterations_per_epoch"] == 10000 and config["training"]["trainable_blocks"] is None
    assert config["training"]["gpus_per_run"] == 1 and config["training"]["stop_margin_minutes"] == 10
    assert config["evaluation"] == {
        "batch_size": 32,
        "num_workers": 8,
        "k": 20,
        "positive_dist_threshold": 25,
        "resize": None,
        "autocast": False,
    }
    assert config["weights"] == {"registry": "resources/weights.yaml", "dir": "resources/weights"}
    assert config["synthetic"] == {"enabled": False, "size": "demo", "seed": 0}
    assert config["image_cache"] == {"dir": None, "copy_to": None}
    # a key given for one job keeps the defaults of the others
    assert config["resources"]["train"] == {"threads": 8, "mem_mb": 64000, "runtime": 480, "slurm_extra": ""}
    assert config["resources"]["max_runtime"] == 1440 and config["resources"]["gpu_request"] == "gpus"
    assert "training" not in config["grid"][0]  # blocks override only what they name


@pytest.mark.parametrize(
    "change, message",
    [
        ({"foo": 1}, "config: unknown key 'foo'"),
        ({"training": {"batch_size": "32"}}, "config key training.batch_size: '32' is not of type 'integer'"),
        ({"training": {"iterations_per_epoch": -5}}, "config key training.iterations_per_epoch: -5 is less than"),
        ({"training": {"epoch": 3}}, "config key training: unknown key 'epoch'"),
        ({"test_sets": ["pitts 30k"]}, "config key test_sets[0]: 'pitts 30k' is not allowed: a dataset name"),
        ({"grid": [{**BLOCK, "precisions": ["fp16"]}]}, "config key grid[0].precisions[0]: 'fp16' is not one of"),
        ({"grid": [{**BLOCK, "seeds": ["0"]}]}, "config key grid[0].seeds[0]: '0' is not of type 'integer'"),
        ({"grid": [{**BLOCK, "seeds": [2**64]}]}, "config key grid[0].seeds[0]: 18446744073709551616 is greater than"),
        ({"grid": [{**BLOCK, "training": {"lr": 0}}]}, "config key grid[0].training.lr: 0 is less than or equal"),
        (
            {"grid": [{**BLOCK, "tag": "x;touch PWNED"}]},
            "config key grid[0].tag: 'x;touch PWNED' is not allowed: suffix",
        ),
        (
            {"grid": [{**BLOCK, "backbones": ["ResNet-18"]}]},
            "config key grid[0].backbones[0]: 'ResNet-18' is not allowed",
        ),
        ({"results": "out/{run}"}, "config key results: 'out/{run}' is not allowed"),
        ({"datasets_root": None}, "config key datasets_root: None is not of type 'string'"),
        (
            {"image_cache": {"copy_to": "$(touch PWNED)"}},
            "config key image_cache.copy_to: '$(touch PWNED)' is not allowed",
        ),
        ({"image_cache": {"copy_to": "scratch"}}, "config key image_cache.copy_to: 'scratch' is not allowed"),
        ({"resources": {"train": {"slurm_extra": "'--qos=high'"}}}, "config key resources.train.slurm_extra: "),
        ({"resources": {"gpu_request": "gpu"}}, "config key resources.gpu_request: 'gpu' is not one of"),
        ({"evaluation": {"resize": [480]}}, "config key evaluation.resize: [480] is too short"),
    ],
)
def test_bad_config_values_are_named_by_key(change, message):
    config = {"datasets_root": "/d", "grid": [BLOCK], "reference": "resnet18-none-fp32-s0", **change}
    assert schema_error(config).startswith(message)


def command_refuses(command: str, *argv: str) -> bool:
    """Whether `geoloc <command> <argv>` stops at its command line (exit code 2)."""
    from geoloc.cli import build_parser

    try:
        build_parser(command).parse_args([command, *argv])
    except SystemExit as stop:
        assert stop.code == 2
        return True
    return False


SEEDS = [-1, 0, 2**63 - 1, 2**63, 2**64 - 1, 2**64]


def test_grid_seeds_are_refused_by_the_schema_exactly_where_train_and_the_baseline_refuse_them(tmp_path, capsys):
    def refused_by_schema(seed):
        return (
            schema_error(
                {
                    "datasets_root": "/d",
                    "grid": [{**BLOCK, "seeds": [seed]}],
                    "reference": f"resnet18-none-fp32-s{seed}",
                }
            )
            != ""
        )

    train = ["--train-dir", "t", "--val-dir", "v", "--out-dir", "o", "--checkpoint-dir", "c", "--run-name", "r"]
    baseline = ["--untrained", "--test-set", f"sf_xs={tmp_path}", "--out-dir", "o"]
    refused = [seed for seed in SEEDS if refused_by_schema(seed)]
    assert refused == [-1, 2**64]  # torch.manual_seed takes 0 to 2**64 - 1
    assert [seed for seed in SEEDS if command_refuses("train", "--seed", str(seed), *train)] == refused
    assert [seed for seed in SEEDS if command_refuses("evaluate", "--seed", str(seed), *baseline)] == refused
    assert "argument --seed" in capsys.readouterr().err


def test_the_synthetic_citys_seed_is_refused_by_the_schema_exactly_where_synth_refuses_it(capsys):
    def refused_by_schema(seed):
        return (
            schema_error(
                {
                    "datasets_root": "/d",
                    "grid": [BLOCK],
                    "reference": "resnet18-none-fp32-s0",
                    "synthetic": {"enabled": True, "seed": seed},
                }
            )
            != ""
        )

    refused = [seed for seed in SEEDS if refused_by_schema(seed)]
    assert refused == [-1, 2**63, 2**64 - 1, 2**64]  # synthetic.json's numbers read back as int64
    assert [seed for seed in SEEDS if command_refuses("synth", "out", "--size", "tiny", "--seed", str(seed))] == refused
    assert "argument --seed" in capsys.readouterr().err


def test_missing_datasets_root_says_what_to_set():
    error = schema_error({"grid": [BLOCK], "reference": "resnet18-none-fp32-s0"})
    assert error.startswith("config key datasets_root is required: folder holding sf_xs/")
