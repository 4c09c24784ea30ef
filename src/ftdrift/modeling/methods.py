"""Fine-tuning methods: a user-named method turned into a (peft-adapted) task model.

The config's `methods` mapping is the one place a method is defined:

    methods:
      full: {}                                  # no `peft`: every weight trains
      lora: {peft: {peft_type: LORA, r: 8, lora_alpha: 16, target_modules: qv}}
      ia3: {peft: {peft_type: IA3}}

`peft` holds the keyword arguments of peft's config class for `peft_type`
(`peft.PEFT_TYPE_TO_CONFIG_MAPPING`, peft 0.21.2), checked against that class's fields;
`target_modules` (and IA3's `feedforward_modules`) take peft's own values or a preset resolved per
model (ftdrift.modeling.targets: qv, attention, mlp, all-linear). As in ftdrift.modeling.lora, the
adapter wraps the task model in the plain `PeftModel` (no `task_type`: the task wrappers drop
inputs) and the task head is peft `modules_to_save`: trained fully, saved with the adapter, kept
by `merge_and_unload`, for every method.

Initialisations that rewrite the base weights (LoRA `init_lora_weights` pissa*, corda, olora,
lora_ga: PiSSA stores the residual W - B0·A0 in the base layer) make the adapted model's base
layers differ from the checkpoint's. The weight analysis needs ΔW against the ORIGINAL W: peft's
documented route is to save the adapter right after `adapt` (`save_initial`) and save the trained
one with `save_pretrained(..., path_initial_model_for_weight_conversion=<that folder>)`, which
writes a plain LoRA adapter of rank 2r (A' = [A; A0], B' = [B, -B0], so B'A' = BA - B0A0) that
applies to the original, unmodified base model (`save_adapter` does both). peft 0.21.2 keeps only
the lora_A/lora_B tensors in that conversion (`LoraModel.subtract_mutated_init`) and so drops the
trained task head; `save_adapter` writes the head back into the converted file.

`parse_methods` needs no model and imports peft lazily (importing peft costs about 2 s of CPU on
top of torch; Snakemake parses the config often).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

NAME = re.compile(r"[a-z0-9_]+")
METHOD_KEYS = ("peft",)  # keys of one method's entry
# set by ftdrift itself: a task_type makes get_peft_model return a task wrapper, which drops inputs
RESERVED = ("task_type",)
# initialisations that rewrite the base weights: the ones peft converts to plain LoRA on saving
# (peft 0.21.2 `LoraModel._convert_state_dict_for_initial_model`)
MUTATING_INITS = ("pissa", "corda", "olora", "lora_ga")


@dataclass(frozen=True)
class Method:
    """A named fine-tuning method: `peft` None trains every weight (full fine-tuning), else the
    keyword arguments of peft's config class for `peft['peft_type']` (canonical upper-case name)."""

    name: str
    peft: dict | None = None

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


def parse_methods(raw: dict) -> dict[str, Method]:
    """The config's `methods` mapping as {name: Method}, in the config's order.

    ValueError naming the method (`methods.<name>`) for a name outside [a-z0-9_]+, an entry key
    other than METHOD_KEYS, an unknown `peft_type` (listing peft's), a keyword the config class
    lacks (listing its keys), a reserved keyword (task_type), a prompt-learning type (the plain
    PeftModel does not prepend virtual tokens) or keyword values the config class rejects.
    """
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"config key 'methods': a non-empty mapping of method names is needed, got {raw!r}")
    return {name: parse_method(name, entry) for name, entry in raw.items()}


