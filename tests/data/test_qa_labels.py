"""SQuAD start/end labels when one character is split into several tokens that share its offsets.

A byte-level BPE (GPT-2, Llama 3, RoBERTa) and Llama 2's byte fallback split a character outside
their vocabulary ("€", "京", an emoji, "é" for a vocabulary without it) into one token per UTF-8
byte, each carrying that character's offsets. The labels must start on the first token of the
answer's first character and end on the last token of its last character (WordPiece alongside,
where a character is at most one token). Expected labels here come from decoding token ids and from
the offsets directly, not from ftdrift's labelling code.
"""

import json

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models as tok_models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaModel, LlamaTokenizer, PreTrainedTokenizerFast

from ftdrift.analysis import baselines
from ftdrift.core import metrics
from ftdrift.data import qa
from ftdrift.data.features import encode_qa_eval, encode_qa_train
from ftdrift.modeling import models

# ASCII only: every non-ASCII character of CONTEXT is outside the trained vocabularies
TRAIN_TEXTS = ["In 2010 the singer paid one pound for a ticket to the park near the city, costing five "
               "today. Who paid for the ticket? What did it cost? Where is the park?"] * 4
CONTEXT = "In 2010 Beyoncé paid £1 for a ticket to Łazienki, near 北京, costing 5€ 😀 today."
ANSWERS = {  # id: answer text (each occurs once in CONTEXT)
    "euro": "€",  # one character, three bytes
    "emoji": "😀",  # one character, four bytes
    "jing": "京",  # one character, last of a word
    "name": "Beyoncé",  # ends on a two-byte character
    "pound": "£1",  # begins with one
    "park": "Łazienki",  # begins with one
    "city": "北京",  # begins and ends with three-byte characters
    "spaced": " 5€ ",  # white space around: labelled without it
    "year": "2010",  # ASCII control
}
FAMILIES = ["byte_level", "byte_fallback", "wordpiece"]


def record(qid: str, answer: str | None, context: str = CONTEXT) -> dict:
    answers = {"text": [answer] if answer else [], "answer_start": [context.index(answer)] if answer else []}
    return {"id": qid, "title": "t", "context": context, "question": "Who paid?", "answers": answers}


RECORDS = [record(qid, text) for qid, text in ANSWERS.items()] + [record("none", None)]


def byte_level_bpe() -> PreTrainedTokenizerFast:
    """GPT-2-style byte-level BPE: ByteLevel pre-tokenizer and decoder, trained on ASCII text."""
    tok = Tokenizer(tok_models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(TRAIN_TEXTS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A </s> $B:1", special_tokens=[("<s>", 1), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


def byte_fallback_llama(tmp_path) -> PreTrainedTokenizerFast:
    """Llama 2's kind: transformers' own LlamaTokenizer (SentencePiece-style BPE, Metaspace, byte
    fallback to <0xNN> tokens) on a vocabulary and merges trained on ASCII text, loaded back as the
    workflow loads tokenizers."""
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(tok_models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.train_from_iterator(TRAIN_TEXTS, trainers.BpeTrainer(vocab_size=340,
                                                            special_tokens=["<unk>", "<s>", "</s>", *bytes_]))
    model = json.loads(tok.to_str())["model"]
    llama = LlamaTokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]])
    llama.save_pretrained(tmp_path)
    return models.load_tokenizer({"name_or_path": str(tmp_path), "family": "llama"})


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    return {"byte_level": byte_level_bpe(),
            "byte_fallback": byte_fallback_llama(tmp_path_factory.mktemp("llama-tok")),
            "wordpiece": models.load_tokenizer({"name_or_path": "embedded:all-MiniLM-L6-v2", "family": "bert"})}


def char_span(answer: str, context: str = CONTEXT) -> tuple[int, int]:
    """[start, end) characters of `answer` in `context` without its surrounding white space."""
    start = context.index(answer) + len(answer) - len(answer.lstrip())
    return start, start + len(answer.strip())


def windows(tok, records, max_length, stride):
    """The windows encode_qa_* make, tokenised here directly (for offsets and sequence ids)."""
    return tok([r["question"] for r in records], [r["context"] for r in records], truncation="only_second",
               max_length=max_length, stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)


