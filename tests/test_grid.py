"""The grid: blocks -> named runs with their settings, and the checks made before any job."""

import pytest

from geoloc import grid
from geoloc.data.catalog import DatasetEntry
from geoloc.errors import GeolocError

TRAINING = {"epochs": 3, "loss": "cosface", "batch_size": 32, "dataset": "sf_xs"}
KNOWN = {"resnet18", "efficientnet_v2_s", "mobilenet_v3_large"}


def block(backbones=("resnet18",), pretrainings=("none",), precisions=("fp32",), seeds=(0,), **extra):
    return {
        "backbones": list(backbones),
        "pretrainings": list(pretrainings),
        "precisions": list(precisions),
        "seeds": list(seeds),
        **extra,
    }


def registry_lookup(entries):
    """A weights lookup over {(backbone, pretraining): format} that fails like geoloc.weights.lookup."""

    def lookup(backbone, pretraining):
        if (backbone, pretraining) not in entries:
            raise GeolocError(f"weights registry r.yaml has no pretraining {pretraining!r} for {backbone!r}")
        return {"url": "file:///x", "sha256": None, "size": None, "format": entries[backbone, pretraining]}

    return lookup


def config(*blocks, reference, datasets_root="/nowhere", synthetic=True, test_sets=("sf_xs",)):
    training = {
        **TRAINING,
        "N": 5,
        "L": 2,
        "groups_num": 1,
        "trainable_blocks": None,
        "image_size": 512,
        "fc_output_dim": 512,
        "stop_margin_minutes": 10,
    }
    return {
        "grid": list(blocks),
        "training": training,
        "reference": reference,
        "resources": resources(),
        "datasets_root": str(datasets_root),
        "synthetic": {"enabled": synthetic},
        "test_sets": list(test_sets),
    }


SCHEMA = {"type": "object", "properties": {}}  # number checks have their own tests
CATALOG = {
    "sf_xs": DatasetEntry("sf_xs", "SF-XS", test="sf_xs/test", train="sf_xs/train", val="sf_xs/val"),
    "tokyo_night": DatasetEntry("tokyo_night", "Tokyo-Night", test="tokyo_night/test"),
    "city": DatasetEntry("city", "City", test="c/images/test", train="c/images/train", val="c/images/val"),
}


def plan(
    study,
    lookup_weights=None,
    blocks_of=lambda backbone: None,
    input_size_problem=lambda a, b, s: None,
    catalog=CATALOG,
):
    return grid.plan_study(
        study,
        schema=SCHEMA,
        known_backbones=KNOWN,
        is_timm_model=bool,
        lookup_weights=lookup_weights or registry_lookup({}),
        blocks_of=blocks_of,
        input_size_problem=input_size_problem,
        catalog=catalog,
    )


def test_run_names_join_backbone_pretraining_precision_seed_and_tag():
    assert grid.run_name("resnet18", "imagenet", "fp32", 0) == "resnet18-imagenet-fp32-s0"
    assert grid.run_name("mobilenet_v3_large", "imagenet", "amp", 2, "4ep") == "mobilenet_v3_large-imagenet-amp-s2-4ep"
    # ':' would be awkward in paths and SLURM job names
    assert grid.run_name("timm:convnext_small.fb_in22k", "none", "amp", 0) == "timm_convnext_small.fb_in22k-none-amp-s0"


def test_block_expands_to_its_product_in_config_order():
    runs = grid.expand_grid(
        [block(pretrainings=("imagenet", "places365"), precisions=("fp32", "amp"), seeds=(0, 1))], TRAINING
    )
    assert list(runs) == [
        "resnet18-imagenet-fp32-s0",
        "resnet18-imagenet-fp32-s1",
        "resnet18-imagenet-amp-s0",
        "resnet18-imagenet-amp-s1",
        "resnet18-places365-fp32-s0",
        "resnet18-places365-fp32-s1",
        "resnet18-places365-amp-s0",
        "resnet18-places365-amp-s1",
    ]
    run = runs["resnet18-places365-amp-s1"]
    assert (run.backbone, run.pretraining, run.precision, run.seed, run.tag) == (
        "resnet18",
        "places365",
        "amp",
        1,
        None,
    )


