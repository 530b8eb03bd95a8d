"""Every job's command line, without Snakemake: built from the run, parsed by the command itself.

The training settings are one table (geoloc.train.settings.TrainSettings): the schema must say
the same of each (tested here), `geoloc train` parses what the workflow emits back into exactly
the run's settings, and nothing a runtime knob changes reaches the rerun trigger.
"""

import dataclasses
import shlex
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from geoloc import grid, jobs
from geoloc.cli import build_parser
from geoloc.data.catalog import DatasetEntry
from geoloc.train.settings import EVALUATION, RUN, TRAINING, TrainSettings, fields_from

REPO = Path(__file__).resolve().parents[1]
SCHEMA_FILE = REPO / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_FILE.read_text(encoding="utf-8"))
JSON_TYPES = {"int": "integer", "float": "number", "str": "string"}


def defined(name: str) -> dict:
    return grid._dereferenced(SCHEMA, SCHEMA["properties"]["training"]["properties"][name])


def test_the_model_changing_training_keys_of_the_schema_are_the_tables_training_settings():
    assert grid.keys_that_change(SCHEMA, "training", "model") == list(jobs.MODEL_TRAINING_KEYS)
    assert [field.name for field in fields_from(EVALUATION)] == grid.keys_that_change(SCHEMA, "evaluation", "model")
    block = SCHEMA["$defs"]["block"]["properties"]["training"]["properties"]
    assert set(jobs.MODEL_TRAINING_KEYS) <= set(block), "a grid block may override every training setting"


@pytest.mark.parametrize("field", fields_from(TRAINING), ids=lambda field: field.name)
def test_each_training_setting_has_the_schemas_type_bounds_choices_and_default(field):
    schema = defined(field.name)
    bounds = {
        "minimum": schema.get("minimum"),
        "maximum": schema.get("maximum"),
        "exclusive_minimum": schema.get("exclusiveMinimum"),
    }
    assert field.metadata["bounds"] == {k: v for k, v in bounds.items() if v is not None}
    assert field.metadata["choices"] == (tuple(schema["enum"]) if "enum" in schema else None)
    if "enum" not in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        assert types[0] == JSON_TYPES[field.type.split(" ")[0]]
        assert ("null" in types) == ("None" in field.type)
    assert schema["default"] == field.default


def study_config(**overrides) -> dict:
    config = {
        "datasets_root": "/data",
        "synthetic": {"enabled": True},
        "reference": "resnet18-none-fp32-s0",
        "grid": [
            {
                "backbones": ["resnet18"],
                "pretrainings": ["none", "imagenet"],
                "precisions": ["fp32", "amp"],
                "seeds": [3],
                "training": {"image_size": 320, "lr": 0.002},
                "tag": "big",
            },
            {"backbones": ["resnet18"], "pretrainings": ["none"], "precisions": ["fp32"], "seeds": [0]},
        ],
        "evaluation": {"autocast": True, "resize": [480, 640], "batch_size": 5},
        "training": {"num_workers": 3, "compile": True, "stop_margin_minutes": 4},
        **overrides,
    }
    validate(config, schema=str(SCHEMA_FILE))  # fills in the defaults, as the workflow does
    return config


CATALOG = {
    "sf_xs": DatasetEntry("sf_xs", "SF-XS", test="sf_xs/test", train="sf_xs/train", val="v"),
    "tokyo_xs": DatasetEntry("tokyo_xs", "Tokyo-XS", test="tokyo_xs/test"),
    "tokyo_night": DatasetEntry("tokyo_night", "Tokyo-Night", test="tokyo_night/test", subset_of="tokyo_xs"),
    "pitts30k": DatasetEntry(
        "pitts30k",
        "Pitts30k",
        test="pitts30k/images/test",
        train="p/train",
        val="p/val",
        positive_dist_threshold=10,
        queries="/lists/p.txt",
    ),
    "msls_val": DatasetEntry("msls_val", "MSLS val", test="msls/val", queries="msls/official.txt"),
}


