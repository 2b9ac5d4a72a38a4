# One table of every run and eval (results/summary.csv, .md, .html), a loss curve per run from its TensorBoard
# events, and HTML pages for `snakemake --report report.html` (which shows HTML and images inline, other files as
# downloads): one per targeted run (final numbers, curve, resolved settings) and per targeted sample. The summary
# waits for what `targets` names and also lists every other result already on disk; after building one outside the
# targets (e.g. `snakemake gpt2_baselines`), refresh it with `snakemake -R summary`. All of them only read small
# files: on a cluster they run where snakemake runs.


localrules:
    loss_curve,
    summary,
    run_page,
    sample_page,


# The pages of the targeted runs and samples: the summary waits for them, so the report has them.
REPORT_PAGE_FILES = [
    paths.RUN_PAGE.format(run=r) for r in (config.get("targets") or {}).get("runs") or []
] + [paths.SAMPLE_PAGE.format(sample=s) for s in (config.get("targets") or {}).get("samples") or []]


rule loss_curve:
    """A run's train/val loss curve from its TensorBoard events."""
    input:
        paths.METRICS,
    output:
        report(
            paths.LOSS_CURVE,
            category="Runs",
            subcategory="{run}",
            caption="../report/loss_curve.rst",
            labels={"run": "{run}", "page": "loss curve"},
        ),
    log:
        paths.log("loss_curve", "{run}"),
    benchmark:
        paths.benchmark("loss_curve", "{run}")
    conda:
        "../envs/nanogpt.yaml"
    params:
        run_dir=lambda w: paths.RUN_DIR.format(run=w.run),
    shell:
        "nanogpt summary curve --run-dir {params.run_dir:q} --title {wildcards.run:q} "
        "--out {output:q} > {log:q} 2>&1"


rule summary:
    """One table of every run and eval on disk: results/summary.csv and .md."""
    input:
        **P.summary_inputs(),
        pages=REPORT_PAGE_FILES,
    output:
        csv=report(
            paths.SUMMARY_CSV,
            category="Summary",
            caption="../report/summary.rst",
            labels={"table": "summary.csv (download)"},
        ),
        md=paths.SUMMARY_MD,
        # written beside summary.md
        html=report(
            paths.SUMMARY_HTML,
            category="Summary",
            caption="../report/summary.rst",
            labels={"table": "runs, evaluations, GPT-2 baselines"},
        ),
    log:
        paths.log("summary"),
    benchmark:
        paths.benchmark("summary")
    conda:
        "../envs/nanogpt.yaml"
    params:
        results=lambda w: paths.RESULTS,
    shell:
        "nanogpt summary table --results {params.results:q} --csv {output.csv:q} --md {output.md:q} > {log:q} 2>&1"


rule run_page:
    """A run's page in the report: final numbers, loss curve and resolved settings."""
    input:
        metrics=paths.METRICS,
        curve=paths.LOSS_CURVE,
    output:
        report(
            paths.RUN_PAGE,
            category="Runs",
            subcategory="{run}",
            caption="../report/run_page.rst",
            labels={"run": "{run}", "page": "numbers and settings"},
        ),
    log:
        paths.log("run_page", "{run}"),
    run:
        from nanogpt.report import write_run_page

        write_run_page(input.metrics, input.curve, output[0], f"run {wildcards.run}", log[0])


rule sample_page:
    """A sample's texts in the report, under the settings that drew them."""
    input:
        paths.SAMPLE,
    output:
        report(
            paths.SAMPLE_PAGE,
            category="Samples",
            caption="../report/sample_page.rst",
            labels=lambda w: {"sample": w.sample, "model": P.sample_entry(w.sample)["model"]},
        ),
    log:
        paths.log("sample_page", "{sample}"),
    params:
        settings=lambda w: P.sample_entry(w.sample),
    run:
        from nanogpt.report import write_sample_page

        write_sample_page(input[0], output[0], f"sample {wildcards.sample}", params.settings, log[0])
