"""Configuration: strings coerced by the schema's type, new keys, cross-key checks, grid targets."""

import copy
import subprocess
import sys

import pytest
import yaml

from ftdrift.study.config import (
    ConfigError,
    load_yaml,
    probe_pooling,
    resolve,
    task_settings,
)
from ftdrift.study.grid import check_run, compared_pairs, grid
from ftdrift.testing import REPO

BASE = {
    "tasks": ["sst2", "squad_v2"],
    "model": {"name_or_path": "x", "family": "bert"},
    "grid": {"seeds": [1, 2], "batch_sizes": [8, 16],
             "learning_rates": {"full": {"classification": [1e-3], "extractive_qa": [1e-4]},
                                "lora": {"classification": [3e-3], "extractive_qa": [5e-3]}}},
    "data": {"max_length": {"classification": 128, "extractive_qa": 192}, "doc_stride": 64},
}


def config_with(**sections) -> dict:
    config = copy.deepcopy(BASE)
    config.update(sections)
    return config


def error_of(config: dict) -> str:
    with pytest.raises(ConfigError) as err:
        resolve(config)
    return str(err.value)


# --- strings coerced by the schema's type ------------------------------------------------------

def test_yaml_1e_3_loads_as_a_number(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("tasks: [sst2, squad_v2]\nmodel: {name_or_path: x, family: bert}\n"
                    "grid:\n  seeds: [1]\n  batch_sizes: [8]\n  learning_rates:\n"
                    "    full: {classification: [1e-3], extractive_qa: [1e-4]}\n"
                    "    lora: {classification: [3e-3], extractive_qa: [5e-3]}\n")
    raw = load_yaml(path)
    assert raw["grid"]["learning_rates"]["full"]["classification"] == ["1e-3"]  # what PyYAML makes of it
    config = resolve(raw)
    assert config["grid"]["learning_rates"]["full"]["classification"] == [0.001]
    assert {run.lr for run in grid(config) if run.method == "full" and run.task == "sst2"} == {"1e-3"}


def test_config_values_as_snakemake_passes_them_resolve_to_numbers():
    # snakemake.cli.parse_config reads each nested --config value with YAML's BaseLoader: all strings
    given = {key: yaml.load(value, Loader=yaml.BaseLoader) for key, value in {
        "training": "{'max_steps': 8, 'epochs': 2.5, 'warmup_ratio': .5, 'early_stopping_patience': null,"
                    " 'gradient_checkpointing': True, 'eval_steps': 4, 'save_steps': 8}",
        "data": "{'max_train_examples': ~, 'dev_size': 0.1, 'max_length': {'extractive_qa': 256},"
                " 'max_query_length': 32, 'doc_stride': 64}",
        "grid": "{'seeds': [1, 2], 'batch_sizes': [8], 'learning_rates': {'full': {'classification': [1e-3],"
                " 'extractive_qa': [1.0e-4]}, 'lora': {'classification': [3e-4], 'extractive_qa': [5e-3]}}}",
        "task_overrides": "{'squad_v2': {'training': {'max_steps': 6, 'eval_steps': 3, 'save_steps': 3}}}",
    }.items()}
    assert given["training"]["max_steps"] == "8" and given["grid"]["seeds"] == ["1", "2"]
    config = resolve(config_with(**given))
    training = config["training"]
    assert (training["max_steps"], training["epochs"], training["warmup_ratio"]) == (8, 2.5, 0.5)
    assert training["early_stopping_patience"] is None and training["gradient_checkpointing"] is True
    data = config["data"]
    assert (data["max_train_examples"], data["dev_size"], data["max_length"]["extractive_qa"]) == (None, 0.1, 256)
    assert config["grid"]["seeds"] == [1, 2] and config["grid"]["batch_sizes"] == [8]
    assert config["grid"]["learning_rates"]["full"] == {"classification": [0.001], "extractive_qa": [0.0001]}
    assert task_settings(config, "squad_v2")["training"]["max_steps"] == 6  # per-task sections too
    assert type(training["max_steps"]) is int and type(config["grid"]["learning_rates"]["lora"]["classification"][0]) is float


@pytest.mark.parametrize("section, key, text, value", [
    ("training", "max_steps", "-1", -1),
    ("training", "epochs", "8", 8.0),  # numbers in one form: 8 and 8.0 are the same params
    ("training", "max_steps", "8.0", 8),
    ("training", "warmup_ratio", "3e-4", 3e-4),
    ("training", "gradient_checkpointing", "FALSE", False),
    ("training", "full_determinism", "true", True),
    ("training", "early_stopping_patience", "~", None),
    ("data", "max_validation_examples", "null", None),
    ("data", "max_validation_examples", "50", 50),
])
def test_each_literal_is_read_as_the_key_type(section, key, text, value):
    config = resolve(config_with(**{section: {**BASE.get(section, {}), key: text}}))
    assert config[section][key] == value and type(config[section][key]) is type(value)


@pytest.mark.parametrize("section, key, text, message", [
    ("training", "max_steps", "8.5", "'8.5' is not of type 'integer'"),
    ("training", "max_steps", "١٢", "'١٢' is not of type 'integer'"),  # ASCII digits only
    ("training", "epochs", "nan", "'nan' is not of type 'number'"),
    ("training", "epochs", "1e999", "'1e999' is not of type 'number'"),
    ("training", "epochs", "1_000", "'1_000' is not of type 'number'"),
    ("training", "gradient_checkpointing", "yes", "'yes' is not of type 'boolean'"),
    ("data", "max_train_examples", "None", "'None' is not of type 'integer', 'null'"),
    ("training", "eval_steps", "0", "0 is less than the minimum of 1"),
])
def test_other_strings_are_refused_naming_the_key(section, key, text, message):
    error = error_of(config_with(**{section: {**BASE.get(section, {}), key: text}}))
    assert f"key '{section}.{key}': {message}" in error


def test_strings_stay_strings_where_the_type_allows_them():
    config = resolve(config_with(model={"name_or_path": "x", "family": "bert", "revision": "1"}))
    assert config["model"]["revision"] == "1"


def test_uniqueness_is_checked_after_coercion():
    lrs = {"full": {"classification": ["1e-3", "0.001"], "extractive_qa": [1e-4]},
           "lora": {"classification": [3e-3], "extractive_qa": [5e-3]}}
    error = error_of(config_with(grid={**BASE["grid"], "learning_rates": lrs}))
    assert "key 'grid.learning_rates.full.classification': [0.001, 0.001] has non-unique elements" in error


def test_override_strings_are_coerced_and_refused_naming_the_task():
    error = error_of(config_with(task_overrides={"sst2": {"training": {"eval_steps": "x"}}}))
    assert "config (task sst2) key 'task_overrides.sst2.training.eval_steps': 'x' is not of type 'integer'" in error
    # an override of a task that is not run now is checked too, and unknown keys are named
    error = error_of(config_with(tasks=["sst2"], task_overrides={"mrpc": {"training": {"max_stepz": 1}}}))
    assert "config (task mrpc) key 'task_overrides.mrpc.training': Additional properties are not allowed" in error


@pytest.mark.parametrize("section, key, value", [
    ("analysis", "confidence", float("nan")), ("training", "epochs", float("inf")),
    ("lora", "dropout", float("nan")), ("data", "dev_size", float("inf"))])
def test_non_finite_numbers_are_refused_naming_the_key(section, key, value):
    """YAML's .nan and .inf pass every range check (NaN < x is False): they are refused by name."""
    assert f"key '{section}.{key}': {value} is not a finite number" in error_of(config_with(**{section: {key: value}}))


def test_one_number_one_form():
    """1 and 1.0 (or 8.0 for an integer key) resolve to the same value, so they plan the same jobs."""
    a = resolve(config_with(training={"max_grad_norm": 1, "max_steps": 8.0}, lora={"alpha": 8, "r": 4.0}))
    b = resolve(config_with(training={"max_grad_norm": 1.0, "max_steps": 8}, lora={"alpha": 8.0, "r": 4}))
    assert a["training"] == b["training"] and a["methods"] == b["methods"]
    assert type(a["training"]["max_steps"]) is int
    # peft's annotations: r and lora_alpha are int, lora_dropout float
    assert type(a["methods"]["lora"]["peft"]["r"]) is int and type(b["methods"]["lora"]["peft"]["lora_alpha"]) is int


METHODS = {"full": {}, "lora": {"peft": {"peft_type": "lora", "r": 4, "lora_alpha": 8, "target_modules": "qv"}},
           "dora_r2": {"peft": {"peft_type": "LORA", "r": 2, "use_dora": True, "target_modules": "qv"}}}
RATES = {name: {"classification": [1e-3], "extractive_qa": [1e-3]} for name in METHODS}


def test_methods_are_named_by_the_config_and_checked_against_peft():
    """Methods by name (any number of them): the grid plans each; peft_type canonical; a typo in
    peft's keywords, a method without rates, rates or a reference for no method: refused by name."""
    config = resolve(config_with(methods=METHODS, grid={**BASE["grid"], "learning_rates": RATES}))
    assert list(config["methods"]) == ["full", "lora", "dora_r2"]
    assert config["methods"]["lora"]["peft"]["peft_type"] == "LORA" and config["methods"]["full"] == {}
    assert {run.method for run in grid(config)} == set(METHODS)
    bad = {**METHODS, "dora_r2": {"peft": {"peft_type": "LORA", "use_dorra": True}}}
    assert "config key 'methods.dora_r2.peft': unknown key 'use_dorra' for peft_type LORA" in error_of(
        config_with(methods=bad, grid={**BASE["grid"], "learning_rates": RATES}))
    rates = {k: v for k, v in RATES.items() if k != "dora_r2"}
    assert "config key 'grid.learning_rates.dora_r2': method 'dora_r2' needs learning rates" in error_of(
        config_with(methods=METHODS, grid={**BASE["grid"], "learning_rates": rates}))
    assert "config key 'grid.learning_rates.ia3': no such method" in error_of(config_with(
        methods=METHODS, grid={**BASE["grid"], "learning_rates": {**RATES, "ia3": RATES["full"]}}))
    assert "config key 'analysis.reference_method': 'lora_r64' is not a configured method" in error_of(config_with(
        methods=METHODS, grid={**BASE["grid"], "learning_rates": RATES}, analysis={"reference_method": "lora_r64"}))
    assert "config key 'methods.LoRA'" in error_of(config_with(
        methods={"full": {}, "LoRA": {}}, grid={**BASE["grid"], "learning_rates": {"full": RATES["full"],
                                                                                  "LoRA": RATES["full"]}}))


def test_what_peft_would_take_but_ftdrift_cannot_use_is_refused_naming_the_key():
    """Slips a new user made (the method-axis trial): each refused at load, not in a job."""
    def methods_error(spec) -> str:
        return error_of(config_with(methods={"full": {}, "lora": spec}))

    # null is not full fine-tuning under an adapter's name
    assert "config key 'methods.lora.peft': null; full fine-tuning is a method without the key" in methods_error(
        {"peft": None})
    # a value of the wrong type, which peft's dataclass would keep as it is
    assert "config key 'methods.lora.peft.r': an integer is needed, got 'eight'" in methods_error(
        {"peft": {"peft_type": "LORA", "r": "eight"}})
    assert "config key 'methods.lora.peft.use_dora': true or false is needed, got 'yes please'" in methods_error(
        {"peft": {"peft_type": "LORA", "use_dora": "yes please"}})
    # a tuner that cannot train the task head beside its adapter
    assert "config key 'methods.lora.peft.peft_type': ADAPTION_PROMPT (AdaptionPromptConfig) has no modules_to_save" \
        in methods_error({"peft": {"peft_type": "ADAPTION_PROMPT"}})
    # peft refuses layers_to_transform with a string target: say so in the terms of the config
    assert "config key 'methods.lora.peft.layers_to_transform': a preset (qv) selects modules in every block" \
        in methods_error({"peft": {"peft_type": "LORA", "target_modules": "qv", "layers_to_transform": [0]}})
    resolve(config_with(methods={"full": {}, "lora": {"peft": {"peft_type": "LORA", "target_modules": ["query"],
                                                               "layers_to_transform": [0]}}}))


def _reversed(value):
    """Every mapping's keys in reverse order, lists kept."""
    if isinstance(value, dict):
        return {key: _reversed(value[key]) for key in reversed(list(value))}
    return [_reversed(item) for item in value] if isinstance(value, list) else value


def test_key_order_does_not_change_what_the_jobs_see():
    """Snakemake compares params by repr: the same config with its keys in another order (by hand,
    by a YAML tool, or a method check remembered from another config) resolves to the same repr,
    methods and tasks keeping the config's order (the report's)."""
    config = config_with(methods=METHODS, grid={**BASE["grid"], "learning_rates": RATES},
                         training={"max_steps": 10, "eval_steps": 5, "save_steps": 10},
                         task_overrides={"sst2": {"training": {"max_steps": 4, "eval_steps": 2, "save_steps": 4}}})
    flipped = _reversed(config)
    flipped["methods"] = {name: _reversed(spec) for name, spec in config["methods"].items()}  # the order kept
    flipped["tasks"] = config["tasks"]
    assert repr(resolve(flipped)) == repr(resolve(config))
    assert list(resolve(config)["methods"]) == list(METHODS) and list(resolve(config)["task_defs"]) == BASE["tasks"]
    assert repr(task_settings(resolve(flipped), "sst2")) == repr(task_settings(resolve(config), "sst2"))


def test_learning_rates_are_needed_only_for_the_task_kinds_studied():
    rates = {"full": {"classification": [1e-3]}, "lora": {"classification": [3e-3]}}
    resolve(config_with(tasks=["sst2"], grid={**BASE["grid"], "learning_rates": rates}))
    assert ("config key 'grid.learning_rates.full.extractive_qa': needed for squad_v2 (extractive_qa); "
            "method 'full' has rates for ['classification']") in error_of(
        config_with(grid={**BASE["grid"], "learning_rates": rates}))


def test_the_legacy_lora_key_configures_method_lora():
    """Configs written before `methods` keep working: `lora: {r, alpha, dropout, target_modules}`
    sets methods.lora's peft keywords; together with `methods` it is refused."""
    config = resolve(config_with(lora={"r": 16, "alpha": 32, "target_modules": ["query"]}))
    assert config["methods"]["lora"]["peft"] == {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
                                                 "target_modules": ["query"]}
    assert "lora" not in config and list(config["methods"]) == ["full", "lora"]
    assert "config keys 'lora' and 'methods'" in error_of(config_with(lora={"r": 16}, methods=METHODS))


def test_learning_rates_naming_the_same_run_are_refused():
    lrs = {"full": {"classification": [0.001, 0.0010000001], "extractive_qa": [1e-4]},
           "lora": {"classification": [3e-3], "extractive_qa": [5e-3]}}
    with pytest.raises(ConfigError) as err:
        grid(resolve(config_with(grid={**BASE["grid"], "learning_rates": lrs})))
    error = str(err.value)
    assert "config key 'grid.learning_rates.full.classification': [0.001, 0.0010000001] name the same runs" in error


def test_null_on_the_command_line_is_null_and_dev_size_is_a_count_or_a_fraction():
    assert resolve(config_with(data_dir="null"))["data_dir"] is None  # --config data_dir=null
    assert "config key 'data.dev_size' (1.5) for task sst2: a count of examples" in error_of(
        config_with(data={"dev_size": 1.5}))


# --- new keys ---------------------------------------------------------------------------------

def test_new_keys_have_their_defaults():
    config = resolve(BASE)
    assert config["data"]["max_query_length"] == 64
    assert config["weights"] == {"intruder_top_k": 10, "intruder_epsilon": 0.5, "intruder_ks": [5, 10, 20],
                                 "intruder_epsilons": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], "delta_energy": 0.9}
    assert config["drift"] == {"metrics": ["linear_cka", "debiased_cka", "cosine"], "bootstrap_resamples": 200}
    assert config["forgetting"]["text_file"] is None and config["analysis"]["h2_alpha"] == 0.05
    assert (config["analysis"]["h2_metric"], config["analysis"]["h2_pooling"]) == ("linear_cka", "mean")


