"""A sequence length the model cannot encode stops the workflow before any job, naming the key and
the model's usable limit; RoBERTa-style models lose pad_token_id + 1 positions to their offset."""

import json

import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModel

from ftdrift.modeling.checkpoint import check_max_length, check_model, usable_positions
from ftdrift.study import config as ftconfig
from ftdrift.testing import make_tiny_workdir, run_snakemake


def tiny_roberta(folder, max_position_embeddings=66, pad_token_id=1):
    config = AutoConfig.for_model("roberta", vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, max_position_embeddings=max_position_embeddings,
                                  pad_token_id=pad_token_id)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    return folder


def encodes(model, length: int) -> bool:
    """Whether the real model's forward pass takes `length` tokens (ids away from padding)."""
    try:
        model(input_ids=torch.full((1, length), 5), attention_mask=torch.ones(1, length, dtype=torch.long))
        return True
    except (IndexError, RuntimeError):  # embedding lookup or token-type gather out of range
        return False


def test_usable_positions_are_what_the_model_really_encodes(tmp_path):
    folder = tiny_roberta(tmp_path / "roberta")
    model = AutoModel.from_pretrained(folder).eval()
    config = json.loads((folder / "config.json").read_text())
    limit = usable_positions(config)
    assert limit == 64  # 66 - pad_token_id 1 - 1
    assert encodes(model, limit) and not encodes(model, limit + 1)
    check_max_length(config, 64)
    with pytest.raises(ValueError, match=r"config key 'data.max_length': 65 tokens exceed the 64 positions"):
        check_max_length(config, 65)
    llama = {"model_type": "llama", "max_position_embeddings": 64, "pad_token_id": 2}
    assert usable_positions(llama) == 64  # rotary positions: no offset
    assert usable_positions({"model_type": "llama"}) is None


def test_the_parse_time_check_names_the_task_override(tmp_path):
    folder = tiny_roberta(tmp_path / "roberta")
    cfg = {"name_or_path": str(folder)}
    check_model(cfg, {"data.max_length.classification": 64}, {"sst2": "classification"})
    with pytest.raises(ValueError, match=r"task_overrides.sst2.data.max_length.classification': 65 tokens .* 64"):
        check_model(cfg, {"data.max_length.classification": 64,
                          "task_overrides.sst2.data.max_length.classification": 65}, {"sst2": "classification"})


def test_a_length_too_long_stops_snakemake_before_any_job(tmp_path):
    workdir = make_tiny_workdir(tmp_path)
    raw = yaml.safe_load((workdir / "tiny.yaml").read_text())
    raw["tasks"] = ["sst2"]
    raw["task_overrides"] = {"sst2": {"data": {"max_length": {"classification": 513}}}}
    resolved = ftconfig.resolve(json.loads(json.dumps(raw)))
    assert ftconfig.max_lengths(resolved) == {"task_overrides.sst2.data.max_length.classification": 513}
    (workdir / "long.yaml").write_text(yaml.safe_dump(raw))
    proc = run_snakemake(workdir, "-n", configfile=workdir / "long.yaml", check=False)
    assert proc.returncode != 0
    assert "task_overrides.sst2.data.max_length.classification': 513 tokens exceed the 512 positions" in proc.stdout + proc.stderr
    assert not (workdir / "results").exists()


def test_a_local_path_absent_here_is_not_checked_at_parse_time():
    """A path that exists only on the cluster's nodes: nothing to read here, so no parse-time verdict
    (the jobs check once they load the model)."""
    check_model({"name_or_path": "/nonexistent/models/llama"}, {"data.max_length.classification": 10 ** 6},
                {"squad_v2": "extractive_qa"})