def test_block_overrides_change_only_its_own_runs():
    runs = grid.expand_grid(
        [
            block(backbones=("efficientnet_v2_s",)),
            block(backbones=("efficientnet_v2_s",), tag="sphereface", training={"loss": "sphereface"}),
        ],
        TRAINING,
    )
    assert runs["efficientnet_v2_s-none-fp32-s0"].training == TRAINING
    assert runs["efficientnet_v2_s-none-fp32-s0-sphereface"].training == {**TRAINING, "loss": "sphereface"}
    assert TRAINING["loss"] == "cosface"  # the shared settings are not modified


def test_block_with_overrides_but_no_tag_is_refused():
    with pytest.raises(grid.ConfigError, match=r"config key grid\[1\]\.tag: .*\(epochs\) needs a tag"):
        grid.expand_grid([block(), block(training={"epochs": 4})], TRAINING)


def test_a_run_defined_twice_identically_is_one_run():
    runs = grid.expand_grid([block(precisions=("fp32", "amp")), block(precisions=("amp",))], TRAINING)
    assert list(runs) == ["resnet18-none-fp32-s0", "resnet18-none-amp-s0"]
    assert runs["resnet18-none-amp-s0"].block == 0


def test_identical_blocks_are_refused_instead_of_merged():
    with pytest.raises(grid.ConfigError) as error:
        grid.expand_grid([block(), block(seeds=(1,)), block(seeds=(1,))], TRAINING)
    assert str(error.value).startswith("config key grid[2]: the same block as grid[1], which would define its runs")


def test_a_sweep_expands_to_the_product_with_the_swept_values_in_the_names_and_no_tag():
    runs = grid.expand_grid(
        [block(seeds=(0, 1), training={"lr": [1.0e-5, 3.0e-5], "image_size": [320, 512]})], TRAINING
    )
    assert list(runs) == [
        f"resnet18-none-fp32-s{seed}-lr{lr}-px{px}" for seed in (0, 1) for lr in ("1e-05", "3e-05") for px in (320, 512)
    ]
    run = runs["resnet18-none-fp32-s1-lr3e-05-px320"]
    assert run.training == {**TRAINING, "lr": 3.0e-5, "image_size": 320} and run.swept == ("lr", "image_size")
    assert run.key("lr") == "grid[0].training.lr"


def test_swept_strings_and_nulls_read_as_their_value_and_a_fixed_override_still_needs_a_tag():
    runs = grid.expand_grid([block(training={"loss": ["cosface", "arcface"], "trainable_blocks": [None, 2]})], TRAINING)
    assert list(runs) == [
        "resnet18-none-fp32-s0-cosface-tbnone",
        "resnet18-none-fp32-s0-cosface-tb2",
        "resnet18-none-fp32-s0-arcface-tbnone",
        "resnet18-none-fp32-s0-arcface-tb2",
    ]
    with pytest.raises(grid.ConfigError, match=r"config key grid\[0\]\.tag: .*\(epochs\) needs a tag"):
        grid.expand_grid([block(training={"lr": [0.1, 0.2], "epochs": 4})], TRAINING)
    runs = grid.expand_grid([block(tag="4ep", training={"lr": [0.1], "epochs": 4})], TRAINING)
    assert list(runs) == ["resnet18-none-fp32-s0-lr0.1-4ep"]


def test_aggregators_are_an_axis_named_only_when_not_gem():
    runs = grid.expand_grid([block(aggregators=("gem", "netvlad"), seeds=(0, 1))], TRAINING)
    assert list(runs) == [
        "resnet18-none-fp32-s0",
        "resnet18-none-fp32-s1",
        "resnet18-none-fp32-s0-netvlad",
        "resnet18-none-fp32-s1-netvlad",
    ]
    assert runs["resnet18-none-fp32-s1-netvlad"].aggregator == "netvlad"
    assert runs["resnet18-none-fp32-s0"].aggregator == "gem"


