# Text generation from a run's final checkpoint or from a pretrained GPT-2.


rule sample:
    input:
        lambda w: P.sample_inputs(w.sample),
    output:
        "results/samples/{sample}.txt",
    params:
        args=lambda w: P.sample_args(w.sample),
    log:
        "logs/sample/{sample}.log",
    shell:
        "nanogpt sample {params.args} --out {output:q} > {log:q} 2>&1"
