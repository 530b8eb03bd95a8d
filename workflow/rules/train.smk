# One training job per run of the grid, on gpus_per_run x nodes_per_run GPUs.


rule train:
    input:
        data=synthetic_datasets,
        # ancient: a rebuilt cache holds the same images, never a reason to retrain.
        cache=image_cache_marker,
        weights=weights_of(RUNS, "run"),
        stamp="<results>/stamps/train/{run}.json",
    output:
        model="<results>/runs/{run}/model.pt",
        summary="<results>/runs/{run}/train.json",
    log:
        "<logs>/train/{run}.log",
    benchmark:
        "<benchmarks>/train/{run}.tsv"
    # A training that stopped at its time limit requeues its own SLURM job (params.launch);
    # Snakemake's retries (resources.retries, default none) are for jobs killed for memory or
    # time: each attempt asks for more (resource_of).
    retries: config["resources"]["retries"]
    conda:
        "../envs/geoloc.yaml"
    # CPUs of all training processes on a node; each gets threads / gpus_per_run.
    threads: train_threads
    resources:
        runtime=resource_of("train", "runtime"),
        mem_mb=train_mem_mb,
        cpus_per_task=resource_of("train", "threads"),
        gpu=train_gpus,
        gpu_model=gpu_model,
        gres=train_gres,
        tasks=multi_rank("tasks"),
        tasks_per_gpu=multi_rank("tasks_per_gpu"),
        nodes=multi_rank("nodes"),
        mpi=multi_rank("mpi"),
        slurm_extra=train_slurm_extra,
    params:
        settings=train_settings,
        runtime=train_runtime,
        launch=train_launch,
    # Snakemake deletes {log} whenever the job starts, a requeued one too: every segment is also
    # appended to {log}.segments after a line that marks it. tee ignores the signals that stop
    # training (USR1, TERM, INT), so the training's last lines still reach both files.
    shell:
        'echo "=== geoloc train segment: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname),'
        ' SLURM job ${{SLURM_JOB_ID:-none}} ===" >> {log:q}.segments; '
        "{params.launch} geoloc train {params.settings} {params.runtime} 2>&1"
        " | (trap '' USR1 TERM INT; exec tee -a {log:q}.segments) > {log:q}"
