"""Run the snakemake CLI with ftdrift.config.load_yaml memoised (a deep copy per call).

Used by bench/workflow.py to measure what caching the parsed config schema would save
(ftdrift.config.task_settings re-reads and re-parses config/schema.yaml on every call; the
Snakefile's input and params functions call it several times per job). The library is not
modified: the patch lives only in this process.
"""

import copy
import functools
import sys

import ftdrift.config as ftconfig

_load_yaml = ftconfig.load_yaml


@functools.lru_cache(maxsize=None)
def _parsed(path: str):
    return _load_yaml(path)


def load_yaml(path):
    return copy.deepcopy(_parsed(str(path)))


ftconfig.load_yaml = load_yaml

if __name__ == "__main__":
    from snakemake.cli import main

    sys.argv = ["snakemake", *sys.argv[1:]]
    main()
