"""Task data: read the original GLUE TSV / SQuAD v2 JSON files (or the hub), carve the splits.

Outputs per task (all JSON lines, one record per example):
  train / dev  -- dev is a fixed, seeded carve-out of the official train split
  validation   -- the official validation split: this study's test set
  probe        -- a fixed, seeded subset of validation whose representations are compared
Classification records: {id, text, [text_pair], label (class index)}.
QA records: {id, title, context, question, answers: {text: [...], answer_start: [...]}}.
"""

from __future__ import annotations

import hashlib
import json
import re
from io import StringIO
from pathlib import Path

import numpy as np

from ftdrift.core import io
from ftdrift.study.config import ConfigError, task_kind


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, row and reason."""


# the prepared splits of a task, each results/data/<task>/<split>.jsonl (rule prepare_data)
SPLITS = ("train", "dev", "validation", "probe")

HOW_TO_PROVIDE = (
    "Provide the task files in their original formats in a folder and pass it with "
    "`--config data_dir=/path/to/data` or the FTDRIFT_DATA_DIR environment variable "
    "(layout: see config/tasks.yaml `files`), or make the Hugging Face hub reachable."
)


# ----------------------------------------------------------------------------- readers
def read_glue_tsv(path: Path, task_def: dict, split: str) -> list[dict]:
    """Read a GLUE TSV exactly as GLUE does: tab-split lines, no quote handling, BOM tolerated.

    Every data row must have as many fields as the header (headerless files: as the first row);
    DataError names the file, the 1-based line and the reason. Blank lines are skipped.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found. {HOW_TO_PROVIDE}")
    # split as reading the file line by line does (\n, \r\n, \r), not at str.splitlines' other breaks
    rows = StringIO(_read_text(path), newline="")
    lines = [(number, line.rstrip("\r\n")) for number, line in enumerate(rows, start=1)]
    # only empty lines are skipped: a line of tabs or spaces is a row, and refused if malformed
    lines = [(number, line) for number, line in lines if line]
    has_header = task_def.get("header", True)
    if not lines or (has_header and len(lines) < 2):
        raise DataError(f"{path}: empty file (no data rows)")
    columns = task_def["columns"]
    if has_header:
        header = lines[0][1].split("\t")
        body, width, basis = lines[1:], len(header), "as the header"
        index = {}
        for role, name in columns.items():
            if isinstance(name, int):
                index[role] = name
            elif name in header:
                index[role] = header.index(name)
            else:
                raise DataError(f"{path}: missing column '{name}' (for {role}); header has {header}")
    else:
        body, index = lines, dict(columns)
        width, basis = len(lines[0][1].split("\t")), f"as row {lines[0][0]}"
    needed = max(index.values()) + 1
    labels = task_def["labels"]
    records = []
    for position, (row_number, line) in enumerate(body):
        fields = line.split("\t")
        if len(fields) < needed:
            raise DataError(f"{path}, row {row_number}: {len(fields)} fields, expected at least {needed}")
        if len(fields) != width:
            # a stray tab inside a text shifts every later column: the row cannot be trusted
            raise DataError(f"{path}, row {row_number}: {len(fields)} fields, expected {width} ({basis})")
        label = fields[index["label"]].strip()
        if label not in labels:
            raise DataError(f"{path}, row {row_number}: unknown label '{label}' (labels: {labels})")
        record = {
            "id": fields[index["id"]].strip() if "id" in index else f"{split}-{position}",
            "text": fields[index["text"]].strip(),
            "label": labels.index(label),
        }
        if "text_pair" in index:
            record["text_pair"] = fields[index["text_pair"]].strip()
        records.append(record)
    validate_records(records, task_def, path)
    return records


def read_squad_json(path: Path) -> list[dict]:
    """Read SQuAD v2 JSON into QA records; DataError names the file, question id and reason.

    Answers of impossible questions (`is_impossible`) are dropped; every other answer span is
    checked against its context by validate_records.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found. {HOW_TO_PROVIDE}")
    try:
        payload = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: broken JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list) or not payload["data"]:
        raise DataError(f"{path}: not SQuAD JSON (expected a non-empty top-level 'data' list)")
    records = []
    for a, article in enumerate(_objects(payload["data"], path, "data")):
        paragraphs = _objects(article.get("paragraphs", []), path, f"data[{a}].paragraphs")
        for p, paragraph in enumerate(paragraphs):
            for question in _objects(paragraph.get("qas", []), path, f"data[{a}].paragraphs[{p}].qas"):
                impossible = question.get("is_impossible", False)
                if not isinstance(impossible, bool):
                    raise DataError(f"{path}, question {question.get('id')!r} (data[{a}].paragraphs[{p}]): "
                                    f"'is_impossible' must be true or false, not {impossible!r}")
                answers = [] if impossible else question.get("answers", [])
                if not isinstance(answers, list) or not all(isinstance(x, dict) for x in answers):
                    raise DataError(f"{path}, question {question.get('id')!r} (data[{a}].paragraphs[{p}]): "
                                    f"'answers' must be a list of objects")
                records.append({
                    "id": question.get("id"),
                    "title": article.get("title", ""),
                    "context": paragraph.get("context"),
                    "question": question.get("question"),
                    "answers": {"text": [x.get("text") for x in answers],
                                "answer_start": [x.get("answer_start") for x in answers]},
                })
    if not records:
        raise DataError(f"{path}: no questions")
    validate_records(records, {"type": "extractive_qa"}, path)
    return records


def _read_text(path: Path) -> str:
    """The file as UTF-8 text (a BOM is dropped); DataError naming the file otherwise."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); GLUE and SQuAD files are "
                        "UTF-8") from None


