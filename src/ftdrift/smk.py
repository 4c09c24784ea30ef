"""What every workflow script does first: send its output to the rule's log file."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path


def start(snakemake) -> None:
    """Route stdout/stderr and logging to the rule's log (progress bars included); set threads."""
    if snakemake.log:
        path = Path(str(snakemake.log[0]))
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a", buffering=1)
        sys.stdout = sys.stderr = handle
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    threads = str(getattr(snakemake, "threads", 1) or 1)
    os.environ.setdefault("OMP_NUM_THREADS", threads)
    try:
        import torch

        torch.set_num_threads(int(threads))
    except ImportError:
        pass
