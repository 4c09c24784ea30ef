"""ftdrift: how full fine-tuning and LoRA change a language model's representations."""

from pathlib import Path

__version__ = "0.1.0"

# the checkout this package runs from (src/ftdrift/__init__.py -> the repository: Snakefile, config/,
# profiles/); every module that needs it reads it here
REPO_ROOT = Path(__file__).resolve().parents[2]
