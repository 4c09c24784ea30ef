"""Fine-tuning methods turned into models: a method of the registry (ftdrift.study.methods) on a
task model, its adapter saved and reloaded, merged.

peft's task-specific wrappers name the inputs they forward and drop the rest: in peft 0.21.2
`PeftModelForQuestionAnswering.forward` accepts `token_type_ids` and `position_ids` but never
passes them to the model, so a BERT-style QA model saw other inputs under an adapter than the base
model, full fine-tuning and the merged adapter. ftdrift therefore wraps the task model in the plain
`PeftModel` (no `task_type`), whose forward passes every argument through unchanged
(`check_passes_inputs` verifies it per job), and declares the task head as `modules_to_save`
itself: trained fully, saved with the adapter, restored on reload and kept by `merge_and_unload`,
for every method.

Initialisations that rewrite the base weights (LoRA `init_lora_weights` pissa*, corda, olora,
lora_ga: PiSSA stores the residual W - B0·A0 in the base layer) make the adapted model's base
layers differ from the checkpoint's. The weight analysis needs ΔW against the ORIGINAL W: peft's
documented route is to save the adapter right after `adapt` (`save_initial`) and save the trained
one with `save_pretrained(..., path_initial_model_for_weight_conversion=<that folder>)`, which
writes a plain LoRA adapter of rank 2r (A' = [A; A0], B' = [B, -B0], so B'A' = BA - B0A0) that
applies to the original, unmodified base model (`save_adapter` does both). peft 0.21.2 keeps only
the lora_A/lora_B tensors in that conversion (`LoraModel.subtract_mutated_init`) and so drops the
trained task head; `save_adapter` writes the head back into the converted file.

"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import torch
from peft import PeftModel

from ftdrift.core.memory import BatchSplitter
from ftdrift.study.methods import Method

ADAPTER = "default"  # peft's name for the single adapter ftdrift trains


def load(base_model: torch.nn.Module, adapter_dir, trainable: bool = False) -> PeftModel:
    """The base task model with a saved adapter (and its trained head); `trainable` marks the
    parameters training updated as requiring gradients (so they can be counted)."""
    return PeftModel.from_pretrained(base_model, str(adapter_dir), is_trainable=trainable)


@torch.no_grad()
def check_passes_inputs(peft_model: PeftModel, batch: dict) -> None:
    """Fail unless the wrapper hands `batch` to the task model unchanged.

    The adapted task model under the wrapper computes the same function whether it is called
    directly or through the wrapper; any difference means the wrapper dropped or altered an
    input. Compares the logits and every hidden state, bitwise, in eval mode. A batch (a probe
    batch: config representations.batch_size) that runs out of memory is checked in pieces
    (ftdrift.core.memory.BatchSplitter): each piece goes through both paths, so the comparison
    holds piece by piece. Raises RuntimeError naming the first output that differs.
    """
    def compare(piece: dict) -> None:
        through = peft_model(**piece, output_hidden_states=True)
        direct = peft_model.get_base_model()(**piece, output_hidden_states=True)
        pairs = [(name, through[name], direct[name]) for name in through
                 if name != "hidden_states" and torch.is_tensor(through[name])]
        pairs += [(f"hidden_states[{i}]", a, b) for i, (a, b) in
                  enumerate(zip(through["hidden_states"], direct["hidden_states"], strict=True))]
        for name, a, b in pairs:
            if not torch.equal(a, b):
                raise RuntimeError(
                    f"the peft wrapper {type(peft_model).__name__} changes the model's inputs: its {name} differs "
                    f"from the task model's by up to {float((a - b).abs().max()):.3g} (inputs: {sorted(piece)})")

    was_training = peft_model.training
    peft_model.eval()
    try:
        BatchSplitter("the adapter input check (config representations.batch_size)").run(compare, dict(batch))
    finally:
        peft_model.train(was_training)


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
    if isinstance(kwargs.get("target_modules"), list):  # peft's own message does not name the entry
        names = [n for n, _ in model.named_modules()]
        missing = [t for t in kwargs["target_modules"] if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            leaves = sorted({n.rsplit(".", 1)[-1] for n in names if n})
            raise ValueError(f"target_modules {missing} match no module (module names include {leaves[:20]})")
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

    heads = targets.head_modules(targets.task_model(model))
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
        # from None: the message carries peft's (or the resolution's) reason, one traceback is enough
        raise ValueError(f"config key 'methods.{method.name}.peft', method '{method.name}' on "
                         f"{type(model).__name__}: {err}") from None
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


def config_class(kwargs: dict):
    """peft's config class for `kwargs['peft_type']` (canonical)."""
    from peft import PEFT_TYPE_TO_CONFIG_MAPPING

    return {str(t.value).upper(): c for t, c in PEFT_TYPE_TO_CONFIG_MAPPING.items()}[kwargs["peft_type"]]


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
