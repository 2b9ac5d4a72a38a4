# nanogpt-workflow: download -> prepare -> train (torchrun) -> evaluate / sample -> summary.
# Every rule calls the `nanogpt` package; config.yaml holds the experiments. See README.md.
import os
import sys

from snakemake.utils import min_version, validate

from nanogpt.config import NAME_PATTERN
from nanogpt.pipeline import Pipeline

min_version("9.0")

# Rules run `nanogpt`, `torchrun` and `python` from the environment snakemake itself runs in (a virtualenv
# need not be activated; SLURM jobs re-run this file with the same interpreter).
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")
P = Pipeline(config)
P.check()


# Every name in a path follows the one name rule, so no path or shell word can be smuggled in through one.
wildcard_constraints:
    dataset=NAME_PATTERN,
    run=NAME_PATTERN,
    sample=NAME_PATTERN,
    model=NAME_PATTERN,


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        P.target_files(),
