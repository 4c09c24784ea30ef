"""Configuration: schema validation with defaults, the task catalog, the run grid.

The Snakefile calls `resolve()` once at load; everything downstream reads the resolved
dict, so a bad value stops the run before any job starts, naming the offending key.
"""

from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PACKAGE_ROOT / "config"
METHODS = ("full", "lora")
QA_TYPES = ("extractive_qa",)


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key."""


def _with_defaults(validator_class):
    """jsonschema validator that fills `default` values while validating (nested too)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
                elif "$ref" in subschema and name not in instance:
                    resolved = validator.resolver.resolve(subschema["$ref"])[1]
                    if "default" in subschema or "default" in resolved:
                        instance[name] = copy.deepcopy(subschema.get("default", resolved.get("default")))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft7Validator)


def _key(path) -> str:
    return ".".join(str(part) for part in path) or "<top level>"


def validate(instance: dict, schema: dict, what: str) -> dict:
    """Validate `instance` in place (filling defaults); raise ConfigError naming the key."""
    errors = sorted(_Validator(schema).iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{what} key '{_key(e.absolute_path)}': {e.message}" for e in errors]
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


def load_schema(name: str) -> dict:
    """A schema from config/, parsed afresh (callers may modify it); the file is read once."""
    return yaml.safe_load(_schema_text(name))


def task_kind(task_def: dict) -> str:
    """'classification' or 'extractive_qa': the axis learning rates and lengths depend on."""
    return "extractive_qa" if task_def["type"] in QA_TYPES else "classification"


def _check_catalog(catalog: dict) -> None:
    for name, task in catalog.items():
        where = f"task catalog key '{name}'"
        if task["main_metric"] not in task["metrics"]:
            raise ConfigError(f"{where}.main_metric: '{task['main_metric']}' is not in its metrics {task['metrics']}")
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


def load_catalog(path: str | os.PathLike) -> dict:
    catalog = load_yaml(path)
    if not isinstance(catalog, dict):
        raise ConfigError(f"{path}: the task catalog must be a mapping of task name to definition")
    validate(catalog, load_schema("tasks.schema.yaml"), f"task catalog {path}:")
    _check_catalog(catalog)
    return catalog


def resolve(config: dict, base_dir: str | os.PathLike | None = None) -> dict:
    """Validate a raw config (filling defaults), attach the task catalog, check cross-key rules.

    Returns a new dict; the input is left unchanged.
    """
    config = copy.deepcopy(dict(config))
    validate(config, load_schema("schema.yaml"), "config")
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
    for task in config["tasks"]:
        settings = task_settings(config, task)
        training = settings["training"]
        if training["save_steps"] % training["eval_steps"]:
            # the best model is tracked at evaluations; checkpoints must land on them to resume cleanly
            raise ConfigError(
                f"config key 'training.save_steps' ({training['save_steps']}) must be a multiple of "
                f"'training.eval_steps' ({training['eval_steps']}) for task {task}"
            )
    return config


@functools.lru_cache(maxsize=None)
def _parsed_schema() -> dict:
    return load_schema("schema.yaml")


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
        merged[section] = validate(values, sub, f"config (task_overrides.{task}.{section})")
    return merged


def format_float(value: float) -> str:
    """Canonical scientific notation for paths: 1e-05 -> '1e-5', 0.0003 -> '3e-4', 2.5e-5 -> '2.5e-5'."""
    mantissa, exponent = f"{float(value):.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


@dataclass(frozen=True)
class Run:
    """One fine-tuning job: a point of the grid."""

    task: str
    method: str
    lr: str  # canonical string (format_float) so paths and wildcards agree
    batch_size: int
    seed: int

    @property
    def name(self) -> str:
        return f"lr{self.lr}_bs{self.batch_size}_seed{self.seed}"

    @property
    def path(self) -> str:
        return f"{self.task}/{self.method}/{self.name}"

    @property
    def wildcards(self) -> dict:
        return {"task": self.task, "method": self.method, "lr": self.lr,
                "batch_size": self.batch_size, "seed": self.seed}


def grid(config: dict) -> list[Run]:
    """Every (task, method, lr, batch size, seed) of the study, in a stable order."""
    runs = []
    for task in config["tasks"]:
        kind = task_kind(config["task_defs"][task])
        for method in METHODS:
            for lr in config["grid"]["learning_rates"][method][kind]:
                for batch_size in config["grid"]["batch_sizes"]:
                    for seed in config["grid"]["seeds"]:
                        runs.append(Run(task, method, format_float(lr), int(batch_size), int(seed)))
    return runs


def resolve_data_dir(data_dir: str | None) -> Path | None:
    """The configured data folder, else $FTDRIFT_DATA_DIR, else None (= Hugging Face hub)."""
    value = data_dir or os.environ.get("FTDRIFT_DATA_DIR") or None
    return Path(value).expanduser().resolve() if value else None
