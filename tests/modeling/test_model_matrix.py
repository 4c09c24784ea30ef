"""Every supported model type through the real job, with no model.family set: tiny random models
saved in their real checkpoint form (decoders as *ForCausalLM / GPT-2's LMHeadModel, encoders as
*ForMaskedLM), each fine-tuned fully and with LoRA (the `qv` preset: fused q/k/v projections
included) for one step on SST-2 and, where transformers has a QA class, SQuAD v2. Each run starts
at the base model (step-0 CKA 1 against the base store, the job's own guard and by hand), passes
the checkpoint validator (reload, and for LoRA the merge) and yields weight-analysis rows for the
matrices it changed; GPT-2's Conv1D updates are checked against B·A and the saved weights, read here.
A task without a class for the type is refused at load, naming it (so are encoder-decoder and
multimodal checkpoints: tests/modeling/test_supported_models.py)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

from ftdrift.analysis import lm_loss
from ftdrift.analysis.checkpoints import validate_run
from ftdrift.analysis.weights import analyse_run
from ftdrift.data.tasks import prepare_task
from ftdrift.modeling import checkpoint
from ftdrift.representations.base import base_representations
from ftdrift.study import config as ftconfig
from ftdrift.study import families, resources
from ftdrift.study.methods import Method
from ftdrift.testing import TINY_CONFIG, make_tiny_workdir
from ftdrift.training.recipe import RunOutputs, finetune

TASKS = ("sst2", "squad_v2")
SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=2)
# (model type, checkpoint class, extra config, has a QA class); the tokenizer's ids: <unk> 0, <s> 1, </s> 2
MATRIX = {
    "llama": (AutoModelForCausalLM, dict(num_key_value_heads=2), True),  # GQA
    "qwen2": (AutoModelForCausalLM, dict(num_key_value_heads=2), True),
    "mistral": (AutoModelForCausalLM, dict(num_key_value_heads=2), True),
    "gemma2": (AutoModelForCausalLM, dict(num_key_value_heads=2, head_dim=8), False),
    "phi3": (AutoModelForCausalLM, dict(num_key_value_heads=4), False),  # fused qkv_proj, gate_up_proj
    "gpt2": (AutoModelForCausalLM, dict(n_inner=64), True),  # Conv1D, fused c_attn
    "gpt_neox": (AutoModelForCausalLM, dict(), True),  # fused query_key_value
    "opt": (AutoModelForCausalLM, dict(ffn_dim=64, word_embed_proj_dim=32), True),
    "qwen3_moe": (AutoModelForCausalLM, dict(num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2,
                                             moe_intermediate_size=16, decoder_sparse_step=1), True),
    "roberta": (AutoModelForMaskedLM, dict(type_vocab_size=2), True),
    "deberta-v2": (AutoModelForMaskedLM, dict(), True),  # tokenizer: a SentencePiece spm.model only
    "modernbert": (AutoModelForMaskedLM, dict(cls_token_id=1, sep_token_id=2, global_attn_every_n_layers=1),
                   True),  # fused Wqkv
}
LAYOUTS = {"llama": "llama", "qwen2": "llama", "mistral": "llama", "gemma2": "llama", "roberta": "bert"}
DECODERS = {"llama", "qwen2", "mistral", "gemma2", "phi3", "gpt2", "gpt_neox", "opt", "qwen3_moe"}


# -- model.family auto: read from config.json without torch -------------------------------------------

def test_transformers_tables_read_from_source_equal_the_imported_ones():
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    assert families.mapping_names("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES") == dict(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    assert families.mapping_names("MODEL_FOR_MASKED_LM_MAPPING_NAMES") == dict(MODEL_FOR_MASKED_LM_MAPPING_NAMES)


@pytest.mark.parametrize("config, expected", [
    ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "causal-lm"),
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "causal-lm"),
    ({"model_type": "llama", "architectures": ["LlamaModel"]}, "decoder"),  # no head: no LM loss
    ({"model_type": "opt"}, "decoder"),  # architectures not recorded: no head assumed
    ({"model_type": "bert", "architectures": ["BertForMaskedLM"]}, "encoder"),
    ({"model_type": "roberta", "architectures": ["RobertaModel"]}, "encoder"),
    ({"model_type": "bert", "is_decoder": True, "architectures": ["BertLMHeadModel"]}, "causal-lm"),
    ({"model_type": "deberta-v2"}, "encoder"),
    ({"model_type": "modernbert", "architectures": ["ModernBertForMaskedLM"]}, "encoder"),
])
def test_the_family_follows_the_model_type_and_architectures(config, expected):
    assert families.family_of(config) == expected


def test_an_explicit_family_is_kept_and_auto_without_the_checkpoint_names_what_to_do(tmp_path, monkeypatch):
    assert families.family({"name_or_path": "nowhere", "family": "llama"}) == families.FAMILIES["llama"]
    assert families.family("bert").poolings == families.family("encoder").poolings == ("mean",)
    with pytest.raises(ValueError, match="'auto' is read from the checkpoint at config load"):
        families.family("auto")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network: the file is not at hand
    raw = json.loads(json.dumps(TINY_CONFIG))
    raw.update(tasks=["sst2"], task_catalog=str(ftconfig.CONFIG_DIR / "tasks.yaml"),
               model={"name_or_path": "someone/not-downloaded"})
    with pytest.raises(ftconfig.ConfigError, match=r"'model.family': 'auto' reads the checkpoint's config.json, "
                                                   r"which is not at hand for 'someone/not-downloaded'.*set "
                                                   r"model.family \(encoder, decoder, causal-lm\)"):
        ftconfig.resolve(raw)
    assert ftconfig.resolve({**raw, "model": {**raw["model"], "family": "decoder"}})["model"]["family"] == "decoder"


def test_auto_resolves_at_load_without_torch(tmp_path):
    """What Snakemake's parse runs (config, family, supported check, resources) reads config.json
    and transformers' source only: no torch, no transformers import."""
    import subprocess
    import sys

    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps(
        {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_positions": 1024}))
    raw = {**json.loads(json.dumps(TINY_CONFIG)), "tasks": ["sst2", "squad_v2"],
           "model": {"name_or_path": str(tmp_path / "gpt2")}, "task_catalog": str(ftconfig.CONFIG_DIR / "tasks.yaml")}
    code = ("import json, sys\n"
            "from ftdrift.study import config as c, families, resources\n"
            "from ftdrift.modeling import checkpoint\n"
            f"cfg = c.resolve(json.loads({json.dumps(raw)!r}))\n"
            "checkpoint.check_model(cfg['model'], c.max_lengths(cfg), c.task_kinds(cfg))\n"
            "resources.finetune_job(cfg, 'sst2', 'lora', 4)\n"
            "assert families.family(cfg['model']['family']).causal_lm, cfg['model']\n"
            "assert not {'torch', 'transformers'} & set(sys.modules), 'imported at load'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_sentencepiece_only_tokenizer_without_its_packages_is_refused_naming_them(tmp_path, monkeypatch):
    """Without sentencepiece transformers 5.24 reads spm.model as a tiktoken file and asks for
    tiktoken; the study names the packages it needs instead."""
    from ftdrift.modeling import models

    folder = tmp_path / "deberta"
    folder.mkdir()
    spm_tokenizer(folder, tmp_path, texts=["the film is good", "the plot is dull"] * 50)
    (folder / "config.json").write_text(json.dumps({"model_type": "deberta-v2"}))
    assert models.load_tokenizer({"name_or_path": str(folder), "family": "encoder"}).is_fast
    monkeypatch.setitem(__import__("sys").modules, "sentencepiece", None)  # as if not installed
    with pytest.raises(ValueError, match=r"SentencePiece model without tokenizer.json; reading it needs the "
                                         r"packages sentencepiece and a protobuf .*ModuleNotFoundError"):
        models.load_tokenizer({"name_or_path": str(folder), "family": "encoder"})


# -- every type through the job --------------------------------------------------------------------

@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """The tiny task data, prepared once, and a texts file for the SentencePiece tokenizer."""
    workdir = make_tiny_workdir(tmp_path_factory.mktemp("matrix"))
    cfg = ftconfig.resolve(ftconfig.load_yaml(workdir / "tiny.yaml"))
    settings = {}
    for task in TASKS:
        settings[task] = ftconfig.task_settings(cfg, task)
        prepare_task(task, cfg["task_defs"][task], Path(cfg["data_dir"]), settings[task]["data"],
                     workdir / "prepared" / task)
    return workdir, settings


def spm_tokenizer(folder: Path, workdir: Path, texts: list[str] | None = None) -> int:
    """A DeBERTa-v3-style tokenizer: only spm.model (SentencePiece, trained on `texts`, else the
    fixture's) and tokenizer_config.json; returns the vocabulary size a model needs."""
    import sentencepiece as spm

    if texts is None:
        texts = [line for p in sorted((workdir / "data").rglob("*.tsv")) for line in p.read_text().splitlines()]
        texts += [json.dumps(json.loads(p.read_text())) for p in sorted((workdir / "data").rglob("*.json"))]
    (folder / "texts.txt").write_text("\n".join(texts))
    spm.SentencePieceTrainer.train(input=str(folder / "texts.txt"), model_prefix=str(folder / "spm"),
                                   vocab_size=120, pad_id=0, unk_id=3, bos_id=1, eos_id=2, hard_vocab_limit=False,
                                   user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"], num_threads=1,
                                   minloglevel=2)
    (folder / "texts.txt").unlink()
    (folder / "spm.vocab").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "DebertaV2Tokenizer", "bos_token": "[CLS]", "eos_token": "[SEP]", "cls_token": "[CLS]",
         "sep_token": "[SEP]", "unk_token": "[UNK]", "pad_token": "[PAD]", "mask_token": "[MASK]",
         "do_lower_case": False, "model_max_length": 128}))
    return 128


