"""The CPU thread count of a fine-tuning job is recorded, and a resume under another count says so
(on a CPU it changes the floating-point reduction order, so the numbers by float rounding)."""

import logging

import torch

from ftdrift.training.recipe import finetune
from ftdrift.training.workdir import MIRROR_ENV


def test_a_resume_under_another_thread_count_is_recorded_and_said(tiny, tmp_path, caplog, monkeypatch):
    before = torch.get_num_threads()
    # the finished job's state survives in its mirror (the work folder's copy goes with the job)
    monkeypatch.setenv(MIRROR_ENV, (tmp_path / "bucket").as_uri())
    try:
        kwargs = tiny.run_kwargs(tmp_path, max_steps=4, save_steps=2, eval_steps=2)
        first = finetune(**{**kwargs, "threads": 1})
        assert first["meta"]["cpu_threads"] == 1 and first["meta"]["cpu_threads_used"] == [1]
        with caplog.at_level(logging.WARNING, logger="ftdrift.training.recipe"):
            again = finetune(**{**kwargs, "threads": 2})  # resumes from checkpoint-4, restored from the mirror
        assert again["meta"]["resumed_from"].endswith("checkpoint-4")
        assert again["meta"]["cpu_threads"] == 2 and again["meta"]["cpu_threads_used"] == [1, 2]
        assert "resumes under 2 CPU threads after [1]" in caplog.text
        # a fresh work folder starts its own record
        fresh = finetune(**{**tiny.run_kwargs(tmp_path / "fresh", max_steps=2, save_steps=2, eval_steps=2),
                            "threads": 2})
        assert fresh["meta"]["cpu_threads_used"] == [2]
    finally:
        torch.set_num_threads(before)
