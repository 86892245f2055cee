"""A run resumed with an empty replay buffer (saved without --save-replay) refills it to the warm-up's size
before it learns again: updating from its first batch of new transitions fitted the critics to a few
hundred nearly alike ones (longrun review #3)."""

from tiny_training import TINY

from flowrl_deploy.checkpoint import read_document
from flowrl_deploy.train.config import TrainConfig
from flowrl_deploy.train.loop import train
from flowrl_deploy.train.resume import resume_config


def _updates(checkpoint) -> int:
    return read_document(checkpoint)["counters"]["updates"]


def test_a_resume_without_the_buffer_updates_only_once_it_holds_the_warm_ups_transitions(tmp_path):
    cfg = TrainConfig(steps=150, out=str(tmp_path / "run"), **TINY)  # warm-up 100 steps, batches of 16
    assert cfg.updates_from == 100
    first = train(cfg, progress=False)
    assert _updates(first.last_checkpoint) == 51  # env steps 100 to 150, each after its transition is stored
    resumed = train(resume_config(first.run_dir, steps=260), resume=first.run_dir, progress=False)
    # the buffer restarts empty at step 150 and holds 100 transitions at step 250: steps 250 to 260 update
    assert _updates(resumed.last_checkpoint) == 51 + 11


def test_updates_wait_for_a_batch_and_for_the_warm_up_bounded_by_the_buffer():
    assert TrainConfig(start_steps=5000, batch_size=256).updates_from == 5000
    assert TrainConfig(start_steps=0, batch_size=256).updates_from == 256
    assert TrainConfig(start_steps=5000, batch_size=64, buffer_size=1000).updates_from == 1000