def save_checkpoint(folder: Path, model_type: str, workdir: Path) -> None:
    """A tiny random `model_type` in its checkpoint form, with a tokenizer that works offline."""
    folder.mkdir(parents=True)
    cls, extra, _ = MATRIX[model_type]
    if model_type == "deberta-v2":
        vocab = spm_tokenizer(folder, workdir)
    else:
        # the fixture's byte-level BPE; transformers 5.24 loads it as the model type's tokenizer class,
        # which may add special tokens (Qwen2's <|endoftext|>): the vocabulary leaves room for them
        tokenizer = workdir / "tiny-llama"
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tokenizer / name, folder / name)
        vocab = json.loads((tokenizer / "config.json").read_text())["vocab_size"] + 8
    config = AutoConfig.for_model(model_type, vocab_size=vocab, **{**SHAPE, **extra})
    if model_type == "deberta-v2":
        config.pad_token_id = 0
    torch.manual_seed(0)
    cls.from_config(config).save_pretrained(folder)


@pytest.fixture(scope="module")
def checkpoints(fixtures, tmp_path_factory):
    workdir, _ = fixtures
    root = tmp_path_factory.mktemp("checkpoints")
    made = {}

    def get(model_type: str) -> Path:
        if model_type not in made:
            save_checkpoint(root / model_type, model_type, workdir)
            made[model_type] = root / model_type
        return made[model_type]

    return get


