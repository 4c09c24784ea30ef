"""Family-independent target-module presets for peft methods, resolved per model.

A method's `peft.target_modules` (ftdrift.modeling.methods) may name a preset instead of peft's
own values (a list of module-name suffixes, a regex string):

    qv          the query and value projections: peft's default LoRA targets for the model type
                (peft.utils.constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING) where peft
                has an entry, restricted to attention projections (peft's `phi` entry also lists the
                MLP's fc1/fc2); else the q/v projections found in the blocks by name. A fused q/k/v
                projection (GPT-2 `c_attn`, GPT-NeoX `query_key_value`, Phi-3 `qkv_proj`,
                ModernBERT `Wqkv`) cannot adapt q and v apart from k: the preset resolves to the
                fused module and the resolution says so in a note.
    attention   every linear layer of the blocks' attention (q, k, v, o or the fused ones)
    mlp         every linear layer of the blocks outside the attention (gate/up/down, BERT's
                intermediate.dense and output.dense, GPT-2's c_fc and c_proj)
    all-linear  peft's `all-linear` (every nn.Linear / transformers Conv1D but the output
                embedding), minus the task head (trained fully as peft `modules_to_save`): peft's
                own shorthand excludes the head only for task_type SEQ_CLS, and ftdrift uses the
                plain PeftModel without a task type (ftdrift.modeling.methods).

A module is an attention one when a part of its path inside the block names attention ('attn',
'attention': Llama `self_attn.q_proj`, BERT `attention.self.query`, GPT-2 `attn.c_attn`); every
other linear layer of a block is an MLP one. A resolution is returned in the form peft matches
(peft 0.21.2 `check_target_module_exists`: a list of names matches a module whose name equals or
ends with '.'+entry; a string is `re.fullmatch`ed): the shortest block-relative suffixes when they
match exactly the wanted modules (['q_proj', 'v_proj']), else a regex over the blocks (BERT's MLP
`output.dense` is also the tail of its attention's `attention.output.dense`).
"""

from __future__ import annotations

import re

import torch

from ftdrift.study.methods import PRESETS

# leaf names of separate q / k / v projections across transformers' families
QUERY = {"q_proj", "query", "q", "query_proj", "q_lin", "wq"}
KEY = {"k_proj", "key", "k", "key_proj", "k_lin", "wk"}
VALUE = {"v_proj", "value", "v", "value_proj", "v_lin", "wv"}
FUSED = {"c_attn", "query_key_value", "w_pack", "in_proj"}  # besides any leaf containing 'qkv'


def is_linear(module: torch.nn.Module) -> bool:
    """nn.Linear or transformers' Conv1D (GPT-2): the layer types of peft's `all-linear`."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (torch.nn.Linear, Conv1D))


def task_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers task model inside a peft wrapper (itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def blocks(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """(dotted name, module list) of the transformer blocks: the first nn.ModuleList holding
    `config.num_hidden_layers` modules (Llama 'model.layers', BERT 'bert.encoder.layer', GPT-2
    'transformer.h'). ValueError naming the model class when there is none."""
    model = task_model(model)
    count = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return name, module
    raise ValueError(f"{type(model).__name__}: no list of {count} transformer blocks found")


def role(relative: str) -> str:
    """The role of a linear layer from its path inside a block: 'q', 'k', 'v', 'qkv' (fused),
    'o' (any other attention layer) or 'mlp'."""
    parts = relative.lower().split(".")
    if not any("attn" in p or "attention" in p for p in parts[:-1]):
        return "mlp"
    leaf = parts[-1]
    for name, leaves in (("q", QUERY), ("k", KEY), ("v", VALUE)):
        if leaf in leaves:
            return name
    return "qkv" if leaf in FUSED or "qkv" in leaf else "o"


def block_linears(model: torch.nn.Module) -> dict[str, str]:
    """{full module name in the task model: role} of every linear layer in the blocks."""
    prefix, layers = blocks(model)
    found = {}
    for i, block in enumerate(layers):
        for relative, module in block.named_modules():
            if relative and is_linear(module):
                found[f"{prefix}.{i}.{relative}"] = role(relative)
    return found


def head_modules(model: torch.nn.Module) -> list[str]:
    """Top-level modules of a transformers task model outside its backbone that hold parameters.

    E.g. ['classifier'] (BERT classification), ['score'] (Llama classification), ['qa_outputs']
    (extractive QA). Raises ValueError when there is none (not a task model).
    """
    backbone = model.base_model_prefix
    heads = [name for name, child in model.named_children()
             if name != backbone and any(True for _ in child.parameters())]
    if not heads:
        raise ValueError(f"{type(model).__name__}: no task head besides the backbone '{backbone}'")
    return heads


def relative(model: torch.nn.Module, names) -> list[str]:
    """Sorted distinct block-relative paths of `names` ('self_attn.q_proj'); names outside the
    blocks stay whole ('bert.pooler.dense')."""
    prefix, _ = blocks(model)
    pattern = re.compile(rf"{re.escape(prefix)}\.\d+\.(.+)")
    return sorted({(m.group(1) if (m := pattern.fullmatch(n)) else n) for n in names})


def suffix_matches(all_names, entry: str) -> set[str]:
    """The modules peft's list form matches with `entry` (name equal or ending with '.'+entry)."""
    return {n for n in all_names if n == entry or n.endswith("." + entry)}


