"""Tokenisation of task records into model features (dynamic padding happens in the collator)."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class QAWindows:
    """Tokenised QA windows: `columns` (input_ids, attention_mask, [token_type_ids], offset_mapping,
    overflow_to_sample_mapping; lists per window) and `sequence_ids[w]` (0 question, 1 context,
    None special) per window; `null_index[w]`: the position whose start+end logits score "no answer".
    """

    columns: dict[str, list]
    sequence_ids: list[list[int | None]]
    null_index: list[int]


def _qa_windows(records: list[dict], tokenizer, max_length: int, stride: int, max_query_length: int,
                null_at_end: bool = False) -> QAWindows:
    """Question first, context second; only the context is windowed (overlap `stride` tokens).

    The no-answer score is read at one position of each window. An encoder reads it at token 0
    ([CLS]: BERT's convention, which attends to the whole window). A decoder's token 0 sees only
    itself, so its score could not depend on the question or the context: with `null_at_end` (the
    model family is a decoder) every window ends with the tokenizer's end-of-sequence token, a
    position that attends to the whole window and is no answer token, and the null score is read
    there (as GPT-style sequence classifiers read the last token). The windows then hold
    `max_length` tokens including that one.
    """
    room = max_length - 1 if null_at_end else max_length
    encoded = tokenizer(
        _qa_questions(records, tokenizer, room, stride, max_query_length),
        [r["context"] for r in records],
        truncation="only_second",
        max_length=room,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    sequence_ids = [encoded.sequence_ids(w) for w in range(len(encoded["input_ids"]))]
    if not null_at_end:
        return QAWindows(dict(encoded), sequence_ids, [0] * len(sequence_ids))
    # copies of the windows' lists, which the end-of-sequence token is appended to
    columns = {k: [list(v) for v in values] if k != "overflow_to_sample_mapping" else list(values)
               for k, values in encoded.items()}
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{type(tokenizer).__name__} has no end-of-sequence token to read a decoder's "
                         "no-answer score at")
    for w in range(len(sequence_ids)):
        columns["input_ids"][w].append(tokenizer.eos_token_id)
        columns["attention_mask"][w].append(1)
        if "token_type_ids" in columns:
            columns["token_type_ids"][w].append(columns["token_type_ids"][w][-1])
        columns["offset_mapping"][w].append((0, 0))
        sequence_ids[w] = sequence_ids[w] + [None]
    return QAWindows(columns, sequence_ids, [len(ids) - 1 for ids in columns["input_ids"]])


def encode_qa_train(records: list[dict], tokenizer, max_length: int, stride: int,
                    max_query_length: int, null_at_end: bool = False) -> Dataset:
    """Sliding windows with start/end token labels; a window without the answer points at its null
    position (token 0; a decoder's appended end-of-sequence token with `null_at_end`, see _qa_windows).

    Windows hold at most `max_length` tokens and overlap by `stride` context tokens; questions are
    cut to `max_query_length` tokens. Labels cover the first answer without its surrounding white
    space: start = the first token of its first character, end = the last token of its last
    character (see _answer_tokens: a byte-level BPE or a byte fallback splits one character into
    several tokens). A window holds the answer only when it holds all of those tokens. ValueError
    when `stride` leaves no room (see _qa_questions), when no context token holds a character of an
    answer (naming the question id), or when the tokenizer's windows do not overlap as documented.
    """
    encoded = _qa_windows(records, tokenizer, max_length, stride, max_query_length, null_at_end)
    starts, ends = list(encoded.null_index), list(encoded.null_index)
    for sample, windows in _windows_by_sample(encoded.columns["overflow_to_sample_mapping"]).items():
        record = records[sample]
        span = _answer_chars(record)
        if span is None:
            continue
        context = [[t for t, s in enumerate(encoded.sequence_ids[w]) if s == 1] for w in windows]
        offsets = [[tuple(encoded.columns["offset_mapping"][w][t]) for t in tokens]
                   for w, tokens in zip(windows, context)]
        full, window_starts = _stitch_windows(offsets, stride, record["id"])
        answer = _answer_tokens(full, *span)
        if answer is None:
            raise ValueError(f"question {record['id']!r}: no context token holds a character of its answer "
                             f"{record['answers']['text'][0]!r} (characters {span[0]}..{span[1]})")
        for w, tokens, begin in zip(windows, context, window_starts):
            if begin <= answer[0] and answer[1] < begin + len(tokens):
                starts[w], ends[w] = tokens[answer[0] - begin], tokens[answer[1] - begin]
    columns = {k: v for k, v in encoded.columns.items() if k not in ("offset_mapping", "overflow_to_sample_mapping")}
    columns["start_positions"] = starts
    columns["end_positions"] = ends
    columns["length"] = [len(ids) for ids in columns["input_ids"]]
    return Dataset.from_dict(columns)


def _answer_chars(record: dict) -> tuple[int, int] | None:
    """[start, end) characters of the record's first answer in its context, surrounding white space
    left out (it belongs to no WordPiece token); None for a question without answer."""
    answers = record["answers"]
    if not answers["text"]:
        return None
    text = answers["text"][0]
    start = answers["answer_start"][0]
    return start + len(text) - len(text.lstrip()), start + len(text.rstrip())


def _answer_tokens(offsets: list[tuple[int, int]], start_char: int, end_char: int) -> tuple[int, int] | None:
    """(first, last) positions in `offsets` of the tokens that hold a character of [start_char, end_char).

    offsets: (start, end) characters of one sequence's tokens, in order. A byte-level BPE
    (GPT-2, Llama 3, RoBERTa) or a byte fallback (Llama 2, for characters outside its vocabulary)
    splits one character into several tokens that all carry that character's offsets: the span
    starts on the first of them and ends on the last, so it decodes to whole characters (the
    labels' target must have start <= end). Tokens without characters (empty offsets) hold no
    answer. None when no token holds an answer character.
    """
    holding = [t for t, (a, b) in enumerate(offsets) if a < b and a < end_char and b > start_char]
    return (holding[0], holding[-1]) if holding else None


def _windows_by_sample(sample_of_window: list[int]) -> dict[int, list[int]]:
    """{record index: its windows, in order} from the tokenizer's overflow_to_sample_mapping."""
    out: dict[int, list[int]] = {}
    for window, sample in enumerate(sample_of_window):
        out.setdefault(sample, []).append(window)
    return out


def _stitch_windows(windows: list[list[tuple[int, int]]], stride: int,
                    record_id: str) -> tuple[list[tuple[int, int]], list[int]]:
    """One context's token offsets, whole, from those of its windows' context tokens, and where each
    window begins in them.

    `windows`: in the tokenizer's order, each overlapping the previous by `stride` tokens (the
    overlap transformers documents for `stride` with return_overflowing_tokens). The whole context is
    needed because a window may begin or end inside the tokens of one character. ValueError naming
    the question and data.doc_stride when the windows do not overlap so.
    """
    full: list[tuple[int, int]] = []
    begins = []
    for k, window in enumerate(windows):
        overlap = stride if k else 0
        if overlap > len(full) or full[len(full) - overlap:] != window[:overlap]:
            raise ValueError(f"question {record_id!r}: window {k} of its context does not repeat the last "
                             f"data.doc_stride ({stride}) tokens of the window before it (a tokenizer that "
                             "truncates on the left?)")
        begins.append(len(full) - overlap)
        full.extend(window[overlap:])
    return full, begins


def encode_qa_eval(records: list[dict], tokenizer, max_length: int, stride: int,
                   max_query_length: int, null_at_end: bool = False) -> tuple[Dataset, list[dict]]:
    """Windows for prediction as in encode_qa_train, plus per-window metadata.

    meta[w]: {"example_index": index into `records`, "offsets": (start, end) characters in the
    context for context tokens, None for question and special tokens, "null_index": the position
    whose start+end logits score "no answer" (see _qa_windows)}.
    """
    encoded = _qa_windows(records, tokenizer, max_length, stride, max_query_length, null_at_end)
    meta = []
    for i, offsets in enumerate(encoded.columns["offset_mapping"]):
        meta.append({
            "example_index": encoded.columns["overflow_to_sample_mapping"][i],
            # offsets only for context tokens: spans elsewhere are not answers
            "offsets": [tuple(o) if s == 1 else None for o, s in zip(offsets, encoded.sequence_ids[i])],
            "null_index": encoded.null_index[i],
        })
    columns = {k: v for k, v in encoded.columns.items() if k not in ("offset_mapping", "overflow_to_sample_mapping")}
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