def test_intruder_settings_are_no_longer_analysis_keys():
    error = error_of(config_with(analysis={"intruder_top_k": 5}))
    assert "key 'analysis': Additional properties are not allowed ('intruder_top_k' was unexpected)" in error
    assert resolve(config_with(weights={"intruder_top_k": "5"}))["weights"]["intruder_top_k"] == 5


@pytest.mark.parametrize("path", ["config/config.yaml", "config/study.yaml"])
def test_shipped_configs_resolve(path):
    resolve(load_yaml(REPO / path))


# --- cross-key checks -------------------------------------------------------------------------

def test_doc_stride_must_leave_room_in_the_window():
    data = {**BASE["data"], "doc_stride": 124}  # 192 - 64 - 4 = 124
    error = error_of(config_with(data=data))
    assert error.startswith("config key 'data.doc_stride' (124) must be < data.max_length.extractive_qa"
                            " - data.max_query_length - 4 = 192 - 64 - 4 = 124")
    assert "for task" not in error
    assert resolve(config_with(data={**data, "doc_stride": 123}))["data"]["doc_stride"] == 123
    assert "key 'data.doc_stride' (300)" in error_of(config_with(data={**data, "doc_stride": 300}))


def test_doc_stride_check_follows_task_overrides():
    overrides = {"squad_v2": {"data": {"max_query_length": 150}}}  # 192 - 150 - 4 = 38 <= 64
    error = error_of(config_with(task_overrides=overrides))
    assert error.startswith("config key 'data.doc_stride' (64) for task squad_v2 (with task_overrides.squad_v2.data)")
    assert "192 - 150 - 4 = 38" in error
    fixed = {"squad_v2": {"data": {"max_length": {"extractive_qa": 512}, "max_query_length": 150}}}
    resolve(config_with(task_overrides=fixed))


