# nanogpt-workflow: download -> prepare -> train (torchrun) -> evaluate / sample -> summary.
# Every rule calls the `nanogpt` package; config.yaml holds the experiments. See README.md.
from snakemake.utils import min_version, validate

from nanogpt.pipeline import Pipeline

min_version("9.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")
P = Pipeline(config)
P.check()


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        P.target_files(),
