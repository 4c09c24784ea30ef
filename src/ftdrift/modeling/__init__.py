"""Loading tokenizers and task models by family, and LoRA through peft."""
