# One table of every run and eval (results/summary.csv, .md, .html), a loss curve per run from its TensorBoard
# events, and HTML pages for `snakemake --report report.html` (which shows HTML and images inline, other files as
# downloads): one per targeted run (final numbers, curve, resolved settings) and per targeted sample. The summary
# waits for what `targets` names and also lists every other result already on disk; after building one outside the
# targets (e.g. `snakemake gpt2_baselines`), refresh it with `snakemake -R summary`. All of them only read small
# files: on a cluster they run where snakemake runs.
#
# Kept linear in the number of runs (benchmarks/report_scaling.py): the pages are shell jobs (a `run:` block
# re-reads the whole workflow per job), a run's items carry no caption (Snakemake renders every caption with a
# link to every report file), the loss-curve PNG is not a report item of its own (its page shows it), and above
# INLINE_PNG_MAX_RUNS targeted runs the pages draw an SVG thumbnail instead of embedding the PNG.
import shlex

from nanogpt.report.pages import INLINE_PNG_MAX_RUNS


localrules:
    loss_curve,
    summary,
    run_page,
    sample_page,


REPORT_RUNS = (config.get("targets") or {}).get("runs") or []
# The pages of the targeted runs and samples: the summary waits for them, so the report has them.
REPORT_PAGE_FILES = [paths.RUN_PAGE.format(run=r) for r in REPORT_RUNS] + [
    paths.SAMPLE_PAGE.format(sample=s) for s in (config.get("targets") or {}).get("samples") or []
]


rule loss_curve:
    """A run's train/val loss curve from its TensorBoard events."""
    input:
        paths.METRICS,
    output:
        paths.LOSS_CURVE,
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
        results=lambda w: paths.RESULTS,  # a function: the lint flags a literal path prefix
    shell:
        "nanogpt summary table --results {params.results:q} --csv {output.csv:q} --md {output.md:q} "
        "> {log:q} 2>&1"


rule run_page:
    """A run's page in the report: final numbers, loss curve and resolved settings."""
    input:
        metrics=paths.METRICS,
        curve=paths.LOSS_CURVE,
    output:
        report(paths.RUN_PAGE, category="Runs", labels={"run": "{run}"}),
    log:
        paths.log("run_page", "{run}"),
    benchmark:
        paths.benchmark("run_page", "{run}")
    conda:
        "../envs/nanogpt.yaml"
    params:
        # the full PNG for a few runs, an SVG thumbnail drawn from the run's events for many
        curve=lambda w: (
            f"--curve-png {shlex.quote(paths.LOSS_CURVE.format(run=w.run))}"
            if len(REPORT_RUNS) <= INLINE_PNG_MAX_RUNS
            else f"--run-dir {shlex.quote(paths.RUN_DIR.format(run=w.run))}"
        ),
        title=lambda w: f"run {w.run}",
    shell:
        "nanogpt summary run-page --metrics {input.metrics:q} {params.curve} "
        "--title {params.title:q} --out {output:q} > {log:q} 2>&1"


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
    benchmark:
        paths.benchmark("sample_page", "{sample}")
    conda:
        "../envs/nanogpt.yaml"
    params:
        settings=lambda w: P.sample_identity(w.sample),  # tracked, like the sample's own
        args=lambda w: J.sample_page_args(w.sample),  # untracked: the resolved settings the page shows
        title=lambda w: f"sample {w.sample}",
    shell:
        "nanogpt summary sample-page --sample {input:q} {params.args} "
        "--title {params.title:q} --out {output:q} > {log:q} 2>&1"
