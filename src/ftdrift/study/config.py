"""Configuration: schema validation with defaults, the task catalog, the run grid.

The Snakefile calls `resolve()` once at load; everything downstream reads the resolved
dict, so a bad value stops the run before any job starts, naming the offending key.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ftdrift import REPO_ROOT
from ftdrift.study import families, methods
from ftdrift.study.errors import ConfigError

PACKAGE_ROOT = REPO_ROOT  # the repository (config/ is read from it)
CONFIG_DIR = PACKAGE_ROOT / "config"
QA_TYPES = ("extractive_qa",)
QA_SPECIAL_TOKENS = 4  # room for the special tokens of a question/context pair


# literals a string is read as when the schema wants a number (ASCII digits only)
INTEGER_LITERAL = re.compile(r"[-+]?[0-9]+")
NUMBER_LITERAL = re.compile(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?")
_MISSING = object()


def _resolved(validator, schema: dict) -> dict:
    """`schema` with its $ref followed (jsonschema's referencing resolver; pinned version)."""
    while "$ref" in schema:
        schema = validator._resolver.lookup(schema["$ref"]).contents
    return schema


def _coerce_string(value: str, types: list[str]) -> Any:
    """`value` read as the first of `types` whose literal it is; unchanged if none (or strings are
    allowed, except 'null'/'~' where null is: Snakemake passes `--config data_dir=null` as a string)."""
    if "null" in types and value in ("null", "~"):
        return None
    if "string" in types:
        return value
    for kind in types:
        if kind == "integer" and NUMBER_LITERAL.fullmatch(value) and float(value).is_integer():
            return int(float(value)) if not INTEGER_LITERAL.fullmatch(value) else int(value)
        if kind == "number" and NUMBER_LITERAL.fullmatch(value) and math.isfinite(float(value)):
            return int(value) if INTEGER_LITERAL.fullmatch(value) else float(value)
        if kind == "boolean" and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if kind == "null" and value in ("null", "~"):
            return None
    return value


def _coerce(validator, value: Any, schema: dict) -> Any:
    """Strings (also inside arrays) read as the schema's type; numbers in one canonical form, so
    that `1` and `1.0` (or `8.0` for an integer) are the same value to the rules' params and do
    not re-run jobs; objects are coerced when validated."""
    schema = _resolved(validator, schema)
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    if isinstance(value, str) and types:
        value = _coerce_string(value, types)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        if "integer" in types and float(value).is_integer():
            return int(value)
        if "number" in types:
            return float(value)
        return value
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_coerce(validator, item, schema["items"]) for item in value]
    return value


