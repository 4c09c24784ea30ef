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
from pathlib import Path

import numpy as np

from ftdrift import io
from ftdrift.config import task_kind


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, row and reason."""


HOW_TO_PROVIDE = (
    "Provide the task files in their original formats in a folder and pass it with "
    "`--config data_dir=/path/to/data` or the FTDRIFT_DATA_DIR environment variable "
    "(layout: see config/tasks.yaml `files`), or make the Hugging Face hub reachable."
)


# ----------------------------------------------------------------------------- readers
def read_glue_tsv(path: Path, task_def: dict, split: str) -> list[dict]:
    """Read a GLUE TSV exactly as GLUE does: tab-split lines, no quote handling, BOM tolerated."""
    if not path.is_file():
        raise DataError(f"{path}: file not found. {HOW_TO_PROVIDE}")
    with open(path, encoding="utf-8-sig", newline="") as handle:
        lines = [line.rstrip("\r\n") for line in handle]
    lines = [line for line in lines if line.strip()]
    if not lines or (task_def.get("header", True) and len(lines) < 2):
        raise DataError(f"{path}: empty file (no data rows)")
    columns = task_def["columns"]
    if task_def.get("header", True):
        header = lines[0].split("\t")
        body, first_row = lines[1:], 2
        index = {}
        for role, name in columns.items():
            if isinstance(name, int):
                index[role] = name
            elif name in header:
                index[role] = header.index(name)
            else:
                raise DataError(f"{path}: missing column '{name}' (for {role}); header has {header}")
    else:
        body, first_row = lines, 1
        index = dict(columns)
    labels = task_def["labels"]
    records = []
    for row_number, line in enumerate(body, start=first_row):
        fields = line.split("\t")
        needed = max(index.values())
        if len(fields) <= needed:
            raise DataError(f"{path}, row {row_number}: {len(fields)} fields, expected at least {needed + 1}")
        label = fields[index["label"]].strip()
        if label not in labels:
            raise DataError(f"{path}, row {row_number}: unknown label '{label}' (labels: {labels})")
        record = {
            "id": fields[index["id"]].strip() if "id" in index else f"{split}-{row_number - first_row}",
            "text": fields[index["text"]].strip(),
            "label": labels.index(label),
        }
        if "text_pair" in index:
            record["text_pair"] = fields[index["text_pair"]].strip()
        records.append(record)
    _check_unique_ids(records, path)
    return records


def read_squad_json(path: Path) -> list[dict]:
    """Read SQuAD v2 JSON, checking every answer span against its context."""
    if not path.is_file():
        raise DataError(f"{path}: file not found. {HOW_TO_PROVIDE}")
    try:
        with open(path, encoding="utf-8") as handle:
            payload = json.load(handle)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: broken JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list) or not payload["data"]:
        raise DataError(f"{path}: not SQuAD JSON (expected a non-empty top-level 'data' list)")
    records = []
    for a, article in enumerate(payload["data"]):
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            context = paragraph.get("context")
            if not isinstance(context, str):
                raise DataError(f"{path}: data[{a}].paragraphs[{p}] has no 'context' string")
            for question in paragraph.get("qas", []):
                qid = question.get("id")
                where = f"{path}, question {qid!r} (data[{a}].paragraphs[{p}])"
                if not qid or "question" not in question:
                    raise DataError(f"{where}: missing 'id' or 'question'")
                answers = [] if question.get("is_impossible", False) else question.get("answers", [])
                for answer in answers:
                    start, text = answer.get("answer_start"), answer.get("text")
                    if not isinstance(start, int) or not isinstance(text, str):
                        raise DataError(f"{where}: answer needs 'text' and integer 'answer_start'")
                    if context[start:start + len(text)] != text:
                        raise DataError(
                            f"{where}: answer span outside its context: context[{start}:{start + len(text)}] "
                            f"is {context[start:start + len(text)]!r}, answer is {text!r}"
                        )
                records.append({
                    "id": qid,
                    "title": article.get("title", ""),
                    "context": context,
                    "question": question["question"],
                    "answers": {"text": [x["text"] for x in answers],
                                "answer_start": [x["answer_start"] for x in answers]},
                })
    if not records:
        raise DataError(f"{path}: no questions")
    _check_unique_ids(records, path)
    return records


def read_hub(task_def: dict, split: str) -> list[dict]:
    """Load one split from the Hugging Face hub into the same record layout."""
    import datasets

    hub = task_def["hub"]
    try:
        dataset = datasets.load_dataset(hub["path"], hub.get("name"), split=split)
    except Exception as err:  # the hub raises many kinds; all mean "not reachable / not there"
        raise DataError(f"could not load {hub['path']}/{hub.get('name', '')} [{split}] from the hub "
                        f"({type(err).__name__}: {err}). {HOW_TO_PROVIDE}") from None
    if task_kind(task_def) == "extractive_qa":
        return [{"id": r["id"], "title": r["title"], "context": r["context"], "question": r["question"],
                 "answers": {"text": list(r["answers"]["text"]),
                             "answer_start": [int(s) for s in r["answers"]["answer_start"]]}}
                for r in dataset]
    columns = hub.get("columns", task_def["columns"])
    records = []
    for row, item in enumerate(dataset):
        record = {"id": str(item[columns["id"]]) if "id" in columns else f"{split}-{row}",
                  "text": item[columns["text"]], "label": int(item[columns["label"]])}
        if "text_pair" in columns:
            record["text_pair"] = item[columns["text_pair"]]
        if not 0 <= record["label"] < len(task_def["labels"]):
            raise DataError(f"hub {hub['path']} [{split}] row {row}: label {record['label']} outside {task_def['labels']}")
        records.append(record)
    return records


def _check_unique_ids(records: list[dict], source) -> None:
    seen = set()
    for row, record in enumerate(records):
        if record["id"] in seen:
            raise DataError(f"{source}: duplicate id {record['id']!r} (record {row})")
        seen.add(record["id"])


def load_split(task_def: dict, data_dir: Path | None, split: str) -> tuple[list[dict], dict]:
    """Records of an official split and a description of where they came from."""
    if data_dir is None:
        return read_hub(task_def, "validation" if split == "validation" else "train"), {
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


def prepare_task(task: str, task_def: dict, data_dir: Path | None, settings: dict, out_dir: Path) -> dict:
    """Write train/dev/validation/probe JSON lines and splits.json for one task; return the summary."""
    train_all, train_source = load_split(task_def, data_dir, "train")
    validation_all, validation_source = load_split(task_def, data_dir, "validation")
    seed = settings["split_seed"]
    train, dev = carve_dev(train_all, settings["dev_size"], seed)
    train = seeded_subset(train, settings["max_train_examples"], seed + 1)
    validation = seeded_subset(validation_all, settings["max_validation_examples"], seed + 2)
    probe = seeded_subset(validation, settings["probe_size"], seed + 3)
    out_dir = Path(out_dir)
    splits = {"train": train, "dev": dev, "validation": validation, "probe": probe}
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