def test_a_swept_name_that_a_tagged_block_gives_another_run_is_refused():
    blocks = [block(training={"epochs": [4]}), block(tag="ep4", training={"lr": 0.5})]
    with pytest.raises(grid.ConfigError) as error:
        grid.expand_grid(blocks, TRAINING)
    assert str(error.value) == (
        "config key grid[1]: run 'resnet18-none-fp32-s0-ep4' is also defined by grid[0] with "
        "different settings (epochs 4 vs 3, lr None vs 0.5); give one of the blocks another tag"
    )


def test_a_run_name_with_two_different_settings_names_both_blocks_and_the_difference():
    blocks = [block(tag="x"), block(tag="x", training={"epochs": 4})]
    with pytest.raises(grid.ConfigError) as error:
        grid.expand_grid(blocks, TRAINING)
    assert str(error.value) == (
        "config key grid[1]: run 'resnet18-none-fp32-s0-x' is also defined by grid[0] with different "
        "settings (epochs 3 vs 4); give one of the blocks another tag"
    )


def test_unknown_backbone_is_named_with_its_block():
    runs = grid.expand_grid([block(), block(backbones=("resnet19",))], TRAINING)
    with pytest.raises(grid.ConfigError, match=r"config key grid\[1\]\.backbones: unknown backbone 'resnet19'"):
        grid.check_backbones(runs.values(), KNOWN, is_timm_model=lambda name: True)


def test_timm_backbones_are_checked_against_timm():
    asked = []

    def is_timm_model(name):
        asked.append(name)
        return name == "convnext_small"

    good = grid.expand_grid([block(backbones=("timm:convnext_small",))], TRAINING)
    grid.check_backbones(good.values(), KNOWN, is_timm_model)
    bad = grid.expand_grid([block(backbones=("timm:convnext_smal",))], TRAINING)
    with pytest.raises(grid.ConfigError, match=r"grid\[0\]\.backbones: timm has no model 'convnext_smal'"):
        grid.check_backbones(bad.values(), KNOWN, is_timm_model)
    assert asked == ["convnext_small", "convnext_smal"]


def test_weights_files_one_per_backbone_and_pretraining_with_format():
    runs = grid.expand_grid(
        [
            block(pretrainings=("imagenet", "places365", "none"), precisions=("fp32", "amp")),
            block(backbones=("timm:convnext_small",), pretrainings=("imagenet",)),
        ],
        TRAINING,
    )
    lookup = registry_lookup(
        {
            ("resnet18", "imagenet"): "torchvision",
            ("resnet18", "places365"): "places365",
            ("timm:convnext_small", "imagenet"): "timm",
        }
    )
    files = grid.weights_files(runs.values(), lookup)
    assert files == {
        "resnet18-imagenet": grid.WeightsFile("resnet18", "imagenet", "torchvision", None),
        "resnet18-places365": grid.WeightsFile("resnet18", "places365", "places365", None),
        "timm_convnext_small-imagenet": grid.WeightsFile("timm:convnext_small", "imagenet", "timm", None),
    }
    assert runs["resnet18-places365-amp-s0"].weights_id == "resnet18-places365"
    assert runs["resnet18-none-amp-s0"].weights_id is None
    assert files["timm_convnext_small-imagenet"].slug == "timm_convnext_small"


def test_pretraining_without_weights_entry_is_a_config_error_naming_the_key():
    runs = grid.expand_grid([block(), block(pretrainings=("gldv2",))], TRAINING)
    with pytest.raises(grid.ConfigError) as error:
        grid.weights_files(runs.values(), registry_lookup({}))
    assert str(error.value) == (
        "config key grid[1].pretrainings: weights registry r.yaml has no pretraining 'gldv2' for 'resnet18'"
    )