def planned_jobs(config: dict) -> jobs.Jobs:
    study = grid.plan_study(
        config,
        schema=SCHEMA,
        known_backbones={"resnet18"},
        is_timm_model=bool,
        lookup_weights=lambda backbone, pretraining: {"format": "torchvision", "sha256": "abcdef12"},
        blocks_of=lambda backbone: None,
        input_size_problem=lambda aggregator, backbone, size: None,
        catalog=CATALOG,
    )
    return jobs.Jobs(config, study, registry="reg.yaml", catalog=CATALOG)


def parsed(command: str, *parts: str):
    return build_parser(command).parse_args([command, *shlex.split(" ".join(parts))])


def test_the_training_command_parses_back_into_exactly_the_runs_settings():
    plan = planned_jobs(study_config())
    for name, run in plan.study.runs.items():
        settings = plan.train_settings(name)
        args = parsed("train", settings, plan.train_runtime(name, "w/x.pth", f"out/{name}/model.pt", 4))
        trained = TrainSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSettings)})
        assert trained == TrainSettings(
            backbone=run.backbone,
            precision=run.precision,
            seed=run.seed,
            positive_dist_threshold=25,
            weights_format=None if run.pretraining == "none" else "torchvision",
            **{key: run.training[key] for key in jobs.MODEL_TRAINING_KEYS},
        )
        assert (args.run_name, args.pretraining, args.tag) == (name, run.pretraining, run.tag)
        assert (args.train_dir, args.val_dir) == (Path("/data/sf_xs/train"), Path("/data/v"))
        assert args.weights == ("none" if run.pretraining == "none" else "w/x.pth")
        assert args.weights_sha256 == (None if run.pretraining == "none" else "abcdef12")
        assert (args.out_dir, args.checkpoint_dir) == (Path(f"out/{name}"), Path(f"results/checkpoints/{name}"))
        assert (args.num_workers, args.compile, args.stop_margin_seconds, args.threads) == (3, True, 240, 4)
        # the rerun trigger holds no path and no runtime knob
        for word in ("--run-name", "/data", "--num-workers", "--compile", "--threads", "--device", "--weights "):
            assert word not in settings


def test_a_runtime_knob_changes_the_runtime_words_and_never_the_settings():
    before, after = (
        planned_jobs(study_config()),
        planned_jobs(
            study_config(
                training={"num_workers": 1, "checkpoint_every": 9, "max_bad_images": 2, "image_cache": False},
                device="cpu",
                evaluation={"batch_size": 1, "num_workers": 2, "autocast": True, "resize": [480, 640]},
            )
        ),
    )
    for name in before.study.runs:
        assert before.train_settings(name) == after.train_settings(name)
        assert before.evaluate_settings(name) == after.evaluate_settings(name)
        assert before.train_runtime(name, None, "m/model.pt", 1) != after.train_runtime(name, None, "m/model.pt", 1)
    for key in before.study.baselines:
        assert before.baseline_settings(key) == after.baseline_settings(key)


def test_a_model_setting_changes_the_training_settings_of_the_runs_it_applies_to_only():
    before = planned_jobs(study_config())
    config = study_config()
    config["grid"][0]["training"]["lr"] = 0.003
    after = planned_jobs(config)
    changed = {name for name in before.study.runs if before.train_settings(name) != after.train_settings(name)}
    assert changed == {name for name in before.study.runs if name.endswith("-big")} and len(changed) == 4


def test_evaluations_autocast_only_amp_runs_and_parse_with_every_test_set():
    plan = planned_jobs(study_config(test_sets=["sf_xs", "tokyo_night"]))
    for name, run in plan.study.runs.items():
        recalls = [f"r/{name}/recalls/sf_xs.csv"]
        args = parsed("evaluate", "--model m.pt", plan.evaluate_settings(name), plan.evaluate_runtime(recalls, 2))
        assert args.autocast == (run.precision == "amp")
        assert (args.resize, args.k, args.positive_dist_threshold, args.batch_size) == ([480, 640], 20, 25, 5)
        assert args.test_sets == [("sf_xs", Path("/data/sf_xs/test")), ("tokyo_night", Path("/data/tokyo_night/test"))]
        assert args.out_dir == Path(f"r/{name}/recalls")
    for key, baseline in plan.study.baselines.items():
        args = parsed(
            "evaluate",
            plan.baseline_settings(key),
            plan.baseline_runtime(key, "w.pth", "b/baseline.json", ["b/recalls/sf_xs.csv"], 2),
        )
        assert (args.untrained, args.autocast, args.backbone, args.pretraining) == (
            True,
            False,
            "resnet18",
            baseline.pretraining,
        )
        assert (args.seed, args.fc_output_dim) == (3, 512)  # the head of the first run with that pretraining
        assert args.weights == (None if baseline.pretraining == "none" else Path("w.pth"))


