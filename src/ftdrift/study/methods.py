"""The method registry: a fine-tuning method is a user-chosen name plus peft's own config.

The config's `methods` mapping is the one place a method is defined (config/schema.yaml):

    methods:
      full: {}                                  # no `peft`: every weight trains
      lora: {peft: {peft_type: LORA, r: 8, lora_alpha: 16, target_modules: qv}}
      ia3: {peft: {peft_type: IA3}}

`peft` holds the keyword arguments of peft's config class for `peft_type`
(`peft.PEFT_TYPE_TO_CONFIG_MAPPING`, peft 0.21.2), checked against that class when the config
loads; `target_modules` (and IA3's `feedforward_modules`) take peft's own values or a preset
resolved per model (ftdrift.modeling.targets: qv, attention, mlp, all-linear). The names are
the `{method}` wildcard, the run path's second part and a column of every table; the reference
method (`analysis.reference_method`, `full` by default) is what every other one is compared with.

This module is torch-free: Snakemake parses the config often, and importing peft costs about
4 s. The check against peft's classes therefore runs once per (peft version, methods) in a
subprocess and is remembered in a cache file ($XDG_CACHE_HOME/ftdrift, else ~/.cache/ftdrift),
keyed by the peft version, the methods and this module's text.
Turning a method into a model is ftdrift.modeling.methods.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ftdrift.study.errors import ConfigError

# target_modules presets, resolved per model in a job (ftdrift.modeling.targets)
PRESETS = ("qv", "attention", "mlp", "all-linear")
NAME = re.compile(r"[a-z0-9_]+")
METHOD_KEYS = ("peft",)  # keys of one method's entry
# set by ftdrift itself: a task_type makes get_peft_model return a task wrapper, which drops inputs
RESERVED = ("task_type",)
# initialisations that rewrite the base weights: the ones peft converts to plain LoRA on saving
# (peft 0.21.2 `LoraModel._convert_state_dict_for_initial_model`)
MUTATING_INITS = ("pissa", "corda", "olora", "lora_ga")
# the config key of ftdrift <= 0.x's only adapter ({r, alpha, dropout, target_modules}); still read
LEGACY_KEY = "lora"
LEGACY_PEFT = {"r": "r", "alpha": "lora_alpha", "dropout": "lora_dropout", "target_modules": "target_modules"}


@dataclass(frozen=True)
class Method:
    """A named fine-tuning method: `peft` None trains every weight (full fine-tuning), else the
    keyword arguments of peft's config class for `peft['peft_type']` (canonical upper-case name)."""

    name: str
    peft: dict | None = None

    @classmethod
    def from_spec(cls, name: str, spec: dict | None) -> Method:
        """The method `name` of its config entry ({} or None: full fine-tuning; {'peft': {...}})."""
        return cls(name, (spec or {}).get("peft"))

    @property
    def is_full(self) -> bool:
        return self.peft is None

    @property
    def peft_type(self) -> str | None:
        return None if self.peft is None else self.peft["peft_type"]

    @property
    def mutates_base(self) -> bool:
        """Whether peft's initialisation rewrites the base weights (PiSSA and friends)."""
        init = str((self.peft or {}).get("init_lora_weights", "")).lower()
        return init.startswith(MUTATING_INITS)

    @property
    def rank(self) -> int | None:
        """The adapter rank r where the method has one (LoRA and its variants), else None."""
        return None if self.peft is None else self.peft.get("r", 8 if self.peft_type == "LORA" else None)

    @property
    def training_mode(self) -> str:
        """'full' (every weight gets a gradient and optimizer state) or 'adapter' (frozen base
        weights): what the cost model and resources distinguish."""
        return "full" if self.is_full else "adapter"

    def describe(self) -> str:
        """A short human label: 'full fine-tuning', 'LORA r=8 (qv)', 'LORA r=8 (qv), DoRA', 'IA3'."""
        if self.is_full:
            return "full fine-tuning"
        spec, parts = self.peft, []
        if self.rank is not None:
            parts.append(f"r={self.rank}")
        targets = spec.get("target_modules")
        if targets is not None:
            parts.append(f"({targets if isinstance(targets, str) else ','.join(targets)})")
        flags = [label for key, label in (("use_rslora", "rsLoRA"), ("use_dora", "DoRA")) if spec.get(key)]
        if self.mutates_base:
            flags.append(str(spec["init_lora_weights"]))
        return " ".join([self.peft_type, *parts]) + (", " + ", ".join(flags) if flags else "")


def from_config(config: dict) -> dict[str, Method]:
    """{name: Method} of a resolved config (see `resolve`), in the config's order."""
    return {name: Method.from_spec(name, entry) for name, entry in config["methods"].items()}


def method(config: dict, name: str) -> Method:
    return from_config(config)[name]


