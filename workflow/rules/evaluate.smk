# One evaluation job per run for all its test sets (one model load; a database two test sets
# share is embedded once), one per (backbone, pretraining) for the untrained baseline, and one
# per published model (config `published_models`), a reference row trained elsewhere.


rule evaluate:
    input:
        model="<results>/runs/{run}/model.pt",
        stamp="<results>/stamps/evaluate/{run}.json",
    output:
        recalls=expand(
            "<results>/runs/{{run}}/recalls/{test_set}.csv", test_set=TEST_SETS
        ),
        queries=expand(
            "<results>/runs/{{run}}/recalls/{test_set}.queries.csv", test_set=TEST_SETS
        ),
    log:
        "<logs>/evaluate/{run}.log",
    benchmark:
        "<benchmarks>/evaluate/{run}.tsv"
    retries: config["resources"]["retries"]
    conda:
        "../envs/geoloc.yaml"
    threads: config["resources"]["evaluate"]["threads"]
    resources:
        runtime=resource_of("evaluate", "runtime"),
        mem_mb=resource_of("evaluate", "mem_mb"),
        cpus_per_task=job_resources("evaluate")["threads"],
        gpu=gpus,
        gpu_model=gpu_model,
        gres=gres,
        slurm_extra=slurm_extra_of("evaluate"),
    params:
        settings=evaluate_settings,
        runtime=evaluate_runtime,
    shell:
        "geoloc evaluate --model {input.model:q} {params.settings} {params.runtime}"
        " > {log:q} 2>&1"


rule baseline:
    input:
        data=synthetic_datasets,
        weights=weights_of(BASELINES, "baseline"),
        stamp="<results>/stamps/baseline/{baseline}.json",
    output:
        summary="<results>/baselines/{baseline}/baseline.json",
        recalls=expand(
            "<results>/baselines/{{baseline}}/recalls/{test_set}.csv",
            test_set=TEST_SETS,
        ),
        queries=expand(
            "<results>/baselines/{{baseline}}/recalls/{test_set}.queries.csv",
            test_set=TEST_SETS,
        ),
    log:
        "<logs>/baseline/{baseline}.log",
    benchmark:
        "<benchmarks>/baseline/{baseline}.tsv"
    retries: config["resources"]["retries"]
    conda:
        "../envs/geoloc.yaml"
    threads: config["resources"]["evaluate"]["threads"]
    resources:
        runtime=resource_of("evaluate", "runtime"),
        mem_mb=resource_of("evaluate", "mem_mb"),
        cpus_per_task=job_resources("evaluate")["threads"],
        gpu=gpus,
        gpu_model=gpu_model,
        gres=gres,
        slurm_extra=slurm_extra_of("evaluate"),
    params:
        settings=baseline_settings,
        runtime=baseline_runtime,
    shell:
        "geoloc evaluate {params.settings} {params.runtime} > {log:q} 2>&1"


rule published:
    input:
        data=synthetic_datasets,
        weights="<weights>/published/{published}.pth",
        stamp="<results>/stamps/published/{published}.json",
    output:
        recalls=expand(
            "<results>/published/{{published}}/recalls/{test_set}.csv",
            test_set=TEST_SETS,
        ),
        queries=expand(
            "<results>/published/{{published}}/recalls/{test_set}.queries.csv",
            test_set=TEST_SETS,
        ),
    log:
        "<logs>/published/{published}.log",
    benchmark:
        "<benchmarks>/published/{published}.tsv"
    retries: config["resources"]["retries"]
    conda:
        "../envs/geoloc.yaml"
    threads: config["resources"]["evaluate"]["threads"]
    resources:
        runtime=resource_of("evaluate", "runtime"),
        mem_mb=resource_of("evaluate", "mem_mb"),
        cpus_per_task=job_resources("evaluate")["threads"],
        gpu=gpus,
        gpu_model=gpu_model,
        gres=gres,
        slurm_extra=slurm_extra_of("evaluate"),
    params:
        settings=published_settings,
        runtime=published_runtime,
    shell:
        "geoloc evaluate {params.settings} {params.runtime} > {log:q} 2>&1"
