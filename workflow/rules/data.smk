# Inputs of the study: the synthetic city (demo, tests) and pretrained weights. Both run on
# the machine running Snakemake: compute nodes are often offline.

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
            settings=synth_arguments,
        shell:
            "geoloc synth {output:q} {params.settings} --workers {threads} > {log:q} 2>&1"


rule fetch_weights:
    output:
        "<weights>/{backbone}-{pretraining}.pth",
    log:
        "<logs>/fetch_weights/{backbone}-{pretraining}.log",
    localrule: True
    conda:
        "../envs/geoloc.yaml"
    params:
        settings=fetch_arguments,
    shell:
        "geoloc fetch-weights {params.settings} --out {output:q} > {log:q} 2>&1"
