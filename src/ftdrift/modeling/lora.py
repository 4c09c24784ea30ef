"""LoRA through peft: wrap a task model, reload a saved adapter, check what the wrapper passes on.

peft's task-specific wrappers name the inputs they forward and drop the rest: in peft 0.21.2
`PeftModelForQuestionAnswering.forward` accepts `token_type_ids` and `position_ids` but never
passes them to the model, so a BERT-style QA model saw other inputs under LoRA than the base
model, full fine-tuning and the merged adapter. ftdrift therefore uses the plain `PeftModel`,
whose forward passes every argument through unchanged, and declares the task head as
`modules_to_save` itself (what the task wrappers would add): the head is trained, saved with
the adapter, restored on reload and kept by `merge_and_unload`.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from ftdrift.core.memory import BatchSplitter

ADAPTER = "default"  # peft's name for the single adapter ftdrift trains


def head_modules(model: torch.nn.Module) -> list[str]:
    """Top-level modules of a transformers task model outside its backbone that hold parameters.

    E.g. ['classifier'] (BERT classification), ['score'] (Llama classification), ['qa_outputs']
    (extractive QA). Raises ValueError when there is none (not a task model).
    """
    backbone = model.base_model_prefix
    heads = [name for name, child in model.named_children()
             if name != backbone and any(True for _ in child.parameters())]
    if not heads:
        raise ValueError(f"{type(model).__name__}: no task head besides the backbone '{backbone}'")
    return heads


def wrap(model: torch.nn.Module, lora_cfg: dict, target_modules: list[str]) -> PeftModel:
    """A LoRA model around `model` (adapted in place): B = 0 at initialisation, so it computes
    exactly what `model` computes until the first update. Call under the run's seed: A and the
    copied head are drawn from the global RNG."""
    config = LoraConfig(r=lora_cfg["r"], lora_alpha=lora_cfg["alpha"], lora_dropout=lora_cfg["dropout"],
                        target_modules=list(target_modules), modules_to_save=head_modules(model))
    return get_peft_model(model, config)


def load(base_model: torch.nn.Module, adapter_dir, trainable: bool = False) -> PeftModel:
    """The base task model with a saved adapter (and its trained head); `trainable` marks the
    parameters training updated as requiring gradients (so they can be counted)."""
    return PeftModel.from_pretrained(base_model, str(adapter_dir), is_trainable=trainable)


@torch.no_grad()
def check_passes_inputs(peft_model: PeftModel, batch: dict) -> None:
    """Fail unless the wrapper hands `batch` to the task model unchanged.

    The adapted task model under the wrapper computes the same function whether it is called
    directly or through the wrapper; any difference means the wrapper dropped or altered an
    input. Compares the logits and every hidden state, bitwise, in eval mode. A batch (a probe
    batch: config representations.batch_size) that runs out of memory is checked in pieces
    (ftdrift.core.memory.BatchSplitter): each piece goes through both paths, so the comparison
    holds piece by piece. Raises RuntimeError naming the first output that differs.
    """
    def compare(piece: dict) -> None:
        through = peft_model(**piece, output_hidden_states=True)
        direct = peft_model.get_base_model()(**piece, output_hidden_states=True)
        pairs = [(name, through[name], direct[name]) for name in through.keys()
                 if name != "hidden_states" and torch.is_tensor(through[name])]
        pairs += [(f"hidden_states[{i}]", a, b) for i, (a, b) in
                  enumerate(zip(through["hidden_states"], direct["hidden_states"], strict=True))]
        for name, a, b in pairs:
            if not torch.equal(a, b):
                raise RuntimeError(
                    f"the peft wrapper {type(peft_model).__name__} changes the model's inputs: its {name} differs "
                    f"from the task model's by up to {float((a - b).abs().max()):.3g} (inputs: {sorted(piece)})")

    was_training = peft_model.training
    peft_model.eval()
    try:
        BatchSplitter("the adapter input check (config representations.batch_size)").run(compare, dict(batch))
    finally:
        peft_model.train(was_training)