def test_doc_stride_is_not_checked_without_qa_tasks():
    resolve(config_with(tasks=["sst2"], data={**BASE["data"], "doc_stride": 500}))


def test_h2_metric_must_be_a_drift_metric():
    error = error_of(config_with(analysis={"h2_metric": "procrustes"}))
    assert error == "config key 'analysis.h2_metric': 'procrustes' is not one of drift.metrics ['linear_cka', 'debiased_cka', 'cosine']"
    resolve(config_with(analysis={"h2_metric": "procrustes"}, drift={"metrics": ["procrustes"]}))


def test_h2_pooling_must_be_a_pooling_of_the_family():
    error = error_of(config_with(analysis={"h2_pooling": "last"}))
    assert error == "config key 'analysis.h2_pooling': 'last' is not a pooling of model family 'bert' (its poolings: ['mean'])"
    llama = {"name_or_path": "x", "family": "llama"}
    assert resolve(config_with(model=llama, analysis={"h2_pooling": "last"}))["analysis"]["h2_pooling"] == "last"
    assert "key 'analysis.h2_pooling': 'max'" in error_of(config_with(model=llama, analysis={"h2_pooling": "max"}))


def test_config_loads_without_torch():
    """Every job parses the workflow: the study's definition must not pull in torch."""
    code = "import sys, ftdrift.study.config, ftdrift.study.grid; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# --- targets must be grid points --------------------------------------------------------------