def _objects(value, path: Path, where: str) -> list[dict]:
    """`value` if it is a list of JSON objects; DataError naming the file and the place otherwise."""
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise DataError(f"{path}: {where} must be a list of objects")
    return value


def read_hub(task_def: dict, split: str, task: str | None = None) -> list[dict]:
    """Load one split from the Hugging Face hub into the same (validated) record layout.

    `task` (the catalog key) only names the task in errors; labels are mapped as records_from_hub says.
    """
    import datasets

    hub = task_def["hub"]
    try:
        dataset = datasets.load_dataset(hub["path"], hub.get("name"), split=split)
    except Exception as err:  # the hub raises many kinds; all mean "not reachable / not there"
        raise DataError(f"could not load {hub['path']}/{hub.get('name', '')} [{split}] from the hub "
                        f"({type(err).__name__}: {err}). {HOW_TO_PROVIDE}") from None
    return records_from_hub(dataset, task_def, split, f"hub {hub['path']}/{hub.get('name') or ''} [{split}]",
                            task=task)


def records_from_hub(dataset, task_def: dict, split: str, source: str, task: str | None = None) -> list[dict]:
    """Records from a loaded `datasets.Dataset` (hub column names: `task_def['hub']['columns']`).

    Classification labels become class indices into `task_def['labels']` by name wherever the
    source carries names (see hub_label_map): a `datasets.ClassLabel` label column is matched
    through its `names`, a string label column value by value, so a hub whose class order differs
    from the catalog's (MNLI's) keeps every label's meaning. Only a plain integer column (or a
    ClassLabel whose names are just its indices '0'..'n-1' that are not catalog names) carries no
    names: its integers are taken as catalog class indices, by position. ClassLabel's "no label"
    (-1, e.g. GLUE's test split) stays -1 and is refused by validate_records.

    Other values are taken as they are (no type coercion), then checked by validate_records, which
    raises DataError naming `source`. Rows without an id column get ids `{split}-{row}`.
    DataError (naming `task`, `source` and both orders) when the label names cannot be matched;
    ConfigError for a broken `hub.label_names` in the catalog.
    """
    if task_kind(task_def) == "extractive_qa":
        records = [{"id": r["id"], "title": r["title"], "context": r["context"], "question": r["question"],
                    "answers": {"text": list(r["answers"]["text"]),
                                "answer_start": list(r["answers"]["answer_start"])}}
                   for r in dataset]
    else:
        columns = task_def.get("hub", {}).get("columns", task_def["columns"])
        features = getattr(dataset, "features", None) or {}
        by_class = hub_label_map(features.get(columns["label"]), task_def, source, task)
        by_name = catalog_label_names(task_def, task)
        records = []
        for row, item in enumerate(dataset):
            record = {"id": str(item[columns["id"]]) if "id" in columns else f"{split}-{row}",
                      "text": item[columns["text"]]}
            record["label"] = _hub_label(item[columns["label"]], by_class, by_name, task_def,
                                         f"{source}, record {record['id']!r}")
            if "text_pair" in columns:
                record["text_pair"] = item[columns["text_pair"]]
            records.append(record)
    validate_records(records, task_def, source)
    return records


def _task_label(task: str | None) -> str:
    return f"task '{task}'" if task else "task (catalog key not given)"


def _normalise_label(name: str) -> str:
    # hubs and GLUE files spell one class differently: 'not_entailment', 'not entailment', 'Not-Entailment'
    return re.sub(r"[\s_-]+", "_", name.strip().casefold())


