"""Language-modelling loss of generic text: what a fine-tuned backbone does to the base model's
next-token predictions (the "what do they forget?" half of the forgetting rule).

The text's first `max_tokens` tokens (one tokenisation of the document, the tokenizer's own special
tokens included, e.g. Llama's BOS at the start) are cut into non-overlapping windows of `window`
tokens; each window is scored on its own (no context carried across windows), every token after a
window's first is predicted, and the loss is the mean next-token negative log-likelihood in nats over
all predicted tokens, perplexity = exp(loss). This is the non-overlapping-window evaluation of the
Hugging Face perplexity guide (transformers docs, "Perplexity of fixed-length models", stride =
window). A last window shorter than 2 tokens predicts nothing and is dropped.

The fine-tuned model is scored with the BASE model's language-modelling head: the run's backbone
weights (full fine-tuning: its task model's backbone; an adapter method: the merged adapter) are
loaded into the base AutoModelForCausalLM's backbone and the head is untied from the input embeddings first, so a
fine-tuned embedding matrix never reaches the head through weight tying.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from ftdrift.core.precision import autocast

log = logging.getLogger("ftdrift.analysis.lm_loss")

# characters read per token wanted, at first (doubled until enough tokens): a prefix of a large
# file is tokenised, not all of it
CHARS_PER_TOKEN = 8
# tokens read beyond max_tokens before cutting: the prefix's last word may tokenise differently
# from the same word in the whole file, so the cut stays well clear of it
TOKEN_MARGIN = 64


def read_text_tokens(path, tokenizer, max_tokens: int) -> list[int]:
    """The first `max_tokens` token ids of the UTF-8 text file `path` (fewer if it is shorter),
    tokenised as one document (`add_special_tokens=True`). Reads a growing prefix of the file, not
    all of it. ValueError naming config key 'forgetting.text_file' when the file is empty or has
    fewer than 2 tokens (nothing to predict); FileNotFoundError naming it when absent.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config key 'forgetting.text_file': no file {path}")
    chars = max(1024, CHARS_PER_TOKEN * (max_tokens + TOKEN_MARGIN))
    with open(path, encoding="utf-8") as handle:
        text = handle.read(chars)
        while True:
            more = handle.read(len(text))  # doubles the prefix
            ids = tokenizer(text, add_special_tokens=True)["input_ids"]
            if not more or len(ids) >= max_tokens + TOKEN_MARGIN:
                break
            text += more
        if more:
            ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if len(ids) < 2:
        raise ValueError(f"config key 'forgetting.text_file': {path} holds {len(ids)} token(s); at least 2 are needed")
    return ids[:max_tokens]


def windows(ids: list[int], window: int) -> list[list[int]]:
    """Non-overlapping windows of `window` tokens (the last may be shorter; one of < 2 tokens dropped)."""
    if window < 2:
        raise ValueError(f"config key 'forgetting.window': {window} < 2 (a window must predict a token)")
    return [w for w in (ids[i:i + window] for i in range(0, len(ids), window)) if len(w) >= 2]


@torch.no_grad()
def lm_loss(model, ids: list[int], window: int, batch_size: int, precision: str = "fp32") -> tuple[float, int]:
    """(mean next-token NLL in nats, number of predicted tokens) of a causal LM on token `ids`,
    windows as in the module doc. Full windows run `batch_size` at a time (no padding: the last,
    shorter window runs alone); logits under autocast in `precision`, log-softmax in float32, the
    sum in float64. `model`: a transformers causal LM (returns `.logits` [batch, seq, vocab]).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chunks = windows(ids, window)
    groups: dict[int, list[list[int]]] = {}
    for chunk in chunks:
        groups.setdefault(len(chunk), []).append(chunk)
    total, count = 0.0, 0
    for same_length in groups.values():
        for start in range(0, len(same_length), batch_size):
            x = torch.tensor(same_length[start:start + batch_size], device=device)
            with autocast(precision, device):
                logits = model(input_ids=x, use_cache=False).logits
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), x[:, 1:].flatten(),
                                                    reduction="none")
            total += float(nll.double().sum())
            count += nll.numel()
    model.train(was_training)
    return total / count, count


def load_base_lm(model_cfg: dict) -> tuple[torch.nn.Module | None, str]:
    """The base model as transformers' AutoModelForCausalLM, float32, eval mode, on the GPU when there
    is one; (None, reason) when its checkpoint holds no language-modelling head weights (a backbone-only
    checkpoint: transformers would draw the head at random)."""
    from transformers import AutoModelForCausalLM

    from ftdrift.modeling import models

    path = models.resolve_model_path(model_cfg["name_or_path"])
    model, info = AutoModelForCausalLM.from_pretrained(path, revision=model_cfg.get("revision"), dtype=torch.float32,
                                                       output_loading_info=True)
    head = model.get_output_embeddings()
    head_names = {f"{name}.{p}" for name, module in model.named_modules() if module is head
                  for p, _ in module.named_parameters(recurse=False)}
    missing = sorted(set(info.get("missing_keys", [])) & head_names)
    if missing:
        return None, (f"the checkpoint {model_cfg['name_or_path']} holds no language-modelling head weights "
                      f"(missing: {missing})")
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval(), ""


def untie_head(lm) -> None:
    """Give `lm`'s output head its own copy of its weight when it shares the input embeddings' (tied
    embeddings), so loading another backbone leaves the head as it is."""
    head, embeddings = lm.get_output_embeddings(), lm.get_input_embeddings()
    if head.weight is embeddings.weight or head.weight.data_ptr() == embeddings.weight.data_ptr():
        head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    lm.config.tie_word_embeddings = False  # nothing re-ties them later


def load_backbone(lm, backbone: torch.nn.Module, source: str = "the fine-tuned model") -> None:
    """Load `backbone`'s weights (a task model's backbone, e.g. LlamaModel) into `lm`'s backbone,
    strictly (every key, no extra), after `untie_head`; the head keeps its weights. RuntimeError
    naming `source` when the keys differ or the head moved."""
    untie_head(lm)
    head = lm.get_output_embeddings().weight
    target = getattr(lm, lm.base_model_prefix)
    state = {k: v.to(head.device) for k, v in backbone.state_dict().items()}
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise RuntimeError(f"{source}: its backbone does not fit the base causal LM's: {err}") from None
    if lm.get_output_embeddings().weight is not head:
        raise RuntimeError("the language-modelling head changed with the backbone")


def perplexity(loss: float | None) -> float | None:
    """exp(loss); None for None, inf beyond float range."""
    if loss is None:
        return None
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf
