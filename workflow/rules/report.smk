# One table of every run and eval (results/summary.csv + .md) and a loss curve per run from its TensorBoard
# events. `snakemake --report report.zip` bundles them. The summary waits for what `targets` names and also lists
# every other result already on disk; after building one outside the targets (e.g. `snakemake gpt2_baselines`),
# refresh it with `snakemake -R summary`. Both only read small files: on a cluster they run where snakemake runs.

localrules:
    loss_curve,
    summary,


rule loss_curve:
    input:
        "results/runs/{run}/metrics.json",
    output:
        report("results/plots/{run}_loss.png", category="Loss curves", caption="../report/loss_curve.rst",
               labels={"run": "{run}"}),
    params:
        run_dir=lambda w: f"results/runs/{w.run}",
    log:
        "logs/loss_curve/{run}.log",
    shell:
        "python -m nanogpt.summary curve --run-dir {params.run_dir:q} --title {wildcards.run:q} "
        "--out {output:q} > {log:q} 2>&1"


rule summary:
    input:
        **P.summary_inputs(),
    output:
        csv=report("results/summary.csv", category="Summary", caption="../report/summary.rst"),
        md=report("results/summary.md", category="Summary", caption="../report/summary.rst"),
    log:
        "logs/summary.log",
    shell:
        "python -m nanogpt.summary table --results results --csv {output.csv:q} --md {output.md:q} > {log:q} 2>&1"
