"""What a model checkpoint declares, read without loading torch or transformers: its folder
(embedded copies resolved), its config.json, and the sequence length its position embeddings
allow. Cheap enough for Snakemake's parse time, so settings that cannot work stop the workflow
before any job starts."""

from __future__ import annotations

import functools

# re-exported: the readers live in the study layer, which resolves model.family at config load
from ftdrift.study.families import EMBEDDED_PREFIX, mapping_names, read_config, resolve_model_path  # noqa: F401

# model types whose learned position embeddings are numbered from pad_token_id + 1 (transformers'
# `create_position_ids_from_input_ids` in modeling_roberta.py and its copies), so a sequence may hold
# at most max_position_embeddings - pad_token_id - 1 tokens
PADDING_OFFSET_TYPES = frozenset({
    "roberta", "roberta-prelayernorm", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "ibert",
    "longformer", "luke", "mpnet", "xmod", "esm"})


def usable_positions(config: dict) -> int | None:
    """The most tokens one sequence may hold (`config`: a config.json's content or a transformers
    config's to_dict()); None if the model declares no limit (e.g. rotary embeddings without
    max_position_embeddings)."""
    limit = config.get("max_position_embeddings")
    if limit is None:
        return None
    if config.get("model_type") in PADDING_OFFSET_TYPES:
        return limit - (config.get("pad_token_id") or 0) - 1
    return limit


def check_max_length(config: dict, max_length: int, key: str = "data.max_length", model: str = "the model") -> None:
    """ValueError naming config key `key` when `max_length` tokens exceed what `config` allows."""
    limit = usable_positions(config)
    if limit is not None and max_length > limit:
        offset = (f" ({config['max_position_embeddings']} position embeddings less the padding offset of "
                  f"{config['model_type']})" if limit != config["max_position_embeddings"] else "")
        raise ValueError(f"config key '{key}': {max_length} tokens exceed the {limit} positions {model} can encode"
                         f"{offset}")


def check_model(model_cfg: dict, lengths: dict[str, int], task_kinds: dict[str, str]) -> None:
    """Parse-time checks of the model, when its config.json is at hand (a local folder, the embedded
    model, the Hugging Face cache): `check_supported`, and every `{config key: max_length}`
    (ftdrift.study.config.max_lengths) against its positions (the jobs check again once they load it)."""
    config = read_config(model_cfg)
    if config is None:
        return
    check_supported(config, model_cfg["name_or_path"], task_kinds)
    for key, max_length in lengths.items():
        check_max_length(config, max_length, key, model=model_cfg["name_or_path"])


# transformers' auto class of each task kind, as named in transformers/models/auto/modeling_auto.py
TASK_CLASS_MAPPINGS = {"classification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
                       "extractive_qa": "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES"}


@functools.cache
def task_model_types(kind: str) -> frozenset[str]:
    """The model types transformers has a task class for (`kind`: 'classification' or
    'extractive_qa'), read without importing transformers (ftdrift.study.families.mapping_names)."""
    return frozenset(mapping_names(TASK_CLASS_MAPPINGS[kind]))


def check_supported(config: dict, model: str, task_kinds: dict[str, str]) -> None:
    """Refuse, before any job, a checkpoint the study cannot run (`config`: its config.json;
    `task_kinds`: {task: kind} of the configured tasks). ValueError naming the model, its type and
    the reason: an encoder-decoder (T5, BART: the study compares one stack of blocks with the base
    model's), a multimodal config (its text model's settings live in `text_config`), or a task
    whose kind has no transformers class for the type (e.g. Gemma 2 and Phi-3 have no
    question-answering class: drop SQuAD v2 for them)."""
    model_type = config.get("model_type")
    if config.get("is_encoder_decoder"):
        raise ValueError(f"config key 'model.name_or_path': {model} is an encoder-decoder model ({model_type}); "
                         "ftdrift supports encoder-only and decoder-only models")
    if "num_hidden_layers" not in config and "text_config" in config:
        raise ValueError(f"config key 'model.name_or_path': {model} is a multimodal model ({model_type}, its text "
                         "model in text_config); ftdrift supports text-only checkpoints")
    for task, kind in task_kinds.items():
        if model_type not in task_model_types(kind):
            raise ValueError(f"config key 'tasks': task {task} needs a transformers {kind} class, which model type "
                             f"'{model_type}' ({model}) does not have; drop {task} from 'tasks' for this model")
