"""Data loaders on small fixtures in the original formats, including malformed ones."""

import json
from pathlib import Path

import datasets
import pytest

from ftdrift.data.tasks import (
    DataError,
    carve_dev,
    prepare_task,
    read_glue_tsv,
    read_squad_json,
    records_from_hub,
    validate_records,
)
from ftdrift.study import config as ftconfig
from ftdrift.testing import squad_payload, write_glue, write_squad

CATALOG = ftconfig.load_catalog(ftconfig.CONFIG_DIR / "tasks.yaml")
SHARED_GLUE = Path("/work/shared/data/glue")
# CoLA's layout: no header; source, label, original label, sentence
HEADERLESS = {"type": "single_sentence", "format": "glue_tsv", "header": False,
              "columns": {"label": 1, "text": 3}, "labels": ["0", "1"]}


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


@pytest.mark.parametrize("task, content, message", [
    # header files: every row has the header's field count
    ("sst2", "sentence\tlabel\nfoo\t1\nbar\t0\textra\n", r"row 3: 3 fields, expected 2 \(as the header\)"),
    ("sst2", "sentence\tlabel\nfoo\t1\t\n", r"row 2: 3 fields, expected 2"),  # a trailing tab is a field too
    ("rte", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\tc\tentailment\n",
     r"row 3: 5 fields, expected 4"),
    # row numbers are file lines, blank lines included
    ("sst2", "sentence\tlabel\n\nfoo\t1\n\nbar\t0\tx\n", r"row 5: 3 fields, expected 2"),
    # headerless files: every row has the first row's field count
    ("headerless", "src\t1\t\tgood film\nsrc\t0\t*\tbad\tfilm\n", r"row 2: 5 fields, expected 4 \(as row 1\)"),
    ("headerless", "src\t1\t\tgood\tfilm\nsrc\t0\t*\tbad film\n", r"row 2: 4 fields, expected 5 \(as row 1\)"),
    ("headerless", "src\t1\t\tgood film\nsrc\t0\n", r"row 2: 2 fields, expected at least 4"),
])
def test_glue_rows_with_other_field_counts_are_refused(tmp_path, task, content, message):
    path = tmp_path / "rows.tsv"
    path.write_text(content)
    task_def = HEADERLESS if task == "headerless" else CATALOG[task]
    with pytest.raises(DataError, match=message) as err:
        read_glue_tsv(path, task_def, "train")
    assert str(path) in str(err.value)


def test_headerless_glue_reads_rows_with_the_first_rows_width(tmp_path):
    path = tmp_path / "in_domain_train.tsv"
    path.write_text("gj04\t1\t\tThe sailors rode the breeze .\n\ngj04\t0\t*\tThe more we study .\n")
    rows = read_glue_tsv(path, HEADERLESS, "train")
    assert rows == [{"id": "train-0", "text": "The sailors rode the breeze .", "label": 1},
                    {"id": "train-1", "text": "The more we study .", "label": 0}]


@pytest.mark.skipif(not SHARED_GLUE.is_dir(), reason="real GLUE files not present")
def test_real_glue_files_still_read():
    path = SHARED_GLUE / "RTE" / "dev.tsv"
    rows = read_glue_tsv(path, CATALOG["rte"], "validation")
    lines = path.read_text(encoding="utf-8").splitlines()
    fields = [line.split("\t") for line in lines[1:]]
    assert len(rows) == len(fields) == 277
    assert [r["id"] for r in rows] == [f[0] for f in fields]
    assert [r["text_pair"] for r in rows] == [f[2].strip() for f in fields]
    assert [r["label"] for r in rows] == [["entailment", "not_entailment"].index(f[3]) for f in fields]
    for task, name in (("sst2", "SST-2"), ("mrpc", "MRPC")):
        path = SHARED_GLUE / name / "dev.tsv"
        n_lines = len([line for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()])
        assert len(read_glue_tsv(path, CATALOG[task], "validation")) == n_lines - 1


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
    # datasets and huggingface_hub read those variables at import time (this module imports datasets)
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    from ftdrift.data.tasks import load_split

    with pytest.raises(DataError, match="data_dir"):
        load_split(CATALOG["rte"], None, "train")