def test_reference_must_be_a_run_of_the_grid():
    study = config(block(precisions=("fp32", "amp")), reference="resnet18-none-amp-s0")
    planned = plan(study)
    assert list(planned.runs) == ["resnet18-none-fp32-s0", "resnet18-none-amp-s0"]
    assert planned.weights == {}
    with pytest.raises(grid.ConfigError, match=r"config key reference: 'resnet18-imagenet-fp32-s0' is not a run"):
        plan({**study, "reference": "resnet18-imagenet-fp32-s0"})


def test_a_left_out_reference_is_the_first_run_of_the_grid():
    study = config(block(precisions=("amp", "fp32")), reference=None)
    assert plan(study).reference == "resnet18-none-amp-s0"
    assert plan({**study, "reference": "resnet18-none-fp32-s0"}).reference == "resnet18-none-fp32-s0"


def test_test_sets_and_training_sets_must_be_catalog_entries_with_their_folders():
    study = config(
        block(), block(tag="c", training={"dataset": "tokyo_night"}), reference=None, test_sets=("sf_xs", "nowhere")
    )
    with pytest.raises(grid.ConfigError) as error:
        plan(study)
    assert str(error.value).startswith("config key test_sets[1]: 'nowhere' is not a dataset of the catalog; add it ")
    with pytest.raises(grid.ConfigError) as error:
        plan({**study, "test_sets": ["sf_xs"]})
    assert str(error.value) == (
        "config key grid[1].training.dataset: dataset 'tokyo_night' has no train and no val "
        "folder (give datasets.tokyo_night.train); training sets: city, sf_xs"
    )


def make_test_folder(folder, database: int = 1, queries: int = 1) -> None:
    """A test set's folders with that many (empty) images: planning counts names, it decodes nothing."""
    for part, count in (("database", database), ("queries", queries)):
        (folder / part).mkdir(parents=True)
        for i in range(count):
            (folder / part / f"@0@0@@@@@@@@{i}.jpg").write_bytes(b"")


def test_a_grid_that_trains_nothing_plans_baselines_and_needs_no_training_set(tmp_path):
    make_test_folder(tmp_path / "tokyo_night/test")
    study = config(
        block(train=False, seeds=(4,)),
        reference=None,
        datasets_root=tmp_path,
        synthetic=False,
        test_sets=("tokyo_night",),
    )
    planned = plan({**study, "training": {**study["training"], "dataset": "no such set"}})
    assert (planned.runs, planned.reference) == ({}, None)
    assert [(b.name, b.seed) for b in planned.baselines.values()] == [("resnet18-none-baseline", 4)]


def test_real_datasets_must_hold_every_folder_the_runs_read(tmp_path):
    for folder in ("c/images/train", "c/images/val"):
        (tmp_path / folder).mkdir(parents=True)
    make_test_folder(tmp_path / "sf_xs/test")
    study = config(
        block(tag="c", training={"dataset": "city"}),
        reference=None,
        datasets_root=tmp_path,
        synthetic=False,
        test_sets=("sf_xs", "tokyo_night"),
    )
    with pytest.raises(GeolocError) as error:
        plan(study)
    assert "tokyo_night" in str(error.value) and str(tmp_path / "tokyo_night/test") in str(error.value)
    make_test_folder(tmp_path / "tokyo_night/test")
    plan(study)  # no sf_xs/train: no run trains on sf_xs
    (tmp_path / "c/images/val").rmdir()
    with pytest.raises(GeolocError, match="city"):
        plan(study)
    # a synthetic city is generated by the workflow, so it need not exist yet
    plan({**study, "datasets_root": str(tmp_path / "later"), "synthetic": {"enabled": True}})


