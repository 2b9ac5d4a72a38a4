# Datasets: the download step (local rules: on a cluster they run on the login node, compute jobs never touch
# the network), then tokenization. `source:` entries download one checksummed file (source.txt); `hf:` and
# `files:` entries resolve to data files and a manifest (source.json): see nanogpt/data/hf_corpus.py.
from nanogpt.data.hf_corpus import local_inputs


localrules:
    download,
    download_hf,


rule download:
    """A `source:` dataset's text file, sha256-checked: from the mirror, the bundled files or the network."""
    output:
        paths.SOURCE_TXT,
    log:
        paths.log("download", "{dataset}"),
    benchmark:
        paths.benchmark("download", "{dataset}")
    wildcard_constraints:
        dataset=P.dataset_names_pattern("source"),
    conda:
        "../envs/nanogpt.yaml"
    params:
        identity=lambda w: P.dataset_identity(w.dataset),  # tracked, with the mirror: a change downloads again
        mirror=J.mirror_arg(),
        args=lambda w: J.dataset_args(w.dataset),  # untracked: the resolved entry and the mirror
    shell:
        "nanogpt download {params.args} --out {output:q} > {log:q} 2>&1"


use rule download as download_hf with:
    """An `hf:`/`files:` corpus's manifest: its data files (hub ones pinned to a commit) and their sha256."""
    input:
        lambda w: local_inputs(P.dataset(w.dataset)),  # local corpus files: editing one reruns the manifest
    output:
        paths.SOURCE_JSON,
    wildcard_constraints:
        dataset=P.dataset_names_pattern("hf", "files", "corpus"),


rule prepare:
    """Tokenize a dataset's source into train.bin, val.bin and meta.json (written last); its warnings (a validation
    split too small to measure on) go to the console as well as the log."""
    input:
        source=lambda w: P.source_path(w.dataset),
        vocab=lambda w: P.vocab_metas(w.dataset),  # vocab_from: the datasets whose characters it holds
    output:
        train=paths.TRAIN_BIN,
        val=paths.VAL_BIN,
        meta=paths.META,
    log:
        paths.log("prepare", "{dataset}"),
    benchmark:
        paths.benchmark("prepare", "{dataset}")
    conda:
        "../envs/nanogpt.yaml"
    threads: 2  # --num-proc: tokenizer worker processes
    params:
        identity=lambda w: P.dataset_identity(w.dataset),  # tracked, with the mirror: a change re-prepares
        mirror=J.mirror_arg(),
        args=lambda w: J.dataset_args(w.dataset),  # untracked: the resolved entry and the mirror
        out_dir=lambda w: paths.DATA_DIR.format(dataset=w.dataset),
        vocab=lambda w, input: J.vocab_meta_arg(input.vocab),
    shell:
        "nanogpt prepare {params.args} {params.vocab} --source {input.source:q} --out-dir {params.out_dir:q} "
        "--num-proc {threads} > {log:q} 2>&1; grep -h 'warning:' {log:q} >&2 || true"