@pytest.fixture(scope="module")
def planned():
    config = resolve(BASE)
    return config, grid(config)


def target(lr="1e-3", batch_size="8", seed="1", task="sst2", method="full"):
    return {"task": task, "method": method, "lr": lr, "batch_size": batch_size, "seed": seed}


def run_error(planned, **wildcards) -> str:
    with pytest.raises(ConfigError) as err:
        check_run(*planned, target(**wildcards))
    return str(err.value)


def test_grid_points_pass(planned):
    config, runs = planned
    for run in runs:
        check_run(config, runs, {key: str(value) for key, value in run.wildcards.items()})


@pytest.mark.parametrize("lr", ["1e-03", "1.0e-3", "0.001"])
def test_non_canonical_lr_is_refused_with_its_spelling(planned, lr):
    assert run_error(planned, lr=lr) == (f"target sst2/full/lr{lr}_bs8_seed1: 'lr{lr}' is not in canonical form;"
                                         " write 'lr1e-3'")


def test_off_grid_lr_is_refused_listing_the_grid(planned):
    assert run_error(planned, lr="7e-3") == ("target sst2/full/lr7e-3_bs8_seed1: 'lr7e-3' is not a point of the grid"
                                             " for sst2/full: config key 'grid.learning_rates.full.classification'"
                                             " gives lr1e-3")
    assert "'lr7e-03' (canonical form: 'lr7e-3') is not a point" in run_error(planned, lr="7e-03")
    assert "'grid.learning_rates.lora.extractive_qa' gives lr5e-3" in run_error(planned, task="squad_v2",
                                                                                method="lora", lr="1e-3")


