"""A metrics row that cannot be written whole (a full disk, a quota, a file-size limit) leaves neither a torn
line nor a row in one file that the other lacks: a torn last line broke `pandas.read_json(lines=True)` until the
next resume, a CSV row cut inside its last number read as another number, and the JSONL held rows the CSV
lacked. The disk filling up is a file-size limit here (RLIMIT_FSIZE): the write that crosses it is cut short."""

import contextlib
import csv
import json
import resource
import signal

import pytest

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.train.logger import MetricsLogger

ROW = {"charts/eval_return": -1234.5678901234567, "charts/eval_return_std": 12.345678901234567}


@contextlib.contextmanager
def files_limited_to(size: int):
    """Files of this process cannot grow past ``size`` bytes: a write crossing it is cut short there, the next one
    fails with EFBIG (SIGXFSZ ignored, as a full disk sends none)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def lines(path) -> list[str]:
    return path.read_text().split("\n")


def test_a_jsonl_row_cut_short_is_taken_back_and_never_reaches_the_csv(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log(100, ROW)
    size = (tmp_path / "metrics.jsonl").stat().st_size
    assert size + 20 < (tmp_path / "metrics.csv").stat().st_size  # so the limit cuts the JSONL row
    with (
        files_limited_to(size + 20),
        pytest.raises(FlowRLError, match=r"^cannot write .*metrics\.jsonl: File too"),
    ):
        logger.log(200, ROW)
    logger.close()
    assert lines(tmp_path / "metrics.jsonl") == [json.dumps({"step": 100, **ROW}), ""]
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert [r["step"] for r in csv.DictReader(f)] == ["100"]


@pytest.mark.parametrize("room", [0, 20], ids=["nothing_written", "cut_short"])
def test_a_csv_row_that_fails_takes_its_jsonl_row_back_too(tmp_path, room):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log(100, ROW)
    jsonl, csv_size = tmp_path / "metrics.jsonl", (tmp_path / "metrics.csv").stat().st_size
    assert jsonl.stat().st_size * 2 < csv_size  # the JSONL row fits under the limit, the CSV row does not
    with files_limited_to(csv_size + room), pytest.raises(FlowRLError, match=r"^cannot write .*metrics\.csv: File too"):
        logger.log(200, ROW)
    logger.close()
    assert lines(jsonl) == [json.dumps({"step": 100, **ROW}), ""]
    assert (tmp_path / "metrics.csv").stat().st_size == csv_size and lines(tmp_path / "metrics.csv")[-1] == ""


def test_the_next_row_after_a_failed_one_is_whole(tmp_path):
    """The failed row's bytes are not written later, by the next row or the close (a buffer flushed again)."""
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log(100, ROW)
    with files_limited_to((tmp_path / "metrics.jsonl").stat().st_size + 20), pytest.raises(FlowRLError):
        logger.log(200, ROW)
    logger.log(300, ROW)
    logger.close()
    assert [json.loads(line)["step"] for line in lines(tmp_path / "metrics.jsonl")[:-1]] == [100, 300]
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert [r["step"] for r in csv.DictReader(f)] == ["100", "300"]


def test_a_resume_from_the_csv_drops_a_last_row_cut_inside_its_last_number(tmp_path):
    """metrics.jsonl deleted: a row cut short inside its last cell has every cell, and read as a wrong number."""
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log(100, {"charts/eval_return": 1.0, "losses/q_pi": 123.456})
    logger.close()
    (tmp_path / "metrics.jsonl").unlink()
    text = (tmp_path / "metrics.csv").read_text()
    (tmp_path / "metrics.csv").write_text(text + text.splitlines()[1].replace("100", "200")[:-3])  # '…,123.'
    MetricsLogger(tmp_path, tensorboard=False, resume_step=1000).close()
    assert [json.loads(line)["step"] for line in lines(tmp_path / "metrics.jsonl")[:-1]] == [100]


def test_a_metrics_write_that_fails_saves_the_run_before_it_stops(monkeypatch, tmp_path):
    """One transient error writing metrics (an NFS hiccup, EIO) stopped the run without saving: everything since
    the last checkpoint was lost, though the checkpoints folder could be written. It saves, then stops, and the
    resume goes on from there."""
    import errno

    from tiny_training import TINY

    from flowrl_deploy.checkpoint import read_document
    from flowrl_deploy.train import logger as logger_module
    from flowrl_deploy.train.config import TrainConfig
    from flowrl_deploy.train.loop import train
    from flowrl_deploy.train.resume import resume_config

    real_append, failed = logger_module._append, []

    def eio_once_at_step_300(fd, data):
        if b'"step": 300' in data and not failed:
            failed.append(fd)
            raise OSError(errno.EIO, "Input/output error")
        return real_append(fd, data)

    monkeypatch.setattr(logger_module, "_append", eio_once_at_step_300)
    out = tmp_path / "run"
    with pytest.raises(FlowRLError) as error:
        train(TrainConfig(steps=1000, out=str(out), **{**TINY, "save_every": 1000}), progress=False)
    saved = out / "checkpoints" / "step_000000300"
    assert str(error.value) == (
        f"cannot write {out / 'metrics.jsonl'}: Input/output error; training stopped at env step 300, and the last "
        f"checkpoint saved is {saved}; once the run's folder can be written again, continue with --resume {out}"
    )
    assert read_document(out / "checkpoints" / "last")["counters"]["env_steps"] == 300
    resumed = train(resume_config(out), resume=out, progress=False)
    assert resumed.counters.env_steps == 1000
