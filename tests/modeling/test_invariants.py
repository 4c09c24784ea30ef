"""Invariants of the model set-up that would catch a library convention going wrong, for both
families (BERT-style with token types: the embedded all-MiniLM-L6-v2; Llama: a tiny random one)
and both task kinds:

* for every adapter method (LoRA, rsLoRA, DoRA, PiSSA, IA3) the adapter saved as training saves it and
  reloaded as the analyses load it is the trained one, and merging it changes nothing (to 1e-4);
  (initialisation = base model and activation checkpointing per method: tests/modeling/test_methods.py)
* padding and batch composition change neither the logits nor the loss;
* the loss is the per-example cross-entropy averaged over the batch, as written out here.
"""

import numpy as np
import pytest
import torch
from peft import LoraConfig, TaskType, get_peft_model

from ftdrift.analysis import tuned
from ftdrift.core import loss
from ftdrift.modeling import methods, models
from ftdrift.study.config import load_catalog
from ftdrift.study.methods import Method
from ftdrift.testing import REPO, write_tiny_llama
from ftdrift.training import recipe as train

CATALOG = load_catalog(REPO / "config" / "tasks.yaml")
TASKS = {"classification": CATALOG["mrpc"], "extractive_qa": CATALOG["squad_v2"]}
# the methods of issue 21's invariants (initialisation = base model: tests/modeling/test_methods.py)
PEFT = {
    "lora": {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": "qv"},
    "rslora": {"peft_type": "LORA", "r": 4, "lora_alpha": 4, "use_rslora": True, "target_modules": "all-linear"},
    "dora": {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": True, "target_modules": "qv"},
    "pissa": {"peft_type": "LORA", "r": 4, "lora_alpha": 4, "init_lora_weights": "pissa", "target_modules": "qv"},
    "ia3": {"peft_type": "IA3"},
}
METHODS = {"full": Method("full"), **{name: Method(name, spec) for name, spec in PEFT.items()}}
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


def test_the_guard_catches_a_wrapper_that_drops_token_types(model_cfgs):
    """peft 0.21.2's question-answering wrapper drops token_type_ids: the fault ftdrift had."""
    cfg = model_cfgs["bert"]
    tokenizer = models.load_tokenizer(cfg)
    wrapped = get_peft_model(models.load_model(cfg, "extractive_qa", None, tokenizer),
                             LoraConfig(task_type=TaskType.QUESTION_ANS, r=4, lora_alpha=8, target_modules=["query"]))
    with pytest.raises(RuntimeError, match="changes the model's inputs: its start_logits differs"):
        methods.check_passes_inputs(wrapped, pair_batch(cfg))
    adapted, _ = train.build_model(cfg, TASKS["extractive_qa"], METHODS["lora"], seed=0)
    methods.check_passes_inputs(adapted, pair_batch(cfg))  # ftdrift's wrapper passes everything on


def trained_looking(model, seed: int = 0) -> None:
    """Move every trainable parameter (adapter and head) by seeded noise, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
            param.add_(torch.randn(param.shape, generator=generator) * 0.2)


@pytest.mark.parametrize("family, kind, name", [("llama", "classification", m) for m in PEFT]
                         + [("bert", "extractive_qa", "lora"), ("bert", "classification", "ia3")])
def test_reloaded_and_merged_adapter_equal_the_trained_one(model_cfgs, family, kind, name, tmp_path):
    """Saved as training saves it (methods.save_adapter), reloaded as every analysis loads it
    (ftdrift.analysis.tuned.load_tuned onto a base with another random head): the trained model's
    outputs exactly; merged (float32): to 1e-4, and a plain task model."""
    cfg, method = model_cfgs[family], METHODS[name]
    batch = pair_batch(cfg)
    adapted, _ = train.build_model(cfg, TASKS[kind], method, seed=3)
    initial = methods.save_initial(adapted, method, tmp_path / "initial")
    trained_looking(adapted)
    trained, trained_hidden = outputs(adapted, batch)
    methods.save_adapter(adapted, method, tmp_path / "adapter", initial=initial)
    torch.manual_seed(99)  # another random head in the base: the saved head must replace it
    reloaded = tuned.load_tuned(tmp_path / "adapter", method, cfg, TASKS[kind])
    again, again_hidden = outputs(reloaded, batch)
    # PiSSA is saved converted (W + B'A' on the original W, not W_res + BA): equal to float rounding
    exact = 1e-5 if method.mutates_base else 0.0
    assert max_diff(trained, again) <= exact and max_diff(trained_hidden, again_hidden) <= exact
    merged_model = tuned.load_tuned(tmp_path / "adapter", method, cfg, TASKS[kind], merge=True)
    assert type(merged_model).__name__.endswith("ForSequenceClassification" if kind == "classification"
                                                 else "ForQuestionAnswering")
    assert not any(n.endswith(("lora_A.default.weight", "ia3_l.default")) for n, _ in merged_model.named_parameters())
    merged, _ = outputs(merged_model, batch)
    assert max_diff(trained, merged) <= 1e-4


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_padding_changes_neither_logits_nor_loss(model_cfgs, family):
    cfg = model_cfgs[family]
    tokenizer = models.load_tokenizer(cfg)
    for kind in ("classification", "extractive_qa"):
        model, _ = train.build_model(cfg, TASKS[kind], METHODS["full"], seed=1)
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
