"""QA features with real tokenizers: answer labels, long questions, window sizes."""

from pathlib import Path

import pytest

from ftdrift.data.features import encode_probe, encode_qa_eval, encode_qa_train
from ftdrift.data.tasks import read_squad_json
from ftdrift.modeling import models
from ftdrift.testing import write_tiny_llama

LONG_QUESTION_CASE = Path("/work/shared/cases/squad_v2_long_question.json")
CONTEXT = "The bridge was designed by an engineer from the town and faces the north. "
SPACED = [  # answers with white space around them, as SQuAD has some
    {"id": "by", "title": "", "context": CONTEXT, "question": "Who designed the bridge?",
     "answers": {"text": [" an engineer"], "answer_start": [CONTEXT.index(" an engineer")]}},
    {"id": "end", "title": "", "context": CONTEXT, "question": "Which way does it face?",
     "answers": {"text": ["the north. "], "answer_start": [CONTEXT.index("the north. ")]}},
]


@pytest.fixture(scope="module")
def bert():
    return models.load_tokenizer({"name_or_path": "embedded:all-MiniLM-L6-v2", "family": "bert"})


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    texts = [CONTEXT, *(r["question"] for r in SPACED)] * 3
    if LONG_QUESTION_CASE.is_file():
        texts.append(LONG_QUESTION_CASE.read_text())
    model_dir = write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), texts)
    return models.load_tokenizer({"name_or_path": str(model_dir), "family": "llama"})


def _expected_labels(encoded, window: int, start_char: int, end_char: int) -> tuple[int, int]:
    """The context tokens holding the first and the last answer character; (0, 0) if not both in the window."""
    offsets, sequence_ids = encoded["offset_mapping"][window], encoded.sequence_ids(window)
    context = [t for t, s in enumerate(sequence_ids) if s == 1]
    start = [t for t in context if offsets[t][0] <= start_char < offsets[t][1]]
    end = [t for t in context if offsets[t][0] < end_char <= offsets[t][1]]
    return (start[0], end[-1]) if start and end else (0, 0)


# one window; several windows (the tiny BPE needs about 13 tokens for a question, MiniLM 5)
@pytest.mark.parametrize("family, max_length, stride", [("bert", 64, 16), ("bert", 16, 2), ("llama", 64, 16),
                                                        ("llama", 28, 4)])
def test_answers_with_white_space_label_exactly_the_answer(request, family, max_length, stride):
    tok = request.getfixturevalue(family)
    dataset = encode_qa_train(SPACED, tok, max_length, stride, 64)
    # the same windows, tokenised here directly, give the offsets to decode the labels with
    encoded = tok([r["question"] for r in SPACED], [r["context"] for r in SPACED], truncation="only_second",
                  max_length=max_length, stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)
    assert dataset["input_ids"] == encoded["input_ids"]
    answers = {"by": "an engineer", "end": "the north."}
    labelled = {"by": 0, "end": 0}
    for w in range(len(dataset)):
        record = SPACED[encoded["overflow_to_sample_mapping"][w]]
        answer = answers[record["id"]]
        start_char = CONTEXT.index(answer)
        labels = (dataset[w]["start_positions"], dataset[w]["end_positions"])
        assert labels == _expected_labels(encoded, w, start_char, start_char + len(answer))
        if labels != (0, 0):
            labelled[record["id"]] += 1
            span = CONTEXT[encoded["offset_mapping"][w][labels[0]][0]:encoded["offset_mapping"][w][labels[1]][1]]
            # WordPiece offsets hold no white space; byte-level BPE tokens carry their leading space
            assert (span if family == "bert" else span.strip()) == answer
    assert labelled["by"] >= 1 and labelled["end"] >= 1
    if max_length < 64:
        assert len(dataset) > 2  # the small window really slides
    # the records themselves keep the original answers
    assert SPACED[0]["answers"]["text"] == [" an engineer"] and SPACED[1]["answers"]["text"] == ["the north. "]


def _question_ids(input_ids: list[int], meta_window: dict, tok) -> list[int]:
    # meta offsets are None exactly for question and special tokens
    return [i for i, o in zip(input_ids, meta_window["offsets"]) if o is None and i not in tok.all_special_ids]