# ----------------------------------------------------------------------------- one validator, file and hub
def _hub_squad(payload: dict) -> datasets.Dataset:
    """The hub's rajpurkar/squad_v2 layout of a SQuAD JSON payload."""
    rows = []
    for article in payload["data"]:
        for paragraph in article["paragraphs"]:
            for q in paragraph["qas"]:
                answers = [] if q.get("is_impossible") else q["answers"]
                rows.append({"id": q["id"], "title": article["title"], "context": paragraph["context"],
                             "question": q["question"],
                             "answers": {"text": [a["text"] for a in answers],
                                         "answer_start": [a["answer_start"] for a in answers]}})
    return datasets.Dataset.from_list(rows)


def _break_span(payload):
    payload["data"][0]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"] += 1
    return "question 'x0b'.*answer span outside its context"


def _duplicate_id(payload):
    payload["data"][0]["paragraphs"][1]["qas"][0]["id"] = "x0a"
    return "duplicate id 'x0a'"


def _empty_id(payload):
    payload["data"][0]["paragraphs"][1]["qas"][2]["id"] = ""
    return "record 5: empty or non-string id ''"


def _no_question(payload):
    payload["data"][0]["paragraphs"][1]["qas"][0]["question"] = None
    return "question 'x1a': 'question' is NoneType, not a string"


@pytest.mark.parametrize("defect", [_break_span, _duplicate_id, _empty_id, _no_question])
def test_squad_file_and_hub_refuse_the_same_defects(tmp_path, defect):
    payload = squad_payload(2, 0, "x")
    message = defect(payload)
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(DataError, match=message) as from_file:
        read_squad_json(path)
    assert str(from_file.value).startswith(str(path))
    with pytest.raises(DataError, match=message) as from_hub:
        records_from_hub(_hub_squad(payload), CATALOG["squad_v2"], "train", "hub rajpurkar/squad_v2 [train]")
    assert str(from_hub.value).startswith("hub rajpurkar/squad_v2 [train]")
    # the same validator speaks: the reasons agree word for word
    assert str(from_file.value)[len(str(path)):] == str(from_hub.value)[len("hub rajpurkar/squad_v2 [train]"):]


def test_hub_squad_records_equal_file_records(tmp_path):
    payload = squad_payload(3, 5, "h")
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(payload))
    from_hub = records_from_hub(_hub_squad(payload), CATALOG["squad_v2"], "validation", "hub")
    assert from_hub == read_squad_json(path)
    assert from_hub[2]["answers"] == {"text": [], "answer_start": []}


MRPC_HUB = [{"sentence1": "a cat sat", "sentence2": "a cat was sitting", "label": 1, "idx": 0},
            {"sentence1": "dogs bark", "sentence2": "cats purr", "label": 0, "idx": 1}]


def test_hub_classification_records():
    records = records_from_hub(datasets.Dataset.from_list(MRPC_HUB), CATALOG["mrpc"], "train", "hub glue/mrpc")
    assert records == [{"id": "0", "text": "a cat sat", "text_pair": "a cat was sitting", "label": 1},
                       {"id": "1", "text": "dogs bark", "text_pair": "cats purr", "label": 0}]
    sst = records_from_hub(datasets.Dataset.from_list([{"sentence": "fine", "label": 1, "idx": 9}]),
                           CATALOG["sst2"], "validation", "hub glue/sst2")
    assert sst == [{"id": "validation-0", "text": "fine", "label": 1}]


@pytest.mark.parametrize("change, message", [
    ({"label": -1}, "record '1': label -1 is not a class index of \\['0', '1'\\]"),  # GLUE test split labels
    ({"label": 2}, "record '1': label 2 is not"),
    ({"idx": 0}, "duplicate id '0' \\(record 1\\)"),
    ({"sentence2": None}, "record '1': 'text_pair' is NoneType, not a string"),
])
def test_hub_classification_defects_name_source_id_reason(change, message):
    rows = [dict(MRPC_HUB[0]), {**MRPC_HUB[1], **change}]
    with pytest.raises(DataError, match=message) as err:
        records_from_hub(datasets.Dataset.from_list(rows), CATALOG["mrpc"], "train", "hub glue/mrpc [train]")
    assert str(err.value).startswith("hub glue/mrpc [train]")


