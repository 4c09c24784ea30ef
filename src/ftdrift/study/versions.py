"""Per-stage code versions. Each reaches its rule as a `params:` value, so Snakemake re-runs
a stage's jobs when its number changes. Bump a number when a change in the library alters
that stage's results; leave it when a refactor does not (no spurious re-runs of GPU jobs)."""

CODE_VERSIONS = {
    "prepare_data": 1,
    "base_representations": 3,
    "finetune": 4,
    "drift": 1,
    "weight_analysis": 1,
    "validate_checkpoint": 2,
    "baselines": 1,
    "deployment": 1,
    "aggregate": 3,
    "report": 2,
}
