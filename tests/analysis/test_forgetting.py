"""Forgetting (ftdrift.analysis.forgetting, ftdrift.analysis.lm_loss) on a tiny random Llama with a
language-modelling head: LM loss against transformers' own labels loss, the base head kept under a
fine-tuned backbone, out-of-task CKA against a hand-written CKA of hand-extracted features, frozen
probes against scikit-learn's predict, and the saved probe of the baselines."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from ftdrift.analysis import baselines as bl
from ftdrift.analysis import forgetting as fg
from ftdrift.analysis import lm_loss
from ftdrift.core import io
from ftdrift.core.store import read_base
from ftdrift.data.tasks import prepare_task
from ftdrift.modeling import methods, models
from ftdrift.representations.base import base_representations
from ftdrift.study import config as ftconfig
from ftdrift.study.grid import RUN_KEYS
from ftdrift.study.methods import Method
from ftdrift.testing import make_tiny_workdir

TASKS = ("sst2", "rte", "squad_v2")  # runs fine-tune sst2; rte (classification) and squad_v2 (QA) are the others
RUN = {"task": "sst2", "method": "full", "lr": "1e-3", "batch_size": 4, "seed": 1}
METHODS = {"full": Method("full"), "perturbed": Method("perturbed"),
           "lora": Method("lora", {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": "qv"})}
FORGETTING = {"text_file": None, "max_tokens": 300, "window": 23, "batch_size": 3}
DRIFT = {"metrics": ["linear_cka", "debiased_cka", "cosine"], "bootstrap_resamples": 20}
WORDS = ("the river bank holds quiet water while a small boat drifts past old stone houses and "
         "children count birds on the long grey wall before the evening bell rings twice ").split()


def generic_text(n_words: int = 700, seed: int = 3) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n_words)) + "\n"


def naive_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Biased linear CKA from Grams and the centring matrix, float64 (Kornblith et al. 2019, eq. 3)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float(np.sum(k * l_) / np.sqrt(np.sum(k * k) * np.sum(l_ * l_)))


def sklearn_pipeline(probe: dict):
    """scikit-learn estimators carrying a saved probe's parameters: their predict is the reference."""
    scaler = StandardScaler()
    scaler.mean_, scaler.scale_ = probe["scaler_mean"], probe["scaler_scale"]
    scaler.var_, scaler.n_features_in_ = probe["scaler_scale"] ** 2, probe["coef"].shape[1]
    regression = LogisticRegression()
    regression.coef_, regression.intercept_, regression.classes_ = probe["coef"], probe["intercept"], probe["classes"]
    regression.n_features_in_ = probe["coef"].shape[1]
    return lambda X: regression.predict(scaler.transform(np.asarray(X, dtype=np.float64)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Prepared sst2/rte/squad_v2, a tiny Llama saved with its LM head (and the backbone-only original),
    base stores of rte and squad_v2, rte's saved probe, and saved sst2 task models: unchanged (full
    and LoRA with B = 0) and perturbed (full)."""
    root = tmp_path_factory.mktemp("forgetting")
    workdir = make_tiny_workdir(root)
    raw = ftconfig.load_yaml(workdir / "tiny.yaml")
    raw["tasks"] = list(TASKS)
    cfg = ftconfig.resolve(raw)
    from transformers import LlamaForCausalLM, LlamaModel

    base_backbone = LlamaModel.from_pretrained(cfg["model"]["name_or_path"])
    backbone_only = root / "tiny-llama-backbone"  # a checkpoint without an LM head, for the skip test
    base_backbone.save_pretrained(backbone_only)
    models.load_tokenizer(cfg["model"]).save_pretrained(backbone_only)
    torch.manual_seed(5)
    lm = LlamaForCausalLM(base_backbone.config)
    lm.model.load_state_dict(base_backbone.state_dict())
    lm_dir = root / "tiny-llama-lm"
    lm.save_pretrained(lm_dir)
    models.load_tokenizer(cfg["model"]).save_pretrained(lm_dir)
    cfg["model"] = {"name_or_path": str(lm_dir), "family": "llama"}

    data = {}
    for task in TASKS:
        settings = ftconfig.task_settings(cfg, task)
        out = workdir / "results" / "data" / task
        prepare_task(task, cfg["task_defs"][task], workdir / "data", settings["data"], out)
        data[task] = {"task_def": cfg["task_defs"][task], "data": settings["data"],
                      "representations": settings["representations"], "probe": out / "probe.jsonl",
                      "base": workdir / "results" / "representations" / "base" / f"{task}.zarr"}
        if task != "sst2":
            base_representations(probe_path=out / "probe.jsonl", store_path=data[task]["base"], model_cfg=cfg["model"],
                                 task_def=cfg["task_defs"][task], data_settings=settings["data"],
                                 rep_settings=settings["representations"], precision="fp32")
    rte = data["rte"]
    rte["probe_model"] = workdir / "results" / "baselines" / "rte.probe.npz"
    bl.run_baselines(task="rte", train_path=rte["probe"].parent / "train.jsonl",
                     dev_path=rte["probe"].parent / "dev.jsonl", validation_path=rte["probe"].parent / "validation.jsonl",
                     out_path=workdir / "results" / "baselines" / "rte.json", model_cfg=cfg["model"],
                     task_def=rte["task_def"], data_settings=rte["data"], batch_size=8,
                     baselines_cfg={k: v for k, v in cfg["baselines"].items() if k != "probe_pooling"},
                     pooling=ftconfig.probe_pooling(cfg, "rte"), precision="fp32", probe_path=rte["probe_model"])
    data["squad_v2"]["probe_model"] = None

    tokenizer = models.load_tokenizer(cfg["model"])
    runs = {}
    for name in ("full", "lora", "perturbed"):
        out = root / "runs" / name
        torch.manual_seed(0)
        model = models.load_model(cfg["model"], "classification", 2, tokenizer)
        if name == "lora":
            model, _ = methods.adapt(model, METHODS["lora"])
        if name == "perturbed":
            with torch.no_grad():
                for p in model.model.parameters():
                    p.add_(0.05 * torch.randn_like(p))
        if name == "lora":
            methods.save_adapter(model, METHODS["lora"], out / "model")
        else:
            model.save_pretrained(out / "model")
        io.write_json(out / "metrics.json", {"meta": {"precision": "fp32", "status": "completed"}})
        runs[name] = out
    text = root / "generic.txt"
    text.write_text(generic_text(), encoding="utf-8")
    return {"cfg": cfg, "data": data, "runs": runs, "text": text, "backbone_only": str(backbone_only), "root": root}


def _others(world):
    return {t: dict(world["data"][t]) for t in ("rte", "squad_v2")}


def _run(world, name, tmp_path, text_file=None, method=None, others=None):
    method = method or ("lora" if name == "lora" else "full")
    out = tmp_path / f"{name}.json"
    cfg = world["cfg"]
    return fg.run_forgetting(run={**RUN, "method": method}, method=METHODS[method], model_dir=world["runs"][name] / "model",
                             metrics_path=world["runs"][name] / "metrics.json", model_cfg=cfg["model"],
                             task_def=cfg["task_defs"]["sst2"], others=_others(world) if others is None else others,
                             drift_cfg=DRIFT, forgetting_cfg={**FORGETTING, "text_file": text_file},
                             text_file=text_file, out_path=out), out


# ----------------------------------------------------------------------------- LM loss
def test_text_tokens_are_the_documents_first_tokens(world):
    tokenizer = models.load_tokenizer(world["cfg"]["model"])
    whole = tokenizer(world["text"].read_text(encoding="utf-8"))["input_ids"]
    assert len(whole) > 300
    assert lm_loss.read_text_tokens(world["text"], tokenizer, 300) == whole[:300]
    assert lm_loss.read_text_tokens(world["text"], tokenizer, 10**6) == whole  # shorter file: all of it
    empty = world["root"] / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="forgetting.text_file"):
        lm_loss.read_text_tokens(empty, tokenizer, 10)
    with pytest.raises(FileNotFoundError, match="forgetting.text_file"):
        lm_loss.read_text_tokens(world["root"] / "absent.txt", tokenizer, 10)


def test_lm_loss_matches_transformers_labels_loss(world):
    lm, _ = lm_loss.load_base_lm(world["cfg"]["model"])
    ids = list(range(3, 3 + 100))  # 100 tokens, windows of 23: 4 full + one of 8
    loss, count = lm_loss.lm_loss(lm, ids, window=23, batch_size=3)
    # independently: transformers' own shifted-labels loss per window, weighted by its predictions
    total, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), 23):
            window = torch.tensor([ids[start:start + 23]])
            total += float(lm(input_ids=window, labels=window).loss) * (window.shape[1] - 1)
            n += window.shape[1] - 1
    assert count == n == 100 - 5
    assert loss == pytest.approx(total / n, rel=1e-5)
    # a last window of one token predicts nothing: dropped
    assert lm_loss.windows(list(range(47)), 23) == [list(range(23)), list(range(23, 46))]


def test_unchanged_backbone_gives_the_base_perplexity_and_a_perturbed_one_keeps_the_base_head(world):
    cfg, tokenizer = world["cfg"], models.load_tokenizer(world["cfg"]["model"])
    unchanged = fg.backbone_of(fg.load_tuned_task_model(world["runs"]["full"] / "model", METHODS["full"], cfg["model"],
                                                         cfg["task_defs"]["sst2"], tokenizer))
    same = fg.lm_forgetting(model_cfg=cfg["model"], backbone=unchanged, text_file=world["text"],
                            forgetting_cfg=FORGETTING, precision="fp32")
    assert same["status"] == "ok" and same["tokens"] > 250
    assert same["finetuned_loss"] == same["base_loss"] and same["finetuned_perplexity"] == same["base_perplexity"]
    assert same["base_perplexity"] == pytest.approx(math.exp(same["base_loss"]))

    perturbed = fg.backbone_of(fg.load_tuned_task_model(world["runs"]["perturbed"] / "model", METHODS["full"], cfg["model"],
                                                         cfg["task_defs"]["sst2"], tokenizer))
    moved = fg.lm_forgetting(model_cfg=cfg["model"], backbone=perturbed, text_file=world["text"],
                             forgetting_cfg=FORGETTING, precision="fp32")
    assert moved["base_loss"] == same["base_loss"] and moved["finetuned_loss"] != moved["base_loss"]

    # independently: a causal LM assembled by hand from the perturbed backbone and the base checkpoint's head
    from transformers import LlamaForCausalLM

    base_lm = LlamaForCausalLM.from_pretrained(cfg["model"]["name_or_path"])
    head = base_lm.lm_head.weight.detach().clone()
    hand = LlamaForCausalLM(base_lm.config)
    hand.load_state_dict({**{f"model.{k}": v for k, v in perturbed.state_dict().items()}, "lm_head.weight": head})
    ids = lm_loss.read_text_tokens(world["text"], tokenizer, FORGETTING["max_tokens"])
    total, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), FORGETTING["window"]):
            window = torch.tensor([ids[start:start + FORGETTING["window"]]])
            if window.shape[1] > 1:
                total += float(hand(input_ids=window, labels=window).loss) * (window.shape[1] - 1)
                n += window.shape[1] - 1
    assert moved["tokens"] == n and moved["finetuned_loss"] == pytest.approx(total / n, rel=1e-5)

    # the swap itself: the backbone is the fine-tuned one, the head still the base's
    lm, _ = lm_loss.load_base_lm(cfg["model"])
    lm_loss.load_backbone(lm, perturbed)
    assert torch.equal(lm.lm_head.weight, head)
    assert torch.equal(lm.model.layers[0].self_attn.q_proj.weight, perturbed.layers[0].self_attn.q_proj.weight)


def test_a_tied_head_is_untied_before_the_backbone_moves():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    torch.manual_seed(0)
    lm = LlamaForCausalLM(config)
    assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()
    head = lm.lm_head.weight.detach().clone()
    other = LlamaForCausalLM(config).model
    lm_loss.load_backbone(lm, other)
    assert torch.equal(lm.model.embed_tokens.weight, other.embed_tokens.weight)
    assert torch.equal(lm.lm_head.weight, head) and not torch.equal(head, other.embed_tokens.weight)


def test_lm_step_is_skipped_with_its_reason(world):
    cfg = world["cfg"]
    bert = fg.lm_forgetting(model_cfg={"name_or_path": "unused", "family": "bert"}, backbone=None,
                            text_file=world["text"], forgetting_cfg=FORGETTING, precision="fp32")
    assert (bert["status"], bert["reason"]) == ("skipped", "family bert has no language-modelling head")
    assert bert["base_loss"] is None and set(fg.LM_KEYS) <= set(bert)
    no_file = fg.lm_forgetting(model_cfg=cfg["model"], backbone=None, text_file=None, forgetting_cfg=FORGETTING,
                               precision="fp32")
    assert (no_file["status"], no_file["reason"]) == ("skipped", "config key forgetting.text_file is null")
    headless = fg.lm_forgetting(model_cfg={"name_or_path": world["backbone_only"], "family": "llama"}, backbone=None,
                                text_file=world["text"], forgetting_cfg=FORGETTING, precision="fp32")
    assert headless["status"] == "skipped" and "lm_head.weight" in headless["reason"]


# ----------------------------------------------------------------------------- saved probes
@pytest.mark.parametrize("n_classes", [2, 3])
def test_saved_probe_predicts_as_the_fitted_pipeline(tmp_path, n_classes):
    rng = np.random.default_rng(n_classes)
    X = rng.normal(size=(90, 6)) * [1, 3, 0.5, 2, 1, 1] + 1.0
    y = (X[:, :n_classes] + rng.normal(scale=0.5, size=(90, n_classes))).argmax(1)
    probe = bl.fit_probe(0.5, X.astype(np.float32), y)
    entry = {"status": "ok", "reason": "r", "layer": 3, "pooling": "last", "C": 0.5}
    bl.save_probe(tmp_path / "p.npz", task="t", main_metric="accuracy", entry=entry, probe=probe)
    saved = bl.load_probe(tmp_path / "p.npz")
    assert (saved["layer"], saved["pooling"], saved["C"], saved["status"], saved["task"]) == (3, "last", 0.5, "ok", "t")
    new = rng.normal(size=(40, 6)) * 2
    assert np.array_equal(bl.apply_probe(saved, new), probe.predict(new))
    with pytest.raises(ValueError, match="features of shape"):
        bl.apply_probe(saved, new[:, :5])

    bl.save_probe(tmp_path / "qa.npz", task="q", main_metric="f1",
                  entry={"status": "ok", "reason": "", "layer": 2, "pooling": None, "C": 1.0})
    qa = bl.load_probe(tmp_path / "qa.npz")
    assert qa["status"] == "not_applicable" and "span probe" in qa["reason"] and qa["pooling"] is None
    with pytest.raises(ValueError, match="not fitted"):
        bl.apply_probe(qa, new)


# ----------------------------------------------------------------------------- the job
@pytest.mark.parametrize("name", ["full", "lora"])
def test_unchanged_model_has_no_out_of_task_drift_and_no_probe_drop(world, tmp_path, name):
    result, out = _run(world, name, tmp_path)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["run"]["method"] == ("lora" if name == "lora" else "full") and result["precision"] == "fp32"
    rows = result["out_of_task"]
    assert {r["probe_task"] for r in rows} == {"rte", "squad_v2"}
    # 3 hidden states (embeddings + 2 blocks) x 2 poolings x 3 metrics per other task
    assert len(rows) == 2 * 3 * 2 * 3 and set(rows[0]) == set(fg.OUT_OF_TASK_KEYS)
    for r in rows:
        assert r["value"] == pytest.approx(1.0, abs=1e-6), r
        assert (r["bootstrap_se"] is not None) == (r["metric"] == "linear_cka")
        if r["metric"] == "linear_cka":
            assert r["bootstrap_se"] == pytest.approx(0.0, abs=1e-6)
    rte, squad = sorted(result["probe_transfer"], key=lambda r: r["probe_task"])
    assert squad["status"] == "skipped" and "extractive QA" in squad["reason"] and squad["base"] is None
    assert rte["status"] == "ok" and rte["metric"] == "accuracy" and rte["drop"] == 0.0

    # the base value against scikit-learn's predict on the base store's features
    probe = bl.load_probe(world["data"]["rte"]["probe_model"])
    base, _ = read_base(world["data"]["rte"]["base"])
    labels = np.array([r["label"] for r in io.read_jsonl(world["data"]["rte"]["probe"])])
    predicted = sklearn_pipeline(probe)(base[probe["pooling"]][probe["layer"]])
    assert (rte["layer"], rte["pooling"]) == (2, "mean")  # baselines.probe_layer -1 = the last of 2 blocks
    assert rte["base"] == rte["finetuned"] == pytest.approx(np.mean(predicted == labels))
    assert result["lm"]["status"] == "skipped" and result["lm"]["reason"] == fg.NO_TEXT_REASON


def test_perturbed_model_against_hand_extracted_features(world, tmp_path):
    result, out = _run(world, "perturbed", tmp_path, text_file=world["text"])
    # independently: the perturbed backbone run example by example (no padding), mean over tokens,
    # stored in float16 as the base store is; CKA from Grams with the centring matrix
    tokenizer = models.load_tokenizer(world["cfg"]["model"])
    task_model = models.load_fine_tuned(world["runs"]["perturbed"] / "model", "classification").eval()
    records = io.read_jsonl(world["data"]["rte"]["probe"])
    max_length = world["data"]["rte"]["data"]["max_length"]["classification"]
    rows = []
    with torch.no_grad():
        for r in records:
            enc = tokenizer(r["text"], r["text_pair"], truncation=True, max_length=max_length, return_tensors="pt")
            rows.append(task_model.model(**enc, output_hidden_states=True).hidden_states[-1][0].mean(0).numpy())
    tuned = np.stack(rows).astype(np.float16)
    base, _ = read_base(world["data"]["rte"]["base"])
    expected = naive_cka(base["mean"][-1], tuned)
    (row,) = [r for r in result["out_of_task"]
              if (r["probe_task"], r["layer"], r["pooling"], r["metric"]) == ("rte", 2, "mean", "linear_cka")]
    assert row["layer_name"] == "block_1" and expected < 0.999
    assert row["value"] == pytest.approx(expected, abs=2e-3)
    assert row["bootstrap_se"] > 0

    probe = bl.load_probe(world["data"]["rte"]["probe_model"])
    labels = np.array([r["label"] for r in records])
    (rte,) = [r for r in result["probe_transfer"] if r["probe_task"] == "rte"]
    assert rte["finetuned"] == pytest.approx(np.mean(sklearn_pipeline(probe)(tuned) == labels), abs=1 / len(labels))
    assert rte["drop"] == pytest.approx(rte["base"] - rte["finetuned"])
    lm = result["lm"]
    assert lm["status"] == "ok" and lm["finetuned_loss"] != lm["base_loss"]

    tables = fg.forgetting_tables([out])
    assert list(tables["out_of_task"].columns) == RUN_KEYS + fg.OUT_OF_TASK_KEYS
    assert len(tables["out_of_task"]) == len(result["out_of_task"]) and len(tables["lm"]) == 1
    assert tables["lm"]["lr"].tolist() == ["1e-3"] and tables["probe_transfer"]["drop"].notna().sum() == 1
    assert tables["lm"]["base_perplexity"].iloc[0] == pytest.approx(lm["base_perplexity"])


def test_one_task_and_a_precision_mismatch(world, tmp_path):
    result, _ = _run(world, "full", tmp_path, others={})
    assert result["out_of_task"] == [] and result["probe_transfer"] == []
    empty = fg.forgetting_tables([])
    assert all(frame.empty for frame in empty.values()) and "bootstrap_se" in empty["out_of_task"]

    io.write_json(tmp_path / "bf16" / "metrics.json", {"meta": {"precision": "bf16", "status": "completed"}})
    world = {**world, "runs": {**world["runs"], "bf16": world["runs"]["full"]}}
    with pytest.raises(ValueError, match="trained in bf16 but .*rte.zarr was taken in fp32"):
        fg.run_forgetting(run=RUN, method=METHODS["full"], model_dir=world["runs"]["full"] / "model",
                          metrics_path=tmp_path / "bf16" / "metrics.json", model_cfg=world["cfg"]["model"],
                          task_def=world["cfg"]["task_defs"]["sst2"], others=_others(world), drift_cfg=DRIFT,
                          forgetting_cfg=FORGETTING, text_file=None, out_path=tmp_path / "x.json")


def test_intruder_intervention_at_lambda_one_is_the_trained_run(world, tmp_path):
    """ftdrift.analysis.intruders on a trained-looking LoRA adapter (with intruders): every λ gets a
    validation and a probe-transfer row; at λ = 1 the validation metric is the merged model's (predicted
    here through the same path) and the probe transfer equals run_forgetting's. (The operation at other λ:
    tests/analysis/test_weights.py.)"""
    from ftdrift.analysis import intruders, tuned
    from ftdrift.analysis.deployment_cases import Chosen

    cfg, tokenizer = world["cfg"], models.load_tokenizer(world["cfg"]["model"])
    task_def, method = cfg["task_defs"]["sst2"], METHODS["lora"]
    torch.manual_seed(0)
    model, _ = methods.adapt(models.load_model(cfg["model"], "classification", 2, tokenizer), method)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: a large update, so that intruders appear
                p.copy_(torch.randn_like(p) * 2.0)
    run_dir = tmp_path / "run"
    methods.save_adapter(model, method, run_dir / "model")
    io.write_json(run_dir / "metrics.json", {"meta": {"precision": "fp32", "status": "completed"}})
    records = io.read_jsonl(world["data"]["sst2"]["probe"].parent / "validation.jsonl")[:12]
    others = {"rte": dict(world["data"]["rte"])}
    forgetting = intruders.Forgetting(cfg["model"], tokenizer, others, None, None, "fp32")
    chosen = Chosen("sst2", "lora", "1e-3", 4, 1, "sst2/lora/x", str(run_dir / "model"), None)
    rows = pd.DataFrame(intruders.intervene_run(
        chosen, method, model_cfg=cfg["model"], task_def=task_def, data=world["data"]["sst2"]["data"],
        tokenizer=tokenizer, records=records, lambdas=[1.0, 0.0], top_k=10, epsilon=0.5, forgetting=forgetting,
        batch_size=4, precision="fp32"), columns=intruders.COLUMNS)
    assert list(rows.measure) == ["validation", "probe_transfer"] * 2 and (rows.n_intruders > 0).all()
    merged = tuned.load_tuned(run_dir / "model", method, cfg["model"], task_def, tokenizer, merge=True)
    expected = intruders.validation_metric(merged, tokenizer, records, task_def, world["data"]["sst2"]["data"],
                                           cfg["model"], 4, "fp32")
    at_one = rows[rows["lambda"] == 1.0].set_index("measure")
    assert at_one.loc["validation", "value"] == pytest.approx(expected, abs=1e-12)
    result = fg.run_forgetting(run={**RUN, "method": "lora"}, method=method, model_dir=run_dir / "model",
                               metrics_path=run_dir / "metrics.json", model_cfg=cfg["model"], task_def=task_def,
                               others=others, drift_cfg=DRIFT, forgetting_cfg=FORGETTING, text_file=None,
                               out_path=tmp_path / "f.json")
    transfer = result["probe_transfer"][0]
    assert at_one.loc["probe_transfer", "value"] == pytest.approx(transfer["finetuned"], abs=1e-12)
    assert at_one.loc["probe_transfer", "baseline"] == pytest.approx(transfer["base"], abs=1e-12)
