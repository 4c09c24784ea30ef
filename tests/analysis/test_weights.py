"""ftdrift.analysis.weights against computations done here by hand: the saved safetensors files
are read directly and every spectrum and intruder count is recomputed with numpy; ΔW of each
method (LoRA: scaling·B·A; PiSSA: against the ORIGINAL weights, not the residual; IA3: a diagonal
scaling; full: every changed block matrix) against its own formula; and the intruder intervention
(ftdrift.analysis.intruders) against an SVD done here."""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.numpy import load_file

from ftdrift.analysis import intruders
from ftdrift.analysis.weight_tables import aggregate_intruders, aggregate_weights
from ftdrift.analysis.weights import analyse_run
from ftdrift.core import io
from ftdrift.modeling import methods, models
from ftdrift.study.config import load_catalog
from ftdrift.study.methods import Method
from ftdrift.testing import REPO, write_tiny_llama

TASK = load_catalog(REPO / "config" / "tasks.yaml")["sst2"]
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": None}
METHODS = {"full": Method("full"),
           "lora": Method("lora", {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": "qv"}),
           "pissa": Method("pissa", {"peft_type": "LORA", "r": 2, "lora_alpha": 2, "init_lora_weights": "pissa",
                                     "target_modules": "qv"}),
           "ia3": Method("ia3", {"peft_type": "IA3"})}
TARGETS = [(layer, m) for layer in range(2) for m in ("q_proj", "v_proj")]


def path(matrix):
    """The block-relative path the analysis names a Llama attention matrix by."""
    return f"self_attn.{matrix}"
TEXTS = ["the film is good and warm", "the plot is dull and weak", "a superb cast", "grim ending",
         "the score is bright", "cold script and poor scene"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    model_dir = write_tiny_llama(root / "tiny-llama", TEXTS * 5)
    # the checkpoint is a LlamaForCausalLM: its backbone's tensors under `model.`, plus an LM head that no
    # task model holds
    weights = {k.removeprefix("model."): v for k, v in load_file(str(model_dir / "model.safetensors")).items()
               if k.startswith("model.")}
    return {"root": root, "model_cfg": {"name_or_path": str(model_dir), "family": "llama"}, "weights": weights}


def run_fields(method):
    return {"task": "sst2", "method": method, "lr": "5e-3", "batch_size": 4, "seed": 1}


def analyse_all(base, model_dir, method, **kwargs):
    """(rows, summary, sweep) of analyse_run."""
    args = dict(model_dir=model_dir, model_cfg=base["model_cfg"], task_def=TASK, method=METHODS[method],
                run=run_fields(method), top_k=10, epsilon=0.5)
    return analyse_run(**{**args, **kwargs})


def analyse(base, model_dir, method, **kwargs):
    """(rows, summary) of analyse_run."""
    return analyse_all(base, model_dir, method, **kwargs)[:2]


def base_task_model(base):
    tokenizer = models.load_tokenizer(base["model_cfg"])
    return models.load_model(base["model_cfg"], "classification", 2, tokenizer)


# -- independent reference computations (numpy only)

def hand_spectrum(delta):
    s = np.linalg.svd(delta, compute_uv=False)
    p = s[s > 0] / s[s > 0].sum()
    return {"effective_rank": math.exp(-(p * np.log(p)).sum()) if s[0] > 0 else 0.0,
            "stable_rank": (s ** 2).sum() / s[0] ** 2 if s[0] > 0 else 0.0,
            "frobenius_norm": math.sqrt((delta ** 2).sum()), "top_singular_value": s[0]}


def hand_intruders(w_base, w_ft, k, epsilon):
    u_base = np.linalg.svd(w_base)[0]
    u_ft = np.linalg.svd(w_ft)[0][:, :k]
    return int(sum(np.abs(u_base.T @ u_ft[:, j]).max() < epsilon for j in range(u_ft.shape[1])))


def hand_energy_rank(delta, fraction):
    """Fewest singular values whose squared sum reaches `fraction` of the total (explicit loop)."""
    s = np.linalg.svd(delta, compute_uv=False)
    total, acc = (s**2).sum(), 0.0
    for n, x in enumerate(s, start=1):
        acc += x * x
        if acc >= fraction * total * (1 - 1e-9):
            return n


def check_rows(rows, expected_deltas, w_bases):
    assert len(rows) == len(expected_deltas)
    for (layer, matrix), delta in expected_deltas.items():
        row = rows[(rows.layer == layer) & (rows.matrix == path(matrix))]
        assert len(row) == 1
        row = row.iloc[0]
        assert row.module == f"model.layers.{layer}.self_attn.{matrix}"
        for key, value in hand_spectrum(delta).items():
            assert row[key] == pytest.approx(value, rel=1e-6, abs=1e-12), (layer, matrix, key)
        w_base = w_bases[(layer, matrix)]
        assert row.intruder_dims == hand_intruders(w_base, w_base + delta, 10, 0.5)
        assert row.rank_energy == (hand_energy_rank(delta, 0.9) if np.abs(delta).max() > 0 else 0), (layer, matrix)


# -- LoRA

@pytest.fixture(scope="module")
def lora_dir(base):
    torch.manual_seed(3)
    model, _ = methods.adapt(base_task_model(base), METHODS["lora"])  # as training adapts it
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: give the adapter a real update
                param.copy_(torch.randn_like(param) * 0.3)
    folder = base["root"] / "lora-model"
    methods.save_adapter(model, METHODS["lora"], folder)
    return folder


def test_lora_rows_match_hand_computed_delta(base, lora_dir):
    rows, summary = analyse(base, lora_dir, "lora")
    adapter = load_file(str(lora_dir / "adapter_model.safetensors"))
    scale = LORA["alpha"] / LORA["r"]
    deltas, w_bases = {}, {}
    for layer, matrix in TARGETS:
        prefix = f"base_model.model.model.layers.{layer}.self_attn.{matrix}"
        a = adapter[f"{prefix}.lora_A.weight"].astype(np.float64)
        b = adapter[f"{prefix}.lora_B.weight"].astype(np.float64)
        deltas[(layer, matrix)] = scale * b @ a
        w_bases[(layer, matrix)] = base["weights"][f"layers.{layer}.self_attn.{matrix}.weight"].astype(np.float64)
    check_rows(rows, deltas, w_bases)
    assert (rows.effective_rank <= LORA["r"] + 1e-6).all() and (rows.effective_rank > 1).all()
    assert list(rows.columns[:5]) == ["task", "method", "lr", "batch_size", "seed"]
    assert (rows.method == "lora").all() and (rows.lr == "5e-3").all()

    # trainable = everything the adapter file holds (LoRA matrices + the trained head);
    # total = the base task model (the Llama's tensors + a hidden x 2 score head, no bias)
    trainable = sum(t.size for t in adapter.values())
    assert any("score" in k for k in adapter)
    hidden = base["weights"]["layers.0.self_attn.q_proj.weight"].shape[1]
    assert summary["trainable_params"] == trainable
    assert summary["total_params"] == sum(t.size for t in base["weights"].values()) + hidden * 2
    assert summary["method"]["name"] == "lora" and summary["method"]["adapter_config"]["r"] == 4
    assert summary["matrices"] == ["self_attn.q_proj", "self_attn.v_proj"] and summary["not_analysed"] == []
    json.dumps(summary)  # serialisable as is


def test_intruder_counts_match_peft_reduce_intruder_dimension(base, lora_dir):
    """ftdrift's intruder counts equal those peft 0.21.2's `reduce_intruder_dimension` logs.

    peft (tuners/lora/intruders.py) defines the count as ftdrift does: thin SVDs of W = base
    weight and W + get_delta_weight; for each of the top_k left singular vectors of the merged
    matrix, its maximum |cosine| with the base's left singular vectors; those below
    threshold_epsilon are intruders. It logs "<layer>: Intruders: n" or "<layer>: No intruders"
    (and then rewrites the adapter, here into a second one). The one difference is precision:
    peft's SVDs run in float32, ftdrift's in float64, so the comparison first checks that no
    top-k cosine lies within 1e-3 of epsilon, where both must agree.
    """
    from peft.tuners.lora.intruders import reduce_intruder_dimension

    rows, _ = analyse(base, lora_dir, "lora")
    model = methods.load(base_task_model(base), lora_dir)
    for layer, matrix in TARGETS:  # margin: float32 and float64 cannot land on different sides
        module = getattr(model.base_model.model.model.layers[layer].self_attn, matrix)
        w = module.get_base_layer().weight.detach().double().numpy()
        delta = module.get_delta_weight(methods.ADAPTER).detach().double().numpy()
        u_base = np.linalg.svd(w, full_matrices=False)[0]
        u_ft = np.linalg.svd(w + delta, full_matrices=False)[0][:, :10]
        assert np.abs(np.abs(u_base.T @ u_ft).max(axis=0) - 0.5).min() > 1e-3, (layer, matrix)

    logged = []
    with torch.no_grad():
        reduce_intruder_dimension(model, top_k=10, threshold_epsilon=0.5, logging_sink=logged.append)
    peft_counts = {}
    for line in logged:
        found = re.fullmatch(r"base_model\.model\.model\.layers\.(\d+)\.self_attn\.(\w+): "
                             r"(?:Intruders: (\d+)|No intruders)", line)
        if found:
            peft_counts[(int(found[1]), found[2])] = int(found[3] or 0)
    ours = {(int(r.layer), r.matrix.rsplit(".", 1)[-1]): int(r.intruder_dims) for r in rows.itertuples()}
    assert set(peft_counts) == set(TARGETS)
    assert ours == peft_counts
    assert any(ours.values())  # a case with intruders, not only zeros


# -- full fine-tuning

def intruder_perturbation(w_base: np.ndarray, n: int, strength: float) -> np.ndarray:
    """n rank-1 updates that each become an intruder dimension by construction.

    Their left (right) vectors lie in the span of the base's bottom 16 left (right) singular
    vectors, as Hadamard (±1/4) combinations of them: orthogonal to the base's top singular
    vectors, cosine at most sqrt(n)/4 < 0.5 with any base singular vector, and the update is
    block-diagonal in the base's singular bases, so the base's top directions stay exact.
    """
    u, s, vt = np.linalg.svd(w_base)
    hadamard = np.array([[1.0]])
    while hadamard.shape[0] < 16:
        hadamard = np.block([[hadamard, hadamard], [hadamard, -hadamard]])
    u_bottom, v_bottom = u[:, -16:], vt[-16:].T
    delta = np.zeros_like(w_base)
    for j in range(n):
        h = hadamard[j + 1] / 4.0  # unit vector, entries ±1/4
        delta += strength * s[0] * (n - j) * np.outer(u_bottom @ h, v_bottom @ h)
    return delta


@pytest.fixture(scope="module")
def full_dir(base):
    model = base_task_model(base)
    rng = np.random.default_rng(5)
    with torch.no_grad():
        q = model.model.layers[0].self_attn.q_proj.weight
        q += torch.from_numpy(intruder_perturbation(q.double().numpy(), 3, 20.0)).float()
        v = model.model.layers[1].self_attn.v_proj.weight
        v += torch.from_numpy(rng.normal(0, 1e-4, v.shape)).float()  # base entries ~0.02
        model.score.weight.normal_()  # the head changes too: not analysed
        model.model.layers[0].mlp.up_proj.weight.mul_(2)  # changed too: analysed
    path = base["root"] / "full-model"
    model.save_pretrained(path)
    return path


def test_full_rows_match_hand_computed_delta(base, full_dir):
    """Every block matrix that changed is analysed (q of layer 0, v of layer 1, up_proj of layer 0), no other."""
    rows, summary = analyse(base, full_dir, "full")
    tuned = load_file(str(full_dir / "model.safetensors"))
    up = "layers.0.mlp.up_proj.weight"
    assert sorted(zip(rows.layer, rows.matrix)) == [(0, "mlp.up_proj"), (0, "self_attn.q_proj"), (1, "self_attn.v_proj")]
    up_row = rows[rows.matrix == "mlp.up_proj"].iloc[0]
    up_delta = tuned[f"model.{up}"].astype(np.float64) - base["weights"][up].astype(np.float64)
    assert up_row.frobenius_norm == pytest.approx(hand_spectrum(up_delta)["frobenius_norm"], rel=1e-9)
    rows = rows[rows.matrix != "mlp.up_proj"]
    deltas, w_bases = {}, {}
    for layer, matrix in [(0, "q_proj"), (1, "v_proj")]:
        w_base = base["weights"][f"layers.{layer}.self_attn.{matrix}.weight"].astype(np.float64)
        w_ft = tuned[f"model.layers.{layer}.self_attn.{matrix}.weight"].astype(np.float64)
        deltas[(layer, matrix)], w_bases[(layer, matrix)] = w_ft - w_base, w_base
    check_rows(rows, deltas, w_bases)
    by_matrix = rows.set_index(["layer", "matrix"])
    assert by_matrix.loc[(0, path("q_proj")), "intruder_dims"] == 3  # as constructed
    assert by_matrix.loc[(1, path("v_proj")), "intruder_dims"] == 0  # small noise keeps the directions
    assert summary["trainable_params"] == summary["total_params"] == sum(t.size for t in tuned.values())
    assert summary["method"] == {"name": "full", "peft": None, "adapter_config": None}


def test_intruder_settings_reach_the_count(base, full_dir):
    rows, _ = analyse(base, full_dir, "full", top_k=2)
    assert rows.set_index(["layer", "matrix"]).loc[(0, path("q_proj")), "intruder_dims"] == 2
    rows, _ = analyse(base, full_dir, "full", epsilon=0.05)  # nothing is that far from every base vector
    assert (rows.intruder_dims == 0).all()


def test_aggregate_keeps_runs_and_lr_strings(base, tmp_path):
    frames = []
    for i, lr in enumerate(["1e-3", "5e-3"]):
        frame = pd.DataFrame([{**run_fields("lora"), "lr": lr, "module": "m", "layer": 0, "matrix": "q_proj",
                               "effective_rank": 1.0, "stable_rank": 1.0, "frobenius_norm": 1.0,
                               "top_singular_value": 1.0, "intruder_dims": i, "rank_energy": 1}])
        io.write_csv(tmp_path / f"{i}.csv", frame)
        frames.append(frame)
    table = aggregate_weights([tmp_path / "0.csv", tmp_path / "1.csv"])
    assert list(table.lr) == ["1e-3", "5e-3"] and list(table.intruder_dims) == [0, 1]


# -- the sweep over (k, ε) and the energy rank

@pytest.mark.parametrize("method", ["full", "lora"])
def test_intruder_sweep_rows_match_hand_counts(base, method, request):
    model_dir = request.getfixturevalue(f"{method}_dir")
    ks, eps = [2, 5, 40], [0.3, 0.5, 0.8]
    rows, summary, sweep = analyse_all(base, model_dir, method, intruder_ks=ks, intruder_epsilons=eps,
                                       delta_energy=0.5)
    assert list(sweep.columns) == ["task", "method", "lr", "batch_size", "seed", "module", "layer", "matrix", "k",
                                   "epsilon", "intruders"]
    assert len(sweep) == len(rows) * len(ks) * len(eps) == 3 * 9 if method == "full" else len(TARGETS) * 9
    assert (sweep.method == method).all() and (sweep.lr == "5e-3").all()
    tuned = None if method == "lora" else load_file(str(model_dir / "model.safetensors"))
    adapter = load_file(str(model_dir / "adapter_model.safetensors")) if tuned is None else None
    for row in rows.itertuples():
        key = f"layers.{row.layer}.{row.matrix}.weight"
        w_base = base["weights"][key].astype(np.float64)
        if tuned is not None:
            w_ft = tuned[f"model.{key}"].astype(np.float64)
        else:  # LoRA: W + scaling·B·A from the saved file
            prefix = f"base_model.model.model.layers.{row.layer}.{row.matrix}"
            w_ft = w_base + LORA["alpha"] / LORA["r"] * (adapter[f"{prefix}.lora_B.weight"].astype(np.float64)
                                                         @ adapter[f"{prefix}.lora_A.weight"].astype(np.float64))
        got = sweep[(sweep.layer == row.layer) & (sweep.matrix == row.matrix)]
        assert [(r.k, r.epsilon) for r in got.itertuples()] == [(k, e) for k in ks for e in eps]
        assert list(got.intruders) == [hand_intruders(w_base, w_ft, k, e) for k in ks for e in eps], key
        assert row.rank_energy == hand_energy_rank(w_ft - w_base, 0.5)
    assert sweep.intruders.max() > 0
    if method == "full":  # the constructed q_proj of layer 0: 3 intruders at k >= 3 and ε = 0.5 (see full_dir)
        q0 = sweep[(sweep.layer == 0) & (sweep.matrix == path("q_proj")) & (sweep.epsilon == 0.5)]
        assert list(q0.intruders) == [2, 3, 3]
    else:
        assert (rows.rank_energy <= LORA["r"]).all()
    assert (summary["intruder_ks"], summary["intruder_epsilons"], summary["delta_energy"]) == (ks, eps, 0.5)
    json.dumps(summary)


# -- PiSSA and IA3: ΔW against the original weights, each by its own formula

def adapted_and_saved(base, name, folder):
    """(the trained-looking adapted model, its base task model's original weights) after save_adapter."""
    original = {k: v.detach().double().clone() for k, v in base_task_model(base).state_dict().items()}
    torch.manual_seed(3)
    model, _ = methods.adapt(base_task_model(base), METHODS[name])
    initial = methods.save_initial(model, METHODS[name], folder / "initial")
    with torch.no_grad():
        g = torch.Generator().manual_seed(4)
        for _, p in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    methods.save_adapter(model, METHODS[name], folder / "adapter", initial=initial)
    return model, original


def test_pissa_delta_is_against_the_original_weights_not_the_residual(base, tmp_path):
    """ΔW = W_res + scaling·B·A − W_original (W_res = W − B0·A0: what peft leaves in the base layer)."""
    model, original = adapted_and_saved(base, "pissa", tmp_path)
    rows, _ = analyse(base, tmp_path / "adapter", "pissa")
    assert len(rows) == len(TARGETS)
    for layer, matrix in TARGETS:
        module = getattr(model.get_base_model().model.layers[layer].self_attn, matrix)
        a = module.lora_A[methods.ADAPTER].weight.detach().double()
        b = module.lora_B[methods.ADAPTER].weight.detach().double()
        residual = module.get_base_layer().weight.detach().double()
        w_original = original[f"model.layers.{layer}.self_attn.{matrix}.weight"]
        delta = (residual + module.scaling[methods.ADAPTER] * b @ a - w_original).numpy()
        row = rows[(rows.layer == layer) & (rows.matrix == path(matrix))].iloc[0]
        # the update from the residual alone would be scaling·B·A: rank r; against W it has rank 2r
        assert row.frobenius_norm == pytest.approx(math.sqrt((delta**2).sum()), rel=1e-5)
        assert row.top_singular_value == pytest.approx(np.linalg.svd(delta, compute_uv=False)[0], rel=1e-5)
        assert row.rank_energy <= 2 * METHODS["pissa"].peft["r"]
        assert row.intruder_dims == hand_intruders(w_original.numpy(), w_original.numpy() + delta, 10, 0.5)


def test_ia3_delta_is_the_diagonal_scaling_of_the_weight(base, tmp_path):
    """IA3 scales a layer's output rows (k, v: diag(l)·W) or, for a feedforward layer, its input columns
    (down_proj: W·diag(l)): ΔW = (l − 1) W along that axis."""
    model, original = adapted_and_saved(base, "ia3", tmp_path)
    rows, summary = analyse(base, tmp_path / "adapter", "ia3")
    adapted = dict(model.get_base_model().named_modules())
    assert len(rows) > 0 and summary["not_analysed"] == []
    for row in rows.itertuples():
        module = adapted[row.module]
        scale = module.ia3_l[methods.ADAPTER].detach().double()  # [out, 1], or [1, in] when feedforward
        w = original[f"{row.module}.weight"]
        delta = ((scale - 1) * w).numpy()
        assert row.frobenius_norm == pytest.approx(math.sqrt((delta**2).sum()), rel=1e-6), row.module
    assert {"self_attn.k_proj", "self_attn.v_proj", "mlp.down_proj"} == set(rows.matrix)


def test_intervention_scales_exactly_the_intruder_directions(base, full_dir):
    """W_λ = W + (λ − 1)·Σ_intruders s u vᵀ: at λ = 0 the intruder singular values are gone and the other
    singular triplets of W are unchanged; the count equals the weight analysis's (k = 10, ε = 0.5)."""
    rows, _ = analyse(base, full_dir, "full")
    tuned = load_file(str(full_dir / "model.safetensors"))
    key = "layers.0.self_attn.q_proj.weight"
    w_pre = base["weights"][key].astype(np.float64)
    w = tuned[f"model.{key}"].astype(np.float64)
    component, n = intruders.intruder_component(w_pre, w, 10, 0.5)
    assert n == 3 == rows.set_index(["layer", "matrix"]).loc[(0, path("q_proj")), "intruder_dims"]
    u, s, vt = np.linalg.svd(w)
    u_pre = np.linalg.svd(w_pre)[0]
    index = [i for i in range(10) if np.abs(u_pre.T @ u[:, i]).max() < 0.5]
    s_half = s.copy()
    s_half[index] *= 0.5
    np.testing.assert_allclose(intruders.scaled(w, component, 0.5), (u[:, : s.size] * s_half) @ vt, atol=1e-10)
    np.testing.assert_allclose(intruders.scaled(w, component, 1.0), w, atol=0)
    without = np.sort(np.delete(s, index))[::-1]
    np.testing.assert_allclose(np.linalg.svd(intruders.scaled(w, component, 0.0), compute_uv=False)[: without.size],
                               without, atol=1e-10)


def test_aggregate_intruders_keeps_runs_lr_strings_and_names_a_bad_file(tmp_path):
    for i, lr in enumerate(["1e-3", "5e-3"]):
        frame = pd.DataFrame([{**run_fields("full"), "lr": lr, "module": "m", "layer": 0, "matrix": "q_proj",
                               "k": k, "epsilon": 0.5, "intruders": i + k} for k in (5, 10)])
        io.write_csv(tmp_path / f"{i}.intruders.csv", frame)
    table = aggregate_intruders([tmp_path / "0.intruders.csv", tmp_path / "1.intruders.csv"])
    assert list(table.columns) == ["task", "method", "lr", "batch_size", "seed", "module", "layer", "matrix", "k",
                                   "epsilon", "intruders"]
    assert list(table.lr) == ["1e-3", "1e-3", "5e-3", "5e-3"] and list(table.intruders) == [5, 10, 6, 11]
    assert list(aggregate_intruders([]).columns) == list(table.columns)
    io.write_csv(tmp_path / "old.csv", pd.DataFrame([{**run_fields("full"), "module": "m"}]))
    with pytest.raises(ValueError, match=r"old.csv: columns \['layer'"):
        aggregate_intruders([tmp_path / "old.csv"])