def test_validate_records_directly():
    good = [{"id": "a", "text": "x", "text_pair": "y", "label": 0}]
    assert validate_records(good, CATALOG["rte"], "src") is None
    with pytest.raises(DataError, match="src, record 'a': label True"):
        validate_records([{**good[0], "label": True}], CATALOG["rte"], "src")
    with pytest.raises(DataError, match="src, record 'a': 'text_pair' is missing"):
        validate_records([{"id": "a", "text": "x", "label": 0}], CATALOG["rte"], "src")
    qa = {"id": "q", "context": "Rome is old.", "question": "What?", "answers": {"text": ["Rome"], "answer_start": [0]}}
    assert validate_records([qa], CATALOG["squad_v2"], "src") is None
    with pytest.raises(DataError, match="src, question 'q': blank answer text ' '"):
        validate_records([{**qa, "answers": {"text": [" "], "answer_start": [4]}}], CATALOG["squad_v2"], "src")
    with pytest.raises(DataError, match="src, question 'q': 1 answer texts but 2 answer starts"):
        validate_records([{**qa, "answers": {"text": ["Rome"], "answer_start": [0, 1]}}], CATALOG["squad_v2"], "src")
    with pytest.raises(DataError, match="src, question 'q': answer needs 'text' and integer 'answer_start'"):
        validate_records([{**qa, "answers": {"text": ["Rome"], "answer_start": [0.0]}}], CATALOG["squad_v2"], "src")
    with pytest.raises(DataError, match=r"src, question 'q': answer span outside.*context\[-1:3\]"):
        validate_records([{**qa, "answers": {"text": ["Rome"], "answer_start": [-1]}}], CATALOG["squad_v2"], "src")


def test_file_duplicate_ids_are_refused(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("index\tsentence1\tsentence2\tlabel\n7\ta\tb\tentailment\n7\tc\td\tnot_entailment\n")
    with pytest.raises(DataError, match="duplicate id '7' \\(record 1\\)") as err:
        read_glue_tsv(path, CATALOG["rte"], "validation")
    assert str(path) in str(err.value)


@pytest.mark.parametrize("payload, message", [
    ({"data": ["x"]}, "data must be a list of objects"),
    ({"data": [{"paragraphs": ["x"]}]}, r"data\[0\].paragraphs must be a list of objects"),
    ({"data": [{"paragraphs": [{"context": "c", "qas": None}]}]}, r"data\[0\].paragraphs\[0\].qas must be a list"),
    ({"data": [{"paragraphs": [{"context": "a b", "qas": [{"id": "q", "question": "?", "is_impossible": "false",
                                                            "answers": [{"text": "a", "answer_start": 0}]}]}]}]},
     "question 'q' .*'is_impossible' must be true or false, not 'false'"),
])
def test_squad_structure_errors_name_file_and_place(tmp_path, payload, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(DataError, match=message) as err:
        read_squad_json(path)
    assert str(path) in str(err.value)


def test_non_utf8_and_blank_looking_rows_are_refused(tmp_path):
    latin = tmp_path / "latin.tsv"
    latin.write_bytes("sentence\tlabel\ncaf\xe9 \t1\n".encode("latin-1"))
    with pytest.raises(DataError, match=f"{latin}: not UTF-8 text"):
        read_glue_tsv(latin, CATALOG["sst2"], "train")
    tabs = tmp_path / "tabs.tsv"
    tabs.write_text("sentence\tlabel\nfine \t1\n\t\n\n")  # the empty last line is no row; the tab line is
    with pytest.raises(DataError, match="row 3: unknown label ''"):
        read_glue_tsv(tabs, CATALOG["sst2"], "train")