def names(config: dict) -> list[str]:
    return list(config["methods"])


def reference(config: dict) -> str:
    """The method every other one is compared with (analysis.reference_method)."""
    return config["analysis"]["reference_method"]


def ranks(config: dict) -> dict[str, int]:
    """{name: adapter rank r} of the methods that have one (what the weight figures mark)."""
    return {name: m.rank for name, m in from_config(config).items() if m.rank is not None}


def adapter_specs(config: dict) -> dict[str, dict]:
    """{name: spec} of the adapter methods (every method that does not train all weights)."""
    return {name: config["methods"][name] for name, m in from_config(config).items() if not m.is_full}


def resolve(config: dict, given: bool = True) -> None:
    """Check and canonicalise `config['methods']` in place (a config after schema validation;
    `given`: whether the raw config set `methods`, or the schema's default filled it in).

    The legacy key `lora: {r, alpha, dropout, target_modules}` still configures the method
    `lora` of the default methods (ConfigError when `methods` is given too). ConfigError naming
    the key for: a method name outside [a-z0-9_]+, an entry key other than METHOD_KEYS, a
    `peft_type` peft lacks, a keyword its config class lacks or values it rejects (checked by
    peft itself, see the module doc), a reserved or prompt-learning method, a reference method
    or learning-rate grid for a method that is not configured, a method without a grid.
    """
    legacy = config.pop(LEGACY_KEY, None)
    if legacy is not None:
        if given:
            raise ConfigError(f"config keys '{LEGACY_KEY}' and 'methods': set the adapter under "
                              f"'methods.{LEGACY_KEY}.peft' only (peft's own keyword names)")
        spec = dict(config["methods"][LEGACY_KEY]["peft"])
        for old, new in LEGACY_PEFT.items():
            if legacy.get(old) is not None:
                spec[new] = legacy[old]
        config["methods"][LEGACY_KEY] = {"peft": spec}
    raw = check_entries(config["methods"])
    config["methods"] = checked_with_peft(raw)
    if reference(config) not in config["methods"]:
        raise ConfigError(f"config key 'analysis.reference_method': '{reference(config)}' is not a configured "
                          f"method (methods: {names(config)})")
    rates = config["grid"]["learning_rates"]
    for name in rates:
        if name not in config["methods"]:
            raise ConfigError(f"config key 'grid.learning_rates.{name}': no such method (methods: {names(config)})")
    for name in config["methods"]:
        if name not in rates:
            raise ConfigError(f"config key 'grid.learning_rates.{name}': method '{name}' needs learning rates "
                              f"(classification and extractive_qa lists)")


def check_entries(raw: dict) -> dict:
    """`raw` methods with every entry a mapping ({} for None); ConfigError naming the method for a
    name outside [a-z0-9_]+ or an entry key other than METHOD_KEYS."""
    checked = {}
    for name, entry in raw.items():
        where = f"config key 'methods.{name}'"
        if not NAME.fullmatch(str(name)):
            raise ConfigError(f"{where}: method names must match [a-z0-9_]+, got {name!r}")
        entry = {} if entry is None else entry
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: a mapping is needed (e.g. {{}} or {{peft: {{peft_type: LORA, r: 8}}}}), "
                              f"got {entry!r}")
        unknown = sorted(set(entry) - set(METHOD_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown} (valid: {list(METHOD_KEYS)})")
        if "peft" in entry and entry["peft"] is None:  # a templating slip must not train every weight
            raise ConfigError(f"config key 'methods.{name}.peft': null; full fine-tuning is a method without the "
                              f"key ({name}: {{}}), an adapter needs peft's config ({{peft_type: LORA, r: 8, ...}})")
        checked[name] = entry
    return checked


def parse_methods(raw: dict) -> dict[str, Method]:
    """{name: Method} of a `methods` mapping, checked in this process (imports peft; see `resolve`
    for the errors, raised as ConfigError, a ValueError)."""
    checked = _check_stdin(check_entries(raw))
    if "error" in checked:
        raise ConfigError(checked["error"])
    return {name: Method.from_spec(name, entry) for name, entry in checked["methods"].items()}


def checked_with_peft(raw: dict) -> dict:
    """`raw` methods with every `peft` entry checked by peft's config classes (`check_peft`) and
    peft_type canonical: in a subprocess, remembered per (peft version, raw) in the cache.
    ConfigError with peft's reason."""
    from importlib.metadata import version

    # keyed by this module's text too: a change of the checks invalidates what was remembered
    key = json.dumps({"peft": version("peft"), "methods": raw, "checks": Path(__file__).read_text()},
                     sort_keys=True, default=str)
    cache = _cache_dir() / f"methods-{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"
    if cache.is_file():
        result = json.loads(cache.read_text())
    else:
        package_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
        code = ("import json, sys; from ftdrift.study.methods import _check_stdin;"
                " json.dump(_check_stdin(json.load(sys.stdin)), sys.stdout)")
        done = subprocess.run([sys.executable, "-c", code],
                              input=json.dumps(raw), capture_output=True, text=True, env=env, check=False)
        if done.returncode:
            raise ConfigError(f"config key 'methods': checking against peft's config classes failed:\n{done.stderr}")
        result = json.loads(done.stdout)
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(result))
        partial.replace(cache)
    if "error" in result:
        raise ConfigError(result["error"])
    return result["methods"]


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ftdrift"


