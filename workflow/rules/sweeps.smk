# Sweeps and scaling studies (config.yaml `sweeps:`, nanogpt/pipeline/sweeps.py). Each point of a sweep is an ordinary
# run, results/runs/<point>/, trained by the train rule as a job of its own (concurrently as cores allow; one
# SLURM job each). These rules only gather the current points: results/sweeps/{sweep}/summary.csv/.md, the val
# loss against each swept setting, all val-loss curves overlaid, TensorBoard HParams events (tb/), and for a
# scaling study the fit of L(N) = E + A * N^-alpha (fit.json, scaling.png). They read small files: on a cluster
# they run where snakemake runs.
from nanogpt.paths import SWEEP_DIR


localrules:
    sweep,
    scaling_study,


rule sweep:
    """A grid (or list) sweep's table, plots and hparams events from its current points."""
    input:
        unpack(lambda w: P.sweep_inputs(w.sweep)),
    output:
        **sweep_outputs(),
    log:
        paths.log("sweep", "{sweep}"),
    benchmark:
        paths.benchmark("sweep", "{sweep}")
    wildcard_constraints:
        sweep=P.sweep_names_pattern(scaling=False),
    conda:
        "../envs/nanogpt.yaml"
    params:
        spec=lambda w: P.sweep_spec(w.sweep),
        out_dir=lambda w: SWEEP_DIR.format(sweep=w.sweep),
        runs_dir=paths.RUNS,
    shell:
        "nanogpt summary sweep --sweep {params.spec:q} --runs-dir {params.runs_dir:q} "
        "--out-dir {params.out_dir:q} > {log:q} 2>&1"


# A scaling study: the same job, with the power-law fit of val loss against parameters as two more outputs.
use rule sweep as scaling_study with:
    output:
        **sweep_outputs(scaling=True),
    wildcard_constraints:
        sweep=P.sweep_names_pattern(scaling=True),
