"""What runs when the Snakefile is parsed, in the snakemake process itself (no torch): config.yaml's entries,
their checks and the JSON schema (entries, schema), how each job runs (jobs), sweeps expanded into runs
(sweeps), and the outputs block printed at the end (outputs)."""
