"""Issue 21's method config, verbatim, through the real workflow on the tiny SST-2 setup: every
method trains, is validated (reload, merge), analysed in weight space, compared with the
reference, ranked, and has its intruders scaled. Outcomes are checked against the runs' own files."""

import json

import pandas as pd
import pytest

from ftdrift.testing import TINY_CONFIG, make_tiny_workdir, run_snakemake

METHODS = {
    "full": {},
    "lora": {"peft": {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": "qv"}},
    "lora_all_r16": {"peft": {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": "all-linear"}},
    "rslora_r16": {"peft": {"peft_type": "LORA", "r": 16, "lora_alpha": 16, "use_rslora": True,
                            "target_modules": "all-linear"}},
    "dora_r8": {"peft": {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_dora": True, "target_modules": "qv"}},
    "pissa_r8": {"peft": {"peft_type": "LORA", "r": 8, "lora_alpha": 8, "init_lora_weights": "pissa",
                          "target_modules": "qv"}},
    "ia3": {"peft": {"peft_type": "IA3"}},
}
RATES = {name: {"classification": [1e-3 if name == "full" else 5e-3], "extractive_qa": [1e-3]} for name in METHODS}
RUN = "lr{lr}_bs4_seed1"


@pytest.fixture(scope="module")
def axis(tmp_path_factory):
    # 2 steps: the test is about every method passing through every stage, not about learning
    workdir = make_tiny_workdir(tmp_path_factory.mktemp("axis"), tasks=["sst2"], methods=METHODS,
                                grid={"seeds": [1], "batch_sizes": [4], "learning_rates": RATES},
                                training={**TINY_CONFIG["training"], "max_steps": 2, "eval_steps": 2, "save_steps": 2},
                                representations={**TINY_CONFIG["representations"], "snapshot_steps": 1})
    targets = ["results/tables/methods.csv", "results/tables/intruder_intervention.csv",
               *(f"results/checks/sst2/{m}/{RUN.format(lr='1e-3' if m == 'full' else '5e-3')}.json" for m in METHODS)]
    run_snakemake(workdir, *targets)
    return workdir


def run_dir(workdir, kind, method, suffix=""):
    return workdir / "results" / kind / "sst2" / method / (RUN.format(lr="1e-3" if method == "full" else "5e-3") + suffix)


def test_every_method_trains_validates_and_merges(axis):
    for method in METHODS:
        meta = json.loads((run_dir(axis, "runs", method) / "metrics.json").read_text())["meta"]
        assert meta["status"] == "completed" and meta["method"] == METHODS[method], method
        check = json.loads(run_dir(axis, "checks", method, ".json").read_text())
        assert check["passed"], (method, check)
        if method != "full":  # the merged adapter computes the unmerged one
            assert check["merge_max_abs_logit_diff"] < 1e-4, (method, check)
            assert meta["method_info"]["adapted"], method


def test_every_method_is_analysed_in_weight_space(axis):
    """ΔW of each adapted matrix: a LoRA-family update has rank ≤ r (PiSSA: ≤ 2r against the
    original weights, the converted adapter); IA3's is a diagonal scaling of W (full rank)."""
    ranks = {"lora": 8, "lora_all_r16": 16, "rslora_r16": 16, "pissa_r8": 16}
    for method in METHODS:
        table = pd.read_csv(run_dir(axis, "weights", method, ".csv"))
        assert len(table) > 0 and table["effective_rank"].notna().all(), method
        if method in ranks:
            # the entropy effective rank (Roy & Vetterli 2007) and the energy rank are both ≤ rank(ΔW)
            assert (table["rank_energy"] <= ranks[method]).all(), (method, table["rank_energy"].max())
            assert (table["effective_rank"] <= ranks[method] + 1e-3).all(), (method, table["effective_rank"].max())


def test_each_method_is_compared_with_the_reference_and_ranked(axis):
    methods = pd.read_csv(axis / "results/tables/methods.csv")
    assert set(methods.method) == set(METHODS)
    compared = methods[methods.method != "full"]
    assert sorted(compared.closeness_rank.astype(int)) == list(range(1, len(METHODS)))
    for method in compared.method:
        pair = pd.read_csv(axis / f"results/similarity/sst2/{method}.csv")
        assert set(pair.reference) == {"full"} and set(pair.method) == {method} and len(pair) > 0
    intervention = pd.read_csv(axis / "results/tables/intruder_intervention.csv")
    assert set(intervention.method) == set(METHODS) - {"full"}
    assert set(intervention["lambda"]) == {1.0, 0.75, 0.5, 0.25, 0.0}
