"""The tiny workflow run end to end, once per session (shared by the end-to-end, re-run, report-browser
and SLURM tests); tests here are marked `system` (tests/conftest.py)."""

import pytest

from ftdrift.testing import make_tiny_workdir, run_snakemake

# dummy secrets in the environment of the tiny run: none may appear in any output, log or report
SECRETS = {"WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567",
           "HF_TOKEN": "hf_ftdriftDummySecretTokenXyz123"}


@pytest.fixture(scope="session")
def secrets() -> dict:
    """The dummy secrets `tiny_run` has in its environment."""
    return dict(SECRETS)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, secrets):
    """The tiny workflow run once to completion (shared by the end-to-end and re-run tests)."""
    workdir = make_tiny_workdir(tmp_path_factory.mktemp("e2e"))
    run_snakemake(workdir, env=secrets)
    return workdir
