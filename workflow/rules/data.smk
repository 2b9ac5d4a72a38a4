# Datasets: the download step (local rules: on a cluster they run on the login node, compute jobs never touch
# the network), then tokenization. `source:` entries download one checksummed file (source.txt); `hf:` and
# `files:` entries resolve to data files and a manifest (source.json): see nanogpt/hf_corpus.py.
from nanogpt.hf_corpus import local_inputs


def _dataset_names(kinds):
    names = [n for n, spec in P.datasets().items() if any(k in spec for k in kinds)]
    return "|".join(names) if names else "(?!)"  # (?!) matches nothing


localrules:
    download,
    download_hf,


rule download:
    output:
        "results/data/{dataset}/source.txt",
    wildcard_constraints:
        dataset=_dataset_names(["source"]),
    params:
        spec=lambda w: P.spec("datasets", w.dataset),
        mirror=P.mirror_arg(),
    log:
        "logs/download/{dataset}.log",
    shell:
        "nanogpt download --name {wildcards.dataset:q} --spec {params.spec:q} {params.mirror} "
        "--out {output:q} > {log:q} 2>&1"


rule download_hf:
    input:
        lambda w: local_inputs(P.dataset(w.dataset)),  # local corpus files: editing one reruns the manifest
    output:
        "results/data/{dataset}/source.json",
    wildcard_constraints:
        dataset=_dataset_names(["hf", "files"]),
    params:
        spec=lambda w: P.spec("datasets", w.dataset),
        mirror=P.mirror_arg(),
    log:
        "logs/download/{dataset}.log",
    shell:
        "nanogpt download --name {wildcards.dataset:q} --spec {params.spec:q} {params.mirror} "
        "--out {output:q} > {log:q} 2>&1"


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
        out_dir=lambda w: f"results/data/{w.dataset}",
    threads: 2  # --num-proc: tokenizer worker processes
    log:
        "logs/prepare/{dataset}.log",
    shell:
        "nanogpt prepare --name {wildcards.dataset:q} --spec {params.spec:q} {params.mirror} "
        "--source {input:q} --out-dir {params.out_dir:q} --num-proc {threads} > {log:q} 2>&1"
