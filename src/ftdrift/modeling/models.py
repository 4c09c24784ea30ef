"""Loading tokenizers and task models the way every stage of the study does, by family
(the registry of what differs between architectures is ftdrift.study.families; the blocks and
adapter targets are found in the model, ftdrift.modeling.targets)."""

from __future__ import annotations

import re

import torch
from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ftdrift.modeling.checkpoint import EMBEDDED_PREFIX, resolve_model_path  # noqa: F401
from ftdrift.study.families import family


def load_tokenizer(model_cfg: dict) -> PreTrainedTokenizerBase:
    """The model's fast tokenizer, with a pad token; decoders pad on the right. ValueError naming
    what is missing when a SentencePiece-only checkpoint (DeBERTa-v3's spm.model, no tokenizer.json)
    cannot be converted: transformers 5.24 then falls back to reading the file as tiktoken and says
    "tiktoken is required", which names the wrong package."""
    path = resolve_model_path(model_cfg["name_or_path"])
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=model_cfg.get("revision"))
    except ValueError as err:
        problem = sentencepiece_problem() if "tiktoken" in str(err) else None
        if problem:
            raise ValueError(f"model {path}: its tokenizer is a SentencePiece model without tokenizer.json; reading it "
                             f"needs the packages sentencepiece and a protobuf it was built for (pinned in "
                             f"pyproject.toml): {problem}") from None
        raise
    if not tokenizer.is_fast:
        raise ValueError(f"model {path}: a fast tokenizer is needed (offset mappings for QA)")
    if tokenizer.pad_token is None:
        # Llama ships without a pad token; padding positions are masked, so eos (or unk) serves
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if family(model_cfg).decoder:
        tokenizer.padding_side = "right"  # last-token pooling reads the last unmasked position
    return tokenizer


def sentencepiece_problem() -> str | None:
    """Why SentencePiece models cannot be converted here (sentencepiece missing, or its protobuf
    module failing against the installed protobuf), None when they can."""
    try:
        from sentencepiece import sentencepiece_model_pb2  # noqa: F401 - what transformers' converter imports
    except Exception as err:  # noqa: BLE001 - ImportError, or protobuf's VersionError
        return f"{type(err).__name__}: {err}"
    return None


def task_model_class(kind: str):
    """The transformers auto class of a task kind ('classification' or 'extractive_qa')."""
    return AutoModelForSequenceClassification if kind == "classification" else AutoModelForQuestionAnswering


def load_model(model_cfg: dict, kind: str, num_labels: int | None, tokenizer,
               dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A task model (sequence classification or extractive QA) whose backbone is the checkpoint's.

    Every backbone weight must come from the checkpoint; only the task head
    (ftdrift.modeling.targets.head_modules: `score`, `classifier`, `qa_outputs`) is newly drawn. Some task classes keep their
    backbone under another attribute than the checkpoint's (transformers 5.24: Llama/Qwen2/Qwen3
    `*ForQuestionAnswering` under `transformer.`, their `*ForCausalLM` checkpoints under `model.`);
    transformers then loads nothing into the backbone and says so only in its loading report. Such a
    checkpoint is reloaded with transformers' documented `key_mapping` from its prefix to the task
    class's. Raises RuntimeError naming the model and the backbone keys still missing.
    """
    path = resolve_model_path(model_cfg["name_or_path"])
    config = AutoConfig.from_pretrained(path, revision=model_cfg.get("revision"))
    if kind == "classification":
        config.num_labels = num_labels
    config.pad_token_id = tokenizer.pad_token_id
    return load_checkpoint(task_model_class(kind), path, model_cfg["name_or_path"], head_may_be_new=True,
                           config=config, revision=model_cfg.get("revision"), dtype=dtype)


def load_checkpoint(cls, path: str, name: str, head_may_be_new: bool, **kwargs) -> PreTrainedModel:
    """`cls.from_pretrained(path, **kwargs)` with every backbone weight from the checkpoint (and,
    unless `head_may_be_new`, every other weight too), whatever prefix the checkpoint keeps the
    backbone under; see `load_model`. transformers 5.24 writes a model loaded through `key_mapping`
    back under the checkpoint's prefix, so a saved task model needs the same mapping to reload.
    RuntimeError naming `name` and the keys still missing."""
    model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    mapping = backbone_key_mapping(model, info)
    if mapping:
        del model  # its backbone is random: free it before the reload (two 1.3B models need not fit)
        model, info = cls.from_pretrained(path, output_loading_info=True, key_mapping=mapping, **kwargs)
    missing = missing_backbone_keys(model, info) if head_may_be_new else sorted(info["missing_keys"])
    if missing:
        raise RuntimeError(
            f"model '{name}' as {type(model).__name__}: {len(missing)} weights are not in the checkpoint and would "
            f"be random: {missing[:10]}{' ...' if len(missing) > 10 else ''} (unexpected checkpoint keys: "
            f"{sorted(info['unexpected_keys'])[:10]})")
    return model


def missing_backbone_keys(model: PreTrainedModel, info: dict) -> list[str]:
    """The missing keys of a `from_pretrained(..., output_loading_info=True)` load that lie in the
    backbone (under `model.base_model_prefix`), sorted; the task head's are expected."""
    prefix = model.base_model_prefix + "."
    return sorted(k for k in info["missing_keys"] if k.startswith(prefix))


def backbone_key_mapping(model: PreTrainedModel, info: dict) -> dict[str, str]:
    """A `key_mapping` ({regex: replacement} on checkpoint keys) that moves a backbone stored under
    another top-level prefix to `model.base_model_prefix`, when the checkpoint's unexpected keys
    hold missing backbone keys under another prefix (the one holding most of them); {} when
    nothing is missing or no prefix holds any (the caller then names the missing keys)."""
    prefix = model.base_model_prefix
    wanted = {k[len(prefix) + 1:] for k in missing_backbone_keys(model, info)}
    if not wanted:
        return {}
    holders = {}
    for key in info["unexpected_keys"]:
        head, _, rest = key.partition(".")
        if rest in wanted:
            holders.setdefault(head, set()).add(rest)
    if not holders:
        return {}
    # the prefix holding most of them (a checkpoint may also lack some: those are named after the reload)
    best = max(holders, key=lambda head: len(holders[head]))
    return {rf"^{re.escape(best)}\.": f"{prefix}."}


def load_fine_tuned(model_dir, kind: str) -> PreTrainedModel:
    """A run's saved, fully fine-tuned task model (its `model/` folder), in float32; RuntimeError
    naming any weight the folder lacks (see `load_checkpoint`)."""
    return load_checkpoint(task_model_class(kind), str(model_dir), str(model_dir), head_may_be_new=False,
                           dtype=torch.float32)


def layer_names(num_hidden_layers: int) -> list[str]:
    """Names of the hidden-state outputs: embeddings, then each block."""
    return ["embeddings"] + [f"block_{i}" for i in range(num_hidden_layers)]


