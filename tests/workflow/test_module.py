"""The workflow used as a Snakemake module from a user's own project folder."""

import yaml

from support.workflow import (
    BLOCK,
    REPO,
    WEIGHTS_REGISTRY,
    fake_geoloc_env,
    flag,
    module_snakefile,
    recorded_calls,
    small_config,
    snakemake,
    write_yaml,
)


def test_the_workflow_runs_as_a_module_from_another_folder_with_its_own_resources(tmp_path, tiny_city):
    env, calls = fake_geoloc_env(tmp_path)
    project = tmp_path / "project"
    project.mkdir()
    config = small_config(
        tiny_city,
        "results",
        grid=[{**BLOCK, "pretrainings": ["imagenet"]}],
        reference="resnet18-imagenet-fp32-s0",
        report={},
    )
    write_yaml(project / "config.yaml", config)
    weights = project / "resources" / "weights" / "resnet18-imagenet.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")  # in place: not downloaded
    result = snakemake(project, "--cores", "1", env=env, snakefile=module_snakefile(project, "config.yaml"))
    assert result.returncode == 0, result.stderr
    called = {args[0]: args[1:] for args in recorded_calls(calls)}
    # defaults that name the workflow's own files resolve from its folder, not the working directory
    assert flag(called["report"], "--published") == str(REPO / "resources" / "published-results.csv")
    assert flag(called["report"], "--templates") == str(REPO / "workflow" / "report")
    assert (
        flag(called["train"], "--weights-sha256")
        == yaml.safe_load(WEIGHTS_REGISTRY.read_text())["resnet18"]["imagenet"]["sha256"]
    )
    assert (project / "results" / "report.html").is_file()
