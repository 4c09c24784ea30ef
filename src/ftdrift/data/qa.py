"""Extractive QA post-processing: window logits -> answer text and no-answer probability."""

from __future__ import annotations

import math

import numpy as np


def postprocess(records: list[dict], meta: list[dict], start_logits: np.ndarray, end_logits: np.ndarray,
                n_best: int = 20, max_answer_length: int = 30) -> tuple[dict, dict]:
    """SQuAD v2 decoding over all windows of each question.

    `start_logits` / `end_logits`: [windows, positions], any padding past a window's length
    ignored. The null score is the smallest start+end logit at each window's null position
    (meta "null_index": token 0 for encoders, the appended end-of-sequence token for decoders, see
    ftdrift.data.features._qa_windows) over the question's windows;
    the best span is the highest-scoring valid span (inside the context, start <= end,
    at most `max_answer_length` tokens) among each window's n-best starts and ends. The answer
    is "" when the null score beats the best span. `na_probs` is sigmoid(null - best span),
    monotone in that margin, so the official best-threshold search applies.

    A span's text is the context from its start token's first character to its end token's last
    (meta offsets). Every token of a character split into byte tokens (byte-level BPE, byte
    fallback) carries that character's offsets, so a span that starts or ends on an inner byte
    token decodes to whole characters, never to part of one.
    """
    by_example: dict[int, list[int]] = {}
    for feature, info in enumerate(meta):
        by_example.setdefault(info["example_index"], []).append(feature)
    predictions, na_probs = {}, {}
    for example_index, record in enumerate(records):
        null_score = math.inf
        best_score, best_text = -math.inf, ""
        for feature in by_example.get(example_index, []):
            offsets = meta[feature]["offsets"]
            # the window's own tokens only: positions past its length are batch padding, whose fill
            # value (0) would otherwise crowd real candidates out of the n-best when logits are negative
            starts, ends = start_logits[feature][:len(offsets)], end_logits[feature][:len(offsets)]
            null = meta[feature].get("null_index", 0)
            null_score = min(null_score, float(starts[null] + ends[null]))
            top_starts = np.argsort(starts)[::-1][:n_best]
            top_ends = np.argsort(ends)[::-1][:n_best]
            for s in top_starts:
                if s >= len(offsets) or offsets[s] is None:
                    continue
                for e in top_ends:
                    if e >= len(offsets) or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                        continue
                    score = float(starts[s] + ends[e])
                    if score > best_score:
                        best_score = score
                        best_text = record["context"][offsets[s][0]:offsets[e][1]]
        if best_score == -math.inf:
            predictions[record["id"]], na_probs[record["id"]] = "", 1.0
            continue
        margin = null_score - best_score
        predictions[record["id"]] = "" if margin > 0 else best_text
        na_probs[record["id"]] = 1.0 / (1.0 + math.exp(-margin)) if margin > -700 else 0.0
    return predictions, na_probs


def records_to_squad(records: list[dict]) -> dict:
    """The SQuAD v2 JSON layout of a list of QA records (what the official scorer reads)."""
    articles: dict[str, dict[str, list]] = {}
    for r in records:
        paragraphs = articles.setdefault(r.get("title", ""), {})
        paragraphs.setdefault(r["context"], []).append({
            "id": r["id"], "question": r["question"], "is_impossible": not r["answers"]["text"],
            "answers": [{"text": t, "answer_start": s} for t, s in zip(r["answers"]["text"], r["answers"]["answer_start"])],
        })
    return {"version": "v2.0", "data": [
        {"title": title, "paragraphs": [{"context": c, "qas": qas} for c, qas in paragraphs.items()]}
        for title, paragraphs in articles.items()]}
