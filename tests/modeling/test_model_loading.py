"""Task models load their backbone from the checkpoint, whatever prefix the checkpoint stores it
under (issue: SQuAD v2 on causal-LM checkpoints trained a random backbone), and the fine-tuning
job's runtime guard fails a run whose step-0 snapshot is not the base model's representation."""

import json

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from ftdrift.core.similarity import linear_cka
from ftdrift.core.store import SnapshotStore, write_base
from ftdrift.modeling import models
from ftdrift.representations.base_check import BaseModelMismatch, check_step0
from ftdrift.study import config as ftconfig

CATALOG = ftconfig.load_catalog(ftconfig.CONFIG_DIR / "tasks.yaml")
# tiny decoders of the study model's kind, saved as *ForCausalLM; the extractive-QA class of each
# (where transformers has one) keeps its backbone under another prefix than the checkpoint
DECODERS = {
    "llama": dict(num_key_value_heads=2),  # GQA, as Llama-2/3
    "qwen2": dict(num_key_value_heads=2),
    "mistral": dict(num_key_value_heads=2),
    "qwen3": dict(num_key_value_heads=2, head_dim=8),
    "qwen3_moe": dict(num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=16, decoder_sparse_step=1),
    "gemma2": dict(num_key_value_heads=2, head_dim=8),  # no QA class: classification only
}
NO_QA_CLASS = {"gemma2"}