def parse_method(name, entry) -> Method:
    """One `methods.<name>` entry; see `parse_methods`."""
    where = f"config key 'methods.{name}'"
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"{where}: method names must match [a-z0-9_]+, got {name!r}")
    entry = {} if entry is None else entry
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: a mapping is needed (e.g. {{}} or {{peft: {{peft_type: LORA, r: 8}}}}), "
                         f"got {entry!r}")
    unknown = sorted(set(entry) - set(METHOD_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} (valid: {list(METHOD_KEYS)})")
    if entry.get("peft") is None:
        return Method(name, None)
    return Method(name, check_peft(f"methods.{name}.peft", entry["peft"]))


def check_peft(key: str, kwargs) -> dict:
    """The peft keyword arguments at config key `key` with `peft_type` canonical, checked against
    its config class (see `parse_methods`)."""
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
        raise ValueError(f"config key '{key}.peft_type': {peft_type} is a prompt-learning method; ftdrift wraps the task "
                         f"model in the plain PeftModel, which does not add virtual tokens")
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    for name in kwargs:
        if name != "peft_type" and name not in fields:
            raise ValueError(f"{where}: unknown key '{name}' for peft_type {peft_type} ({cls.__name__}; valid keys: "
                             f"{sorted(fields - {'peft_type'})})")
        if name in RESERVED and kwargs[name] is not None:
            raise ValueError(f"config key '{key}.{name}': set by ftdrift (the plain PeftModel: no task type), remove it")
    checked = {**kwargs, "peft_type": peft_type}
    try:  # the class's own checks of the values (targets as given: a preset passes as a regex string)
        config_class(checked)(**{k: v for k, v in checked.items() if k != "peft_type"})
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {cls.__name__} rejects these arguments: {err}") from err
    return checked


def config_class(kwargs: dict):
    """peft's config class for `kwargs['peft_type']` (canonical)."""
    from peft import PEFT_TYPE_TO_CONFIG_MAPPING

    return {str(t.value).upper(): c for t, c in PEFT_TYPE_TO_CONFIG_MAPPING.items()}[kwargs["peft_type"]]


def resolve_targets(model, spec: dict) -> tuple[dict, dict]:
    """(`spec` with presets in target_modules / feedforward_modules replaced by peft's form for
    `model`, info) — see ftdrift.modeling.targets. info (JSON-able): for each resolved key
    {'preset', 'modules' (block-relative paths), 'value' (what peft gets)}, and 'notes'.

    IA3 with a preset target and no `feedforward_modules`: the MLP modules among the targets
    (none for qv/attention); IA3 without target_modules: peft's defaults by model type (peft
    resolves those itself). ValueError for a preset that selects nothing, or an IA3
    feedforward preset outside the targets.
    """
    from ftdrift.modeling import targets

    kwargs, info = dict(spec), {"notes": []}
    selected = None
    if isinstance(kwargs.get("target_modules"), str) and kwargs["target_modules"] in targets.PRESETS:
        preset = kwargs["target_modules"]
        selected, notes = targets.preset_modules(model, preset)
        kwargs["target_modules"] = targets.peft_form(model, selected)
        info["target_modules"] = {"preset": preset, "modules": targets.relative(model, selected),
                                  "value": kwargs["target_modules"]}
        info["notes"] += [f"target_modules '{preset}': {note}" for note in notes]
    if kwargs["peft_type"] == "IA3" and selected is not None:
        feedforward = kwargs.get("feedforward_modules")
        if isinstance(feedforward, str) and feedforward in targets.PRESETS:
            chosen, _ = targets.preset_modules(model, feedforward)
            if not chosen <= selected:
                raise ValueError(f"feedforward_modules '{feedforward}' is not a subset of target_modules "
                                 f"{info['target_modules']['preset']!r}")
        elif feedforward is None:
            linears = targets.block_linears(model)
            chosen = {n for n in selected if linears.get(n) == "mlp"}
        else:
            return kwargs, info
        # a regex: IA3 tests feedforward names with a bare endswith (no '.' boundary)
        value = "|".join(re.escape(n) for n in sorted(chosen)) if chosen else []
        kwargs["feedforward_modules"] = value
        info["feedforward_modules"] = {"preset": feedforward or "mlp", "modules": targets.relative(model, chosen),
                                       "value": value}
    return kwargs, info


def adapt(model, method: Method):
    """(the model to train, info): `model` itself for full fine-tuning, else the plain PeftModel
    around it (adapted in place) with the task head as `modules_to_save`.

    Call under the run's seed: adapter initialisations (LoRA's A) and the head copy draw from the
    global RNG. info (JSON-able, the run's metadata): method, peft_type, the resolved presets and
    notes (`resolve_targets`), 'adapted' (block-relative paths of the adapted modules),
    'feedforward' (IA3's modules that scale their input), 'modules_to_save', 'trainable_params',
    'total_params', 'mutates_base'. ValueError naming the
    method when peft rejects the config or a target would be the task head; RuntimeError when a
    parameter outside the adapter and the head trains, or the head does not.
    """
    from peft import get_peft_model

    from ftdrift.modeling import targets
    from ftdrift.modeling.lora import head_modules

    heads = head_modules(targets.task_model(model))
    info = {"method": method.name, "peft_type": method.peft_type, "notes": [], "mutates_base": method.mutates_base,
            "total_params": sum(p.numel() for p in model.parameters())}
    if method.is_full:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model, {**info, "trainable_params": info["total_params"]}
    try:
        kwargs, resolution = resolve_targets(model, method.peft)
        saved = sorted(set(heads) | set(kwargs.pop("modules_to_save", None) or []))
        config = config_class(kwargs)(**{k: v for k, v in kwargs.items() if k != "peft_type"}, modules_to_save=saved)
        peft_model = get_peft_model(model, config)
    except ValueError as err:
        raise ValueError(f"method '{method.name}' on {type(model).__name__}: {err}") from err
    adapted = adapted_modules(peft_model)
    on_head = [n for n in adapted if n.split(".")[0] in heads]
    if on_head:
        raise ValueError(f"method '{method.name}': target_modules match the task head {on_head}, which trains fully "
                         f"as modules_to_save; narrow target_modules")
    check_trainable(peft_model, method, heads)
    # Reentrant activation checkpointing gives a checkpointed block no gradient when none of its
    # inputs requires grad: with frozen embeddings the adapters then silently never train.
    # transformers 5.24's activation_checkpointing_enable sets this hook itself (and peft does when
    # checkpointing was on before wrapping); set it here so no order of calls can lose it.
    peft_model.get_base_model().enable_input_require_grads()
    modules = dict(peft_model.get_base_model().named_modules())
    feedforward = [n for n in adapted if getattr(modules[n], "is_feedforward", False)]  # IA3: scales inputs
    return peft_model, {**info, **resolution, "adapted": targets.relative(peft_model, adapted),
                        **({"feedforward": targets.relative(peft_model, feedforward)} if feedforward else {}),
                        "modules_to_save": saved,
                        "trainable_params": sum(p.numel() for p in peft_model.parameters() if p.requires_grad)}


def adapted_modules(peft_model) -> list[str]:
    """Full names (in the task model) of the modules a peft tuner layer replaced."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sorted(n for n, m in peft_model.get_base_model().named_modules() if isinstance(m, BaseTunerLayer))


def check_trainable(peft_model, method: Method, heads: list[str]) -> None:
    """RuntimeError unless every trainable parameter is an adapter's or the trained head copy's,
    and every head parameter trains."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapter_params = {id(p) for m in peft_model.modules() if isinstance(m, BaseTunerLayer)
                      for n, p in m.named_parameters() if "base_layer" not in n}
    stray, frozen_head = [], []
    for name, parameter in peft_model.get_base_model().named_parameters():
        in_head = name.split(".")[0] in heads and ".modules_to_save." in name
        if parameter.requires_grad and not (in_head or id(parameter) in adapter_params):
            stray.append(name)
        if in_head and not parameter.requires_grad:
            frozen_head.append(name)
    if stray or frozen_head:
        raise RuntimeError(f"method '{method.name}': parameters outside the adapter and the head train: {stray[:5]}; "
                           f"head parameters that do not: {frozen_head[:5]}")


