"""The study's training loss, computed from the model's logits, defined per example.

Why not the model's own loss: under gradient accumulation the Trainer (transformers 5.24)
passes `num_items_in_batch` to models whose forward takes `**kwargs` and then trusts them to
normalise over the whole accumulated batch; the sequence-classification models ignore it and
return a per-micro-batch mean, so the loss and its gradient came out multiplied by the
accumulation count. Extractive-QA models also include padding positions in the softmax over
start/end positions, so the loss depended on how a batch happened to be padded. Here the loss
of a batch is always

    (1 / N) · Σ_examples loss_i

with N the number of examples in the *effective* batch (all micro-batches of one optimizer
step), so (micro-batch m, accumulation k) computes the same objective as (m·k, 1).

    classification:  loss_i = −log softmax(logits_i)[label_i]
    extractive QA:   loss_i = ½ (−log p_start,i[s_i] − log p_end,i[e_i]), softmax over the
                     window's real tokens only (attention mask), as in BERT's SQuAD recipe
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LABEL_KEYS = ("labels", "start_positions", "end_positions")


def _masked(logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(attention_mask == 0, torch.finfo(logits.dtype).min)


def per_example(outputs, labels: dict, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[batch] float32 losses of one batch (see the module doc).

    `outputs`: a model output with `logits` [batch, classes] or `start_logits`/`end_logits`
    [batch, seq]; `labels`: {'labels': [batch]} or {'start_positions', 'end_positions': [batch]};
    `attention_mask` [batch, seq] is required for QA. Raises KeyError on missing labels.
    """
    if "labels" in labels:
        return F.cross_entropy(outputs["logits"].float(), labels["labels"], reduction="none")
    if attention_mask is None:
        raise ValueError("extractive QA loss needs the attention mask (padding is not a position)")
    start = F.cross_entropy(_masked(outputs["start_logits"].float(), attention_mask), labels["start_positions"],
                            reduction="none")
    end = F.cross_entropy(_masked(outputs["end_logits"].float(), attention_mask), labels["end_positions"],
                          reduction="none")
    return (start + end) / 2


def batch_loss(outputs, labels: dict, attention_mask: torch.Tensor | None, num_examples: int | None = None
               ) -> torch.Tensor:
    """Sum of the per-example losses divided by `num_examples` (the effective batch's size),
    or their mean over this batch when `num_examples` is None. Scalar tensor."""
    losses = per_example(outputs, labels, attention_mask)
    return losses.sum() / num_examples if num_examples else losses.mean()
