"""Model families: the one registry of what differs between architectures.

A family names its LoRA target modules, where its transformer blocks live, whether it is a
decoder (pooling and padding differ) and the poolings its representations are taken with.
No heavy imports, so the configuration can check against it at load.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    decoder: bool  # decoders pool the last real token too and need a pad token
    lora_target_modules: tuple[str, ...]  # peft default targets (q/v projections)
    blocks_path: str  # dotted path from the base model to its list of blocks
    poolings: tuple[str, ...]


FAMILIES: dict[str, Family] = {
    "bert": Family("bert", decoder=False, lora_target_modules=("query", "value"),
                   blocks_path="encoder.layer", poolings=("mean",)),
    "llama": Family("llama", decoder=True, lora_target_modules=("q_proj", "v_proj"),
                    blocks_path="layers", poolings=("mean", "last")),
}


def family(name: str) -> Family:
    """The registered family; ValueError naming model.family if unknown."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"config key 'model.family': unknown family '{name}' (known: {sorted(FAMILIES)})") from None
