"""A run records the torch thread count and device it trained with, and a resume with another says
once that its continuation will not be bit-identical to an uninterrupted run (torch's CPU results
depend on the thread count: 1 and 2 threads differed from the fifth update on, in the review)."""

from __future__ import annotations

import logging
import os

import pytest
from tiny_training import TINY

from flowrl_deploy.checkpoint import read_document
from flowrl_deploy.train.config import TrainConfig
from flowrl_deploy.train.loop import train
from flowrl_deploy.train.resume import resume_config

SHORT = {**TINY, "eval_every": 0, "device": "cpu"}  # CPU results depend on the thread count; a GPU host trains on cuda


def numerics_warnings(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "flowrl.train" and "not be bit-identical" in r.getMessage()
    ]


@pytest.fixture
def half(tmp_path):
    return train(TrainConfig(steps=200, out=str(tmp_path / "half"), **SHORT), progress=False)


def test_a_checkpoint_records_the_thread_count_and_device_it_trained_with(half):
    assert read_document(half.last_checkpoint)["runtime"] == {"device": "cpu", "torch_threads": 1}


def test_a_resume_with_the_same_threads_and_device_says_nothing(half, caplog):
    with caplog.at_level(logging.WARNING, logger="flowrl.train"):
        train(resume_config(half.run_dir, steps=300), resume=half.run_dir, progress=False)
    assert numerics_warnings(caplog) == []


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores for --threads 2")
def test_a_resume_with_another_thread_count_warns_once_and_records_the_new_one(half, caplog):
    cfg = resume_config(half.run_dir, steps=400).override(threads=2)
    with caplog.at_level(logging.WARNING, logger="flowrl.train"):
        resumed = train(cfg, resume=half.run_dir, progress=False)
    (warning,) = numerics_warnings(caplog)
    assert "2 torch threads on cpu" in warning and "1 torch thread on cpu" in warning
    assert "will not be bit-identical to an uninterrupted run" in warning
    assert read_document(resumed.last_checkpoint)["runtime"] == {"device": "cpu", "torch_threads": 2}