def test_every_run_axis_of_the_table_reaches_the_training_settings():
    plan = planned_jobs(study_config())
    words = shlex.split(plan.train_settings("resnet18-imagenet-amp-s3-big"))
    for field in fields_from(RUN):
        assert f"--{field.name.replace('_', '-')}" in words
    assert words[words.index("--precision") + 1] == "amp" and words[words.index("--seed") + 1] == "3"


def test_a_cache_job_builds_each_training_set_of_its_size_and_only_sizes_a_run_caches():
    plan = planned_jobs(study_config())
    command = plan.cache_images_runtime(320, threads=3)
    assert shlex.split(command)[:3] == ["geoloc", "cache-images", "--train-dir"]
    assert "/data/sf_xs/train" in command and "--num-workers 2 --threads 3" in command
    assert plan.cache_images_runtime(64, threads=3) == "echo no run caches its images at 64 px"


def test_the_report_is_told_the_reference_and_every_expected_run():
    plan = planned_jobs(study_config())
    words = shlex.split(plan.report_settings())
    assert words[words.index("--reference") + 1] == "resnet18-none-fp32-s0"
    assert words[words.index("--expected") + 1 :] == list(plan.study.runs)


def test_a_config_naming_no_reference_leaves_the_choice_to_the_report():
    # the report then takes the first expected run and says the config named none
    config = study_config()
    del config["reference"]
    plan = planned_jobs(config)
    words = shlex.split(plan.report_settings())
    assert "--reference" not in words and words[words.index("--expected") + 1] == plan.study.reference


def test_each_test_set_gets_its_own_threshold_and_query_file_in_the_rerun_trigger():
    plan = planned_jobs(study_config(test_sets=["sf_xs", "pitts30k", "msls_val"]))
    for settings in (plan.evaluate_settings("resnet18-none-fp32-s0"), plan.baseline_settings("resnet18-none")):
        words = shlex.split(settings)
        assert [words[i + 1] for i, word in enumerate(words) if word == "--set-threshold"] == ["pitts30k=10"]
        assert [words[i + 1] for i, word in enumerate(words) if word == "--set-queries"] == [
            "pitts30k=/lists/p.txt",
            "msls_val=/data/msls/official.txt",
        ]
    words = shlex.split(plan.evaluate_runtime(["r/x/recalls/sf_xs.csv"], 1))
    assert [words[i + 1] for i, word in enumerate(words) if word == "--test-set"] == [
        "sf_xs=/data/sf_xs/test",
        "pitts30k=/data/pitts30k/images/test",
        "msls_val=/data/msls/val",
    ]


def test_a_run_trains_and_validates_on_its_training_sets_folders_and_caches_them():
    config = study_config()
    config["grid"][0]["training"]["dataset"] = "pitts30k"
    plan = planned_jobs(config)
    for name, run in plan.study.runs.items():
        args = parsed("train", plan.train_settings(name), plan.train_runtime(name, None, "o/model.pt", 1))
        expected = (
            ("/data/p/train", "/data/p/val", "pitts30k") if run.tag else ("/data/sf_xs/train", "/data/v", "sf_xs")
        )
        assert (str(args.train_dir), str(args.val_dir), args.dataset) == expected
    assert "--train-dir /data/p/train" in plan.cache_images_runtime(320, 1)
    assert "--train-dir /data/sf_xs/train" in plan.cache_images_runtime(512, 1)
