"""SQuAD v2 decoding (ftdrift.data.qa.postprocess) against answers worked out by hand."""

import numpy as np

from ftdrift.data import qa

CONTEXT = "Ada was born in Paris."
RECORD = {"id": "q", "context": CONTEXT, "question": "Where?", "answers": {"text": ["Paris"], "answer_start": [16]}}
# window: [CLS] where ? [SEP] ada was born in paris . [SEP] -> context tokens 4..9
OFFSETS = [None, None, None, None, (0, 3), (4, 7), (8, 12), (13, 15), (16, 21), (21, 22), None]


def test_padding_past_a_window_does_not_crowd_out_its_candidates():
    """All real logits negative, the batch padded to 40 positions with 0: the 20-best must still be
    drawn from the window's own 11 tokens, so the answer is 'Paris' (start 8, end 8: -1 + -1 = -2
    beats the null score -5 + -5), not '' as when 0-filled padding took every n-best slot."""
    starts = np.full(40, 0.0, dtype=np.float32)
    ends = np.full(40, 0.0, dtype=np.float32)
    starts[:11], ends[:11] = -9.0, -9.0
    starts[0], ends[0] = -5.0, -5.0
    starts[8], ends[8] = -1.0, -1.0
    meta = [{"example_index": 0, "offsets": OFFSETS}]
    predictions, na_probs = qa.postprocess([RECORD], meta, starts[None], ends[None])
    assert predictions == {"q": "Paris"}
    margin = (-5.0 + -5.0) - (-1.0 + -1.0)
    assert na_probs["q"] == 1.0 / (1.0 + np.exp(-margin))