def peft_form(model: torch.nn.Module, wanted: set[str]) -> list[str] | str:
    """`target_modules` in peft's form that matches exactly the modules `wanted` (full names):
    the shortest suffixes when none of them needs a block index, else a regex."""
    if not wanted:
        raise ValueError("no modules to target")
    all_names = [n for n, _ in task_model(model).named_modules() if n]
    chosen = set()
    for name in sorted(wanted):
        parts = name.split(".")
        chosen.add(next(s for k in range(1, len(parts) + 1)
                        if suffix_matches(all_names, s := ".".join(parts[-k:])) <= wanted))
    if not any(part.isdigit() for s in chosen for part in s.split(".")):
        return sorted(chosen)
    prefix, _ = blocks(model)
    inside = relative(model, {n for n in wanted if n.startswith(prefix + ".")})
    outside = sorted(n for n in wanted if not n.startswith(prefix + "."))
    alternatives = ([rf"{re.escape(prefix)}\.\d+\.(?:{'|'.join(map(re.escape, inside))})"] if inside else [])
    regex = "|".join(alternatives + [re.escape(n) for n in outside])
    if {n for n in all_names if re.fullmatch(regex, n)} != wanted:  # blocks differ: name every module
        regex = "|".join(re.escape(n) for n in sorted(wanted))
    return regex


def preset_modules(model: torch.nn.Module, preset: str) -> tuple[set[str], list[str]]:
    """(full names of the modules `preset` selects in the task model, notes). ValueError for an
    unknown preset or one that selects nothing."""
    linears = block_linears(model)
    notes: list[str] = []
    if preset == "qv":
        wanted, notes = query_value(model, linears)
    elif preset == "attention":
        wanted = {n for n, r in linears.items() if r != "mlp"}
    elif preset == "mlp":
        wanted = {n for n, r in linears.items() if r == "mlp"}
    elif preset == "all-linear":
        wanted, notes = all_linear(model)
    else:
        raise ValueError(f"unknown target preset '{preset}' (presets: {list(PRESETS)})")
    if not wanted:
        raise ValueError(f"target preset '{preset}' selects no module of {type(task_model(model)).__name__} "
                         f"(linear layers of its blocks: {relative(model, linears)})")
    fused = relative(model, {n for n in wanted if linears.get(n) == "qkv"})
    if preset == "qv" and fused:
        notes.append(f"the query and value projections are fused with the key projection in {fused}: "
                     f"'qv' adapts that module, so k is adapted too")
    return wanted, notes


def query_value(model: torch.nn.Module, linears: dict[str, str]) -> tuple[set[str], list[str]]:
    """The `qv` preset: peft's default LoRA targets of the model type kept to the q, v and fused
    projections, else (no entry, or none of it an attention projection) those found by name."""
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS,
    )

    model_type = task_model(model).config.model_type
    entry = DEFAULTS.get(model_type)
    notes = []
    if isinstance(entry, list):
        kept, dropped = set(), []
        for suffix in entry:
            hits = suffix_matches(linears, suffix)
            if hits and all(linears[n] in ("q", "v", "qkv") for n in hits):
                kept |= hits
            else:
                dropped.append(suffix)
        if kept:
            if dropped:
                notes.append(f"peft's default LoRA targets for {model_type} also list {dropped}: "
                             f"'qv' keeps the query/value projections")
            return kept, notes
    separate = {n for n, r in linears.items() if r in ("q", "v")}
    return separate or {n for n, r in linears.items() if r == "qkv"}, notes


def all_linear(model: torch.nn.Module) -> tuple[set[str], list[str]]:
    """Every linear layer of the task model but the output embedding and the task head."""
    model = task_model(model)
    heads = head_modules(task_model(model))
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    wanted = {n for n, m in model.named_modules()
              if is_linear(m) and m is not output and n.split(".")[0] not in heads}
    outside = relative(model, {n for n in wanted if n not in block_linears(model)})
    notes = [f"'all-linear' also adapts the linear layers outside the blocks: {outside}"] if outside else []
    return wanted, notes