def resolved_model(folder: Path, workdir: Path, tasks) -> dict:
    """The tiny config with `tasks` on a checkpoint named by its folder only (model.family auto),
    resolved and checked as the workflow does at load."""
    raw = json.loads(json.dumps(TINY_CONFIG))
    raw.update(tasks=list(tasks), data_dir=str(workdir / "data"), model={"name_or_path": str(folder)},
               task_catalog=str(ftconfig.CONFIG_DIR / "tasks.yaml"))
    config = ftconfig.resolve(raw)
    checkpoint.check_model(config["model"], ftconfig.max_lengths(config), ftconfig.task_kinds(config))
    return config


def cases() -> list:
    return [pytest.param(model_type, task, id=f"{model_type}-{task}")
            for model_type, (_, _, qa) in MATRIX.items() for task in (TASKS if qa else TASKS[:1])]


@pytest.mark.parametrize("model_type, task", cases())
def test_full_and_lora_start_at_the_base_model_validate_and_have_weight_rows(fixtures, checkpoints, tmp_path,
                                                                            hand_linear_cka, model_type, task):
    workdir, settings = fixtures
    folder = checkpoints(model_type)
    config = resolved_model(folder, workdir, [task])
    if not MATRIX[model_type][2]:  # no QA class: SQuAD v2 is refused at load, naming the type
        with pytest.raises(ValueError, match=rf"task squad_v2 needs a transformers extractive_qa class, which "
                                             rf"model type '{model_type}' .* does not have"):
            resolved_model(folder, workdir, ["sst2", "squad_v2"])
    model_cfg = config["model"]
    assert model_cfg["family"] == ("causal-lm" if model_type in DECODERS else "encoder")
    # the parse-time resource estimate knows every type (a generic block where it has no table)
    assert resources.layout_of(config) == LAYOUTS.get(model_type, "generic")
    for method in config["methods"]:
        assert resources.finetune_job(config, task, method, 4)["gpu_mem_gb"] > 0
    if model_type in DECODERS and task == "sst2":  # forgetting's LM loss: the head is in the checkpoint
        lm, why = lm_loss.load_base_lm(model_cfg)
        assert lm is not None, why
    task_def = config["task_defs"][task]
    data = json.loads(json.dumps(settings[task]))
    data["training"].update(max_steps=1, eval_steps=1, save_steps=1, logging_steps=1, warmup_ratio=0.0)
    prepared = workdir / "prepared" / task
    base_representations(probe_path=prepared / "probe.jsonl", store_path=tmp_path / "base.zarr", model_cfg=model_cfg,
                         task_def=task_def, data_settings=data["data"], rep_settings=data["representations"])
    base = zarr.open_group(str(tmp_path / "base.zarr"), mode="r")
    for method in ("full", "lora"):
        out = tmp_path / method
        spec = config["methods"][method]
        result = finetune(run={"task": task, "method": method, "lr": "1e-3", "batch_size": 4, "seed": 1},
                          task_def=task_def, settings=data, model_cfg=model_cfg, method_spec=spec,
                          wandb_cfg={"mode": "disabled", "project": "ftdrift", "entity": None}, data_dir=prepared,
                          work_dir=out / "work", threads=1, base_store=tmp_path / "base.zarr",
                          outputs=RunOutputs(metrics=out / "metrics.json", train_log=out / "train_log.csv",
                                             predictions=out / "predictions.json",
                                             representations=out / "reps.zarr", model=out / "model"))
        assert result["meta"]["steps"] == 1
        run = zarr.open_group(str(out / "reps.zarr"), mode="r")
        assert run["step"][0] == 0
        for pooling in base.attrs["poolings"]:
            for layer in range(base[pooling].shape[0]):
                assert hand_linear_cka(base[pooling][layer], run[pooling][0, layer]) == pytest.approx(1, abs=1e-6)
        method_obj = Method.from_spec(method, spec)
        record = validate_run(model_dir=out / "model", metrics_path=out / "metrics.json",
                              predictions_path=out / "predictions.json", validation_path=prepared / "validation.jsonl",
                              model_cfg=model_cfg, task_def=task_def, method=method_obj, data_settings=data["data"])
        assert record["passed"], record
        rows, summary, _ = analyse_run(model_dir=out / "model", model_cfg=model_cfg, task_def=task_def,
                                       method=method_obj, run=result["meta"]["run"], intruder_ks=(2,),
                                       intruder_epsilons=(0.5,), top_k=2)
        assert len(rows) and (rows["frobenius_norm"] > 0).all()
        if method == "full":  # the experts' fused weights and the router are no linear layers: named as not analysed
            moe = ["mlp.experts.down_proj", "mlp.experts.gate_up_proj", "mlp.gate.weight"]
            assert summary["not_analysed"] == (moe if model_type == "qwen3_moe" else [])
        if method == "lora":
            info = result["meta"]["method_info"]
            assert sorted(set(rows["matrix"])) == info["adapted"] == info["target_modules"]["modules"]
            fused = {"phi3": "qkv_proj", "gpt2": "c_attn", "gpt_neox": "query_key_value", "modernbert": "Wqkv"}
            if model_type in fused:  # q and v cannot be adapted apart from k: the metadata says so
                assert [m.rsplit(".", 1)[-1] for m in info["adapted"]] == [fused[model_type]]
                assert any("fused" in note for note in info["notes"])
            if model_type == "gpt2":
                check_conv1d_delta(out / "model", rows, method_obj, model_cfg, task_def)
        else:  # every block matrix changed (GPT-2's Conv1D ones included)
            assert len(rows) == rows["layer"].nunique() * len(set(rows["matrix"])) >= 2 * 4
            if model_type == "gpt2":
                check_full_conv1d_delta(folder, out / "model", method_obj, model_cfg, task_def)


