# Training through torchrun. Periodic checkpoints go to results/runs/{run}/checkpoints/, which is not a
# declared output: a killed or failed job keeps them, and the rerun resumes from the newest one. The final state
# is kept there too (model.pt is a hard link to it), so a rerun after Snakemake deleted model.pt trains nothing.
# Only `trajectory` is a tracked parameter: a change to anything else (cadence, logging, launch) reruns nothing.


rule train:
    """Train a run with torchrun (DDP), resuming from its newest checkpoint made on the same trajectory."""
    input:
        lambda w: P.train_inputs(w.run),  # the data, and the model of a run this one starts from
    output:
        model=paths.MODEL,
        metrics=paths.METRICS,
    log:
        paths.log("train", "{run}"),
    benchmark:
        paths.benchmark("train", "{run}")
    conda:
        "../envs/nanogpt.yaml"
    threads: J.threads("train")
    resources:
        **J.rule_resources("train"),  # per run, from its config entry: see Jobs.rule_resources
    params:
        trajectory=lambda w: P.run_trajectory(w.run),  # tracked: a change reruns the job
        args=lambda w: J.train_args(w.run),  # untracked: the full settings, paths and GPU count
        launcher=lambda w: J.untracked_launcher(w.run),
        full_log=lambda w: paths.TRAIN_LOG.format(run=w.run),  # every iteration; the log below: all but those
    # the log (ends with a failure's one-line error): all but the iteration lines; the console: progress lines
    shell:
        "PYTHONUNBUFFERED=1 {params.launcher} -m nanogpt.cli train {params.args} 2>&1 "
        "| python -m nanogpt.progress --run {wildcards.run:q} --log {log:q} --full-log {params.full_log:q}"