def catalog_label_names(task_def: dict, task: str | None = None) -> dict[str, int]:
    """Normalised label name -> catalog class index, from `labels` and the optional aliases
    `hub.label_names` ({catalog label: the hub's name for it}); both spellings are accepted.

    ConfigError (naming the catalog key) for an alias of a label not in `labels`, or when two
    classes share a normalised name.
    """
    labels = task_def["labels"]
    key = f"task catalog key '{task}.hub.label_names'" if task else "task catalog key 'hub.label_names'"
    aliases = task_def.get("hub", {}).get("label_names", {})
    unknown = [label for label in aliases if label not in labels]
    if unknown:
        raise ConfigError(f"{key}: {unknown} are not among the task's labels {labels}")
    index: dict[str, int] = {}
    for position, label in enumerate(labels):
        for name in dict.fromkeys((label, aliases.get(label, label))):
            other = index.setdefault(_normalise_label(name), position)
            if other != position:
                raise ConfigError(f"{key}: the name {name!r} of label {label!r} is also a name of label "
                                  f"{labels[other]!r} (names are compared ignoring case, spaces, '-' and '_')")
    return index


def hub_label_map(feature, task_def: dict, source: str, task: str | None = None) -> list[int] | None:
    """For a `datasets.ClassLabel` label feature: the catalog class index of each hub class index
    (list position = hub index), matched by name through catalog_label_names. None where the
    feature carries no names (not a ClassLabel, or names that are only '0'..'n-1' and not the
    catalog's): the hub's integers are then used by position.

    DataError naming the task, `source`, the hub's names and the catalog's labels (both in
    class-index order) unless the two sets of classes match one to one.
    """
    import datasets

    if not isinstance(feature, datasets.ClassLabel):
        return None
    hub_names, labels = list(feature.names), task_def["labels"]
    index = catalog_label_names(task_def, task)
    matched = [index.get(_normalise_label(name)) for name in hub_names]
    if hub_names == [str(i) for i in range(len(hub_names))] and None in matched:
        return None  # ClassLabel(num_classes=n): indices without names
    if None in matched or len(set(matched)) != len(hub_names) or len(hub_names) != len(labels):
        unmatched = [name for name, m in zip(hub_names, matched) if m is None]
        aliases = task_def.get("hub", {}).get("label_names", {})
        raise DataError(
            f"{_task_label(task)}, {source}: the hub's label names {hub_names} (its class-index order) do not "
            f"match the catalog's labels {labels} (class-index order"
            + (f"; hub names given in hub.label_names: {aliases}" if aliases else "") + ") one to one"
            + (f"; unmatched: {unmatched}" if unmatched else "")
            + ". Taking them by position would permute the classes; name the hub's class of each catalog label "
              "in config/tasks.yaml `hub.label_names` ({catalog label: hub name}).")
    return matched


def _hub_label(value, by_class: list[int] | None, by_name: dict[str, int], task_def: dict, where: str):
    """The catalog class index of one hub label value (see records_from_hub); values that are
    neither names nor the hub's class indices are returned as they are, for validate_records."""
    if isinstance(value, str):
        position = by_name.get(_normalise_label(value))
        if position is None:
            aliases = task_def.get("hub", {}).get("label_names", {})
            raise DataError(f"{where}: unknown label {value!r} (catalog labels: {task_def['labels']}"
                            + (f", hub names: {aliases}" if aliases else "")
                            + "; the hub's names go in config/tasks.yaml `hub.label_names`)")
        return position
    if by_class is not None and isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(by_class):
        return by_class[value]
    return value


def validate_records(records: list[dict], task_def: dict, source) -> None:
    """Check records from any source; raise DataError naming `source`, the record id and the reason.

    All tasks: ids are unique non-empty strings. Classification: `label` is a class index into
    `task_def['labels']`, `text` (and `text_pair` for sentence_pair tasks) are strings. QA: `context`
    and `question` are strings; every answer has a non-blank `text` equal to
    context[answer_start:answer_start + len(text)] and an integer `answer_start`.
    """
    qa = task_kind(task_def) == "extractive_qa"
    seen = set()
    for row, record in enumerate(records):
        rid = record.get("id")
        if not isinstance(rid, str) or not rid.strip():
            raise DataError(f"{source}, record {row}: empty or non-string id {rid!r}")
        if rid in seen:
            raise DataError(f"{source}: duplicate id {rid!r} (record {row})")
        seen.add(rid)
        problem = _qa_problem(record) if qa else _classification_problem(record, task_def)
        if problem:
            raise DataError(f"{source}, {'question' if qa else 'record'} {rid!r}: {problem}")


def _classification_problem(record: dict, task_def: dict) -> str | None:
    labels, label = task_def["labels"], record.get("label")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(labels):
        return f"label {label!r} is not a class index of {labels}"
    fields = ("text", "text_pair") if task_def["type"] == "sentence_pair" else ("text",)
    return _not_strings(record, fields)


def _not_strings(record: dict, fields: tuple[str, ...]) -> str | None:
    for field in fields:
        if field not in record:
            return f"'{field}' is missing"
        if not isinstance(record[field], str):
            return f"'{field}' is {type(record[field]).__name__}, not a string"
    return None


