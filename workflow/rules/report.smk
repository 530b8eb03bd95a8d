# All runs and baselines into one table, and the table into the HTML report.


rule aggregate:
    input:
        recalls=expand(
            "<results>/runs/{run}/recalls/{test_set}.csv", run=RUNS, test_set=TEST_SETS
        ),
        train=expand("<results>/runs/{run}/train.json", run=RUNS),
        baseline_recalls=expand(
            "<results>/baselines/{baseline}/recalls/{test_set}.csv",
            baseline=BASELINES,
            test_set=TEST_SETS,
        ),
        baselines=expand(
            "<results>/baselines/{baseline}/baseline.json", baseline=BASELINES
        ),
        published=expand(
            "<results>/published/{published}/recalls/{test_set}.queries.csv",
            published=PUBLISHED_MODELS,
            test_set=TEST_SETS,
        ),
    output:
        "<results>/recalls.csv",
    log:
        "<logs>/aggregate.log",
    localrule: True
    conda:
        "../envs/geoloc.yaml"
    params:
        runtime=aggregate_runtime,
    shell:
        "geoloc aggregate --out {output:q} {params.runtime} --threads {threads}"
        " > {log:q} 2>&1"


rule effective_config:
    input:
        stamp="<results>/stamps/effective_config/config.json",
    output:
        "<results>/config.yaml",
    log:
        "<logs>/effective_config.log",
    localrule: True
    params:
        settings=config_as_yaml,
    run:
        atomic_write_text(output[0], params.settings)


rule report:
    input:
        recalls="<results>/recalls.csv",
        config="<results>/config.yaml",
        datasets="<results>/datasets.json",
        train=expand("<results>/runs/{run}/train.json", run=RUNS),
        queries=expand(
            "<results>/runs/{run}/recalls/{test_set}.queries.csv",
            run=RUNS,
            test_set=TEST_SETS,
        ),
        baselines=expand(
            "<results>/baselines/{baseline}/baseline.json", baseline=BASELINES
        ),
        baseline_queries=expand(
            "<results>/baselines/{baseline}/recalls/{test_set}.queries.csv",
            baseline=BASELINES,
            test_set=TEST_SETS,
        ),
        published=published_results,
    output:
        report="<results>/report.html",
        conclusions="<results>/conclusions.txt",
    log:
        "<logs>/report.log",
    localrule: True
    conda:
        "../envs/geoloc.yaml"
    params:
        settings=report_settings,
        runtime=report_runtime,
    shell:
        "geoloc report --recalls {input.recalls:q} --config {input.config:q}"
        " {params.runtime} {params.settings}"
        " --out {output.report:q} --threads {threads} > {log:q} 2>&1"
