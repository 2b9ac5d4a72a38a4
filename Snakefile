# nanogpt-workflow: download -> prepare -> train (torchrun) -> evaluate / sample -> summary.
# Every rule calls the `nanogpt` package; config.yaml holds the experiments. See README.md.
from snakemake.utils import min_version

from nanogpt import paths
from nanogpt.names import NAME_PATTERN
from nanogpt.fileio import check_config_files
from nanogpt.pipeline.jobs import Jobs
from nanogpt.pipeline.outputs import print_outputs
from nanogpt.pipeline.entries import Pipeline, coerce_config_overrides, setup_rule_environment

min_version("9.0")

# Rules run `nanogpt`, `torchrun` and `python` from the environment snakemake itself runs in, activated or not
# (with --sdm conda, each rule's conda environment goes in front).
setup_rule_environment(workflow.basedir)
# Config files are plain data: a YTE template (`__use_yte__`, whose Python expressions Snakemake would evaluate), an
# oversized file or an alias bomb is refused before `configfile:` reads config.yaml. A --configfile is read by
# Snakemake before this line, so there the refusal comes after Snakemake's own read, still before any job.
check_config_files(["config.yaml", *workflow.config_settings.configfiles])


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


# Values given with --config get config.yaml's types: Snakemake leaves nested ones as strings.
coerce_config_overrides(config, workflow.config_settings.config)
# nanogpt's own checks, then config.yaml against the schema generated from the settings' declarations: each
# failure is one line naming the value and what was expected (Snakemake's validate would print the whole schema).
P = Pipeline(config)  # the entries: lookup, checks, targets, inputs
P.check()
J = Jobs(P)  # how each job runs: resources, launcher, arguments


# Every name in a path follows the one name rule, so no path or shell word can be smuggled in through one.
wildcard_constraints:
    dataset=NAME_PATTERN,
    run=NAME_PATTERN,
    sample=NAME_PATTERN,
    model=NAME_PATTERN,
    eval=NAME_PATTERN,
    file=NAME_PATTERN,


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/sweeps.smk"


rule all:
    """What config.yaml's `targets` name: runs, samples, evals, and the summary."""
    input:
        P.target_files(),


onsuccess:
    print_outputs(workflow)  # the model, sample, curve and summary files of what was built