def test_the_fixtures_split_characters_into_byte_tokens(kinds):
    """What makes the cases hard: byte tokens sharing one character's offsets."""
    for family in ("byte_level", "byte_fallback"):
        tok = kinds[family]
        for char, n_bytes in (("€", 3), ("😀", 4), ("京", 3)):
            encoded = tok(f"a {char} b", add_special_tokens=False, return_offsets_mapping=True)
            at = [o for o in encoded["offset_mapping"] if tuple(o) == (2, 3)]
            assert len(at) == n_bytes, (family, char, encoded["offset_mapping"])
    assert kinds["byte_fallback"].convert_ids_to_tokens(
        kinds["byte_fallback"]("€", add_special_tokens=False)["input_ids"])[-3:] == ["<0xE2>", "<0x82>", "<0xAC>"]


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_start_on_the_first_and_end_on_the_last_token_of_the_answer(kinds, family):
    tok = kinds[family]
    dataset = encode_qa_train(RECORDS, tok, 128, 16, 16)
    encoded = windows(tok, RECORDS, 128, 16)
    assert len(dataset) == len(RECORDS)  # one window each
    for w, r in enumerate(RECORDS):
        start, end = dataset[w]["start_positions"], dataset[w]["end_positions"]
        if not r["answers"]["text"]:
            assert (start, end) == (0, 0)
            continue
        offsets, ids = encoded["offset_mapping"][w], encoded["input_ids"][w]
        context = [t for t, s in enumerate(encoded.sequence_ids(w)) if s == 1]
        first_char, last_char = char_span(r["answers"]["text"][0])
        last_char -= 1
        holding_first = [t for t in context if offsets[t][0] <= first_char < offsets[t][1]]
        holding_last = [t for t in context if offsets[t][0] <= last_char < offsets[t][1]]
        assert (start, end) == (holding_first[0], holding_last[-1]), r["id"]
        assert start <= end
        answer = r["answers"]["text"][0].strip()
        # the offsets' character span is the answer (byte-level tokens carry their leading space)
        assert CONTEXT[offsets[start][0]:offsets[end][1]].strip() == answer, r["id"]
        if family != "wordpiece":  # WordPiece decodes lower-cased, accents stripped, CJK spaced
            assert tok.decode(ids[start:end + 1]).strip() == answer, r["id"]


@pytest.mark.parametrize("family", ["byte_level", "byte_fallback"])
def test_window_edges_inside_a_character_leave_its_tokens_unlabelled(kinds, family):
    """Small sliding windows: some begin or end among the byte tokens of an answer character. A
    window labels the answer exactly when it holds all of the answer's tokens (its decoded context
    then holds the answer), and the label span decodes to the answer."""
    tok = kinds[family]
    records = [record(qid, ANSWERS[qid]) for qid in ("euro", "emoji", "city", "park", "name")]
    cut_inside, labelled = 0, set()
    for max_length in range(24, 40):
        dataset = encode_qa_train(records, tok, max_length, 2, 16)
        encoded = windows(tok, records, max_length, 2)
        assert dataset["input_ids"] == encoded["input_ids"]
        for w in range(len(dataset)):
            r = records[encoded["overflow_to_sample_mapping"][w]]
            answer, ids = r["answers"]["text"][0], encoded["input_ids"][w]
            context = [ids[t] for t, s in enumerate(encoded.sequence_ids(w)) if s == 1]
            shown = tok.decode(context)
            cut_inside += shown.startswith("\ufffd") or shown.endswith("\ufffd")
            start, end = dataset[w]["start_positions"], dataset[w]["end_positions"]
            if answer in shown:
                assert 0 < start <= end and tok.decode(ids[start:end + 1]).strip() == answer, (r["id"], max_length)
                labelled.add(r["id"])
            else:
                assert (start, end) == (0, 0), (r["id"], max_length, shown)
    assert labelled == {r["id"] for r in records}  # each answer fits some window (a small stride may cut any)
    assert cut_inside > 0  # the case happened


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_at_the_labels_decode_to_the_answers(kinds, family):
    """A model that predicts its training labels exactly scores EM 100: postprocess (the fine-tuned
    models' and the span probe's decoding) turns the label spans into the answers."""
    tok = kinds[family]
    dataset = encode_qa_train(RECORDS, tok, 40, 8, 16)
    evaluation, meta = encode_qa_eval(RECORDS, tok, 40, 8, 16)
    assert dataset["input_ids"] == evaluation["input_ids"]
    width = max(len(ids) for ids in dataset["input_ids"])
    starts = np.full((len(dataset), width), -10.0, dtype=np.float32)
    ends = starts.copy()
    for w in range(len(dataset)):
        starts[w, dataset[w]["start_positions"]] = 10.0
        ends[w, dataset[w]["end_positions"]] = 10.0
    predictions, na_probs = qa.postprocess(RECORDS, meta, starts, ends)
    expected = {r["id"]: (r["answers"]["text"][0].strip() if r["answers"]["text"] else "") for r in RECORDS}
    assert predictions == expected
    scores = metrics.squad_v2(qa.records_to_squad(RECORDS), predictions, na_probs)
    assert scores["exact"] == pytest.approx(100.0)