def test_batch_size_and_seed_are_checked(planned):
    assert run_error(planned, batch_size="08").endswith("'bs08' is not in canonical form; write 'bs8'")
    assert run_error(planned, batch_size="32").endswith("config key 'grid.batch_sizes' gives bs8, bs16")
    assert run_error(planned, seed="3").endswith("config key 'grid.seeds' gives seed1, seed2")


def test_a_task_can_have_its_own_seeds():
    """task_overrides.<task>.grid.seeds replaces grid.seeds for that task only, in runs and target checks."""
    config = resolve(config_with(task_overrides={"sst2": {"grid": {"seeds": [1, 2, 7]}}}))
    runs = grid(config)
    for task in config["tasks"]:
        seeds = sorted({r.seed for r in runs if r.task == task and r.method == "full"})
        assert seeds == ([1, 2, 7] if task == "sst2" else sorted(BASE["grid"]["seeds"]))
    planned = (config, runs)
    assert run_error(planned, seed="3").endswith("config key 'task_overrides.sst2.grid.seeds' gives seed1, seed2, seed7")
    assert "'learning_rates' was unexpected" in error_of(config_with(
        task_overrides={"sst2": {"grid": {"learning_rates": {}}}}))


def test_a_task_can_run_a_subset_of_the_methods():
    """task_overrides.<task>.grid.methods: the task runs those methods only (in the config's order);
    comparisons with the reference exist where a task runs both; a method needs learning rates only
    for the task kinds it is run on; an unknown name is refused naming the key."""
    methods = {"full": {}, "lora": {"peft": {"peft_type": "LORA", "r": 8, "target_modules": "qv"}},
               "ia3": {"peft": {"peft_type": "IA3"}}}
    rates = copy.deepcopy(BASE["grid"]["learning_rates"])
    rates["ia3"] = {"classification": [1e-2]}  # no extractive_qa list: ia3 is not run on squad_v2
    config = resolve(config_with(methods=methods, grid={**BASE["grid"], "learning_rates": rates},
                                 task_overrides={"squad_v2": {"grid": {"methods": ["lora", "full"]}}}))
    runs = grid(config)
    assert {(r.task, r.method) for r in runs} == {("sst2", "full"), ("sst2", "lora"), ("sst2", "ia3"),
                                                  ("squad_v2", "full"), ("squad_v2", "lora")}
    assert [r.method for r in runs if r.task == "squad_v2"][::4] == ["full", "lora"]  # the config's order
    assert compared_pairs(config) == [("sst2", "lora"), ("sst2", "ia3"), ("squad_v2", "lora")]
    error = run_error((config, runs), task="squad_v2", method="ia3", lr="1e-2")
    assert "method 'ia3' is not in the grid" in error and "['full', 'lora'] on squad_v2" in error
    # without the override ia3 would run on squad_v2 and needs its rates there
    assert "grid.learning_rates.ia3.extractive_qa': needed for squad_v2" in error_of(
        config_with(methods=methods, grid={**BASE["grid"], "learning_rates": rates}))
    assert ("'task_overrides.squad_v2.grid.methods': ['dora'] not among the configured methods (['full', 'lora'])"
            in error_of(config_with(task_overrides={"squad_v2": {"grid": {"methods": ["dora"]}}})))
    # a task without the reference method has no comparison
    config = resolve(config_with(task_overrides={"squad_v2": {"grid": {"methods": ["lora"]}}}))
    assert compared_pairs(config) == [("sst2", "lora")]


