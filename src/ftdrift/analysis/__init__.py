"""Per-run and study-level analyses of finished runs: drift, weight space, checkpoint
validation, and the aggregate tables."""
