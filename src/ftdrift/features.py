"""Tokenisation of task records into model features (dynamic padding happens in the collator)."""

from __future__ import annotations

from datasets import Dataset


def encode_classification(records: list[dict], tokenizer, max_length: int, with_labels: bool = True) -> Dataset:
    texts = [r["text"] for r in records]
    pairs = [r["text_pair"] for r in records] if records and "text_pair" in records[0] else None
    encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    columns = dict(encoded)
    columns["length"] = [len(ids) for ids in encoded["input_ids"]]
    if with_labels:
        columns["labels"] = [r["label"] for r in records]
    return Dataset.from_dict(columns)


def _qa_windows(records: list[dict], tokenizer, max_length: int, stride: int):
    # question first, context second; only the context is windowed
    return tokenizer(
        [r["question"].lstrip() for r in records],
        [r["context"] for r in records],
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )


def encode_qa_train(records: list[dict], tokenizer, max_length: int, stride: int) -> Dataset:
    """Sliding windows with start/end token labels; a window without the answer points at token 0."""
    encoded = _qa_windows(records, tokenizer, max_length, stride)
    starts, ends = [], []
    for i, offsets in enumerate(encoded["offset_mapping"]):
        record = records[encoded["overflow_to_sample_mapping"][i]]
        sequence_ids = encoded.sequence_ids(i)
        context_tokens = [t for t, s in enumerate(sequence_ids) if s == 1]
        answers = record["answers"]
        if not answers["text"] or not context_tokens:
            starts.append(0)
            ends.append(0)
            continue
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        first, last = context_tokens[0], context_tokens[-1]
        if offsets[first][0] > start_char or offsets[last][1] < end_char:
            starts.append(0)  # answer not (fully) inside this window
            ends.append(0)
            continue
        start = first
        while start <= last and offsets[start][0] <= start_char:
            start += 1
        end = last
        while end >= first and offsets[end][1] >= end_char:
            end -= 1
        starts.append(start - 1)
        ends.append(end + 1)
    columns = {k: v for k, v in encoded.items() if k not in ("offset_mapping", "overflow_to_sample_mapping")}
    columns["start_positions"] = starts
    columns["end_positions"] = ends
    columns["length"] = [len(ids) for ids in encoded["input_ids"]]
    return Dataset.from_dict(columns)


def encode_qa_eval(records: list[dict], tokenizer, max_length: int, stride: int) -> tuple[Dataset, list[dict]]:
    """Windows for prediction, plus per-window metadata (example id, context offsets)."""
    encoded = _qa_windows(records, tokenizer, max_length, stride)
    meta = []
    for i, offsets in enumerate(encoded["offset_mapping"]):
        sequence_ids = encoded.sequence_ids(i)
        meta.append({
            "example_index": encoded["overflow_to_sample_mapping"][i],
            # offsets only for context tokens: spans elsewhere are not answers
            "offsets": [tuple(o) if s == 1 else None for o, s in zip(offsets, sequence_ids)],
        })
    columns = {k: v for k, v in encoded.items() if k not in ("offset_mapping", "overflow_to_sample_mapping")}
    return Dataset.from_dict(columns), meta


def encode_probe(records: list[dict], tokenizer, kind: str, max_length: int) -> list[dict]:
    """Model inputs for the probe set: one sequence per example (first window for QA)."""
    if kind == "extractive_qa":
        encoded = tokenizer([r["question"].lstrip() for r in records], [r["context"] for r in records],
                            truncation="only_second", max_length=max_length)
    else:
        pairs = [r["text_pair"] for r in records] if records and "text_pair" in records[0] else None
        encoded = tokenizer([r["text"] for r in records], pairs, truncation=True, max_length=max_length)
    keys = list(encoded.keys())
    return [{k: encoded[k][i] for k in keys} for i in range(len(records))]