def test_unplanned_task_or_method_is_refused(planned):
    assert "task 'rte' with method 'full' is not in the grid" in run_error(planned, task="rte")


def test_probe_pooling_must_be_a_pooling_of_the_family():
    error = error_of(config_with(baselines={"probe_pooling": "last"}))
    assert error == ("config key 'baselines.probe_pooling': 'last' is not a pooling of model family 'bert' "
                     "(its poolings: ['mean'])")


def test_probe_pooling_defaults_to_the_h2_pooling_and_qa_reads_tokens():
    config = resolve(config_with())
    assert probe_pooling(config, "sst2") == "mean"
    assert probe_pooling(config, "squad_v2") is None


# --- the task catalog's h1_absolute_tolerance ----------------------------------------------------

COLA = {"type": "single_sentence", "format": "glue_tsv", "files": {"train": "CoLA/train.tsv", "validation": "CoLA/dev.tsv"},
        "columns": {"text": 3, "label": 1}, "header": False, "labels": ["0", "1"],
        "metrics": ["matthews_corr", "accuracy"], "main_metric": "matthews_corr"}


def catalog_error(tmp_path, **entry) -> str:
    from ftdrift.study.config import load_catalog

    path = tmp_path / "tasks.yaml"
    path.write_text(yaml.safe_dump({"cola": {**COLA, **entry}}))
    with pytest.raises(ConfigError) as err:
        load_catalog(path)
    return str(err.value)


