"""Model families: the one registry of what differs between architectures.

A family names where its transformer blocks live, whether it is a
decoder (pooling and padding differ), the poolings its representations are taken with and
whether its checkpoints carry a language-modelling head (the forgetting rule's LM loss). Adapter
targets are resolved per model from presets (ftdrift.modeling.targets), not named here.
No heavy imports, so the configuration can check against it at load.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    decoder: bool  # decoders pool the last real token too and need a pad token
    blocks_path: str  # dotted path from the base model to its list of blocks
    poolings: tuple[str, ...]
    # checkpoints load as transformers' AutoModelForCausalLM with a trained next-token head (llama);
    # an encoder such as MiniLM ships without one (a masked-LM head, if any, is no causal LM)
    causal_lm: bool = False


FAMILIES: dict[str, Family] = {
    "bert": Family("bert", decoder=False, blocks_path="encoder.layer", poolings=("mean",)),
    "llama": Family("llama", decoder=True, blocks_path="layers", poolings=("mean", "last"), causal_lm=True),
}


def qa_null_at_end(name: str) -> bool:
    """Whether extractive QA reads a window's no-answer score at an appended end-of-sequence token
    (decoders: their token 0 sees only itself) instead of token 0 (ftdrift.data.features._qa_windows).
    Training labels, predictions, the checkpoint validator and the span probe all ask here."""
    return family(name).decoder


def family(name: str) -> Family:
    """The registered family; ValueError naming model.family if unknown."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"config key 'model.family': unknown family '{name}' (known: {sorted(FAMILIES)})") from None
