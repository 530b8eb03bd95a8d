# One training job per run of the grid.


rule train:
    input:
        # ancient: only the datasets' presence matters (and, for the demo, that they are
        # generated first); adding a folder under datasets_root must not retrain the study.
        data=ancient("<datasets>"),
        weights=train_weights,
    output:
        model="<results>/runs/{run}/model.pt",
        summary="<results>/runs/{run}/train.json",
    log:
        "<logs>/train/{run}.log",
    benchmark:
        "<benchmarks>/train/{run}.tsv"
    conda:
        "../envs/geoloc.yaml"
    # The main process plus data loader workers; capped by --cores locally, and the CPUs
    # asked for each GPU job on SLURM.
    threads: 8
    resources:
        gpu=1,
    params:
        folders=train_folders,
        work_folders=train_work_folders,
        settings=train_settings,
    shell:
        "geoloc train {params.folders} {params.work_folders} {params.settings} > {log:q} 2>&1"
