# Helpers the rules share (Snakemake's lint keeps functions apart from rules).
from nanogpt.paths import SWEEP_DIR
from nanogpt.pipeline.sweeps import SCALING_FILES, SWEEP_FILES


def sweep_outputs(scaling: bool = False) -> dict:
    """What a sweep job writes, as report items (a scaling study adds fit.json and scaling.png)."""
    shown = dict(category="Sweeps", subcategory="{sweep}", caption="../report/sweep.rst")
    files = SWEEP_FILES | (SCALING_FILES if scaling else {})
    outputs = {key: report(f"{SWEEP_DIR}/{name}", **shown) for key, name in files.items()}
    return outputs | {"tb": directory(f"{SWEEP_DIR}/tb")}