def merged(model):
    """A merged copy of a peft model (`merge_and_unload` on a deep copy: the task model with the
    adapter folded into its weights and the trained head); `model` is left as it is. A model
    without an adapter (full fine-tuning) is returned as it is."""
    if not hasattr(model, "merge_and_unload"):
        return model
    return copy.deepcopy(model).merge_and_unload()


def save_initial(peft_model, method: Method, folder) -> Path | None:
    """Save the adapter as initialised, for methods that rewrite the base weights (None for the
    others): call right after `adapt`, before any update; `save_adapter` needs it. The folder's
    name becomes a temporary adapter name in peft's conversion."""
    if not method.mutates_base:
        return None
    folder = Path(folder)
    peft_model.save_pretrained(str(folder))
    return folder


def save_adapter(peft_model, method: Method, folder, initial=None) -> None:
    """Save a trained adapter (and head) to `folder` so that it applies to the ORIGINAL base model.

    For methods that rewrite the base weights `initial` (from `save_initial`) is required: peft's
    `save_pretrained(..., path_initial_model_for_weight_conversion=initial)` writes the update as a
    plain LoRA adapter of rank 2r; peft 0.21.2 leaves the task head out of that file, so it is
    added back from the model's own adapter state dict. ValueError when `initial` is missing.
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    if not method.mutates_base:
        peft_model.save_pretrained(str(folder))
        return
    if initial is None:
        raise ValueError(f"method '{method.name}' rewrites the base weights at initialisation: saving it for the "
                         f"original base model needs the initial adapter (methods.save_initial)")
    if peft_model.peft_config["default"].use_dora:
        raise ValueError(f"method '{method.name}': peft cannot convert a DoRA adapter with a mutating initialisation")
    peft_model.save_pretrained(str(folder), path_initial_model_for_weight_conversion=str(initial))
    file = Path(folder) / "adapter_model.safetensors"
    converted = load_file(file)
    full = get_peft_model_state_dict(peft_model)
    lost = {k: v.detach().clone().contiguous() for k, v in full.items()
            if k not in converted and "lora_A" not in k and "lora_B" not in k}
    save_file({**converted, **lost}, file, metadata={"format": "pt"})