def tokenizer(folder):
    from tokenizers import Tokenizer, models as tmodels, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>"] + [chr(c) for c in range(97, 123)])}
    tok = Tokenizer(tmodels.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")
    fast.save_pretrained(folder)
    return fast


def causal_checkpoint(folder, model_type: str) -> dict[str, torch.Tensor]:
    """Save a tiny random `model_type` as *ForCausalLM; returns its backbone weights by name
    relative to the backbone (the independent reference)."""
    config = AutoConfig.for_model(model_type, vocab_size=29, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                                  pad_token_id=2, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                                  **DECODERS[model_type])
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(config)
    lm.save_pretrained(folder)
    tokenizer(folder)
    return {k: v.clone() for k, v in lm.get_decoder().state_dict().items()}


def backbone_state(model) -> dict[str, torch.Tensor]:
    return getattr(model, model.base_model_prefix).state_dict()


@pytest.mark.parametrize("model_type", sorted(DECODERS))
def test_every_backbone_weight_comes_from_a_causal_lm_checkpoint(tmp_path, model_type):
    expected = causal_checkpoint(tmp_path, model_type)
    cfg = {"name_or_path": str(tmp_path), "family": "llama"}
    tok = models.load_tokenizer(cfg)
    kinds = [("classification", 2)] + ([] if model_type in NO_QA_CLASS else [("extractive_qa", None)])
    for kind, num_labels in kinds:
        model = models.load_model(cfg, kind, num_labels, tok)
        got = backbone_state(model)
        assert sorted(got) == sorted(expected), kind
        for name, value in expected.items():
            assert torch.equal(got[name], value), (kind, name)


def test_a_backbone_weight_missing_from_the_checkpoint_fails_naming_it(tmp_path):
    causal_checkpoint(tmp_path, "llama")
    weights = load_file(tmp_path / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    cfg = {"name_or_path": str(tmp_path), "family": "llama"}
    tok = models.load_tokenizer(cfg)
    for kind, num_labels in (("classification", 2), ("extractive_qa", None)):
        with pytest.raises(RuntimeError, match=r"layers\.1\.mlp\.up_proj\.weight") as err:
            models.load_model(cfg, kind, num_labels, tok)
        assert str(tmp_path) in str(err.value)


def store_pair(tmp_path, base: dict[str, np.ndarray], step0: dict[str, np.ndarray]):
    attrs = {"model": "m", "poolings": sorted(base), "probe_ids": [f"p{i}" for i in range(base["mean"].shape[1])],
             "layer_names": ["embeddings"] + [f"block_{i}" for i in range(base["mean"].shape[0] - 1)]}
    write_base(tmp_path / "base.zarr", base, attrs)
    store = SnapshotStore(tmp_path / "run.zarr", attrs=attrs)
    store.append(0, step0)
    return tmp_path / "base.zarr", store


def test_the_guard_names_the_first_layer_that_differs(tmp_path):
    rng = np.random.default_rng(0)
    base = {p: rng.normal(size=(3, 12, 8)).astype(np.float16) for p in ("mean", "last")}
    base_path, store = store_pair(tmp_path / "same", base, base)
    (tmp_path / "same").mkdir(exist_ok=True)
    check_step0(base_path, store, "m")  # identical: passes
    moved = {p: v.copy() for p, v in base.items()}
    moved["last"][2] = rng.normal(size=moved["last"][2].shape)  # block_1, 'last' pooling only
    base_path, store = store_pair(tmp_path / "moved", base, moved)
    with pytest.raises(BaseModelMismatch, match=r"model 'm'.*layer 'block_1'.*last pooling"):
        check_step0(base_path, store, "m")


def test_the_guard_allows_bf16_rounding_across_machines_but_not_in_fp32(tmp_path):
    """bf16 stores from two GPU models differ by rounding that grows with depth (1 - CKA ~1e-5):
    allowed in bf16, not in fp32, where the same forward pass agrees to float rounding."""
    rng = np.random.default_rng(1)
    base = {"mean": rng.normal(size=(3, 40, 16)).astype(np.float32)}
    noisy = {"mean": base["mean"] + rng.normal(scale=1e-2, size=base["mean"].shape).astype(np.float32)}
    cka = 1 - min(linear_cka(base["mean"][i].astype(np.float64), noisy["mean"][i].astype(np.float64))
                  for i in range(3))
    assert 1e-6 < cka < 1e-3
    for precision, passes in (("bf16", True), ("fp32", False)):
        folder = tmp_path / precision
        folder.mkdir()
        base_path, store = store_pair(folder, base, noisy)
        for path in (base_path, store.path):  # both taken in `precision`
            group = zarr.open_group(str(path), mode="r+")
            group.attrs["precision"] = precision
        if passes:
            check_step0(base_path, SnapshotStore(store.path, mode="r"), "m")
        else:
            with pytest.raises(BaseModelMismatch):
                check_step0(base_path, SnapshotStore(store.path, mode="r"), "m")


def test_a_job_whose_model_is_not_the_base_model_fails_before_training(tiny, tmp_path):
    """The finetune job with a base store of another model (as a backbone that did not load would
    give): BaseModelMismatch before the first update, no outputs."""
    from ftdrift.representations.base import base_representations

    workdir, cfg, data = tiny
    other = tmp_path / "other"
    config = json.loads((__import__("pathlib").Path(cfg["model"]["name_or_path"]) / "config.json").read_text())
    config.pop("architectures", None)
    torch.manual_seed(123)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(**config)).save_pretrained(other)
    models.load_tokenizer(cfg["model"]).save_pretrained(other)
    kwargs = tiny.run_kwargs(tmp_path / "run", task="squad_v2", max_steps=2)
    base_representations(probe_path=workdir / "prepared" / "squad_v2" / "probe.jsonl", store_path=tmp_path / "b.zarr",
                         model_cfg={**cfg["model"], "name_or_path": str(other)}, task_def=CATALOG["squad_v2"],
                         data_settings=kwargs["settings"]["data"], rep_settings=kwargs["settings"]["representations"])
    with pytest.raises(BaseModelMismatch, match="layer 'embeddings'"):
        finetune_with_base(kwargs, tmp_path / "b.zarr")
    assert not (tmp_path / "run" / "metrics.json").exists()
    # the right base store: the same job passes the guard (squad_v2 on a causal-LM checkpoint)
    base_representations(probe_path=workdir / "prepared" / "squad_v2" / "probe.jsonl", store_path=tmp_path / "r.zarr",
                         model_cfg=cfg["model"], task_def=CATALOG["squad_v2"],
                         data_settings=kwargs["settings"]["data"], rep_settings=kwargs["settings"]["representations"])
    result = finetune_with_base(tiny.run_kwargs(tmp_path / "ok", task="squad_v2", max_steps=2), tmp_path / "r.zarr")
    assert result["meta"]["steps"] == 2


def finetune_with_base(kwargs, base_store):
    from ftdrift.training.recipe import finetune

    return finetune(**kwargs, base_store=base_store)


@pytest.mark.parametrize("kind, num_labels", [("classification", 2), ("extractive_qa", None)])
def test_a_saved_task_model_reloads_with_every_weight(tmp_path, kind, num_labels):
    """transformers writes a model loaded through key_mapping back under the checkpoint's prefix
    (`model.`): the saved fine-tuned model must reload with its trained backbone and head."""
    causal_checkpoint(tmp_path / "base", "llama")
    cfg = {"name_or_path": str(tmp_path / "base"), "family": "llama"}
    model = models.load_model(cfg, kind, num_labels, models.load_tokenizer(cfg))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01)  # "trained": differs from the base checkpoint everywhere
    model.save_pretrained(tmp_path / "run")
    reloaded = models.load_fine_tuned(tmp_path / "run", kind)
    expected, got = model.state_dict(), reloaded.state_dict()
    assert sorted(expected) == sorted(got)
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
