"""A run whose checkpoint disk fills over days said nothing until a save failed and stopped it: after each save but
the run's last it now warns where the disk has room for fewer than two more checkpoints of that size."""

import logging
import shutil
from collections import namedtuple

from tiny_training import TINY

from flowrl_deploy.train import TrainConfig, resources, train

Usage = namedtuple("Usage", "total used free")


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "flowrl.train"]


def test_a_save_on_a_nearly_full_disk_warns_once_a_step_but_the_last(monkeypatch, tmp_path, caplog):
    real = shutil.disk_usage
    monkeypatch.setattr(resources.shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 50_000, 50_000))
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="flowrl.train"):
        train(TrainConfig(steps=400, out=str(run), **TINY), progress=False)  # saves at 200 (a best too) and 400
    size = sum(p.stat().st_size for p in (run / "checkpoints" / "step_000000400").iterdir())
    assert 25_000 < size < 2**20  # the fake disk's 50 kB hold fewer than two
    note = (
        f"48.8 KiB free on the disk of {run / 'checkpoints'}, and a checkpoint takes {size / 2**10:.1f} KiB: the next "
        "save may not fit, and a save that fails stops the run at its last checkpoint; free space there"
    )
    assert warnings_of(caplog) == [note]  # step 200's best and periodic saves write one; no next save after 400

    caplog.clear()
    monkeypatch.setattr(resources.shutil, "disk_usage", real)
    with caplog.at_level(logging.WARNING, logger="flowrl.train"):
        train(TrainConfig(steps=400, out=str(tmp_path / "roomy"), **TINY), progress=False)
    assert warnings_of(caplog) == []
