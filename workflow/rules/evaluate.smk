# Loss of a run or a pretrained GPT-2 on a prepared dataset: results/eval/{model}/{dataset}.json.
# {model} is a run name, gpt2/gpt2-medium/gpt2-large/gpt2-xl, or a name under `pretrained:` in config.yaml.
# Settings (batch_size, eval_iters, block_size, ...) come from the `evals:` entry naming the pair, else
# nanoGPT's eval_gpt2*.py defaults: batch 8, 500 iters, the model's block size (1024 for GPT-2).

GPT2_SIZES = ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"]


rule evaluate:
    """Train/val loss and perplexity of a run or a pretrained GPT-2 on a prepared dataset."""
    input:
        lambda w: P.eval_inputs(w.model, w.dataset),
    output:
        paths.EVAL,
    log:
        paths.log("evaluate", "{model}/{dataset}"),
    benchmark:
        paths.benchmark("evaluate", "{model}/{dataset}")
    conda:
        "../envs/nanogpt.yaml"
    threads: J.threads("evaluate")
    resources:
        **J.rule_resources("evaluate"),  # per (model, dataset), from its `evals:` entry
    params:
        settings=lambda w: P.eval_identity(w.model, w.dataset),  # tracked: a change reruns the job
        args=lambda w: J.eval_args(w.model, w.dataset),  # untracked: the resolved settings and the mirror
    shell:
        "nanogpt eval {params.args} --out {output:q} > {log:q} 2>&1"


# HellaSwag (`evals:` entries with `task: hellaswag`): results/evals/{eval}.json. The items file is downloaded once
# (a local rule: compute jobs never touch the network), checksum-verified, from the mirror or its URL.
localrules:
    download_hellaswag,


rule download_hellaswag:
    """HellaSwag's items file, verified against its checksum: from the mirror or the network."""
    output:
        paths.HELLASWAG_ITEMS,
    log:
        paths.log("download_hellaswag", "{file}"),
    conda:
        "../envs/nanogpt.yaml"
    params:
        source=lambda w: J.items_source_spec(w.file),  # tracked: another checksum downloads again
        mirror=J.mirror_arg(),
    shell:
        "nanogpt hellaswag fetch --source {params.source:q} {params.mirror} --out {output:q} > {log:q} 2>&1"


rule hellaswag:
    """HellaSwag acc and acc_norm of a run or a GPT-2, completion-style (llm.c's scoring)."""
    input:
        lambda w: P.hellaswag_inputs(w.eval),
    output:
        paths.TASK_EVAL,
    log:
        paths.log("hellaswag", "{eval}"),
    benchmark:
        paths.benchmark("hellaswag", "{eval}")
    conda:
        "../envs/nanogpt.yaml"
    threads: J.threads("hellaswag")
    resources:
        **J.rule_resources("hellaswag"),  # from its `evals:` entry
    params:
        settings=lambda w: P.hellaswag_identity(w.eval),  # tracked: a change reruns the job
        args=lambda w: J.hellaswag_args(w.eval),  # untracked: the resolved settings and the mirror
    shell:
        "nanogpt hellaswag score {params.args} --out {output:q} > {log:q} 2>&1"


# nanoGPT README's baselines: the four OpenAI GPT-2 sizes on OpenWebText (a GPU job: 2 x 500 x 8 x 1024 tokens each),
# and their HellaSwag scores where `evals:` has an entry for the size (without `limit`).
rule gpt2_baselines:
    """The four GPT-2 sizes' OpenWebText losses and HellaSwag beside the published ones (results/gpt2_baselines.md)."""
    input:
        loss=expand(paths.EVAL, model=GPT2_SIZES, dataset="openwebtext"),
        hellaswag=P.gpt2_hellaswag_files(),
    output:
        report(paths.GPT2_BASELINES, category="Evaluation", caption="../report/gpt2_baselines.rst"),
    log:
        paths.log("gpt2_baselines"),
    benchmark:
        paths.benchmark("gpt2_baselines")
    conda:
        "../envs/nanogpt.yaml"
    shell:
        "nanogpt summary baselines {input.loss:q} --hellaswag {input.hellaswag:q} --out {output:q} > {log:q} 2>&1"
