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


# nanoGPT README's baselines: the four OpenAI GPT-2 sizes on OpenWebText (a GPU job: 2 x 500 x 8 x 1024 tokens each).
rule gpt2_baselines:
    """The four GPT-2 sizes' OpenWebText losses beside nanoGPT's published ones (results/gpt2_baselines.md)."""
    input:
        expand(paths.EVAL, model=GPT2_SIZES, dataset="openwebtext"),
    output:
        report(paths.GPT2_BASELINES, category="Evaluation", caption="../report/gpt2_baselines.rst"),
    log:
        paths.log("gpt2_baselines"),
    benchmark:
        paths.benchmark("gpt2_baselines")
    conda:
        "../envs/nanogpt.yaml"
    shell:
        "nanogpt summary baselines {input:q} --out {output:q} > {log:q} 2>&1"