def test_a_count_other_than_the_expected_one_names_the_set_the_folder_and_both_counts(tmp_path):
    make_test_folder(tmp_path / "t", database=3, queries=2)
    catalog = {"t": DatasetEntry("t", "T", test="t", expected={"database": 3, "queries": 5})}
    study = config(block(train=False), reference=None, datasets_root=tmp_path, synthetic=False, test_sets=("t",))
    with pytest.raises(GeolocError) as error:
        plan(study, catalog=catalog)
    message = str(error.value)
    assert "t" in message and str(tmp_path / "t") in message and "5" in message and "2" in message
    plan(study, catalog={"t": DatasetEntry("t", "T", test="t", expected={"database": 3, "queries": 2})})


GROUPS = {"N": 5, "L": 2, "groups_num": 1, "trainable_blocks": None, "image_size": 512, "fc_output_dim": 512}


def test_more_groups_than_n_n_l_is_refused_naming_where_the_setting_comes_from():
    runs = grid.expand_grid([block(), block(tag="g", training={"N": 2, "groups_num": 9})], GROUPS)
    with pytest.raises(grid.ConfigError) as error:
        grid.check_run_settings(runs.values(), lambda b: None, lambda a, b, s: None)
    assert str(error.value) == (
        "config key grid[1].training.groups_num: 9 is more than the N*N*L = 8 groups that "
        "N=2, L=2 make (run resnet18-none-fp32-s0-g)"
    )
    runs = grid.expand_grid([block()], {**GROUPS, "groups_num": 51})
    with pytest.raises(grid.ConfigError, match=r"^config key training\.groups_num: 51 is more than the N\*N\*L = 50"):
        grid.check_run_settings(runs.values(), lambda b: None, lambda a, b, s: None)
    grid.check_run_settings(
        grid.expand_grid([block()], {**GROUPS, "groups_num": 50}).values(), lambda b: None, lambda a, b, s: None
    )


def test_trainable_blocks_beyond_the_backbones_blocks_is_refused():
    runs = grid.expand_grid([block(backbones=("resnet18", "timm:vit_small"))], {**GROUPS, "trainable_blocks": 5})
    blocks = {"resnet18": 5}.get  # a timm model's blocks are unknown: not checked here
    grid.check_run_settings(runs.values(), blocks, lambda a, b, s: None)
    runs = grid.expand_grid([block()], {**GROUPS, "trainable_blocks": 6})
    with pytest.raises(grid.ConfigError) as error:
        grid.check_run_settings(runs.values(), blocks, lambda a, b, s: None)
    assert str(error.value) == (
        "config key training.trainable_blocks: 6 is more than the 5 blocks of resnet18 (run resnet18-none-fp32-s0)"
    )


def test_an_image_size_the_backbone_cannot_take_is_refused_once_per_backbone_and_size():
    asked = []

    def problem(aggregator, backbone, size):
        asked.append((aggregator, backbone, size))
        return "vit_small takes 224 x 224 images only" if size != 224 else None

    blocks = [
        block(backbones=("timm:vit_small",), seeds=(0, 1)),
        block(backbones=("timm:vit_small",), tag="s", training={"image_size": 224}),
    ]
    runs = grid.expand_grid(blocks, {**GROUPS, "image_size": 64})
    with pytest.raises(grid.ConfigError) as error:
        grid.check_run_settings(runs.values(), lambda b: None, problem)
    assert str(error.value) == (
        "config key training.image_size: vit_small takes 224 x 224 images only (run timm_vit_small-none-fp32-s0)"
    )
    grid.check_run_settings([runs["timm_vit_small-none-fp32-s0-s"]], lambda b: None, problem)
    assert asked == [("gem", "timm:vit_small", 64), ("gem", "timm:vit_small", 224)]


NUMBERS = {
    "type": "object",
    "properties": {
        "training": {
            "type": "object",
            "properties": {
                "batch_size": {"$ref": "#/$defs/count"},
                "trainable_blocks": {"type": ["integer", "null"]},
                "lr": {"type": "number"},
            },
        },
        "grid": {
            "type": "array",
            "items": {"type": "object", "properties": {"seeds": {"type": "array", "items": {"type": "integer"}}}},
        },
    },
    "$defs": {"count": {"type": "integer", "minimum": 1}},
}


