"""Per-stage code versions. Each reaches its rule as a `params:` value, so Snakemake re-runs
a stage's jobs when its number changes. Bump a number when a change in the library alters
that stage's results; leave it when a refactor does not (no spurious re-runs of GPU jobs)."""

CODE_VERSIONS = {
    "prepare_data": 1,
    "base_representations": 3,
    "finetune": 7,
    "drift": 2,
    "seed_floor": 1,
    "method_similarity": 2,
    "weight_analysis": 3,
    "validate_checkpoint": 4,
    "baselines": 3,
    "forgetting": 1,
    "deployment": 2,
    "intruder_intervention": 1,
    "aggregate": 6,
    "report": 5,
}
