"""The cost estimate (python -m ftdrift.estimate) against hand calculations.

Every expected figure is computed here from the definitions (step counts, FLOPs per token, bytes
per parameter), not by calling the estimate's own helpers a second time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random

import numpy as np
import pytest
import yaml

from ftdrift.estimate import costs, dag, hardware, plan, tokens
from ftdrift.estimate.__main__ import main
from ftdrift.study import resources
from ftdrift.study.config import resolve
from ftdrift.study.methods import Method
from ftdrift.testing import REPO

WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]
PEAK, FP32_PEAK, MFU = 100.0, 10.0, 0.5  # TFLOP/s of the made-up GPU
SPOT, ON_DEMAND, WRITE_MIB_S, OVERHEAD_MIN = 0.5, 2.0, 100.0, 1.0


def write_word_model(folder):
    """A tiny Llama with a word-level tokenizer: a sentence of k words is exactly k + 1 tokens
    (<s> prepended), so token counts are known by construction."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A </s> $B:1",
                                                       special_tokens=[("<s>", 1), ("</s>", 2)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            model_max_length=512).save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    LlamaModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """SST-2 only: 40 train sentences of 5 words (6 tokens), 12 validation sentences of 3 words (4 tokens)."""
    root = tmp_path_factory.mktemp("estimate")
    rng = random.Random(0)
    sst = root / "data" / "glue" / "SST-2"
    sst.mkdir(parents=True)
    for name, n, words in (("train", 40, 5), ("dev", 12, 3)):
        rows = ["sentence\tlabel"] + [" ".join(rng.choice(WORDS) for _ in range(words)) + f"\t{i % 2}"
                                      for i in range(n)]
        (sst / f"{name}.tsv").write_text("\n".join(rows) + "\n")
    model = write_word_model(root / "model")
    config = {
        "data_dir": str(root / "data"), "task_catalog": str(REPO / "config" / "tasks.yaml"), "tasks": ["sst2"],
        "model": {"name_or_path": str(model), "family": "llama"},
        "grid": {"seeds": [1], "batch_sizes": [4], "learning_rates": {
            "full": {"classification": [1e-3], "extractive_qa": [1e-3]},
            "lora": {"classification": [5e-3], "extractive_qa": [5e-3]}}},
        "methods": {"full": {},
                    "lora": {"peft": {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": "qv"}}},
        "data": {"dev_size": 8, "probe_size": 8, "max_length": {"classification": 64}},
        "training": {"epochs": 1, "max_steps": 6, "eval_steps": 3, "save_steps": 3, "max_micro_batch": 2},
        "representations": {"snapshot_steps": 2, "batch_size": 8, "dtype": "float16"},
        "resources": {"gpus_per_finetune": 1, "gpu_model": "testgpu"},
    }
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    prices = {
        "as_of": "2026-01-01", "region": "test-region",
        "machines": {"a2-highgpu-1g": {"gpu": "testgpu", "gpus": 1, "vcpus": 12, "on_demand": ON_DEMAND, "spot": SPOT},
                     "g2-standard-8": {"gpu": "testgpu", "gpus": 1, "vcpus": 8, "on_demand": 1.0, "spot": 0.25},
                     "e2-standard-4": {"gpu": None, "gpus": 0, "vcpus": 4, "on_demand": 0.1, "spot": 0.05},
                     "e2-standard-8": {"gpu": None, "gpus": 0, "vcpus": 8, "on_demand": 0.2, "spot": 0.1}},
        # no hbm_gb_s: no bandwidth floor, so the FLOP model alone decides (checked separately below)
        "gpus": {"testgpu": {"bf16": PEAK, "fp32": FP32_PEAK, "source": "made up"}},
        "mfu": MFU, "cpu": {"fp32_tflops_per_core": 0.1, "mfu": 0.5},
        "job_overhead_minutes": {"gpu": OVERHEAD_MIN, "cpu": 0, "local": 0},
        "cpu_job_minutes": {"default": 1}, "write_mib_per_s": WRITE_MIB_S,
    }
    (root / "prices.yaml").write_text(yaml.safe_dump(prices))
    return root


def counted_params(folder) -> tuple[int, int]:
    """(all parameters, parameters without the token embedding) of the saved tiny model."""
    from transformers import LlamaModel

    model = LlamaModel.from_pretrained(folder)
    total = sum(p.numel() for p in model.parameters())
    return total, total - model.embed_tokens.weight.numel()


def test_tiny_config_matches_hand_calculation(tiny, monkeypatch):
    monkeypatch.setenv("FTDRIFT_GCP_MAX_GPUS", "3")
    config = resolve(yaml.safe_load((tiny / "tiny.yaml").read_text()))
    prices = hardware.load_prices(tiny / "prices.yaml")
    profile = hardware.read_profile("gcp-gpu", config)
    assert (profile.gpu_slots, profile.jobs) == (3, 50)
    est = plan.estimate(config, profile, prices, config_name="tiny", job_counts={"finetune": 2, "drift": 2},
                        cache_dir=None, workdir=tiny)
    total, n = counted_params(tiny / "model")
    assert est.shape.params == n and est.shape.total_params == total

    # data: 40 train rows - 8 dev = 32 train sequences of 6 tokens; probe = 8 of the 12 validation rows (4 tokens)
    lengths = est.lengths["sst2"]
    assert (len(lengths.train), len(lengths.dev), len(lengths.validation), len(lengths.probe)) == (32, 8, 12, 8)
    assert set(lengths.train) == {6} and set(lengths.dev) == {6} and set(lengths.probe) == {4}

    # batch 4 = micro-batch 2 x accumulation 2; max_steps 6 < the 8 steps of an epoch: 6 x 4 = 24 sequences
    rate = PEAK * 1e12 * MFU
    train_tokens = 6 * 4 * 6
    evals, snapshots, saves = 6 // 3, 1 + 6 // 2, 6 // 3  # at steps 3, 6 / 0, 2, 4, 6 / 3, 6
    dev_eval = evals * 8 * 6 * 2 * n / rate
    final = (8 * 6 + 12 * 4) * 2 * n / rate
    snapshot = snapshots * 8 * 4 * 2 * n / rate
    snapshot_bytes = 8 * (2 + 1) * 16 * 2 * 2  # probe x (blocks + embeddings) x hidden x 2 poolings x float16
    write = WRITE_MIB_S * 2**20
    expected = {}
    for method, trainable in (
            ("full", total + 16 * 2 + 2),  # + the new head: hidden x 2 labels + bias
            ("lora", 2 * 2 * 4 * (16 + 16) + 16 * 2 + 2)):  # blocks x (q, v) x r x (d_in + d_out) + head
        # full: 6N; an adapter: 2N forward + 2N backward through the activations + 6 x its trainable parameters
        flops = 6 * n if method == "full" else 4 * n + 6 * trainable
        checkpoint = trainable * 12  # fp32 weights + two AdamW moments
        seconds = (train_tokens * flops / rate + dev_eval + final + snapshot
                   + (saves * checkpoint + trainable * 4 + snapshots * snapshot_bytes * 2) / write  # + model
                   + evals * trainable * 4 / write  # best weights, at every evaluation (upper bound)
                   + OVERHEAD_MIN * 60)
        # kept: the model and the store; the work folder at its peak: save_total_limit (2) checkpoints + the
        # one being written, best weights, its own store (removed once the outputs are written)
        expected[method] = (seconds, trainable * 4 + snapshots * snapshot_bytes,
                            3 * checkpoint + trainable * 4 + snapshots * snapshot_bytes)
        run = next(r for r in est.runs if r.method == method)
        assert (run.steps, run.examples, run.padded_tokens, run.real_tokens) == (6, 24, train_tokens, train_tokens)
        assert run.seconds == pytest.approx(seconds, rel=1e-9)
        assert run.disk_bytes == pytest.approx(expected[method][1], rel=1e-9)
        assert run.work_bytes == pytest.approx(expected[method][2], rel=1e-9)
        assert run.dev_eval_s / run.train_s == pytest.approx(dev_eval / (train_tokens * flops / rate), rel=1e-9)
        assert run.snapshot_fp32_s == pytest.approx(snapshot * PEAK / FP32_PEAK, rel=1e-9)
    finetune = next(r for r in est.rules if r.rule == "finetune")
    hours = (expected["full"][0] + expected["lora"][0]) / 3600
    assert finetune.gpu_hours == pytest.approx(hours, rel=1e-9)
    assert finetune.usd_spot == pytest.approx(hours * SPOT, rel=1e-9)  # finetune is a preemptible rule
    assert finetune.usd_on_demand == pytest.approx(hours * ON_DEMAND, rel=1e-9)
    # both jobs at once (three GPUs): both work folders at the peak
    assert finetune.disk_bytes == pytest.approx(sum(expected[m][1] + expected[m][2] for m in ("full", "lora")), rel=1e-9)
    # two jobs on three GPUs at once: the wall time is the longer one
    assert finetune.wall_hours == pytest.approx(max(expected["full"][0], expected["lora"][0]) / 3600, rel=1e-9)
    drift = next(r for r in est.rules if r.rule == "drift")
    # CPU rules: nominal minutes for a 1.35 B model (1 here), scaled with N; e2-standard-4 at 0.1 USD/h
    hours = 2 * 1 / 60 * n / 1.35e9
    assert (drift.machine, drift.gpu_hours, drift.usd_on_demand) == ("e2-standard-4", 0, pytest.approx(hours * 0.1))


def test_sst2_study_split_reproduces_issue_figures():
    """Issue 15: SST-2's dev split is 10 % of train (6,735 examples) evaluated every 100 steps; a training
    example = 3 forward passes; dev evaluation costs ~1.4x (batch 16) to ~2.8x (batch 8) the training, the
    872-example snapshots another 18-36 %. Uniform lengths make time proportional to examples."""
    from ftdrift.data.tasks import carve_dev

    train, dev = carve_dev([{"id": str(i)} for i in range(67_349)], 0.1, 0)
    assert (len(train), len(dev)) == (60_614, 6_735)
    device = hardware.Device("x", PEAK, FP32_PEAK, MFU, "test")  # no bandwidth: the FLOP model only
    throughput = costs.Throughput(device, 1.35e9, "bf16")
    settings = {"training": {"eval_steps": 100, "save_steps": 500, "save_total_limit": 2},
                "representations": {"snapshot_steps": 100, "dtype": "float16"}}
    shape = costs.ModelShape(1.35e9, 2048, 24, "study")
    dims = resources.ModelDims("llama", 2048, 5504, 24, 2048)
    full = resources.method_cost(Method("full"), dims, 1.35e9, 1.35e9, "classification", 0)
    length = 20
    figures = {}
    for batch in (16, 8):
        train_tokens = tokens.train_tokens([length] * len(train), batch, 8, 3, -1, seed=42)
        run = costs.finetune_run(
            run=type("R", (), dict(task="sst2", method="full", lr="1e-5", batch_size=batch, seed=42)),
            train=train_tokens, dev=(6_735 * length, 1), dev_alt=(1000 * length, 1), final=(0, 0),
            probe=(872 * length, 1), probe_size=872, settings=settings, shape=shape, cost=full,
            poolings=2, throughput=throughput, write_mib_per_s=1e9, overhead_s=0)
        # by hand: micro-batch 8; steps per epoch = ceil(ceil(60,614 / 8) / (batch / 8)); 3 epochs
        steps = 3 * math.ceil(math.ceil(60_614 / 8) / (batch // 8))
        evals = steps // 100 + 1  # every 100 steps and at the end (steps is no multiple of 100)
        snaps = 1 + steps // 100 + 1
        trained = 3 * 60_614
        assert (run.steps, run.evaluations, run.snapshots, run.examples) == (steps, evals, snaps, trained)
        dev_ratio, snap_ratio = evals * 6_735 / (3 * trained), snaps * 872 / (3 * trained)
        assert run.dev_eval_s / run.train_s == pytest.approx(dev_ratio, rel=1e-9)
        assert run.snapshot_s / run.train_s == pytest.approx(snap_ratio, rel=1e-9)
        figures[batch] = (dev_ratio, snap_ratio)
    assert figures[16][0] == pytest.approx(1.4, abs=0.05) and figures[8][0] == pytest.approx(2.8, abs=0.05)
    assert figures[16][1] == pytest.approx(0.18, abs=0.01) and figures[8][1] == pytest.approx(0.36, abs=0.01)


@pytest.mark.parametrize("max_steps", [-1, 7])
def test_train_tokens_follow_the_trainers_sampler(max_steps):
    """Padded tokens of the batches the study's own sampler (EpochSeededLengthSampler) forms, padded per
    micro-batch to its longest sequence, summed in a plain loop."""
    from ftdrift.training.trainer import EpochSeededLengthSampler

    rng = np.random.default_rng(3)
    lengths = [int(x) for x in rng.integers(3, 41, size=37)]
    batch, micro = 8, 4
    result = tokens.train_tokens(lengths, batch, micro, 2, max_steps, seed=7)
    per_epoch = math.ceil(math.ceil(37 / micro) / (batch // micro))  # 10 micro-batches -> 5 steps
    steps = max_steps if max_steps > 0 else 2 * per_epoch
    padded = real = done = 0
    sampler = EpochSeededLengthSampler(batch, lengths=lengths, seed=7)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        for step in range(per_epoch):
            if done == steps:
                break
            for m in range(batch // micro):
                chunk = order[(step * (batch // micro) + m) * micro:(step * (batch // micro) + m + 1) * micro]
                if chunk:
                    padded += len(chunk) * max(lengths[i] for i in chunk)
                    real += sum(lengths[i] for i in chunk)
            done += 1
    assert (result.steps, result.padded_tokens, result.real_tokens) == (steps, padded, real)
    assert result.padded_tokens > result.real_tokens


def test_bandwidth_floor_and_measured_throughput(tmp_path):
    """A pass over few tokens takes at least its weight traffic / bandwidth; a bench/gpu_mfu.py result
    replaces peak x MFU with its measured tokens/s."""
    device = hardware.Device("a100", 312, 19.5, 0.4, "test", hbm_gb_s=1555)
    n = 1.35e9
    dims = resources.ModelDims("llama", 2048, 5504, 24, 2048)
    full = resources.method_cost(Method("full"), dims, n, n, "classification", 0)
    throughput = costs.Throughput(device, n, "bf16")
    bandwidth = 1555e9 * 0.8
    # 10 passes of 8 tokens: 8 x 10 x 6N / (312e12 x 0.4) = 5 ms < 10 x 22 B x N / bandwidth = 0.24 s
    assert throughput.training_seconds(80, full, passes=10) == pytest.approx(10 * 22 * n / bandwidth)
    # many tokens per pass: the FLOPs decide
    assert throughput.training_seconds(1e6, full, passes=1) == pytest.approx(1e6 * 6 * n / (312e12 * 0.4))
    result = {"device": "NVIDIA H200", "runs": [
        {"method": "full", "precision": "amp", "seq": 512, "tokens_per_s": 40_000.0, "mfu": 0.45},
        {"method": "lora", "precision": "amp", "seq": 512, "tokens_per_s": 60_000.0}]}
    (tmp_path / "gpu.json").write_text(json.dumps(result))
    device.measured = hardware.read_benchmark(tmp_path / "gpu.json")
    # the benchmarked adapter is the default config's lora (r 8, q/v); one twice its FLOPs per token takes twice as long
    bench = Method("lora", {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
                            "target_modules": "qv"})
    bench_cost = resources.method_cost(bench, dims, n, n, "classification", 0)
    throughput.measured_flops = {"full": 6 * n, "adapter": bench_cost.flops_per_token}
    assert throughput.training_seconds(4e6, full) == pytest.approx(100.0)
    assert throughput.training_seconds(6e6, bench_cost) == pytest.approx(100.0)
    heavier = dataclasses.replace(bench_cost, flops_per_token=2 * bench_cost.flops_per_token)
    assert throughput.training_seconds(3e6, heavier) == pytest.approx(100.0)
    assert throughput.forward_seconds(12e6) == pytest.approx(100.0)  # a forward pass = a third of a full step
    (tmp_path / "skipped.json").write_text(json.dumps({"skipped": "no CUDA device"}))
    with pytest.raises(hardware.EstimateError, match="no CUDA device"):
        hardware.read_benchmark(tmp_path / "skipped.json")


def test_profiles_and_price_table(tmp_path, monkeypatch):
    monkeypatch.delenv("FTDRIFT_GCP_MAX_GPUS", raising=False)
    config = resolve(yaml.safe_load((REPO / "config" / "study.yaml").read_text()))
    gcp = hardware.read_profile("gcp-gpu", config)
    assert gcp.gpu_slots == 8 and gcp.machine("finetune") == "a2-highgpu-1g"
    assert gcp.machine("drift") == "e2-standard-4" and "finetune" in gcp.spot_rules
    assert hardware.read_profile("slurm", config).gpu_slots == 100
    assert hardware.read_profile("default", config, cores=4).gpu_slots == 1
    prices = hardware.load_prices(REPO / "config" / "prices.yaml")
    assert set(gcp.machines.values()) | {gcp.default_machine} <= set(prices["machines"])
    assert prices["gpus"]["a100"]["bf16"] == 312 and prices["gpus"]["h100"]["bf16"] == 989
    (tmp_path / "bad.yaml").write_text("as_of: 2026-01-01\nmachines: {}\n")
    with pytest.raises(hardware.EstimateError, match="missing keys"):
        hardware.load_prices(tmp_path / "bad.yaml")


def test_a_profile_is_read_by_its_executors_adapter(tmp_path, monkeypatch):
    """The estimate reads a profile's machines through the adapter of its `executor:`
    (ftdrift.executors); an executor without one is an error, not a silently local bill."""
    from ftdrift import executors
    from ftdrift.executors.base import Executor, HardwareProfile

    config = resolve(yaml.safe_load((REPO / "config" / "study.yaml").read_text()))
    folder = tmp_path / "k8s"
    folder.mkdir()
    (folder / "profile.yaml").write_text("executor: kubernetes\njobs: 7\n")
    with pytest.raises(hardware.EstimateError, match="executor 'kubernetes' has no adapter"):
        hardware.read_profile(str(folder), config)

    def read(raw, label, config, cores):
        return HardwareProfile(label, raw["jobs"], 2, default_machine="g2-standard-8")

    monkeypatch.setitem(executors.ADAPTERS, "kubernetes", Executor("kubernetes", lambda *args: None, read))
    k8s = hardware.read_profile(str(folder), config)
    assert (k8s.name, k8s.jobs, k8s.gpu_slots, k8s.machine("finetune")) == ("k8s", 7, 2, "g2-standard-8")


def test_stand_in_tokenizer_is_announced():
    tokenizer, name, note = tokens.load_tokenizer({"name_or_path": "/nonexistent/model", "family": "llama"})
    assert name == tokens.STAND_IN and "stand-in" in note and tokenizer("a b")["input_ids"]


def test_job_table_parsing():
    text = ("Building DAG of jobs...\nJob stats:\njob         count\n--------  -------\nfinetune        8\n"
            "all             1\ntotal           9\n\nReasons:\n  x 3\n")
    assert dag.parse_job_table(text) == {"finetune": 8, "all": 1}


def test_command_line_on_the_tiny_config(tiny, capsys):
    """The documented command end to end: Snakemake's dry run plans the jobs; tables with units and a total."""
    code = main(["--configfile", str(tiny / "tiny.yaml"), "--profile", "gcp-gpu", "--prices", str(tiny / "prices.yaml"),
                 "--directory", str(tiny), "--no-cache", "--no-preflight", "--offline"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "profile gcp-gpu" in out and "as of 2026-01-01" in out and "tokenizer:" in out and "throughput" in out
    for header in ("GPU-h", "wall h", "spot USD", "on-demand USD", "disk GiB"):
        assert header in out
    jobs = {line.split()[0]: line.split()[1] for line in out.split("Jobs Snakemake plans")[1].splitlines()[3:]
            if line.strip() and not line.startswith("-")}
    assert jobs["finetune"] == "2"  # 1 task x 2 methods x 1 learning rate x 1 batch size x 1 seed
    assert jobs["total"] == str(sum(int(v) for k, v in jobs.items() if k != "total"))


# --------------------------------------------------------------------------- the methods' cost model

LLAMA = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2}
BERT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
LORA = {"peft_type": "LORA", "r": 4, "lora_alpha": 8}
METHOD_CASES = [
    ("llama", "classification", {**LORA, "target_modules": "qv"}),
    ("llama", "classification", {**LORA, "target_modules": "attention"}),
    ("llama", "extractive_qa", {**LORA, "target_modules": "mlp"}),
    ("llama", "classification", {**LORA, "r": 8, "use_rslora": True, "target_modules": "all-linear"}),
    ("llama", "classification", {**LORA, "use_dora": True, "target_modules": "qv"}),
    ("llama", "classification", {**LORA, "init_lora_weights": "pissa", "target_modules": "all-linear"}),
    ("llama", "classification", {**LORA, "target_modules": ["q_proj", "down_proj"]}),
    ("llama", "classification", {**LORA, "target_modules": "all-linear", "layers_to_transform": [1],
                                 "rank_pattern": {"down_proj": 2}}),
    ("llama", "classification", {"peft_type": "IA3"}),
    ("llama", "classification", {"peft_type": "IA3", "target_modules": "all-linear"}),
    ("bert", "classification", {**LORA, "target_modules": "all-linear"}),  # BERT's pooler too
    ("bert", "extractive_qa", {**LORA, "target_modules": "all-linear"}),  # the QA model has no pooler
    ("bert", "classification", {**LORA, "r": 2, "use_dora": True, "target_modules": "mlp"}),
    ("bert", "classification", {"peft_type": "IA3"}),
]


def tiny_task_model(family: str, kind: str):
    """A tiny randomly initialised task model of `family`, built offline from a config alone."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
    )

    config = AutoConfig.for_model(family, vocab_size=64, max_position_embeddings=64, pad_token_id=0,
                                  **(LLAMA if family == "llama" else BERT))
    torch.manual_seed(0)
    cls = AutoModelForSequenceClassification if kind == "classification" else AutoModelForQuestionAnswering
    return cls.from_config(config)


def head_size(model) -> int:
    """Parameters of the task head, counted by its module names (the task classes' own)."""
    heads = ("score", "classifier", "qa_outputs")
    return sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] in heads)


def dims_for(family: str) -> resources.ModelDims:
    shape = LLAMA if family == "llama" else BERT
    kv = shape["hidden_size"] * shape.get("num_key_value_heads", shape["num_attention_heads"]) // \
        shape["num_attention_heads"]
    return resources.ModelDims(family, shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"], kv)


@pytest.mark.parametrize("family,kind,spec", METHOD_CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_adapter_parameters_match_peft(family, kind, spec):
    """The count from the shape alone equals what peft really trains (adapt's trainable_params minus the head)."""
    from ftdrift.modeling.methods import adapt

    model = tiny_task_model(family, kind)
    head = head_size(model)
    method = Method("m", spec)
    _, info = adapt(model, method)
    assert resources.adapter_params(method, dims_for(family), kind) == info["trainable_params"] - head
    assert resources.adapter_params(Method("full"), dims_for(family), kind) == 0


def matmul_flops(model, batch) -> int:
    """FLOPs of the matrix products of one training step (forward + backward), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    with FlopCounterMode(display=False) as counter:
        model(**batch).logits.float().sum().backward()
    return counter.get_total_flops()


def test_adapter_and_dora_flops_against_torchs_count():
    """Counted by torch's FlopCounterMode on a tiny Llama (matrix products only): full fine-tuning
    costs 2 x the block weights per token more than an adapter, less the adapter's own 6P (the
    head trains in both); DoRA (lora_dropout > 0) adds the base output again (4 x the adapted
    weights per token) and B·A through the identity per pass (2 r d_in (d_in + d_out)); its norm
    is no matrix product and is not counted here."""
    import torch

    from ftdrift.modeling.methods import adapt

    batch, seq = 2, 8
    tokens = batch * seq
    inputs = {"input_ids": torch.randint(1, 64, (batch, seq)),
              "attention_mask": torch.ones(batch, seq, dtype=torch.long)}
    lora = {**LORA, "lora_dropout": 0.1, "target_modules": "qv"}
    counted, costs_ = {}, {}
    dims = dims_for("llama")
    for name, spec in (("full", None), ("lora", lora), ("dora", {**lora, "use_dora": True})):
        model = tiny_task_model("llama", "classification")
        head = head_size(model)
        peft_model, _ = adapt(model, Method(name, spec))
        counted[name] = matmul_flops(peft_model, inputs)
        costs_[name] = resources.method_cost(Method(name, spec), dims, 1e6, 1e6, "classification", head)
    h, kv, i, layers = 32, 16, 48, 2
    block_weights = layers * (h * h + h * kv + h * kv + h * h + 3 * h * i)
    adapter = costs_["lora"].adapter
    assert adapter == layers * 4 * ((h + h) + (h + kv))  # q: 32 -> 32, v: 32 -> 16 at r 4
    assert counted["full"] - counted["lora"] == tokens * (2 * block_weights - 6 * adapter)
    adapted = layers * (h * h + h * kv)
    identity = layers * 2 * 4 * (h * (h + h) + h * (h + kv))
    assert counted["dora"] - counted["lora"] == tokens * 4 * adapted + identity
    # the cost model: the same terms (and the norm's 3 d_in d_out per pass, not a matrix product)
    dora = costs_["dora"]
    assert dora.adapter == adapter + layers * (h + kv)  # + the magnitude vectors
    assert dora.flops_per_token - costs_["lora"].flops_per_token == 4 * adapted + 6 * layers * (h + kv)
    assert dora.flops_per_pass == identity + 3 * adapted


def test_study_methods_config_resolves_and_ranks_costs():
    """config/study-methods.yaml: the seed's tasks and seeds, six methods, each with its grid; the
    cost model orders them as their specs say (Sheared-LLaMA-1.3B's shape, by hand for r 64 all-linear)."""
    from ftdrift.study import grid, methods

    config = resolve(yaml.safe_load((REPO / "config" / "study-methods.yaml").read_text()))
    seed = resolve(yaml.safe_load((REPO / "config" / "study.yaml").read_text()))
    assert config["tasks"] == seed["tasks"] and config["grid"]["seeds"] == seed["grid"]["seeds"]
    found = methods.from_config(config)
    assert list(found) == ["full", "lora", "lora_all_r64", "rslora_all_r256", "dora_r8", "pissa_all_r64"]
    assert found["lora"].peft == methods.from_config(seed)["lora"].peft  # the seed's LoRA
    assert len(grid.grid(config)) == 4 * 6 * 2 * 2 * 3  # tasks x methods x 2 rates x batch sizes x seeds
    dims = resources.ModelDims("llama", 2048, 5504, 24, 2048)  # Sheared-LLaMA-1.3B's config.json
    assert resources.dims_of(config) == dims
    count = {name: resources.adapter_params(m, dims, "classification") for name, m in found.items()}
    assert count["lora_all_r64"] == 24 * 64 * (4 * (2048 + 2048) + 3 * (2048 + 5504))
    assert count["rslora_all_r256"] == 4 * count["lora_all_r64"] == 4 * count["pissa_all_r64"]
    assert count["dora_r8"] == count["lora"] + 24 * 2 * 2048 and count["full"] == 0
    gpu = {name: resources.finetune_job(config, "squad_v2", name, 16)["gpu_mem_gb"] for name in found}
    assert max(gpu, key=gpu.get) == "full" and min(gpu, key=gpu.get) == "lora"
    assert gpu["full"] <= 40  # the A100 40GB of the gcp-gpu profile
