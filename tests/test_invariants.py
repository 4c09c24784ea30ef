"""Invariants of the model set-up that would catch a library convention going wrong, for both
families (BERT-style with token types: the embedded all-MiniLM-L6-v2; Llama: a tiny random one)
and both task kinds:

* a LoRA model at initialisation (B = 0) *is* the base task model: same logits, same hidden states;
* the adapter reloaded from disk is the trained one, and merging it changes nothing (to 1e-4);
* padding and batch composition change neither the logits nor the loss;
* the loss is the per-example cross-entropy averaged over the batch, as written out here.
"""

import numpy as np
import pytest
import torch
from helpers import REPO, write_tiny_llama
from peft import LoraConfig, TaskType, get_peft_model

from ftdrift.core import loss
from ftdrift.modeling import lora, models
from ftdrift.study import families
from ftdrift.study.config import load_catalog
from ftdrift.training import recipe as train

CATALOG = load_catalog(REPO / "config" / "tasks.yaml")
TASKS = {"classification": CATALOG["mrpc"], "extractive_qa": CATALOG["squad_v2"]}
LORA = {"r": 4, "alpha": 8, "dropout": 0.05, "target_modules": None}
QUESTIONS = ["Who built the mill?", "When was the mill on the river built?", "What is it now?"]
CONTEXTS = ["The mill on the river was built in 1820 by a local family.",
            "Built in 1820, the mill later became a small museum about the valley and its people.",
            "A museum."]


@pytest.fixture(scope="module")
def model_cfgs(tmp_path_factory):
    llama = write_tiny_llama(tmp_path_factory.mktemp("llama") / "tiny", QUESTIONS * 4 + CONTEXTS * 4)
    return {"bert": {"name_or_path": "embedded:all-MiniLM-L6-v2", "family": "bert"},
            "llama": {"name_or_path": str(llama), "family": "llama"}}


def pair_batch(model_cfg):
    tokenizer = models.load_tokenizer(model_cfg)
    return dict(tokenizer(QUESTIONS, CONTEXTS, padding=True, return_tensors="pt"))


def outputs(model, batch):
    model.eval()
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    heads = [out[k] for k in ("logits", "start_logits", "end_logits") if out.get(k) is not None]
    return heads, list(out.hidden_states)


def max_diff(xs, ys):
    return max(float((x - y).abs().max()) for x, y in zip(xs, ys, strict=True))


@pytest.mark.parametrize("kind", ["classification", "extractive_qa"])
@pytest.mark.parametrize("family", ["bert", "llama"])
def test_lora_at_initialisation_is_the_base_task_model(model_cfgs, family, kind):
    cfg = model_cfgs[family]
    batch = pair_batch(cfg)
    if family == "bert":
        assert batch["token_type_ids"].any()  # the second segment is marked: token types matter here
    base, _, _ = train.build_model(cfg, TASKS[kind], "full", None, seed=7)
    adapted, targets, _ = train.build_model(cfg, TASKS[kind], "lora", LORA, seed=7)
    assert targets == list(families.family(family).lora_target_modules)
    assert any("lora_B" in name for name, _ in adapted.named_parameters())
    base_heads, base_hidden = outputs(base, batch)
    lora_heads, lora_hidden = outputs(adapted, batch)
    assert len(base_hidden) == len(lora_hidden) == base.config.num_hidden_layers + 1
    assert max_diff(base_heads, lora_heads) <= 1e-6
    assert max_diff(base_hidden, lora_hidden) <= 1e-6


def test_the_guard_catches_a_wrapper_that_drops_token_types(model_cfgs):
    """peft 0.21.2's question-answering wrapper drops token_type_ids: the fault ftdrift had."""
    cfg = model_cfgs["bert"]
    tokenizer = models.load_tokenizer(cfg)
    wrapped = get_peft_model(models.load_model(cfg, "extractive_qa", None, tokenizer),
                             LoraConfig(task_type=TaskType.QUESTION_ANS, r=4, lora_alpha=8, target_modules=["query"]))
    with pytest.raises(RuntimeError, match="changes the model's inputs: its start_logits differs"):
        lora.check_passes_inputs(wrapped, pair_batch(cfg))
    adapted, _, _ = train.build_model(cfg, TASKS["extractive_qa"], "lora", LORA, seed=0)
    lora.check_passes_inputs(adapted, pair_batch(cfg))  # ftdrift's wrapper passes everything on


