"""The method axis (ftdrift.modeling.methods): any peft method, rank and target set as a
peft-adapted task model, checked against independent computations on tiny real models: at
initialisation it computes the base model, merged = unmerged, a saved adapter reloads, activation
checkpointing changes neither the loss nor a gradient, only the adapter and the head train, and the
target presets resolve per family."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from ftdrift.modeling import methods, models, targets
from ftdrift.study import methods as registry

PEFT = {
    "lora": {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": "qv"},
    "rslora_r16": {"peft_type": "LORA", "r": 16, "lora_alpha": 16, "use_rslora": True, "target_modules": "all-linear"},
    "dora_r8": {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_dora": True, "target_modules": "qv"},
    "pissa_r8": {"peft_type": "LORA", "r": 8, "lora_alpha": 8, "init_lora_weights": "pissa", "target_modules": "qv"},
    "ia3": {"peft_type": "IA3"},  # peft's defaults by model type (k, v, down / output.dense)
    "ia3_all": {"peft_type": "IA3", "target_modules": "all-linear"},  # feedforward: the MLP ones
}
METHODS = registry.parse_methods({"full": {}, **{name: {"peft": kwargs} for name, kwargs in PEFT.items()}})
BERT = {"name_or_path": "embedded:all-MiniLM-L6-v2", "family": "bert"}
# (model, kind, method): every method on the Llama classifier, LoRA and IA3 on QA and on BERT
CASES = ([("llama", "classification", m) for m in PEFT] + [("llama", "extractive_qa", m) for m in ("lora", "ia3")]
         + [("bert", kind, m) for kind in ("classification", "extractive_qa") for m in ("lora", "ia3")])
# PiSSA computes W x as W_res x + B0 A0 x with W_res = W - B0 A0 from a float32 SVD: the base
# function to float rounding only. Measured on the tiny Llama: 6e-7 on outputs of magnitude up to
# 2.8 (a few float32 ulps); the bound is the same 1e-5 as for the other methods.
INIT_ATOL = {"pissa_r8": 1e-5}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny random Llama saved as LlamaForCausalLM (the study checkpoint's form) and its config."""
    folder = tmp_path_factory.mktemp("llama")
    config = AutoConfig.for_model("llama", vocab_size=29, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                  pad_token_id=2, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    word_level_tokenizer(folder)
    return {"name_or_path": str(folder), "family": "llama"}


def word_level_tokenizer(folder) -> None:
    """A character-level tokenizer over a-z (as tests/modeling/test_model_loading.py), saved to `folder`."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tmodels
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>"] + [chr(c) for c in range(97, 123)])}
    tok = Tokenizer(tmodels.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="</s>").save_pretrained(folder)


def model_cfg(which: str, llama_cfg: dict) -> dict:
    return llama_cfg if which == "llama" else BERT


def task_model(cfg: dict, kind: str, seed: int = 0):
    """The study's task model (head drawn under `seed`), in eval mode with dropout off."""
    torch.manual_seed(seed)
    model = models.load_model(cfg, kind, 2 if kind == "classification" else None, models.load_tokenizer(cfg))
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model.eval()


def batch(kind: str, vocab: int = 29) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, min(vocab, 29), (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # padding: the attention mask matters
    out = {"input_ids": ids, "attention_mask": mask}
    if kind == "classification":
        out["labels"] = torch.tensor([0, 1, 1])
    else:
        out["start_positions"], out["end_positions"] = torch.tensor([1, 2, 0]), torch.tensor([3, 4, 0])
    return out


@torch.no_grad()
def outputs(model, inputs: dict) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of the logits and every hidden state."""
    out = model(**{k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")}, output_hidden_states=True)
    logits = [(k, out[k]) for k in ("logits", "start_logits", "end_logits") if k in out]
    return logits + [(f"hidden_states[{i}]", h) for i, h in enumerate(out["hidden_states"])]


def max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for (_, x), (_, y) in zip(a, b, strict=True))


@torch.no_grad()
def perturb(model, seed: int = 3, scale: float = 0.1) -> None:
    """Move every trainable parameter (adapter and head) by seeded noise: as a training step would."""
    g = torch.Generator().manual_seed(seed)
    for _, p in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
        p.add_(scale * torch.randn(p.shape, generator=g))


def adapted(cfg: dict, kind: str, name: str, seed: int = 0):
    base = task_model(cfg, kind, seed)
    torch.manual_seed(seed)
    return methods.adapt(base, METHODS[name])


@pytest.mark.parametrize("which, kind, name", CASES)
def test_at_initialisation_the_adapted_model_computes_the_base_model(llama, which, kind, name):
    cfg = model_cfg(which, llama)
    inputs = batch(kind)
    base = task_model(cfg, kind)
    reference = outputs(base, inputs)  # before adapt: PiSSA rewrites the base layers in place
    torch.manual_seed(0)
    model, info = methods.adapt(base, METHODS[name])
    assert isinstance(model, torch.nn.Module) and info["adapted"]
    assert max_diff(outputs(model.eval(), inputs), reference) <= INIT_ATOL.get(name, 1e-5)


@pytest.mark.parametrize("which, kind, name", CASES)
def test_merged_computes_the_unmerged_adapter_after_an_update(llama, which, kind, name):
    cfg = model_cfg(which, llama)
    inputs = batch(kind)
    model, _ = adapted(cfg, kind, name)
    before = outputs(model, inputs)
    perturb(model)
    unmerged = outputs(model, inputs)
    assert max_diff(unmerged, before) > 1e-3  # the update changed the function: the check is not trivial
    merged = methods.merged(model)
    assert not any("lora_" in n or "ia3_" in n for n, _ in merged.named_parameters())
    assert max_diff(outputs(merged, inputs)[:1], unmerged[:1]) <= 1e-4
    assert max_diff(outputs(model, inputs), unmerged) == 0  # the copy was merged, not the model


@pytest.mark.parametrize("which, kind, name", CASES)
def test_a_saved_adapter_reloads_onto_a_fresh_base_model(llama, tmp_path, which, kind, name):
    cfg = model_cfg(which, llama)
    inputs = batch(kind)
    model, _ = adapted(cfg, kind, name)
    initial = methods.save_initial(model, METHODS[name], tmp_path / "init")  # PiSSA only: right after adapt
    assert (initial is not None) == (name == "pissa_r8")
    perturb(model)
    methods.save_adapter(model, METHODS[name], tmp_path / "adapter", initial=initial)
    # another head seed: the trained head must come from the adapter folder
    reloaded = methods.load(task_model(cfg, kind, seed=7), tmp_path / "adapter").eval()
    assert max_diff(outputs(reloaded, inputs), outputs(model, inputs)) <= 1e-5


def test_pissa_saves_a_lora_adapter_for_the_original_base_weights(llama, tmp_path):
    """peft's documented conversion (save_pretrained with path_initial_model_for_weight_conversion)
    gives a plain rank-2r LoRA on the ORIGINAL weights; the trained head is kept (peft drops it)."""
    method, inputs = METHODS["pissa_r8"], batch("classification")
    original = {k: v.clone() for k, v in task_model(llama, "classification").state_dict().items()}
    model, _ = adapted(llama, "classification", "pissa_r8")
    q = model.get_base_model().model.layers[0].self_attn.q_proj
    assert not torch.allclose(q.base_layer.weight, original["model.layers.0.self_attn.q_proj.weight"])  # residual
    initial = methods.save_initial(model, method, tmp_path / "pissa_init")
    perturb(model)
    methods.save_adapter(model, method, tmp_path / "adapter", initial=initial)
    fresh = task_model(llama, "classification", seed=7)
    reloaded = methods.load(fresh, tmp_path / "adapter").eval()
    config = reloaded.peft_config[methods.ADAPTER]
    assert (config.r, config.lora_alpha, config.init_lora_weights) == (16, 16, True)
    base_now = reloaded.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert torch.equal(base_now, original["model.layers.0.self_attn.q_proj.weight"])  # the original W
    assert max_diff(outputs(reloaded, inputs), outputs(model, inputs)) <= 1e-5
    with pytest.raises(ValueError, match="initial adapter"):
        methods.save_adapter(model, method, tmp_path / "no_init")


def step(model, inputs: dict) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of every trainable parameter after one forward/backward in train mode."""
    model.train()
    model.zero_grad(set_to_none=True)
    loss = model(**inputs).loss
    loss.backward()
    return float(loss), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("use_reentrant", [True, False])
@pytest.mark.parametrize("which, name", [("llama", "full"), ("llama", "lora"), ("llama", "rslora_r16"),
                                         ("llama", "dora_r8"), ("llama", "pissa_r8"), ("llama", "ia3"),
                                         ("bert", "lora"), ("bert", "ia3")])
def test_activation_checkpointing_changes_neither_loss_nor_gradients(llama, which, name, use_reentrant):
    """Enabled as transformers' Trainer does (`activation_checkpointing_enable` on the model it is
    given); with reentrant checkpointing and frozen embeddings adapters got no gradient unless the
    embedding output requires grad."""
    cfg, inputs = model_cfg(which, llama), batch("classification")
    plain, _ = adapted(cfg, "classification", name)
    checkpointed, _ = adapted(cfg, "classification", name)
    for model in (plain, checkpointed):
        perturb(model)  # LoRA's B = 0 at init gives A a zero gradient: move off it
    checkpointed.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert targets.task_model(checkpointed).is_gradient_checkpointing
    loss, grads = step(plain, inputs)
    loss_ckpt, grads_ckpt = step(checkpointed, inputs)
    assert loss_ckpt == pytest.approx(loss, rel=1e-6)
    assert sorted(grads_ckpt) == sorted(grads)
    for n, g in grads.items():
        assert g is not None and g.abs().max() > 0, n
        assert grads_ckpt[n] is not None, f"{n}: no gradient under checkpointing"
        torch.testing.assert_close(grads_ckpt[n], g, rtol=1e-5, atol=1e-7, msg=n)


@pytest.mark.parametrize("name", sorted(PEFT))
def test_adapt_makes_the_embedding_output_require_grad(llama, name):
    """Without it, reentrant checkpointing leaves every adapter without a gradient (checked: after
    `disable_input_require_grads` the LoRA and IA3 parameters of the test above get none)."""
    model, _ = adapted(llama, "classification", name)
    embeddings = model.get_base_model().get_input_embeddings()
    assert not embeddings.weight.requires_grad
    assert embeddings(batch("classification")["input_ids"]).requires_grad


@pytest.mark.parametrize("which, kind, name", CASES)
def test_only_the_adapter_and_the_head_train(llama, which, kind, name):
    model, info = adapted(model_cfg(which, llama), kind, name)
    head = targets.head_modules(model.get_base_model())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    adapter = re.compile(r"\.(lora_A|lora_B|lora_magnitude_vector|ia3_l)\.")
    for n in trainable:
        assert adapter.search(n) or any(f".{h}.modules_to_save." in n for h in head), n
    head_params = [n for n, _ in model.named_parameters() if any(f".{h}.modules_to_save." in n for h in head)]
    assert head_params and set(head_params) <= set(trainable)
    assert info["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_the_trainable_count_of_lora_qv_on_llama(llama):
    """r (in + out) per adapted matrix: q 32->32, v 32->16 (2 kv heads of 8), 2 blocks; + the head 32x2."""
    _, info = adapted(llama, "classification", "lora")
    assert info["trainable_params"] == 2 * (8 * (32 + 32) + 8 * (32 + 16)) + 32 * 2
    full, info_full = adapted(llama, "classification", "full")
    assert info_full["trainable_params"] == sum(p.numel() for p in full.parameters())
    assert all(p.requires_grad for p in full.parameters())


def test_presets_resolve_per_family(llama):
    base = task_model(llama, "classification")
    resolved = lambda model, preset: methods.resolve_targets(model, {"peft_type": "LORA", "target_modules": preset})
    kwargs, info = resolved(base, "qv")
    assert kwargs["target_modules"] == ["q_proj", "v_proj"] and not info["notes"]
    assert info["target_modules"]["modules"] == ["self_attn.q_proj", "self_attn.v_proj"]
    assert resolved(base, "mlp")[0]["target_modules"] == ["down_proj", "gate_proj", "up_proj"]
    assert resolved(base, "attention")[0]["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    for kind in ("classification", "extractive_qa"):
        model = task_model(llama, kind)
        head = targets.head_modules(model)[0]
        linear = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        wanted, _ = targets.preset_modules(model, "all-linear")
        assert wanted == {n for n in linear if not n.startswith(head)} and len(wanted) == 14

    bert = task_model(BERT, "classification")
    assert resolved(bert, "qv")[0]["target_modules"] == ["query", "value"]
    mlp = resolved(bert, "mlp")[0]["target_modules"]  # BERT's output.dense also ends its attention's name
    matched = {n for n, _ in bert.named_modules() if n and re.fullmatch(mlp, n)}
    assert matched == {f"bert.encoder.layer.{i}.{m}" for i in range(6) for m in ("intermediate.dense", "output.dense")}
    _, info = resolved(bert, "all-linear")
    assert "classifier" not in info["target_modules"]["modules"] and "bert.pooler.dense" in info["target_modules"]["modules"]


@pytest.mark.parametrize("model_type, fused, extra", [
    ("gpt2", "attn.c_attn", {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64}),
    ("phi3", "self_attn.qkv_proj", {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                    "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 64})])
def test_qv_on_a_fused_projection_adapts_it_and_says_so(model_type, fused, extra):
    config = AutoConfig.for_model(model_type, vocab_size=29, pad_token_id=0, num_labels=2, **extra)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    _, info = methods.resolve_targets(model, {"peft_type": "LORA", "r": 4, "target_modules": "qv"})
    assert info["target_modules"]["modules"] == [fused]
    assert any(fused in note and "k is adapted too" in note for note in info["notes"])
    inputs = {"input_ids": torch.randint(1, 29, (2, 5))}
    reference = model(**inputs).logits
    method = registry.parse_methods({"lora_qv": {"peft": {"peft_type": "LORA", "r": 4, "target_modules": "qv"}}})["lora_qv"]
    peft_model, adapt_info = methods.adapt(model, method)
    assert adapt_info["adapted"] == [fused] and adapt_info["notes"] == info["notes"]
    torch.testing.assert_close(peft_model(**inputs).logits, reference, rtol=0, atol=1e-6)


def test_parse_methods_checks_names_and_peft_keys():
    parsed = registry.parse_methods({"full": {}, "lora": {"peft": {"peft_type": "lora", "r": 4}}})
    assert parsed["full"].is_full and parsed["full"].peft is None
    assert parsed["lora"] == registry.Method("lora", {"peft_type": "LORA", "r": 4}) and not parsed["lora"].is_full
    with pytest.raises(ValueError, match=r"methods\.lora_x.*unknown key 'rank'.*LoraConfig.*lora_alpha"):
        registry.parse_methods({"lora_x": {"peft": {"peft_type": "LORA", "rank": 8}}})
    with pytest.raises(ValueError, match=r"methods\.Bad-Name.*\[a-z0-9_\]\+"):
        registry.parse_methods({"Bad-Name": {}})
    with pytest.raises(ValueError, match=r"methods\.m\.peft\.peft_type.*'LORRA'.*IA3"):
        registry.parse_methods({"m": {"peft": {"peft_type": "LORRA"}}})
    with pytest.raises(ValueError, match=r"methods\.m.*unknown keys \['lr'\]"):
        registry.parse_methods({"m": {"lr": 1e-3}})
    with pytest.raises(ValueError, match=r"methods\.m\.peft\.task_type"):
        registry.parse_methods({"m": {"peft": {"peft_type": "LORA", "task_type": "SEQ_CLS"}}})
    with pytest.raises(ValueError, match=r"methods\.m\.peft\.peft_type.*prompt-learning"):
        registry.parse_methods({"m": {"peft": {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4}}})
