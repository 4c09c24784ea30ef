# Shared configuration and input functions. Config is validated (with defaults) at load:
# a bad value stops the run here, naming the key, before any job starts.
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))  # use this checkout's library

from ftdrift.analysis import pairs as ftpairs
from ftdrift.data import tasks as ftdata
from ftdrift.modeling import checkpoint as ftcheckpoint
from ftdrift.study import config as ftconfig
from ftdrift.study import families as ftfamilies
from ftdrift.study import grid as ftgrid
from ftdrift.study import methods as ftmethods
from ftdrift.study import resources as ftresources
from ftdrift.study import storage as ftstorage
from ftdrift.study.versions import CODE_VERSIONS

try:
    CONFIG = ftconfig.resolve(config, base_dir=workflow.basedir)
    ftcheckpoint.check_model(CONFIG["model"], ftconfig.max_lengths(CONFIG), ftconfig.task_kinds(CONFIG))
except ValueError as err:  # ConfigError included
    raise WorkflowError(str(err)) from None
config.update(CONFIG)  # scripts see the validated values, defaults filled in
RUNS = ftgrid.grid(CONFIG)
PLANNED_RUNS = [run.wildcards for run in RUNS]
# the runs the tables and report cover: all of them, or with analysis.allow_missing_runs those
# finished when the workflow starts (the rest are listed as missing and not run), looked up where
# the results live: in the bucket with a default storage provider (profiles/gcp-gpu)
ANALYSED_RUNS = ftstorage.finished_runs(workflow, RUNS) if CONFIG["analysis"]["allow_missing_runs"] else RUNS
# the analysis settings the tables and report depend on: allow_missing_runs shows in their inputs
# (which runs), so turning it on for a complete study re-runs nothing
ANALYSIS_PARAMS = {key: value for key, value in CONFIG["analysis"].items() if key != "allow_missing_runs"}
DATA_DIR = ftconfig.resolve_data_dir(CONFIG["data_dir"])
# with a bucket as default storage, the task files are staged into it first (rule stage_data)
STAGE_DATA = ftstorage.is_remote(workflow)
RUN_PATTERN = ftgrid.RUN_PATTERN


wildcard_constraints:
    task="|".join(CONFIG["tasks"]),
    method="|".join(CONFIG["methods"]),
    # loose on purpose: any spelling reaches ftgrid.check_run, which names the grid's values
    lr=r"[^/_]+",
    batch_size=r"[^/_]+",
    seed=r"[^/_.]+",


def task_def(wildcards):
    return CONFIG["task_defs"][wildcards.task]


def settings(wildcards, section):
    return ftconfig.task_settings(CONFIG, wildcards.task)[section]


def task_files(wildcards):
    """The task's original files when read from a folder (so edits re-run prep), or on remote
    storage their staged copies in the bucket; none for the hub."""
    return ftstorage.task_inputs(DATA_DIR, CONFIG["task_defs"][wildcards.task], staged=STAGE_DATA)


def stage_source(wildcards):
    """The input of stage_data: the local file, kept local (`local()`, not a storage query)."""
    source = ftstorage.stage_source(DATA_DIR, wildcards.path)
    return [local(source)] if source else []


def run_params(wildcards):
    return {
        "task": wildcards.task,
        "method": wildcards.method,
        "lr": wildcards.lr,
        "batch_size": int(wildcards.batch_size),
        "seed": int(wildcards.seed),
    }


def method_params(wildcards):
    # a job sees only its own method's spec: changing one method re-runs only its jobs
    return CONFIG["methods"][wildcards.method]


def run_data(wildcards):
    """The prepared splits of a fine-tuning job and its task's base representations (the job's
    step-0 guard compares with them; `ancient`: a rebuilt base store alone does not re-run
    training, the guard checks it); a target off the grid (or with a learning rate
    not in canonical form) is refused here, naming the grid's values, instead of planning a job."""
    ftgrid.check_run(CONFIG, RUNS, wildcards)
    return {split: f"results/data/{wildcards.task}/{split}.jsonl" for split in ftdata.SPLITS} | {
        "base": ancient(f"results/representations/base/{wildcards.task}.zarr")
    }


@functools.lru_cache(maxsize=None)
def _finetune_resources(task, method, batch_size):
    return ftresources.finetune_job(CONFIG, task, method, int(batch_size))


def finetune_resources(wildcards):
    return _finetune_resources(wildcards.task, wildcards.method, wildcards.batch_size)


def run_paths(pattern):
    return [pattern.format(run=run.path) for run in ANALYSED_RUNS]


def all_targets():
    return [
        "results/tables/runs.csv",
        "results/tables/drift.csv",
        "results/tables/summary.md",
    ]


# --- cross-run comparisons (rules/pairs.smk) ---
# one CSV per setting of the analysed grid with >= 2 seeds (rule aggregate reads them)
SEED_FLOOR_PATHS = ftpairs.seed_floor_paths(ANALYSED_RUNS)
REFERENCE_METHOD = CONFIG["analysis"]["reference_method"]
# (task, method) of every comparison with the reference: each task x other method run on it
COMPARED_PAIRS = ftgrid.compared_pairs(CONFIG)
# both similarity CSVs of every comparison (rule compare_methods and the report read them)
METHOD_SIMILARITY_PATHS = ftpairs.method_similarity_paths(COMPARED_PAIRS)


def seed_floor_seeds(wildcards):
    return ftpairs.seed_floor_setting(ANALYSED_RUNS, wildcards)["seeds"]


def seed_floor_inputs(wildcards):
    setting = {key: getattr(wildcards, key) for key in ("task", "method", "lr", "batch_size")}
    paths = [RUN_PATTERN.format(**setting, seed=seed) for seed in seed_floor_seeds(wildcards)]
    return {
        "stores": [f"results/runs/{path}/representations.zarr" for path in paths],
        "metrics": [f"results/runs/{path}/metrics.json" for path in paths],
    }


def method_pair_runs(wildcards):
    """The analysed runs of one comparison (the task's reference and compared-method runs), in one
    order for the stores (input) and their identities (params); refuses the reference itself."""
    return ftpairs.pair_runs(ANALYSED_RUNS, wildcards.task, wildcards.method, REFERENCE_METHOD)


# --- forgetting (rules/forgetting.smk) ---
LM_FAMILY = ftfamilies.family(CONFIG["model"]["family"]).causal_lm


def other_tasks(wildcards, kind=None):
    """The configured tasks but the run's own (only those of task `kind` when given)."""
    return [
        t
        for t in CONFIG["tasks"]
        if t != wildcards.task and (kind is None or ftconfig.task_kind(CONFIG["task_defs"][t]) == kind)
    ]
