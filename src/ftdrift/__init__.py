"""ftdrift: how full fine-tuning and LoRA change a language model's representations."""

__version__ = "0.1.0"
