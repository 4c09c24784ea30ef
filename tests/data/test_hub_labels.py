"""Hub labels are mapped to the catalog's classes by name (ClassLabel names, string values), never
silently by position; only a column of bare integers is read by position."""

import datasets
import pytest
from datasets import ClassLabel, Features, Value

from ftdrift.data.tasks import DataError, records_from_hub
from ftdrift.study.config import ConfigError
from ftdrift.study import config as ftconfig

CATALOG = ftconfig.load_catalog(ftconfig.CONFIG_DIR / "tasks.yaml")
# an MNLI-like catalog entry in the GLUE files' (processors') class order
MNLI = {"type": "sentence_pair", "format": "glue_tsv", "labels": ["contradiction", "entailment", "neutral"],
        "columns": {"text": "sentence1", "text_pair": "sentence2", "label": "gold_label"},
        "hub": {"path": "nyu-mll/glue", "name": "mnli",
                "columns": {"text": "premise", "text_pair": "hypothesis", "label": "label", "id": "idx"}}}
# nyu-mll/glue's ClassLabel names (dataset card)
GLUE_HUB_NAMES = {"sst2": ["negative", "positive"], "mrpc": ["not_equivalent", "equivalent"],
                  "rte": ["entailment", "not_entailment"], "mnli": ["entailment", "neutral", "contradiction"]}
# what each hub class means in the GLUE files' label strings (the catalog's `labels`)
FILE_LABEL_OF = {"negative": "0", "positive": "1", "not_equivalent": "0", "equivalent": "1",
                 "entailment": "entailment", "not_entailment": "not_entailment", "neutral": "neutral",
                 "contradiction": "contradiction"}


def _pair_dataset(names, labels, label_feature=None):
    n = len(labels)
    columns = {"premise": [f"p{i}" for i in range(n)], "hypothesis": [f"h{i}" for i in range(n)],
               "label": labels, "idx": list(range(n))}
    features = Features({"premise": Value("string"), "hypothesis": Value("string"),
                         "label": label_feature or ClassLabel(names=names), "idx": Value("int32")})
    return datasets.Dataset.from_dict(columns, features=features)


def test_permuted_classlabel_is_mapped_by_name():
    hub_names = GLUE_HUB_NAMES["mnli"]
    hub_labels = [0, 1, 2, 2, 0, 1]
    records = records_from_hub(_pair_dataset(hub_names, hub_labels), MNLI, "train", "hub nyu-mll/glue/mnli [train]",
                               task="mnli")
    # independent expectation: the catalog index of each record's hub class name
    expected = [MNLI["labels"].index(hub_names[h]) for h in hub_labels]
    assert [r["label"] for r in records] == expected == [1, 2, 0, 0, 1, 2]
    assert [r["id"] for r in records] == [str(i) for i in range(6)]
    assert records[3] == {"id": "3", "text": "p3", "text_pair": "h3", "label": 0}


@pytest.mark.parametrize("task", ["sst2", "mrpc", "rte"])
def test_glue_hub_classlabels_match_the_catalog(task):
    """The shipped catalog maps nyu-mll/glue's ClassLabel names onto the files' labels, in either order."""
    task_def = CATALOG[task]
    columns = task_def["hub"]["columns"]
    for names in (GLUE_HUB_NAMES[task], GLUE_HUB_NAMES[task][::-1]):
        data = {columns["text"]: ["a", "b"], columns["label"]: [0, 1]}
        features = {columns["text"]: Value("string"), columns["label"]: ClassLabel(names=names)}
        if "text_pair" in columns:
            data[columns["text_pair"]], features[columns["text_pair"]] = ["c", "d"], Value("string")
        if "id" in columns:
            data[columns["id"]], features[columns["id"]] = [0, 1], Value("int32")
        dataset = datasets.Dataset.from_dict(data, features=Features(features))
        records = records_from_hub(dataset, task_def, "train", f"hub nyu-mll/glue/{task} [train]", task=task)
        assert [r["label"] for r in records] == [task_def["labels"].index(FILE_LABEL_OF[n]) for n in names]