@pytest.mark.parametrize(
    "config, problems",
    [
        ({"training": {"batch_size": 4, "lr": 0.5, "trainable_blocks": None}, "grid": [{"seeds": [0, 1]}]}, []),
        ({"training": {"batch_size": 4.0}}, ["config key training.batch_size: 4.0 is not of type 'integer'"]),
        (
            {"training": {"trainable_blocks": 2.0}},
            ["config key training.trainable_blocks: 2.0 is not of type 'integer'"],
        ),
        ({"grid": [{"seeds": [0]}, {"seeds": [1.0]}]}, ["config key grid[1].seeds[0]: 1.0 is not of type 'integer'"]),
        (
            {"training": {"lr": float("inf"), "batch_size": float("nan")}},
            [
                "config key training.batch_size: nan is not a finite number",
                "config key training.lr: inf is not a finite number",
            ],
        ),
    ],
)
def test_numbers_json_schema_lets_through_and_commands_refuse_are_named(config, problems):
    assert sorted(grid.number_problems(config, NUMBERS, NUMBERS)) == problems


def test_plan_refuses_a_whole_number_float_before_it_names_a_run():
    study = config(block(seeds=(1.0,)), reference="resnet18-none-fp32-s1.0")
    schema = {"type": "object", "properties": {"grid": NUMBERS["properties"]["grid"]}}
    with pytest.raises(grid.ConfigError, match=r"config key grid\[0\]\.seeds\[0\]: 1\.0 is not of type 'integer'"):
        grid.plan_study(
            study,
            schema=schema,
            known_backbones=KNOWN,
            is_timm_model=bool,
            lookup_weights=registry_lookup({}),
            blocks_of=lambda b: None,
            input_size_problem=lambda a, b, s: None,
            catalog=CATALOG,
        )


def test_one_baseline_per_backbone_and_pretraining_with_the_first_runs_head():
    runs = grid.expand_grid(
        [
            block(pretrainings=("imagenet", "none"), precisions=("fp32", "amp"), seeds=(3, 4)),
            block(
                backbones=("timm:convnext_small",),
                pretrainings=("imagenet",),
                tag="wide",
                training={"fc_output_dim": 1024},
            ),
        ],
        {**TRAINING, "fc_output_dim": 512},
    )
    baselines = grid.baselines_of(runs.values())
    assert list(baselines) == ["resnet18-imagenet", "resnet18-none", "timm_convnext_small-imagenet"]
    assert baselines["resnet18-imagenet"] == grid.Baseline(
        "resnet18-imagenet", "resnet18", "imagenet", "resnet18-imagenet", 512, 3
    )
    assert baselines["resnet18-none"].weights_id is None
    assert baselines["timm_convnext_small-imagenet"].fc_output_dim == 1024
    assert baselines["timm_convnext_small-imagenet"].name == "timm_convnext_small-imagenet-baseline"


def test_the_keys_a_schema_marks_changing_the_model_in_schema_order():
    schema = {
        "properties": {
            "training": {
                "properties": {
                    "lr": {"$ref": "#/$defs/lr"},
                    "num_workers": {"type": "integer", "changes": "nothing"},
                    "epochs": {"$ref": "#/$defs/epochs", "default": 3},
                }
            }
        },
        "$defs": {"lr": {"type": "number", "changes": "model"}, "epochs": {"changes": "model"}},
    }
    assert grid.keys_that_change(schema, "training", "model") == ["lr", "epochs"]
    assert grid.keys_that_change(schema, "training", "nothing") == ["num_workers"]


def resources(**train):
    return {
        "train": {"runtime": 480, "mem_mb": 48000, "threads": 8, **train},
        "evaluate": {"runtime": 120, "mem_mb": 32000},
        "max_runtime": 1440,
        "gpu_model": None,
        "growth": 1.5,
        "max_mem_mb": None,
    }


