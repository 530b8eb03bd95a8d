# Inputs of the study: the synthetic city (demo, tests), the datasets in use, pretrained
# weights, and the decoded-image cache. Downloads and generation run on the machine running
# Snakemake (compute nodes are often offline); the image cache is one CPU job per image size.

if config["synthetic"]["enabled"]:

    rule synth:
        output:
            directory("<datasets>"),
        log:
            "<logs>/synth.log",
        localrule: True
        conda:
            "../envs/geoloc.yaml"
        threads: 4
        params:
            settings=synth_settings,
        shell:
            "geoloc synth {output:q} {params.settings} --workers {threads}"
            " --threads {threads} > {log:q} 2>&1"


# What the runs read, for the report: the root in use and each folder's image count. Its
# params make it rerun when the same datasets move, its stamp when their images change; no
# training or evaluation takes it as input (an ancient input would not do: Snakemake then skips
# the other rerun triggers of everything below a job that reruns).
rule datasets:
    input:
        synthetic_datasets,
        stamp="<results>/stamps/datasets/datasets.json",
    output:
        "<results>/datasets.json",
    log:
        "<logs>/datasets.log",
    localrule: True
    conda:
        "../envs/geoloc.yaml"
    params:
        root=datasets_root,
        test_sets=test_set_fields,
        training=training_set_fields,
    script:
        "../scripts/datasets.py"


rule fetch_weights:
    output:
        "<weights>/{backbone}-{pretraining}.pth",
    log:
        "<logs>/fetch_weights/{backbone}-{pretraining}.log",
    localrule: True
    conda:
        "../envs/geoloc.yaml"
    # All runtime, derived from output on purpose: the registry's path is no reason to download again.
    params:
        runtime=fetch_runtime,
    shell:
        "geoloc fetch-weights {params.runtime} --threads {threads} > {log:q} 2>&1"


rule fetch_published:
    output:
        "<weights>/published/{published}.pth",
    log:
        "<logs>/fetch_published/{published}.log",
    localrule: True
    conda:
        "../envs/geoloc.yaml"
    params:
        runtime=fetch_published_runtime,
    shell:
        "geoloc fetch-weights {params.runtime} > {log:q} 2>&1"


# Decodes every training image once at one size into image_cache.dir, before the first
# training at that size (one writer per cache: no file locks needed); a size no run caches gets
# only the marker. Every training at that size waits for the marker, whether it reads the
# cache or not, so that turning training.image_cache on or off changes no job's inputs. A
# cache is keyed by its images' paths, sizes and times: a training whose images changed since,
# or whose run turned the cache on later, builds its cache itself.
rule cache_images:
    input:
        synthetic_datasets,
    output:
        "<results>/markers/image-cache-{size}px",
    log:
        "<logs>/cache_images/{size}px.log",
    benchmark:
        "<benchmarks>/cache_images/{size}px.tsv"
    retries: config["resources"]["retries"]
    conda:
        "../envs/geoloc.yaml"
    threads: config["resources"]["cache_images"]["threads"]
    resources:
        runtime=resource_of("cache_images", "runtime"),
        mem_mb=resource_of("cache_images", "mem_mb"),
        cpus_per_task=job_resources("cache_images")["threads"],
        slurm_extra=slurm_extra_of("cache_images"),
    params:
        runtime=cache_images_runtime,
    shell:
        "({params.runtime}) > {log:q} 2>&1 && touch {output:q}"