def test_unmatched_classlabel_names_are_refused_naming_task_source_and_orders():
    dataset = _pair_dataset(["yes", "maybe", "no"], [0, 1, 2])
    with pytest.raises(DataError) as err:
        records_from_hub(dataset, MNLI, "validation", "hub nyu-mll/glue/mnli [validation]", task="mnli")
    message = str(err.value)
    assert message.startswith("task 'mnli', hub nyu-mll/glue/mnli [validation]:")
    assert "['yes', 'maybe', 'no']" in message
    assert "['contradiction', 'entailment', 'neutral']" in message
    assert "hub.label_names" in message


def test_classlabel_with_extra_class_is_refused():
    dataset = _pair_dataset(["entailment", "neutral", "contradiction", "unsure"], [0, 1])
    with pytest.raises(DataError, match=r"task 'mnli', hub x: .*\['entailment', 'neutral', 'contradiction', "
                                        r"'unsure'\].*unmatched: \['unsure'\]"):
        records_from_hub(dataset, MNLI, "train", "hub x", task="mnli")


def test_names_compare_without_case_spaces_or_dashes():
    dataset = _pair_dataset(["Neutral", "not-entailment"], [1, 0, 1])
    rte = {**MNLI, "labels": ["entailment", "not_entailment"]}
    with pytest.raises(DataError, match="unmatched: \\['Neutral'\\]"):
        records_from_hub(dataset, rte, "train", "hub x", task="rte")
    dataset = _pair_dataset(["Not Entailment", "ENTAILMENT"], [1, 0, 0])
    assert [r["label"] for r in records_from_hub(dataset, rte, "train", "hub x", task="rte")] == [0, 1, 1]


def test_string_label_column_is_mapped_by_name():
    values = ["neutral", "contradiction", "entailment", "neutral"]
    dataset = _pair_dataset(None, values, label_feature=Value("string"))
    records = records_from_hub(dataset, MNLI, "train", "hub x", task="mnli")
    assert [r["label"] for r in records] == [MNLI["labels"].index(v) for v in values] == [2, 0, 1, 2]
    # the catalog's hub names (label_names) are names too: SST-2's 'positive' is the files' '1'
    sst = datasets.Dataset.from_dict({"sentence": ["good", "bad"], "label": ["positive", "negative"]})
    assert [r["label"] for r in records_from_hub(sst, CATALOG["sst2"], "train", "hub y", task="sst2")] == [1, 0]
    bad = _pair_dataset(None, ["neutral", "unsure"], label_feature=Value("string"))
    with pytest.raises(DataError, match="hub x, record '1': unknown label 'unsure'"):
        records_from_hub(bad, MNLI, "train", "hub x", task="mnli")


def test_plain_int_column_is_read_by_position():
    dataset = _pair_dataset(None, [2, 0, 1], label_feature=Value("int64"))
    records = records_from_hub(dataset, MNLI, "train", "hub x", task="mnli")
    assert [r["label"] for r in records] == [2, 0, 1]  # no names to go by: the integers are catalog indices
    # ClassLabel(num_classes=n) has only its indices as names: also positional
    dataset = _pair_dataset(None, [2, 0, 1], label_feature=ClassLabel(num_classes=3))
    assert [r["label"] for r in records_from_hub(dataset, MNLI, "train", "hub x", task="mnli")] == [2, 0, 1]


def test_classlabel_missing_label_is_still_refused():
    # GLUE's test splits carry -1 ("no label"): it must not become a class through the name map
    dataset = _pair_dataset(GLUE_HUB_NAMES["mnli"], [0, -1])
    with pytest.raises(DataError, match="hub x, record '1': label -1 is not a class index"):
        records_from_hub(dataset, MNLI, "test", "hub x", task="mnli")


@pytest.mark.parametrize("label_names, message", [
    ({"2": "maybe"}, r"'sst2.hub.label_names': \['2'\] are not among the task's labels"),
    ({"0": "negative", "1": "Negative"}, r"'sst2.hub.label_names': the name 'Negative' of label '1' is also a name "
                                         r"of label '0'"),
])
def test_broken_label_names_in_the_catalog_are_refused(label_names, message):
    task_def = {**CATALOG["sst2"], "hub": {**CATALOG["sst2"]["hub"], "label_names": label_names}}
    dataset = datasets.Dataset.from_dict({"sentence": ["good"], "label": [1]},
                                         features=Features({"sentence": Value("string"),
                                                            "label": ClassLabel(names=["negative", "positive"])}))
    with pytest.raises(ConfigError, match=message):
        records_from_hub(dataset, task_def, "train", "hub y", task="sst2")