def test_a_stop_margin_as_long_as_the_jobs_time_limit_is_refused():
    runs = grid.expand_grid(
        [block(), block(tag="m", training={"stop_margin_minutes": 30})], {"stop_margin_minutes": 10}
    )
    grid.check_stop_margin([runs["resnet18-none-fp32-s0"]], resources(runtime=11))
    with pytest.raises(grid.ConfigError) as error:
        grid.check_stop_margin(runs.values(), resources(runtime=30))
    assert str(error.value) == (
        "config key grid[1].training.stop_margin_minutes: 30 minutes leave no time to train "
        "in a job of 30 minutes (resources.train.runtime, at most resources.max_runtime)"
    )
    runs = grid.expand_grid([block(resources={"runtime": 10})], {"stop_margin_minutes": 10})
    with pytest.raises(grid.ConfigError, match=r"job of 10 minutes \(grid\[0\]\.resources\.runtime, at most"):
        grid.check_stop_margin(runs.values(), resources())


def test_a_blocks_resources_are_its_trainings_and_the_rest_keep_the_configs():
    runs = grid.expand_grid(
        [
            block(),
            block(
                backbones=("efficientnet_v2_s",),
                resources={"mem_mb": 90000, "runtime": 900, "gpu_model": "a100", "threads": 16, "gpus": 2},
            ),
        ],
        {"gpus_per_run": 1},
    )
    small, big = runs["resnet18-none-fp32-s0"], runs["efficientnet_v2_s-none-fp32-s0"]
    asked = {
        key: tuple(grid.job_resource(resources(), "train", key, run) for run in (small, big))
        for key in ("mem_mb", "runtime", "gpu_model", "threads")
    }
    assert asked == {"mem_mb": (48000, 90000), "runtime": (480, 900), "gpu_model": (None, "a100"), "threads": (8, 16)}
    assert (small.training["gpus_per_run"], big.training["gpus_per_run"]) == (1, 2)
    assert big.name == "efficientnet_v2_s-none-fp32-s0"  # resources change nothing: no tag, no other name
    with pytest.raises(grid.ConfigError, match=r"config key grid\[0\]\.resources\.gpus: the block also sets"):
        grid.expand_grid([block(tag="x", training={"gpus_per_run": 2}, resources={"gpus": 2})], {})


def test_each_retry_asks_for_more_memory_and_time_within_the_caps():
    run = grid.expand_grid([block(resources={"mem_mb": 40000})], {})["resnet18-none-fp32-s0"]
    config = {**resources(runtime=600), "max_mem_mb": 80000}
    asked = [
        (
            grid.job_resource(config, "train", "mem_mb", run, attempt),
            grid.job_resource(config, "train", "runtime", run, attempt),
        )
        for attempt in (1, 2, 3, 4)
    ]
    assert asked == [(40000, 600), (60000, 900), (80000, 1350), (80000, 1440)]
    assert [grid.job_resource(config, "evaluate", "mem_mb", None, attempt) for attempt in (1, 2, 3)] == [
        32000,
        48000,
        72000,
    ]
    # a cap below the first ask limits only the growth
    assert grid.job_resource({**config, "max_mem_mb": 1000}, "train", "mem_mb", run, 3) == 40000


def test_an_aggregator_built_for_one_feature_map_too_small_at_the_image_size_is_refused_before_any_job():
    from geoloc.model.aggregators.sizes import input_size_problem

    study = config(block(aggregators=["gem", "mixvpr"]), reference=None)
    study["training"]["image_size"] = 32  # ResNet-18 gives a 1x1 map: fewer positions than MixVPR's 4 rows
    with pytest.raises(grid.ConfigError) as error:
        plan(study, input_size_problem=input_size_problem)
    assert str(error.value).startswith("config key training.image_size: aggregator mixvpr projects")
    assert "(run resnet18-none-fp32-s0-mixvpr)" in str(error.value)
    study["training"]["image_size"] = 320
    assert list(plan(study, input_size_problem=input_size_problem).runs) == [
        "resnet18-none-fp32-s0",
        "resnet18-none-fp32-s0-mixvpr",
    ]