def _filling_and_coercing(validator_class):
    """jsonschema validator that, while validating an object (nested too), fills missing keys
    with their `default` and reads strings as the type of their key (see config/schema.yaml)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def properties_hook(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if name in instance:
                    instance[name] = _coerce(validator, instance[name], subschema)
                else:
                    default = subschema.get("default", _resolved(validator, subschema).get("default", _MISSING))
                    if default is not _MISSING:
                        instance[name] = copy.deepcopy(default)
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": properties_hook})


_Validator = _filling_and_coercing(jsonschema.Draft7Validator)


def _key(path, prefix: str = "") -> str:
    return ".".join([prefix] * bool(prefix) + [str(part) for part in path]) or "<top level>"


def _non_finite(value: Any, path: tuple = ()):
    """(path, value) of every NaN or infinite number (they pass every range check: NaN < x is False)."""
    if isinstance(value, float) and not math.isfinite(value):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _non_finite(item, (*path, index))


def validate(instance: dict, schema: dict, what: str, prefix: str = "") -> dict:
    """Validate `instance` in place (filling defaults, coercing strings); raise ConfigError naming
    the key (`prefix`: where `instance` sits in the whole config, e.g. 'task_overrides.sst2.training')."""
    errors = sorted(_Validator(schema).iter_errors(instance), key=lambda e: list(e.absolute_path))
    lines = [f"{what} key '{_key(e.absolute_path, prefix)}': {e.message}" for e in errors]
    lines += [f"{what} key '{_key(path, prefix)}': {value} is not a finite number" for path, value in _non_finite(instance)]
    if lines:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    return instance


def load_yaml(path: str | os.PathLike) -> Any:
    try:
        with open(path) as handle:
            return yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError(f"file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None


@functools.lru_cache(maxsize=None)
def _schema_text(name: str) -> str:
    return (CONFIG_DIR / name).read_text()


def _registry_enums() -> dict[str, dict[tuple[str, ...], list[str]]]:
    """{schema file: {path inside it: names}}: the enums a registry owns, so the schema never
    restates (and never falls behind) the drift metrics, model families and task metrics."""
    from ftdrift.core.drift_metrics import DRIFT_METRICS
    from ftdrift.core.metrics import CLASSIFICATION_METRICS, QA_METRICS

    return {
        "schema.yaml": {("definitions", "drift_metric"): list(DRIFT_METRICS),
                        ("properties", "model", "properties", "family"): [families.AUTO, *families.FAMILIES]},
        "tasks.schema.yaml": {("additionalProperties", "properties", "metrics", "items"):
                              list(dict.fromkeys([*CLASSIFICATION_METRICS, *QA_METRICS]))},
    }


def load_schema(name: str) -> dict:
    """A schema from config/, parsed afresh (callers may modify it); the file is read once. The
    enums of registered names are filled from their registries (_registry_enums)."""
    schema = yaml.safe_load(_schema_text(name))
    for path, names in _registry_enums().get(name, {}).items():
        node = schema
        for key in path:
            node = node[key]
        node["enum"] = names
    return schema


def task_kind(task_def: dict) -> str:
    """'classification' or 'extractive_qa': the axis learning rates and lengths depend on."""
    return "extractive_qa" if task_def["type"] in QA_TYPES else "classification"


def task_methods(config: dict, task: str) -> list[str]:
    """The methods run on `task`, in the config's `methods` order: `task_overrides.<task>.grid.methods`
    where given (e.g. an expensive method on one task only), else every method. ConfigError naming
    the key for a name that is not a configured method."""
    own = config.get("task_overrides", {}).get(task, {}).get("grid", {}).get("methods")
    if own is None:
        return list(config["methods"])
    unknown = [name for name in own if name not in config["methods"]]
    if unknown:
        raise ConfigError(f"config key 'task_overrides.{task}.grid.methods': {unknown} not among the configured "
                          f"methods ({list(config['methods'])})")
    return [name for name in config["methods"] if name in own]


def metric_range(task_def: dict) -> float:
    """Width of the main metric's range: 100 for extractive QA (exact, f1 in percent), 2 for
    matthews_corr ([-1, 1]), 1 for the other classification metrics ([0, 1])."""
    if task_def["type"] in QA_TYPES:
        return 100.0
    return 2.0 if task_def["main_metric"] == "matthews_corr" else 1.0


def _check_catalog(catalog: dict) -> None:
    for name, task in catalog.items():
        where = f"task catalog key '{name}'"
        if task["main_metric"] not in task["metrics"]:
            raise ConfigError(f"{where}.main_metric: '{task['main_metric']}' is not in its metrics {task['metrics']}")
        tolerance = task.get("h1_absolute_tolerance")
        if tolerance is not None and tolerance >= metric_range(task):
            # a tolerance as wide as the metric's whole range would make H1 true whatever LoRA scores
            raise ConfigError(f"{where}.h1_absolute_tolerance: {tolerance:g} is not below the range of its main "
                              f"metric '{task['main_metric']}' ({metric_range(task):g}); it is in the metric's "
                              "units, e.g. 0.02")
        if task["type"] == "extractive_qa":
            if task["format"] != "squad_json":
                raise ConfigError(f"{where}.format: extractive_qa tasks need format squad_json")
        else:
            if task["format"] != "glue_tsv":
                raise ConfigError(f"{where}.format: {task['type']} tasks need format glue_tsv")
            for needed in ("columns", "labels"):
                if needed not in task:
                    raise ConfigError(f"{where}.{needed}: required for {task['type']} tasks")
            if task["type"] == "sentence_pair" and "text_pair" not in task["columns"]:
                raise ConfigError(f"{where}.columns.text_pair: required for sentence_pair tasks")
            unknown = [label for label in task.get("hub", {}).get("label_names", {}) if label not in task["labels"]]
            if unknown:
                raise ConfigError(f"{where}.hub.label_names: {unknown} are not among its labels {task['labels']}")


def load_catalog(path: str | os.PathLike) -> dict:
    catalog = load_yaml(path)
    if not isinstance(catalog, dict):
        raise ConfigError(f"{path}: the task catalog must be a mapping of task name to definition")
    validate(catalog, load_schema("tasks.schema.yaml"), f"task catalog {path}:")
    _check_catalog(catalog)
    return catalog


def resolve(config: dict, base_dir: str | os.PathLike | None = None) -> dict:
    """Validate a raw config (filling defaults, coercing strings), attach the task catalog,
    check cross-key rules. Returns a new dict; the input is left unchanged.

    Raises ConfigError naming the key.
    """
    config = copy.deepcopy(dict(config))
    methods_given = "methods" in config
    validate(config, load_schema("schema.yaml"), "config")
    methods.resolve(config, methods_given)
    _resolve_family(config["model"])
    base = Path(base_dir) if base_dir else PACKAGE_ROOT
    catalog_path = Path(config["task_catalog"])
    if not catalog_path.is_absolute():
        catalog_path = base / catalog_path
    catalog = load_catalog(catalog_path)
    unknown = [t for t in config["tasks"] if t not in catalog]
    if unknown:
        raise ConfigError(f"config key 'tasks': {unknown} not in the task catalog {catalog_path} (known: {sorted(catalog)})")
    config["task_defs"] = {t: catalog[t] for t in config["tasks"]}
    for task, override in config["task_overrides"].items():
        if task not in catalog:
            raise ConfigError(f"config key 'task_overrides.{task}': no such task in the catalog")
        task_settings(config, task)  # an override of a task not run now is still checked
        task_methods(config, task)
    for task in config["tasks"]:
        settings = task_settings(config, task)
        dev_size = settings["data"]["dev_size"]
        if dev_size >= 1 and not float(dev_size).is_integer():
            raise ConfigError(f"config key 'data.dev_size' ({dev_size}) for task {task}: a count of examples "
                              "(an integer > 1) or a fraction of train (0 < x < 1)")
        training = settings["training"]
        if training["save_steps"] % training["eval_steps"]:
            # the best model is tracked at evaluations; checkpoints must land on them to resume cleanly
            raise ConfigError(
                f"config key 'training.save_steps' ({training['save_steps']}) must be a multiple of "
                f"'training.eval_steps' ({training['eval_steps']}) for task {task}"
            )
        if task_kind(config["task_defs"][task]) == "extractive_qa":
            _check_doc_stride(settings["data"], task, config["task_overrides"].get(task, {}).get("data", {}))
    _check_h2(config)
    _check_probe_pooling(config)
    _check_rates(config)
    return canonical(config, keep_order=ORDERED_KEYS)


def _check_rates(config: dict) -> None:
    """Every method needs a learning-rate list for each task kind it is run on (and only those)."""
    for method, rates in config["grid"]["learning_rates"].items():
        kinds = {}
        for task in config["tasks"]:
            if method in task_methods(config, task):
                kinds.setdefault(task_kind(config["task_defs"][task]), []).append(task)
        for kind, tasks in kinds.items():
            if kind not in rates:
                raise ConfigError(f"config key 'grid.learning_rates.{method}.{kind}': needed for {', '.join(tasks)} "
                                  f"({kind}); method '{method}' has rates for {sorted(rates) or 'no task kind'}")


# top-level mappings whose order means something: the methods' (the report's order) and the tasks'
ORDERED_KEYS = ("methods", "task_defs")


def canonical(value: Any, keep_order: tuple[str, ...] = ()) -> Any:
    """`value` with every mapping's keys sorted, but the mappings at the top-level keys `keep_order`
    keep their order (their values are sorted inside). Snakemake compares a job's params by their
    repr, so two configs that differ only in key order (YAML written by hand or by a tool, a cached
    method check) must give the same params, or every job they reach would run again."""
    if isinstance(value, dict):
        return {key: ({k: canonical(v) for k, v in value[key].items()} if key in keep_order
                      else canonical(value[key])) for key in sorted(value, key=str)}
    if isinstance(value, list):
        return [canonical(item) for item in value]
    return value


def _resolve_family(model: dict) -> None:
    """Replace model.family 'auto' by the family the checkpoint's config.json declares
    (ftdrift.study.families.resolved_name: a local folder, the embedded model, the Hugging Face
    cache, else the file fetched from the hub), so that every job reads one fixed family."""
    try:
        model["family"] = families.resolved_name(model, download=True)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _check_doc_stride(data: dict, task: str, overridden: dict) -> None:
    """ConfigError naming data.doc_stride unless each QA window leaves room for the stride."""
    length, query = data["max_length"]["extractive_qa"], data["max_query_length"]
    room = length - query - QA_SPECIAL_TOKENS
    if data["doc_stride"] >= room:
        source = ""
        if {"doc_stride", "max_length", "max_query_length"} & set(overridden):
            source = f" for task {task} (with task_overrides.{task}.data)"
        raise ConfigError(
            f"config key 'data.doc_stride' ({data['doc_stride']}){source} must be < data.max_length.extractive_qa"
            f" - data.max_query_length - {QA_SPECIAL_TOKENS} = {length} - {query} - {QA_SPECIAL_TOKENS} = {room}"
            f" ({QA_SPECIAL_TOKENS} = room for the special tokens of a question/context pair), so that each window"
            f" holds more context than the overlap"
        )


def _check_h2(config: dict) -> None:
    """ConfigError naming analysis.h2_metric / h2_pooling if H2 would be judged on data never computed."""
    analysis, metrics = config["analysis"], config["drift"]["metrics"]
    if analysis["h2_metric"] not in metrics:
        raise ConfigError(f"config key 'analysis.h2_metric': '{analysis['h2_metric']}' is not one of "
                          f"drift.metrics {metrics}")
    name = config["model"]["family"]
    poolings = list(families.family(name).poolings)
    if analysis["h2_pooling"] not in poolings:
        raise ConfigError(f"config key 'analysis.h2_pooling': '{analysis['h2_pooling']}' is not a pooling of "
                          f"model family '{name}' (its poolings: {poolings})")


def _check_probe_pooling(config: dict) -> None:
    """ConfigError naming baselines.probe_pooling unless it is a pooling of the model family."""
    pooling, name = config["baselines"]["probe_pooling"], config["model"]["family"]
    if pooling is not None and pooling not in families.family(name).poolings:
        raise ConfigError(f"config key 'baselines.probe_pooling': '{pooling}' is not a pooling of model family "
                          f"'{name}' (its poolings: {list(families.family(name).poolings)})")


def probe_pooling(config: dict, task: str) -> str | None:
    """The pooled features the task's linear-probe baseline reads: baselines.probe_pooling, else
    analysis.h2_pooling; None for extractive QA, whose span probe reads token features."""
    if task_kind(config["task_defs"][task]) in QA_TYPES:
        return None
    return config["baselines"]["probe_pooling"] or config["analysis"]["h2_pooling"]


@functools.lru_cache(maxsize=None)
def _parsed_schema() -> dict:
    return load_schema("schema.yaml")


def task_kinds(config: dict) -> dict[str, str]:
    """{task: kind} of the configured tasks."""
    return {task: task_kind(config["task_defs"][task]) for task in config["tasks"]}


def max_lengths(config: dict) -> dict[str, int]:
    """{config key: tokens} of every task's `data.max_length` for its kind, as the jobs read them
    (a task override named as `task_overrides.<task>.data.max_length.<kind>`)."""
    lengths = {}
    for task in config["tasks"]:
        kind = task_kind(config["task_defs"][task])
        override = config.get("task_overrides", {}).get(task, {}).get("data", {}).get("max_length", {})
        key = f"task_overrides.{task}.data.max_length.{kind}" if kind in override else f"data.max_length.{kind}"
        lengths[key] = task_settings(config, task)["data"]["max_length"][kind]
    return lengths


def task_settings(config: dict, task: str) -> dict:
    """The data / training / representations sections for one task, overrides applied."""
    schema = _parsed_schema()
    override = config.get("task_overrides", {}).get(task, {})
    merged = {}
    for section, definition in (("data", "data_settings"), ("training", "training_settings"),
                                ("representations", "representation_settings")):
        values = {**copy.deepcopy(config[section]), **copy.deepcopy(override.get(section, {}))}
        sub = dict(schema["definitions"][definition])
        sub["definitions"] = schema["definitions"]
        where = f"task_overrides.{task}.{section}" if section in override else section
        merged[section] = canonical(validate(values, sub, f"config (task {task})", prefix=where))
    return merged


def resolve_data_dir(data_dir: str | None) -> Path | None:
    """The configured data folder, else $FTDRIFT_DATA_DIR, else None (= Hugging Face hub)."""
    value = data_dir or os.environ.get("FTDRIFT_DATA_DIR") or None
    return Path(value).expanduser().resolve() if value else None


def load_config(configfiles: list[str], overrides: list[str]) -> dict:
    """Config as Snakemake builds it: config files merged in order, then `--config key=value` on top
    (unresolved; `resolve` validates it)."""
    from snakemake.cli import parse_config
    from snakemake.utils import update_config

    config: dict = {}
    for path in configfiles:
        update_config(config, load_yaml(path) or {})
    update_config(config, parse_config(overrides))
    return config