@pytest.mark.skipif(not LONG_QUESTION_CASE.is_file(), reason="shared case files not present")
@pytest.mark.parametrize("family", ["bert", "llama"])
def test_question_longer_than_the_window_is_cut(request, family):
    tok = request.getfixturevalue(family)
    records = read_squad_json(LONG_QUESTION_CASE)
    assert [r["id"] for r in records] == ["q_long", "q_short"]
    full_question = tok(records[0]["question"], add_special_tokens=False)["input_ids"]
    assert len(full_question) > 32  # the case: longer than the whole window

    dataset = encode_qa_train(records, tok, 32, 4, max_query_length=16)
    evaluation, meta = encode_qa_eval(records, tok, 32, 4, max_query_length=16)
    assert dataset["input_ids"] == evaluation["input_ids"]  # same windows: meta describes both
    assert {m["example_index"] for m in meta} == {0, 1}
    assert all(len(ids) <= 32 for ids in dataset["input_ids"])
    spans = []
    for w, m in enumerate(meta):
        question_ids = _question_ids(evaluation[w]["input_ids"], m, tok)
        assert 0 < len(question_ids) <= 16
        if m["example_index"] == 0:
            # the cut question is the start of the question (re-tokenising may split the last word anew)
            assert question_ids[:-1] == full_question[:len(question_ids) - 1]
            assert len(question_ids) >= 12
        start, end = dataset[w]["start_positions"], dataset[w]["end_positions"]
        if m["example_index"] == 0 and (start, end) != (0, 0):
            spans.append(records[0]["context"][m["offsets"][start][0]:m["offsets"][end][1]])
    assert spans and {s.strip() for s in spans} == {"1820"}
    if family == "bert":
        assert spans == ["1820"] * len(spans)


@pytest.mark.skipif(not LONG_QUESTION_CASE.is_file(), reason="shared case files not present")
def test_window_too_small_for_the_stride_names_doc_stride(bert):
    records = read_squad_json(LONG_QUESTION_CASE)
    # [CLS] question [SEP] context [SEP]: 32 - 16 - 3 = 13 context tokens per window
    assert len(encode_qa_train(records, bert, 32, 12, max_query_length=16)) > 0
    with pytest.raises(ValueError, match=r"data\.doc_stride \(13\).*max_length 32 - longest question 16 .*= 13"):
        encode_qa_train(records, bert, 32, 13, max_query_length=16)
    with pytest.raises(ValueError, match=r"data\.doc_stride \(4\)"):
        encode_qa_eval(records, bert, 32, 4, max_query_length=16 * 2)
    # max_query_length 64 keeps the whole question: no room is left, and it is said so
    n_question = len(bert(records[0]["question"].lstrip(), add_special_tokens=False)["input_ids"])
    with pytest.raises(ValueError, match=rf"longest question {n_question} tokens .*= {32 - n_question - 3}$"):
        encode_qa_train(records, bert, 32, 4, 64)


def test_question_cut_ends_with_multibyte_characters(llama):
    """Byte-level BPE splits one character into tokens with equal offsets: the cut must still end."""
    record = {"id": "jp", "title": "", "context": CONTEXT, "question": "橋を設計したのは誰ですか",
              "answers": {"text": ["an engineer"], "answer_start": [CONTEXT.index("an engineer")]}}
    assert len(llama(record["question"], add_special_tokens=False)["input_ids"]) > 4
    evaluation, meta = encode_qa_eval([record], llama, 64, 8, max_query_length=4)
    assert all(0 < len(_question_ids(evaluation[w]["input_ids"], m, llama)) <= 4 for w, m in enumerate(meta))


@pytest.mark.skipif(not LONG_QUESTION_CASE.is_file(), reason="shared case files not present")
def test_probe_cuts_long_questions(bert):
    records = read_squad_json(LONG_QUESTION_CASE)
    probe = encode_probe(records, bert, "extractive_qa", 32, max_query_length=16)
    assert len(probe) == 2
    for item in probe:
        assert len(item["input_ids"]) <= 32
        # token type 0: [CLS] question [SEP]
        assert sum(t == 0 for t in item["token_type_ids"]) - 2 <= 16
    assert bert.decode(probe[1]["input_ids"]).startswith("[CLS] when was the mill built? [SEP] the mill on")
    with pytest.raises(ValueError, match="max_query_length 64"):
        encode_probe(records, bert, "extractive_qa", 32, 64)  # the whole question does not fit
    sentences = encode_probe([{"text": "a b c"}], bert, "classification", 8)
    assert bert.decode(sentences[0]["input_ids"]) == "[CLS] a b c [SEP]"
