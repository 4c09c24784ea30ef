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


def _qa_questions(records: list[dict], tokenizer, max_length: int, stride: int,
                  max_query_length: int) -> list[str]:
    """Left-stripped questions cut to at most `max_query_length` tokens (as BERT's run_squad.py does).

    Raises ValueError when a window would leave no more than `stride` context tokens.
    """
    if max_query_length < 1:
        raise ValueError(f"max_query_length must be at least 1, got {max_query_length}")
    questions = [r["question"].lstrip() for r in records]
    lengths = []
    for i, offsets in enumerate(_offsets(tokenizer, questions) if questions else []):
        while len(offsets) > max_query_length:
            # re-tokenising a prefix can split its last word differently: cut again until it fits;
            # each cut is strictly shorter, so this ends
            questions[i] = questions[i][:min(offsets[max_query_length - 1][1], len(questions[i]) - 1)]
            offsets = _offsets(tokenizer, [questions[i]])[0]
        lengths.append(len(offsets))
    longest = max(lengths, default=0)
    special = tokenizer.num_special_tokens_to_add(pair=True)
    context_room = max_length - longest - special
    if stride >= context_room:
        raise ValueError(
            f"data.doc_stride ({stride}) must be smaller than the context tokens a QA window has room for: "
            f"max_length {max_length} - longest question {longest} tokens (max_query_length {max_query_length}) "
            f"- {special} special tokens = {context_room}")
    return questions


def _offsets(tokenizer, texts: list[str]) -> list[list[tuple[int, int]]]:
    """Character offsets of each text's tokens, without special tokens."""
    return tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]


def _qa_windows(records: list[dict], tokenizer, max_length: int, stride: int, max_query_length: int):
    # question first, context second; only the context is windowed
    return tokenizer(
        _qa_questions(records, tokenizer, max_length, stride, max_query_length),
        [r["context"] for r in records],
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )


def encode_qa_train(records: list[dict], tokenizer, max_length: int, stride: int,
                    max_query_length: int) -> Dataset:
    """Sliding windows with start/end token labels; a window without the answer points at token 0.

    Windows hold at most `max_length` tokens and overlap by `stride` context tokens; questions are
    cut to `max_query_length` tokens. Labels cover the first answer without its surrounding white
    space. ValueError when `stride` leaves no room (see _qa_questions).
    """
    encoded = _qa_windows(records, tokenizer, max_length, stride, max_query_length)
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
        # white space around the answer text belongs to no token (WordPiece): label only the rest
        text = answers["text"][0]
        start_char = answers["answer_start"][0] + len(text) - len(text.lstrip())
        end_char = answers["answer_start"][0] + len(text.rstrip())
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


def encode_qa_eval(records: list[dict], tokenizer, max_length: int, stride: int,
                   max_query_length: int) -> tuple[Dataset, list[dict]]:
    """Windows for prediction as in encode_qa_train, plus per-window metadata.

    meta[w]: {"example_index": index into `records`, "offsets": (start, end) characters in the
    context for context tokens, None for question and special tokens}.
    """
    encoded = _qa_windows(records, tokenizer, max_length, stride, max_query_length)
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


def encode_probe(records: list[dict], tokenizer, kind: str, max_length: int,
                 max_query_length: int | None = None) -> list[dict]:
    """Model inputs for the probe set: one sequence per example (first window for QA).

    For extractive_qa, questions are cut to `max_query_length` tokens; ValueError when no context
    token would fit.
    """
    if kind == "extractive_qa":
        if max_query_length is None:
            raise ValueError("encode_probe: extractive_qa needs max_query_length (config key 'data.max_query_length')")
        questions = _qa_questions(records, tokenizer, max_length, 0, max_query_length)
        encoded = tokenizer(questions, [r["context"] for r in records],
                            truncation="only_second", max_length=max_length)
    else:
        pairs = [r["text_pair"] for r in records] if records and "text_pair" in records[0] else None
        encoded = tokenizer([r["text"] for r in records], pairs, truncation=True, max_length=max_length)
    keys = list(encoded.keys())
    return [{k: encoded[k][i] for k in keys} for i in range(len(records))]