def _qa_problem(record: dict) -> str | None:
    context = record.get("context")
    problem = _not_strings(record, ("context", "question"))
    if problem:
        return problem
    answers = record.get("answers") or {}
    texts, starts = answers.get("text", []), answers.get("answer_start", [])
    if len(texts) != len(starts):
        return f"{len(texts)} answer texts but {len(starts)} answer starts"
    for text, start in zip(texts, starts):
        if isinstance(start, bool) or not isinstance(start, int) or not isinstance(text, str):
            return f"answer needs 'text' and integer 'answer_start' (got {text!r} at {start!r})"
        if not text.strip():
            return f"blank answer text {text!r}"
        if start < 0 or context[start:start + len(text)] != text:
            return (f"answer span outside its context: context[{start}:{start + len(text)}] "
                    f"is {context[max(start, 0):start + len(text)]!r}, answer is {text!r}")
    return None


def load_split(task_def: dict, data_dir: Path | None, split: str,
               task: str | None = None) -> tuple[list[dict], dict]:
    """Records of an official split and a description of where they came from (`task`, the
    catalog key, names the task in errors)."""
    if data_dir is None:
        return read_hub(task_def, "validation" if split == "validation" else "train", task), {
            "source": "hub", "path": task_def["hub"]["path"], "name": task_def["hub"].get("name")}
    path = data_dir / task_def["files"][split]
    if task_def["format"] == "squad_json":
        records = read_squad_json(path)
    else:
        records = read_glue_tsv(path, task_def, split)
    return records, {"source": "file", "path": str(path), "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- splits
def _group_key(record: dict) -> str:
    # SQuAD questions on one paragraph share its context: keep them on one side of the split
    return record.get("context", record["id"])


def carve_dev(records: list[dict], dev_size: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Split train into (train, dev) with a seeded permutation of groups (paragraphs for QA)."""
    n_dev = int(round(dev_size * len(records))) if dev_size < 1 else int(dev_size)
    if not 0 < n_dev < len(records):
        raise DataError(f"config key 'data.dev_size': {dev_size} leaves no train or no dev examples "
                        f"out of {len(records)}")
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(_group_key(record), []).append(i)
    order = np.random.default_rng(seed).permutation(len(groups))
    keys = list(groups)
    dev_idx: list[int] = []
    for g in order:
        if len(dev_idx) >= n_dev:
            break
        dev_idx.extend(groups[keys[g]])
    dev_set = set(dev_idx)
    train = [r for i, r in enumerate(records) if i not in dev_set]
    dev = [r for i, r in enumerate(records) if i in dev_set]
    return train, dev


def seeded_subset(records: list[dict], size: int | None, seed: int) -> list[dict]:
    """A fixed subset of `size` records (all when size is None or larger), in original order."""
    if size is None or size >= len(records):
        return list(records)
    keep = np.sort(np.random.default_rng(seed).choice(len(records), size=size, replace=False))
    return [records[i] for i in keep]


def study_splits(train_all: list[dict], validation_all: list[dict], settings: dict) -> dict[str, list[dict]]:
    """{split: records} for SPLITS from a task's source train and validation records and its `data`
    settings: dev carved from train (carve_dev), train and validation capped (max_train_examples,
    max_validation_examples), the probe a subset of validation (probe_size), each draw seeded from
    `split_seed`. What prepare_task writes and the cost estimate counts."""
    seed = settings["split_seed"]
    train, dev = carve_dev(train_all, settings["dev_size"], seed)
    train = seeded_subset(train, settings["max_train_examples"], seed + 1)
    validation = seeded_subset(validation_all, settings["max_validation_examples"], seed + 2)
    probe = seeded_subset(validation, settings["probe_size"], seed + 3)
    return dict(zip(SPLITS, (train, dev, validation, probe), strict=True))


def prepare_task(task: str, task_def: dict, data_dir: Path | None, settings: dict, out_dir: Path) -> dict:
    """Write <split>.jsonl for SPLITS (study_splits) and splits.json for one task; return the summary."""
    train_all, train_source = load_split(task_def, data_dir, "train", task)
    validation_all, validation_source = load_split(task_def, data_dir, "validation", task)
    out_dir = Path(out_dir)
    splits = study_splits(train_all, validation_all, settings)
    for name, records in splits.items():
        io.write_jsonl(out_dir / f"{name}.jsonl", records)
    summary = {
        "task": task,
        "sources": {"train": train_source, "validation": validation_source},
        "settings": settings,
        "counts": {name: len(records) for name, records in splits.items()},
        "ids": {name: [r["id"] for r in records] for name, records in splits.items()},
    }
    io.write_json(out_dir / "splits.json", summary)
    return summary
