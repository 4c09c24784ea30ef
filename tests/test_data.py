"""Data loaders on small fixtures in the original formats, including malformed ones."""

import json

import pytest

from ftdrift import config as ftconfig
from ftdrift.data import DataError, carve_dev, prepare_task, read_glue_tsv, read_squad_json
from helpers import squad_payload, write_glue, write_squad

CATALOG = ftconfig.load_catalog(ftconfig.CONFIG_DIR / "tasks.yaml")


@pytest.fixture()
def data_dir(tmp_path):
    write_glue(tmp_path)
    write_squad(tmp_path)
    return tmp_path


def test_glue_readers_keep_quotes_bom_and_labels(data_dir):
    mrpc = read_glue_tsv(data_dir / "glue/MRPC/train.tsv", CATALOG["mrpc"], "train")
    assert len(mrpc) == 48
    assert mrpc[0]["text"].startswith('"')  # no quote handling: the quote stays in the text
    assert set(r["label"] for r in mrpc) <= {0, 1}
    rte = read_glue_tsv(data_dir / "glue/RTE/dev.tsv", CATALOG["rte"], "validation")
    assert rte[3]["id"] == "3" and rte[0]["label"] in (0, 1)
    sst = read_glue_tsv(data_dir / "glue/SST-2/train.tsv", CATALOG["sst2"], "train")
    assert sst[0]["id"] == "train-0" and "text_pair" not in sst[0]


def test_real_glue_quirks(tmp_path):
    """A row with an unbalanced quote must not swallow the next rows (QUOTE_NONE semantics)."""
    path = tmp_path / "train.tsv"
    path.write_text('sentence\tlabel\n" a quote that never ends \t1\nnext row \t0\n')
    rows = read_glue_tsv(path, CATALOG["sst2"], "train")
    assert [r["label"] for r in rows] == [1, 0]


@pytest.mark.parametrize("content, message", [
    ("", "empty file"),
    ("sentence\tlabel\n", "empty file"),
    ("text\tlabel\nfoo\t1\n", "missing column 'sentence'"),
    ("sentence\tlabel\nfoo\t1\nbar\t7\n", "row 3: unknown label '7'"),
    ("sentence\tlabel\nfoo\n", "row 2: 1 fields"),
])
def test_malformed_glue_names_file_row_reason(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as err:
        read_glue_tsv(path, CATALOG["sst2"], "train")
    assert str(path) in str(err.value)


def test_squad_reader_and_errors(tmp_path):
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(squad_payload(3, 0, "q")))
    records = read_squad_json(path)
    assert len(records) == 9
    impossible = [r for r in records if r["id"].endswith("c")]
    assert all(r["answers"]["text"] == [] for r in impossible)  # plausible answers are not answers
    assert records[1]["answers"]["text"][1].startswith("in ")

    broken = tmp_path / "broken.json"
    broken.write_text('{"data": [')
    with pytest.raises(DataError, match="broken JSON"):
        read_squad_json(broken)
    payload = squad_payload(1, 0, "x")
    payload["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] += 3
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(payload))
    with pytest.raises(DataError, match="question 'x0a'.*answer span outside its context"):
        read_squad_json(outside)


def test_dev_carve_is_seeded_and_disjoint():
    records = [{"id": str(i), "context": f"c{i // 3}"} for i in range(60)]
    train_a, dev_a = carve_dev(records, 9, seed=3)
    train_b, dev_b = carve_dev(records, 9, seed=3)
    assert dev_a == dev_b and len(dev_a) == 9
    assert not {r["id"] for r in train_a} & {r["id"] for r in dev_a}
    # questions of one paragraph stay on one side
    assert not {r["context"] for r in train_a} & {r["context"] for r in dev_a}
    assert carve_dev(records, 9, seed=4)[1] != dev_a
    with pytest.raises(DataError, match="dev_size"):
        carve_dev(records, 60, seed=0)


def test_prepare_task_records_ids(data_dir, tmp_path):
    settings = {"split_seed": 0, "dev_size": 8, "probe_size": 5, "max_train_examples": 20,
                "max_validation_examples": None}
    out = tmp_path / "out"
    summary = prepare_task("mrpc", CATALOG["mrpc"], data_dir, settings, out)
    assert summary["counts"] == {"train": 20, "dev": 8, "validation": 24, "probe": 5}
    assert set(summary["ids"]["probe"]) <= set(summary["ids"]["validation"])
    saved = json.loads((out / "splits.json").read_text())
    assert saved["ids"]["dev"] == summary["ids"]["dev"]
    assert len(saved["sources"]["train"]["sha256"]) == 64
    again = prepare_task("mrpc", CATALOG["mrpc"], data_dir, settings, tmp_path / "again")
    assert again["ids"] == summary["ids"]


def test_no_data_dir_and_no_hub_says_how(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from ftdrift.data import load_split

    with pytest.raises(DataError, match="data_dir"):
        load_split(CATALOG["rte"], None, "train")
