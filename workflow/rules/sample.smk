# Text generation from a run's final checkpoint or from a pretrained GPT-2.


rule sample:
    """Generate text from a run or a pretrained GPT-2 with the `samples:` entry's settings."""
    input:
        lambda w: P.sample_inputs(w.sample),
    output:
        paths.SAMPLE,
    log:
        paths.log("sample", "{sample}"),
    benchmark:
        paths.benchmark("sample", "{sample}")
    conda:
        "../envs/nanogpt.yaml"
    params:
        settings=lambda w: P.sample_identity(w.sample),  # tracked: a change reruns the job
        args=lambda w: J.sample_args(w.sample),  # untracked: the resolved entry and the mirror
    shell:
        "nanogpt sample {params.args} --out {output:q} > {log:q} 2>&1"
