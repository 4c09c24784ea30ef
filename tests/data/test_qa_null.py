"""SQuAD v2's no-answer score for decoders: read at an appended end-of-sequence token that attends to
the whole window, not at token 0, which a causal model computes from the first token alone."""

import numpy as np
import pytest
import torch

from ftdrift.data import qa
from ftdrift.data.features import encode_qa_eval, encode_qa_train
from ftdrift.modeling import models
from ftdrift.study.families import qa_null_at_end
from ftdrift.testing import write_tiny_llama

CONTEXT = "Ada was born in Paris in 1820. Later Ada moved to the coast and wrote books about the sea."
RECORDS = [
    {"id": "a", "context": CONTEXT, "question": "Where was Ada born?",
     "answers": {"text": ["Paris"], "answer_start": [CONTEXT.index("Paris")]}},
    {"id": "b", "context": CONTEXT, "question": "Where did Ada die?", "answers": {"text": [], "answer_start": []}},
    {"id": "c", "context": CONTEXT.replace("coast", "hills"), "question": "When was Ada born?",
     "answers": {"text": ["1820"], "answer_start": [CONTEXT.index("1820")]}},
]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = write_tiny_llama(tmp_path_factory.mktemp("llama") / "tiny", [CONTEXT] * 5 + [r["question"] for r in RECORDS])
    cfg = {"name_or_path": str(folder), "family": "llama"}
    return cfg, models.load_tokenizer(cfg)


def test_decoder_windows_end_with_eos_where_unanswerable_labels_point(llama):
    cfg, tok = llama
    assert qa_null_at_end("llama") and not qa_null_at_end("bert")
    train = encode_qa_train(RECORDS, tok, 32, 8, 16, null_at_end=True)
    evaluation, meta = encode_qa_eval(RECORDS, tok, 32, 8, 16, null_at_end=True)
    assert len(train) == len(evaluation) == len(meta) > len(RECORDS)  # several windows per question
    for w, window in enumerate(train):
        ids = window["input_ids"]
        assert len(ids) <= 32 and ids[-1] == tok.eos_token_id and meta[w]["null_index"] == len(ids) - 1
        assert evaluation[w]["input_ids"] == ids and meta[w]["offsets"][-1] is None  # never an answer token
        record = RECORDS[meta[w]["example_index"]]
        start, end = window["start_positions"], window["end_positions"]
        if (start, end) == (len(ids) - 1, len(ids) - 1):
            continue  # no answer in this window
        offsets = meta[w]["offsets"]
        # (byte-level BPE offsets keep the leading space of a word; SQuAD scoring strips it)
        assert record["context"][offsets[start][0]:offsets[end][1]].strip() == record["answers"]["text"][0]
    unanswerable = [w for w, m in enumerate(meta) if m["example_index"] == 1]
    assert all(train[w]["start_positions"] == train[w]["end_positions"] == meta[w]["null_index"] for w in unanswerable)
    # an encoder's windows are unchanged: null at token 0
    _, encoder_meta = encode_qa_eval(RECORDS, tok, 32, 8, 16)
    assert all(m["null_index"] == 0 for m in encoder_meta)


@torch.no_grad()
def test_the_no_answer_score_depends_on_the_question_and_context(llama):
    """A random causal QA model: the score at token 0 is the same for every window (the same first
    token, and a causal model sees nothing after it); at the null position it differs."""
    cfg, tok = llama
    model = models.load_model(cfg, "extractive_qa", None, tok).eval()
    scores = {}
    for null_at_end in (False, True):
        evaluation, meta = encode_qa_eval(RECORDS, tok, 64, 16, 16, null_at_end=null_at_end)
        values = []
        for w, m in enumerate(meta):
            out = model(input_ids=torch.tensor([evaluation[w]["input_ids"]]),
                        attention_mask=torch.tensor([evaluation[w]["attention_mask"]]))
            i = m["null_index"]
            values.append(float(out.start_logits[0, i] + out.end_logits[0, i]))
        scores[null_at_end] = np.array(values)
    assert np.ptp(scores[False]) < 1e-6  # token 0: blind to the input
    assert np.ptp(scores[True]) > 1e-3  # the appended token: reads the window


def test_postprocess_reads_the_null_score_at_the_window_s_null_position():
    record = {"id": "q", "context": "Ada was born in Paris.", "question": "Where?",
              "answers": {"text": ["Paris"], "answer_start": [16]}}
    offsets = [None, None, (0, 3), (4, 7), (8, 12), (13, 15), (16, 21), (21, 22), None]  # last: appended eos
    starts, ends = np.full(9, -5.0, dtype=np.float32), np.full(9, -5.0, dtype=np.float32)
    starts[6], ends[6] = 1.0, 1.0  # "Paris": 2
    starts[0], ends[0] = 4.0, 4.0  # token 0: 8, would win if read there
    starts[8], ends[8] = 0.0, 0.0  # the null position: 0 < 2
    predictions, na_probs = qa.postprocess([record], [{"example_index": 0, "offsets": offsets, "null_index": 8}],
                                           starts[None], ends[None])
    assert predictions == {"q": "Paris"} and na_probs["q"] == pytest.approx(1 / (1 + np.exp(2.0)))
    starts[8] = 3.0  # now 3 > 2: no answer
    predictions, _ = qa.postprocess([record], [{"example_index": 0, "offsets": offsets, "null_index": 8}],
                                    starts[None], ends[None])
    assert predictions == {"q": ""}