def test_span_probe_fits_on_the_first_and_last_byte_tokens(kinds):
    """The span probe's token rows (baselines._span_train_rows, layer 0 = the token embeddings of a
    tiny random Llama) flag as start / end the rows of the answer's first / last byte token."""
    tok = kinds["byte_fallback"]
    torch.manual_seed(0)
    model = LlamaModel(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)).eval()
    records = [record(qid, ANSWERS[qid]) for qid in ("euro", "emoji", "jing")]
    X, is_start, is_end, weights, rate = baselines._span_train_rows(model, tok, records, (128, 16, 16), 0, "fp32", 2)
    assert weights is None and rate == 1.0
    table = model.embed_tokens.weight.detach().numpy()
    distances = ((X[:, None, :] - table[None, :, :]) ** 2).sum(-1)
    token_of_row = distances.argmin(1)
    assert np.allclose(distances.min(1), 0.0)  # each row is one token's embedding
    named = tok.convert_ids_to_tokens
    assert sorted(named(token_of_row[is_start].tolist())) == ["<0xE2>", "<0xE4>", "<0xF0>"]  # € 京 😀
    assert sorted(named(token_of_row[is_end].tolist())) == ["<0x80>", "<0xAC>", "<0xAC>"]


def test_answer_no_token_holds_names_the_question(kinds):
    """WordPiece drops format characters (U+200B): an answer of only that is no token; it is said
    so rather than trained on as 'no answer'."""
    context = "Ada was born\u200b in Paris."
    with pytest.raises(ValueError, match=r"question 'zw': no context token holds a character of its answer"):
        encode_qa_train([record("zw", "\u200b", context)], kinds["wordpiece"], 64, 8, 16)


@pytest.mark.parametrize("family", ["byte_level", "byte_fallback"])
def test_spans_on_inner_byte_tokens_decode_to_whole_characters(kinds, family):
    """postprocess: a predicted span that starts on the last byte token of "北" and ends on the
    first byte token of "京" is the text "北京", not a part of a character."""
    tok = kinds[family]
    evaluation, meta = encode_qa_eval([RECORDS[0]], tok, 128, 16, 16)
    offsets = meta[0]["offsets"]
    north, capital = (CONTEXT.index(c) for c in "北京")
    tokens_of = {c: [t for t, o in enumerate(offsets) if o is not None and o[0] == c] for c in (north, capital)}
    assert len(tokens_of[north]) == len(tokens_of[capital]) == 3
    starts = np.full((1, len(offsets)), -10.0, dtype=np.float32)
    ends = starts.copy()
    starts[0, tokens_of[north][-1]], ends[0, tokens_of[capital][0]] = 10.0, 10.0
    predictions, _ = qa.postprocess([RECORDS[0]], meta, starts, ends)
    assert predictions == {RECORDS[0]["id"]: "北京"}
