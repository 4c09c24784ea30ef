import os

import pytest

from ftdrift.testing import make_tiny_workdir, run_snakemake

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# dummy secrets in the environment of the tiny run: none may appear in any output, log or report
SECRETS = {"WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567",
           "HF_TOKEN": "hf_ftdriftDummySecretTokenXyz123"}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny workflow run once to completion (shared by the end-to-end and re-run tests)."""
    workdir = make_tiny_workdir(tmp_path_factory.mktemp("e2e"))
    run_snakemake(workdir, env=SECRETS)
    return workdir
