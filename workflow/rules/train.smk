# Training through torchrun. Periodic checkpoints go to results/runs/{run}/checkpoints/, which is not a
# declared output: a killed or failed job keeps them, and the rerun resumes from the newest one.


rule train:
    input:
        lambda w: P.data_files(P.run(w.run).dataset).values(),
    output:
        model="results/runs/{run}/model.pt",
        metrics="results/runs/{run}/metrics.json",
    params:
        spec=lambda w: P.run_spec(w.run),
        launcher=lambda w: P.torchrun_launcher(w.run),
        data_dir=lambda w: f"results/data/{P.run(w.run).dataset}",
        out_dir=lambda w: f"results/runs/{w.run}",
    threads: lambda w: P.run_resources(w.run)["cpus_per_task"]
    resources:
        cpus_per_task=lambda w: P.run_resources(w.run)["cpus_per_task"],
        mem_mb=lambda w: P.run_resources(w.run)["mem_mb"],
        runtime=lambda w: P.run_resources(w.run)["runtime"],
        gpu=lambda w: P.run_resources(w.run)["gpus"],  # one node: sbatch --gpus=G
        gres=lambda w: P.run_resources(w.run)["gres"],  # several nodes: --gres=gpu:G (per node)
        nodes=lambda w: P.run_resources(w.run)["nodes"],
        tasks=lambda w: P.run_resources(w.run)["tasks"],  # one task per node: torchrun starts the workers
        tasks_per_gpu=0,  # with GPUs, the SLURM plugin would otherwise start one task per GPU
        mpi=lambda w: P.run_resources(w.run)["mpi"],  # "srun" for several nodes; None (absent) for one
        # a run's own partition / extra sbatch flags (None drops the key: the profile's default-resources
        # value does not apply to train; set-resources for train overrides these)
        slurm_partition=lambda w: P.run_resources(w.run).get("slurm_partition"),
        slurm_extra=lambda w: P.run_resources(w.run).get("slurm_extra"),
    log:
        "logs/train/{run}.log",
    shell:
        "{params.launcher} -m nanogpt.cli train --name {wildcards.run:q} --spec {params.spec:q} "
        "--data-dir {params.data_dir:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"
