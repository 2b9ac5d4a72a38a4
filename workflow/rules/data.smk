# Datasets: checksummed download (a local rule: on a cluster it runs on the login node), then tokenization.

localrules:
    download,


rule download:
    output:
        "results/data/{dataset}/source.txt",
    params:
        spec=lambda w: P.spec("datasets", w.dataset),
        mirror=P.mirror_arg(),
    log:
        "logs/download/{dataset}.log",
    shell:
        "nanogpt download --name {wildcards.dataset} --spec {params.spec:q} {params.mirror} "
        "--out {output} > {log} 2>&1"


rule prepare:
    input:
        lambda w: P.source_path(w.dataset),
    output:
        train="results/data/{dataset}/train.bin",
        val="results/data/{dataset}/val.bin",
        meta="results/data/{dataset}/meta.json",
    params:
        spec=lambda w: P.spec("datasets", w.dataset),
        mirror=P.mirror_arg(),
    threads: 2
    log:
        "logs/prepare/{dataset}.log",
    shell:
        "nanogpt prepare --name {wildcards.dataset} --spec {params.spec:q} {params.mirror} "
        "--source {input} --out-dir results/data/{wildcards.dataset} --num-proc {threads} > {log} 2>&1"
