"""The report jobs, after training: the summary table (summary), loss curves (curves), the report's run and
sample pages (pages) and a sweep's table, plots and scaling fit (sweeps)."""
