"""Replay: ring buffer writes, the uniform + recent mixture, and its checkpoint round trip."""

import numpy as np
import pytest

from flowrl_deploy.errors import CheckpointError
from flowrl_deploy.train.replay import FIELDS, ReplayBuffer


def filled(capacity: int, n: int, **kwargs) -> ReplayBuffer:
    buffer = ReplayBuffer(obs_dim=1, act_dim=1, capacity=capacity, **kwargs)
    for i in range(n):
        buffer.add(np.array([i]), np.array([0.0]), float(i), np.array([i + 1]), terminated=(i % 10 == 9))
    return buffer


def test_the_ring_overwrites_the_oldest_transitions():
    buffer = filled(capacity=5, n=7)
    assert buffer.size == 5 and buffer.pos == 2
    assert sorted(buffer.reward.tolist()) == [2, 3, 4, 5, 6]


def test_terminations_mask_and_other_steps_do_not():
    buffer = filled(capacity=20, n=20)
    assert buffer.mask[9] == 0.0 and buffer.mask[19] == 0.0
    assert buffer.mask[:9].tolist() == [1.0] * 9


def test_a_fifth_of_the_batch_comes_from_the_recent_window():
    buffer = filled(capacity=1000, n=1000, recent_fraction=0.2, recent_window=10)
    idx = buffer.sample_indices(100)
    recent = idx[80:]
    assert len(recent) == 20 and (recent >= 990).all()
    assert idx[:80].min() < 900  # the rest is spread over the whole buffer


def test_the_recent_window_follows_the_write_position_across_the_wrap():
    buffer = filled(capacity=100, n=130, recent_window=5)  # newest are at indices 25..29
    recent = buffer.sample_indices(50)[40:]
    assert set(recent.tolist()) <= {25, 26, 27, 28, 29}


def test_a_buffer_smaller_than_the_recent_window_samples_only_stored_transitions():
    """Early in a run (or after a resume without --save-replay) the recent share must not read empty,
    zero-filled slots: each would be a fake termination (mask 0) with obs 0."""
    buffer = filled(capacity=10_000, n=30, recent_window=2048, recent_fraction=1.0)
    assert (buffer.sample_indices(64) < 30).all()
    batch = buffer.sample(64)
    np.testing.assert_array_equal(batch.next_obs[:, 0], batch.obs[:, 0] + 1)  # never an unwritten slot


def test_batches_hold_consistent_transitions():
    batch = filled(capacity=50, n=50).sample(16)
    np.testing.assert_array_equal(batch.next_obs[:, 0], batch.obs[:, 0] + 1)
    np.testing.assert_array_equal(batch.reward, batch.obs[:, 0])


def test_state_round_trip_resumes_the_same_samples():
    buffer = filled(capacity=64, n=40, seed=3)
    arrays, state = buffer.state_dict()
    rng_state = buffer.rng_state()
    expected = buffer.sample_indices(32)
    restored = ReplayBuffer(1, 1, 64)
    restored.load_state_dict(arrays, state)
    restored.set_rng_state(rng_state)
    np.testing.assert_array_equal(restored.sample_indices(32), expected)
    np.testing.assert_array_equal(restored.obs[:40], buffer.obs[:40])


def test_state_round_trip_of_a_wrapped_buffer_keeps_the_write_position():
    """After the ring wrapped, a resumed --save-replay run must go on overwriting the oldest slot."""
    buffer = filled(capacity=64, n=100)  # the oldest transition now sits at index 36
    restored = ReplayBuffer(1, 1, 64)
    restored.load_state_dict(*buffer.state_dict())
    assert restored.pos == buffer.pos == 36
    for b in (buffer, restored):
        b.add(np.array([-1.0]), np.array([0.0]), -1.0, np.array([0.0]), terminated=False)
    assert restored.reward[36] == buffer.reward[36] == -1.0
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(restored, name), getattr(buffer, name), err_msg=name)


def test_a_mismatched_buffer_is_a_clear_error():
    arrays, state = filled(capacity=64, n=10).state_dict()
    with pytest.raises(CheckpointError, match="buffer-size"):
        ReplayBuffer(1, 1, 32).load_state_dict(arrays, state)


def test_a_saved_buffer_missing_a_field_is_named():
    arrays, state = filled(capacity=64, n=10).state_dict()
    del arrays["mask"], arrays["reward"]
    with pytest.raises(CheckpointError, match="saved replay buffer lacks reward, mask"):
        ReplayBuffer(1, 1, 64).load_state_dict(arrays, state)
