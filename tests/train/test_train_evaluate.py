"""Evaluation: which initial states the episodes of an evaluation start from."""

import numpy as np
import pytest

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.train.envs import EnvInfo, episode_seed
from flowrl_deploy.train.evaluate import EVAL_STREAM, EvalResult, check_env_fits, evaluate, other_task_warning


class SeedRecordingEnv:
    """Two-step episodes whose reward is the reset seed's last digit, recording every reset seed."""

    info = EnvInfo("FlowRLTestSeeds-v0", 1, 1, np.array([-1.0], np.float32), np.array([1.0], np.float32))

    def __init__(self) -> None:
        self.seeds: list[int] = []
        self.closed = False

    def reset(self, seed: int | None = None) -> np.ndarray:
        self.seeds.append(seed)
        self.t = 0
        return np.zeros(1, np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        self.t += 1
        return np.zeros(1, np.float32), float(self.seeds[-1] % 10), False, self.t == 2

    def close(self) -> None:
        self.closed = True


def test_each_evaluation_episode_starts_from_its_own_seed_of_the_evaluation_stream():
    """Episode i resets with episode_seed(seed, i, stream=EVAL_STREAM): distinct initial states per
    episode (mean ± std over several starts, not one start repeated), apart from training's
    episodes (stream 0), and the same ones in every evaluation with the same seed."""
    env = SeedRecordingEnv()
    result = evaluate(lambda obs: np.zeros(1, np.float32), env, episodes=3, seed=4)
    expected = [episode_seed(4, i, stream=EVAL_STREAM) for i in range(3)]
    assert env.seeds == expected and len(set(expected)) == 3
    assert not set(expected) & {episode_seed(4, i) for i in range(3)}
    assert result.returns == tuple(2.0 * (s % 10) for s in expected)
    assert evaluate(lambda obs: np.ones(1, np.float32), env, episodes=3, seed=4) == result
    assert env.seeds[3:] == expected


def test_evaluate_leaves_an_environment_it_was_given_open():
    """Training evaluates on one env for the whole run: evaluate closes only an env it made itself."""
    env = SeedRecordingEnv()
    evaluate(lambda obs: np.zeros(1, np.float32), env, episodes=1)
    assert not env.closed
    evaluate(lambda obs: np.zeros(1, np.float32), env, episodes=1)
    assert env.seeds == [episode_seed(0, 0, stream=EVAL_STREAM)] * 2


class FallingEnv(SeedRecordingEnv):
    """Falls (terminated, not truncated) at its third step; stepping on after a fall is an error."""

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        assert self.t < 3, "stepped after the episode terminated"
        self.t += 1
        return np.zeros(1, np.float32), 1.0, self.t == 3, False


def test_an_episode_ends_when_the_task_terminates_not_only_at_its_time_limit():
    result = evaluate(lambda obs: np.zeros(1, np.float32), FallingEnv(), episodes=2)
    assert result.returns == (3.0, 3.0)


def test_a_stop_ends_the_evaluation_after_the_current_episode():
    env, asked = SeedRecordingEnv(), []
    result = evaluate(lambda obs: np.zeros(1, np.float32), env, episodes=5, stop=lambda: asked.append(1) or True)
    assert len(env.seeds) == 1 and len(asked) == 1 and len(result.returns) == 1


def test_the_lengths_summary_gives_the_mean_length_and_the_episodes_ended_by_termination():
    result = EvalResult(0.0, 0.0, (0.0, 0.0), (10, 20), (True, False))
    assert result.lengths_summary() == "length 15 ± 5 steps, 1 of 2 ended by termination"


def test_two_spellings_of_one_task_are_not_warned_about():
    assert other_task_warning("gym:h1-walk-v0", "h1-walk-v0") is None
    assert other_task_warning("gym:Pendulum-v1", "Pendulum-v1") is None


def test_a_policy_that_records_no_task_is_not_warned_about():
    assert other_task_warning("dmc:cartpole-balance", "") is None


def test_a_malformed_recorded_task_compares_as_text():
    assert other_task_warning("x y", " x y ") is None
    assert other_task_warning("dmc:cartpole-balance", "cartpole balance") == (
        "--env dmc:cartpole-balance is not the task the policy was trained on, cartpole balance"
    )


def test_a_result_made_from_returns_alone_has_no_lengths_summary(recwarn):
    """It gave a RuntimeWarning (mean of nothing) and 'length nan ± nan steps, 0 of 0 ended by termination'."""
    assert EvalResult(1.0, 0.0, (1.0,)).lengths_summary() == ""
    assert not recwarn.list


def test_an_env_of_other_sizes_is_refused_naming_the_task_the_policy_was_trained_on():
    """`flowrl control --env dmc:cheetah-run` said "pass the --env it was trained on" without naming it."""
    with pytest.raises(FlowRLError, match=r"the policy 5/1: pass the --env it was trained on, dmc:cartpole-balance$"):
        check_env_fits(SeedRecordingEnv(), (5, 1), "dmc:cartpole-balance")
    with pytest.raises(FlowRLError, match=r"pass the --env it was trained on$"):  # a policy that records none
        check_env_fits(SeedRecordingEnv(), (5, 1))


def test_one_episode_shows_no_spread():
    """`flowrl eval --episodes 1` printed `± 0.00` for a spread one episode cannot have."""
    assert str(EvalResult(1.0, 0.0, (1.0,), (7,), (False,))) == "1.00 over 1 episode"
    assert (
        EvalResult(1.0, 0.0, (1.0,), (7,), (False,)).lengths_summary() == "length 7 steps, 0 of 1 ended by termination"
    )
    assert str(EvalResult(1.5, 0.5, (1.0, 2.0))) == "1.50 ± 0.50 over 2 episodes"
