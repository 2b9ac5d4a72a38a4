# Training through torchrun. Periodic checkpoints go to results/runs/{run}/checkpoints/, which is not a
# declared output: a killed or failed job keeps them, and the rerun resumes from the newest one.


rule train:
    """Train a run with torchrun (DDP), resuming from its newest checkpoint made on the same trajectory."""
    input:
        lambda w: P.data_files(P.run(w.run).dataset).values(),
    output:
        model=paths.MODEL,
        metrics=paths.METRICS,
    log:
        paths.log("train", "{run}"),
    benchmark:
        paths.benchmark("train", "{run}")
    conda:
        "../envs/nanogpt.yaml"
    threads: lambda w: P.run_resources(w.run)["cpus_per_task"]
    resources:
        **P.train_resources(),  # per run, from its config entry: see Pipeline.train_resources
    params:
        spec=lambda w: P.run_spec(w.run),
        launcher=lambda w: P.torchrun_launcher(w.run),
        data_dir=lambda w: paths.DATA_DIR.format(dataset=P.run(w.run).dataset),
        out_dir=lambda w: paths.RUN_DIR.format(run=w.run),
    # everything to the log (which ends with a failure's one-line error), progress lines also to the console
    shell:
        "PYTHONUNBUFFERED=1 {params.launcher} -m nanogpt.cli train --name {wildcards.run:q} --spec {params.spec:q} "
        "--data-dir {params.data_dir:q} --out-dir {params.out_dir:q} 2>&1 "
        "| python -m nanogpt.progress --run {wildcards.run:q} --log {log:q}"