def check_conv1d_delta(model_dir: Path, rows, method: Method, model_cfg: dict, task_def: dict) -> None:
    """GPT-2's c_attn is a Conv1D ([in, out] weights; peft's fan_in_fan_out): ΔW must be the
    adapter's scaling · B·A as an [out, in] matrix, computed here from the saved tensors."""
    from ftdrift.analysis import weights

    adapter = load_file(model_dir / "adapter_model.safetensors")
    config = json.loads((model_dir / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is True
    scaling = config["lora_alpha"] / config["r"]
    found = weights.updates(model_dir, method, model_cfg, task_def)
    for name, layer, matrix, w_pre, delta in found["matrices"]:
        a = adapter[f"base_model.model.{name}.lora_A.weight"].double()
        b = adapter[f"base_model.model.{name}.lora_B.weight"].double()
        expected = (scaling * b @ a).numpy()  # [out, in]: peft's lora_A is [r, in], lora_B [out, r]
        assert delta.shape == expected.shape == (96, 32)
        np.testing.assert_allclose(delta, expected, atol=1e-12)
        row = rows[rows["module"] == name].iloc[0]
        assert row["frobenius_norm"] == pytest.approx(np.linalg.norm(expected), rel=1e-9)


def check_full_conv1d_delta(base_dir: Path, model_dir: Path, method: Method, model_cfg: dict, task_def: dict) -> None:
    """Full fine-tuning of GPT-2: ΔW of each Conv1D is the saved weight minus the checkpoint's,
    transposed to [out, in], read here from the two safetensors files."""
    from ftdrift.analysis import weights

    base, tuned = load_file(base_dir / "model.safetensors"), load_file(model_dir / "model.safetensors")
    found = weights.updates(model_dir, method, model_cfg, task_def)
    assert {m for _, _, m, _, _ in found["matrices"]} == {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}
    for name, _, _, w_pre, delta in found["matrices"]:
        before, after = base[f"{name}.weight"].double(), tuned[f"{name}.weight"].double()
        np.testing.assert_array_equal(w_pre, before.T.numpy())
        np.testing.assert_allclose(delta, (after - before).T.numpy(), atol=1e-12)
