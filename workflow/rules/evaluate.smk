# One evaluation job per run and test set.


rule evaluate:
    input:
        model="<results>/runs/{run}/model.pt",
        data=ancient("<datasets>"),
    output:
        recalls="<results>/runs/{run}/recalls/{test_set}.csv",
        queries="<results>/runs/{run}/recalls/{test_set}.queries.csv",
    log:
        "<logs>/evaluate/{run}/{test_set}.log",
    benchmark:
        "<benchmarks>/evaluate/{run}/{test_set}.tsv"
    conda:
        "../envs/geoloc.yaml"
    threads: 8
    resources:
        gpu=1,
    params:
        test_dir=test_folder,
        settings=evaluate_settings,
    shell:
        "geoloc evaluate --model {input.model:q} --test-dir {params.test_dir:q}"
        " --test-set {wildcards.test_set:q} --out {output.recalls:q}"
        " --queries-out {output.queries:q} {params.settings} > {log:q} 2>&1"
