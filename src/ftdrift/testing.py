"""Fixtures of the test suite, the benchmarks and the system harnesses (tests/system): small task
files in the original formats, a tiny random Llama, the tiny study's config and a working folder
holding all three, the real workflow run on it, and the result files two runs are compared on.

    from ftdrift.testing import TINY_CONFIG, make_tiny_workdir, run_snakemake

Nothing of the workflow imports this module, and it imports nothing of ftdrift: it builds inputs
and runs the workflow the way a user does (like numpy.testing or torch.testing, it ships with
the package so that tests, bench/ and tests/system/ import it without touching sys.path).
`write_tiny_llama` needs the `tokenizers` package (the `test` extra).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from ftdrift import REPO_ROOT

__all__ = ["REPO", "TINY_CONFIG", "VOLATILE_PARTS", "VOLATILE_SUFFIXES", "make_tiny_workdir", "no_slurm_conf",
           "result_files", "run_snakemake", "snakemake_command", "squad_payload", "write_glue", "write_squad",
           "write_tiny_llama"]

REPO = REPO_ROOT  # the repository (Snakefile, config/, profiles/)
POSITIVE = ["good", "great", "lovely", "fine", "superb", "warm", "bright"]
NEGATIVE = ["bad", "awful", "dull", "poor", "grim", "cold", "weak"]
NOUNS = ["film", "story", "cast", "plot", "score", "ending", "scene", "script"]


def _sentence(rng: random.Random, positive: bool) -> str:
    words = POSITIVE if positive else NEGATIVE
    return f"the {rng.choice(NOUNS)} is {rng.choice(words)} and {rng.choice(words)} "


def write_glue(data_dir: Path, n_train: int = 48, n_dev: int = 24, seed: int = 0) -> None:
    """SST-2 (trailing space, header), MRPC (UTF-8 BOM, five columns), RTE (index column)."""
    rng = random.Random(seed)
    for split, n in (("train", n_train), ("dev", n_dev)):
        sst = data_dir / "glue" / "SST-2"
        sst.mkdir(parents=True, exist_ok=True)
        rows = ["sentence\tlabel"]
        for _ in range(n):
            label = rng.random() < 0.5
            rows.append(f"{_sentence(rng, label)}\t{int(label)}")
        (sst / f"{split}.tsv").write_text("\n".join(rows) + "\n")

        mrpc = data_dir / "glue" / "MRPC"
        mrpc.mkdir(parents=True, exist_ok=True)
        rows = ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
        for i in range(n):
            a = _sentence(rng, rng.random() < 0.5).strip()
            same = rng.random() < 0.5
            b = a if same else _sentence(rng, rng.random() < 0.5).strip()
            rows.append(f"{int(same)}\t{1000 + i}\t{2000 + i}\t\"{a}\" he said\t{b}")  # unbalanced quotes as in GLUE
        (mrpc / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")

        rte = data_dir / "glue" / "RTE"
        rte.mkdir(parents=True, exist_ok=True)
        rows = ["index\tsentence1\tsentence2\tlabel"]
        for i in range(n):
            a = _sentence(rng, True).strip()
            entail = rng.random() < 0.5
            b = a.split(" and ")[0] if entail else _sentence(rng, False).strip()
            rows.append(f"{i}\t{a}\t{b}\t{'entailment' if entail else 'not_entailment'}")
        (rte / f"{split}.tsv").write_text("\n".join(rows) + "\n")


def squad_payload(n_paragraphs: int, seed: int, prefix: str) -> dict:
    """A SQuAD v2 file's JSON: per paragraph two answerable questions (one with two answers) and an
    unanswerable one with a plausible answer; question ids start with `prefix`."""
    rng = random.Random(seed)
    paragraphs = []
    for p in range(n_paragraphs):
        name = rng.choice(["Ada", "Brook", "Cyril", "Dana", "Ezra", "Faye"])
        city = rng.choice(["Paris", "Lima", "Oslo", "Kyoto", "Quito", "Perth"])
        year = str(rng.randint(1800, 2000))
        context = f"{name} was born in {city} in {year}. Later {name} moved to the coast and wrote books."
        qas = [
            {"id": f"{prefix}{p}a", "question": f"Where was {name} born?", "is_impossible": False,
             "answers": [{"text": city, "answer_start": context.index(city)}]},
            {"id": f"{prefix}{p}b", "question": f"When was {name} born?", "is_impossible": False,
             "answers": [{"text": year, "answer_start": context.index(year)},
                         {"text": f"in {year}", "answer_start": context.index(f"in {year}")}]},
            {"id": f"{prefix}{p}c", "question": f"Where did {name} die?", "is_impossible": True,
             "answers": [], "plausible_answers": [{"text": city, "answer_start": context.index(city)}]},
        ]
        paragraphs.append({"context": context, "qas": qas})
    return {"version": "v2.0", "data": [{"title": "People", "paragraphs": paragraphs}]}


def write_squad(data_dir: Path) -> None:
    """SQuAD v2's train and dev files under `data_dir`/squad_v2, by the names config/tasks.yaml gives."""
    folder = data_dir / "squad_v2"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train-v2.0.first-10-articles.json").write_text(json.dumps(squad_payload(16, 1, "t")))
    (folder / "dev-v2.0.cs224n-dev-half.json").write_text(json.dumps(squad_payload(8, 2, "v")))