def _check_stdin(raw: dict) -> dict:
    """{'methods': canonical} or {'error': message}: the subprocess side of `checked_with_peft`."""
    try:
        return {"methods": {name: ({"peft": check_peft(f"methods.{name}.peft", entry["peft"])}
                                   if entry.get("peft") is not None else {}) for name, entry in raw.items()}}
    except ValueError as err:
        return {"error": str(err)}


def check_peft(key: str, kwargs) -> dict:
    """The peft keyword arguments at config key `key` with `peft_type` canonical, checked against
    its config class: ValueError naming the key for an unknown peft_type (listing peft's), a
    keyword the class lacks (listing its keys), a reserved keyword, a prompt-learning type (the
    plain PeftModel does not prepend virtual tokens) or values the class rejects."""
    import dataclasses

    from peft import PEFT_TYPE_TO_CONFIG_MAPPING, PromptLearningConfig

    where = f"config key '{key}'"
    if not isinstance(kwargs, dict) or "peft_type" not in kwargs:
        raise ValueError(f"{where}: a mapping with 'peft_type' is needed (one of "
                         f"{sorted(str(t.value) for t in PEFT_TYPE_TO_CONFIG_MAPPING)}), got {kwargs!r}")
    by_name = {str(t.value).upper(): t for t in PEFT_TYPE_TO_CONFIG_MAPPING}
    peft_type = str(kwargs["peft_type"]).upper()
    if peft_type not in by_name:
        raise ValueError(f"config key '{key}.peft_type': unknown peft type {kwargs['peft_type']!r} (peft's: {sorted(by_name)})")
    cls = PEFT_TYPE_TO_CONFIG_MAPPING[by_name[peft_type]]
    if issubclass(cls, PromptLearningConfig):
        raise ValueError(  # noqa: TRY004 -- a config value, reported as a ValueError like the others
            f"config key '{key}.peft_type': {peft_type} is a prompt-learning method; ftdrift wraps the task "
                         f"model in the plain PeftModel, which does not add virtual tokens")
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    if "modules_to_save" not in fields:
        raise ValueError(f"config key '{key}.peft_type': {peft_type} ({cls.__name__}) has no modules_to_save, which "
                         f"ftdrift needs to train the task head beside the adapter")
    for name in kwargs:
        if name != "peft_type" and name not in fields:
            raise ValueError(f"{where}: unknown key '{name}' for peft_type {peft_type} ({cls.__name__}; valid keys: "
                             f"{sorted(fields - {'peft_type'})})")
        if name in RESERVED and kwargs[name] is not None:
            raise ValueError(f"config key '{key}.{name}': set by ftdrift (the plain PeftModel: no task type), remove it")
    presets = [name for name in ("target_modules", "feedforward_modules") if kwargs.get(name) in PRESETS]
    if presets and kwargs.get("layers_to_transform") is not None:
        raise ValueError(f"config key '{key}.layers_to_transform': a preset ({kwargs[presets[0]]}) selects modules "
                         f"in every block; to adapt some blocks only, list the module names in {presets[0]} "
                         f"(e.g. [q_proj, v_proj])")
    checked = {**kwargs, "peft_type": peft_type}
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    for name, value in kwargs.items():  # one number, one form: 8 and 8.0 must plan the same jobs
        kind = types.get(name)
        if value is None:
            continue
        if kind in (int, "int"):
            if isinstance(value, float) and value.is_integer():
                checked[name] = int(value)
            elif not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"config key '{key}.{name}': an integer is needed, got {value!r}")
        elif kind in (float, "float"):
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ValueError(f"config key '{key}.{name}': a number is needed, got {value!r}")
            checked[name] = float(value)
        elif kind in (bool, "bool") and not isinstance(value, bool):
            raise ValueError(f"config key '{key}.{name}': true or false is needed, got {value!r}")
    try:  # the class's own checks of the values (targets as given: a preset passes as a regex string)
        cls(**{k: v for k, v in checked.items() if k != "peft_type"})
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {cls.__name__} rejects these arguments: {err}") from err
    return dict(sorted(checked.items()))  # one order: a job's params are compared by their repr
