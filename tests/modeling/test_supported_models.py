"""Checkpoints the study cannot run are refused before any job, naming the model, its type and why
(check_model runs at parse time: tests/modeling/test_positions.py shows Snakemake stopping on it)."""

import pytest
from transformers import AutoConfig
from transformers.models.auto.modeling_auto import (MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES,
                                                    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)

from ftdrift.modeling.checkpoint import check_supported, task_model_types

BOTH = {"sst2": "classification", "squad_v2": "extractive_qa"}


def config(model_type: str, **kwargs) -> dict:
    return AutoConfig.for_model(model_type, **kwargs).to_dict()


def test_task_classes_read_from_source_equal_transformers_mappings():
    assert task_model_types("classification") == set(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)
    assert task_model_types("extractive_qa") == set(MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES)


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "mistral", "gpt2", "roberta", "bert"])
def test_types_with_both_classes_pass(model_type):
    check_supported(config(model_type), "m", BOTH)


@pytest.mark.parametrize("model_type", ["gemma2", "phi3"])
def test_a_type_without_a_qa_class_is_refused_for_squad_only(model_type):
    check_supported(config(model_type), "m", {"sst2": "classification"})
    with pytest.raises(ValueError, match=rf"task squad_v2 needs a transformers extractive_qa class, which model type "
                                         rf"'{model_type}' \(m\) does not have; drop squad_v2"):
        check_supported(config(model_type), "m", BOTH)


def test_encoder_decoder_and_multimodal_configs_are_refused():
    with pytest.raises(ValueError, match=r"m is an encoder-decoder model \(t5\)"):
        check_supported(config("t5"), "m", {"sst2": "classification"})
    with pytest.raises(ValueError, match=r"m is a multimodal model \(gemma3, its text model in text_config\)"):
        check_supported(config("gemma3"), "m", {"sst2": "classification"})