def write_tiny_llama(model_dir: Path, texts: list[str]) -> Path:
    """A randomly initialised 2-block Llama with a small BPE tokenizer trained on `texts`, saved as
    `LlamaForCausalLM` (backbone under `model.`, an LM head): the study model's checkpoint form."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A </s> $B:1", special_tokens=[("<s>", 1), ("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)
    fast.save_pretrained(model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    LlamaForCausalLM(config).save_pretrained(model_dir)
    return model_dir


# The tiny study: four tasks, full fine-tuning and LoRA, one seed, 6 optimizer steps, snapshots every 2.
TINY_CONFIG = {
    "tasks": ["sst2", "mrpc", "rte", "squad_v2"],
    "grid": {"seeds": [1], "batch_sizes": [4],
             "learning_rates": {"full": {"classification": [1e-3], "extractive_qa": [1e-3]},
                                "lora": {"classification": [5e-3], "extractive_qa": [5e-3]}}},
    "data": {"dev_size": 8, "probe_size": 8, "max_length": {"classification": 64, "extractive_qa": 64},
             "max_query_length": 16,
             "doc_stride": 16, "max_train_examples": None, "max_validation_examples": None},
    "training": {"epochs": 1, "max_steps": 6, "eval_steps": 3, "save_steps": 3, "logging_steps": 2,
                 "max_micro_batch": 2},
    "representations": {"snapshot_steps": 2, "batch_size": 8},
    "methods": {"full": {}, "lora": {"peft": {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.05,
                                              "target_modules": "qv"}}},
    "task_overrides": {},
    "wandb": {"mode": "offline"},
    "resources": {"finetune_threads": 1},
}


def make_tiny_workdir(tmp_path: Path, **overrides) -> Path:
    """A working directory with data fixtures, a tiny Llama and `tiny.yaml`; returns it."""
    workdir = Path(tmp_path)
    data_dir = workdir / "data"
    write_glue(data_dir)
    write_squad(data_dir)
    texts = []
    for path in data_dir.rglob("*.tsv"):
        texts.extend(path.read_text(encoding="utf-8-sig").splitlines())
    for path in data_dir.rglob("*.json"):
        texts.append(path.read_text())
    model_dir = write_tiny_llama(workdir / "tiny-llama", texts)
    config = json.loads(json.dumps(TINY_CONFIG))
    config["data_dir"] = str(data_dir)
    config["model"] = {"name_or_path": str(model_dir), "family": "llama"}
    config["task_catalog"] = str(REPO / "config" / "tasks.yaml")
    for key, value in overrides.items():
        config[key] = value
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(config))
    return workdir


def no_slurm_conf() -> Path:
    """A SLURM config naming an unreachable controller (see `run_snakemake`)."""
    path = Path(tempfile.gettempdir()) / "ftdrift-tests-no-slurm.conf"
    if not path.exists():
        path.write_text("ClusterName=none\nSlurmctldHost=localhost\nSlurmctldPort=1\nMessageTimeout=1\n")
    return path


def snakemake_command(workdir: Path, *args: str, configfile: Path | None = None,
                      snakefile: Path | None = None) -> list[str]:
    """The command line of the real workflow on `workdir` with its tiny config (or `configfile`), two
    cores, then `args` (options, targets)."""
    return [sys.executable, "-m", "snakemake", "-s", str(snakefile or REPO / "Snakefile"), "--directory",
            str(workdir), "--configfile", str(configfile or workdir / "tiny.yaml"), "--cores", "2", *args]


def run_snakemake(workdir: Path, *args: str, check: bool = True, env: dict | None = None,
                  configfile: Path | None = None, snakefile: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real workflow on `workdir` with its tiny config (or `configfile`); AssertionError with
    the output's tail when it fails and `check` is set."""
    cmd = snakemake_command(workdir, *args, configfile=configfile, snakefile=snakefile)
    full_env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    if not any("slurm" in str(a) for a in args) and "SLURM_CONF" not in full_env:
        # snakemake-executor-plugin-slurm 2.8.0 runs `scontrol show config` when Snakemake imports it
        # (for every workflow, any executor); with SLURM installed (tests/system/test_slurm.py) but no
        # controller up, scontrol waits ~9 s. A config naming an unreachable controller fails at once.
        full_env["SLURM_CONF"] = str(no_slurm_conf())
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


# Produced per run and legitimately different between two executions of the same work: folders
# anywhere in a result path, and file suffixes.
VOLATILE_PARTS = {"logs", "work", ".snakemake", "wandb", "benchmarks"}
VOLATILE_SUFFIXES = {".log", ".html"}


def result_files(workdir: Path) -> dict[str, Path]:
    """{path relative to `workdir`: path} of every file under `workdir`/results that two runs of the
    same work must both have, with equal contents (all but VOLATILE_PARTS and VOLATILE_SUFFIXES)."""
    files = {}
    for path in (workdir / "results").rglob("*"):
        rel = path.relative_to(workdir)
        if path.is_file() and not (set(rel.parts) & VOLATILE_PARTS) and path.suffix not in VOLATILE_SUFFIXES:
            files[rel.as_posix()] = path
    return files