def test_a_cola_like_task_declares_an_absolute_h1_tolerance(tmp_path):
    from ftdrift.study.config import load_catalog

    path = tmp_path / "tasks.yaml"
    path.write_text(yaml.safe_dump({"cola": {**COLA, "h1_absolute_tolerance": "0.02"}}))
    assert load_catalog(path)["cola"]["h1_absolute_tolerance"] == 0.02  # a string read as the number
    path.write_text(yaml.safe_dump({"cola": COLA}))
    assert "h1_absolute_tolerance" not in load_catalog(path)["cola"]  # no default: relative mode


@pytest.mark.parametrize("value, message", [
    (0, "key 'cola.h1_absolute_tolerance': 0.0 is less than or equal to the minimum of 0"),
    (-0.1, "key 'cola.h1_absolute_tolerance': -0.1 is less than or equal to the minimum of 0"),
    ("two", "key 'cola.h1_absolute_tolerance': 'two' is not of type 'number'"),
    (2, "task catalog key 'cola'.h1_absolute_tolerance: 2 is not below the range of its main metric "
        "'matthews_corr' (2)"),
])
def test_bad_absolute_h1_tolerances_are_refused_naming_the_task(tmp_path, value, message):
    assert message in catalog_error(tmp_path, h1_absolute_tolerance=value)


def test_the_absolute_tolerance_is_bounded_by_the_metric_range(tmp_path):
    assert "range of its main metric 'accuracy' (1)" in catalog_error(
        tmp_path, main_metric="accuracy", h1_absolute_tolerance=1.0)


def test_registered_names_are_checked_against_their_registries(tmp_path):
    """The schema's enums of drift metrics, model families and task metrics are the registries'
    own names (filled at load): a name outside them is refused naming the key and the choices."""
    from ftdrift.core.drift_metrics import DRIFT_METRICS
    from ftdrift.core.metrics import CLASSIFICATION_METRICS
    from ftdrift.study.families import FAMILIES

    error = error_of(config_with(drift={"metrics": ["linear_cka", "svcca"]}))
    assert "drift.metrics" in error and "svcca" in error and all(name in error for name in DRIFT_METRICS)
    error = error_of(config_with(model={"name_or_path": "x", "family": "gpt2"}))
    assert "model.family" in error and all(name in error for name in FAMILIES)
    catalog = load_yaml(REPO / "config" / "tasks.yaml")
    catalog["sst2"]["metrics"] = ["accuracy", "spearman"]
    (tmp_path / "tasks.yaml").write_text(yaml.safe_dump(catalog))
    error = error_of(config_with(task_catalog=str(tmp_path / "tasks.yaml")))
    assert "spearman" in error and all(name in error for name in CLASSIFICATION_METRICS)