@pytest.mark.parametrize("kind", ["classification", "extractive_qa"])
@pytest.mark.parametrize("family", ["bert", "llama"])
def test_reloaded_and_merged_adapter_equal_the_trained_one(model_cfgs, family, kind, tmp_path):
    cfg = model_cfgs[family]
    batch = pair_batch(cfg)
    adapted, _, _ = train.build_model(cfg, TASKS[kind], "lora", LORA, seed=3)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter and head
        for name, param in adapted.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.2)
    trained, _ = outputs(adapted, batch)
    adapted.save_pretrained(tmp_path)
    tokenizer = models.load_tokenizer(cfg)
    torch.manual_seed(99)  # another random head in the base: the saved head must replace it
    num_labels = 2 if kind == "classification" else None
    reloaded = lora.load(models.load_model(cfg, kind, num_labels, tokenizer), tmp_path)
    again, _ = outputs(reloaded, batch)
    assert max_diff(trained, again) == 0.0
    merged_model = reloaded.merge_and_unload()
    assert type(merged_model).__name__.endswith("ForSequenceClassification" if num_labels else "ForQuestionAnswering")
    merged, _ = outputs(merged_model, batch)
    assert max_diff(trained, merged) <= 1e-4


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_padding_changes_neither_logits_nor_loss(model_cfgs, family):
    cfg = model_cfgs[family]
    tokenizer = models.load_tokenizer(cfg)
    for kind in ("classification", "extractive_qa"):
        model, _, _ = train.build_model(cfg, TASKS[kind], "full", None, seed=1)
        model.eval()
        padded = dict(tokenizer(QUESTIONS, CONTEXTS, padding=True, return_tensors="pt"))
        if kind == "classification":
            labels = {"labels": torch.tensor([0, 1, 1])}
        else:
            labels = {"start_positions": torch.tensor([0, 3, 1]), "end_positions": torch.tensor([0, 5, 2])}
        with torch.no_grad():
            together = loss.per_example(model(**padded), labels, padded["attention_mask"])
            alone = []
            for i in range(len(QUESTIONS)):
                single = dict(tokenizer(QUESTIONS[i], CONTEXTS[i], return_tensors="pt"))
                out = model(**single)
                if kind == "classification":
                    assert torch.allclose(out.logits[0], model(**padded).logits[i], atol=1e-5)
                alone.append(loss.per_example(out, {k: v[i:i + 1] for k, v in labels.items()},
                                              single["attention_mask"]))
        assert torch.allclose(together, torch.cat(alone), atol=1e-5), (kind, together, alone)


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loss_is_the_per_example_mean_written_out():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 3))
    labels = np.array([0, 2, 1, 1, 0])
    expected = -log_softmax(logits)[np.arange(5), labels]
    out = {"logits": torch.tensor(logits)}
    got = loss.per_example(out, {"labels": torch.tensor(labels)})
    assert np.allclose(got.numpy(), expected, atol=1e-6)
    # over an effective batch of 8 examples this micro-batch of 5 contributes its sum / 8
    assert float(loss.batch_loss(out, {"labels": torch.tensor(labels)}, None, 8)) == pytest.approx(
        expected.sum() / 8, abs=1e-6)

    start, end = rng.normal(size=(2, 6)), rng.normal(size=(2, 6))
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    s_pos, e_pos = np.array([2, 0]), np.array([4, 3])
    qa_out = {"start_logits": torch.tensor(start), "end_logits": torch.tensor(end)}
    qa_labels = {"start_positions": torch.tensor(s_pos), "end_positions": torch.tensor(e_pos)}
    hand = []
    for i in range(2):
        real = mask[i] == 1  # padding is not a position an answer can start or end at
        hand.append(-(log_softmax(start[i][real])[s_pos[i]] + log_softmax(end[i][real])[e_pos[i]]) / 2)
    got = loss.per_example(qa_out, qa_labels, torch.tensor(mask))
    assert np.allclose(got.numpy(), hand, atol=1e-6)
