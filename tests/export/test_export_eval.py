"""`flowrl eval policy.onnx`: the exported graph in the simulator, with seeded noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from export_fixtures import SPEC, actor_tensors
from typer.testing import CliRunner

from flowrl_deploy.checkpoint import save_checkpoint
from flowrl_deploy.cli import app
from flowrl_deploy.errors import FlowRLError, SimulationError
from flowrl_deploy.export import ExportConfig, export_checkpoint, sweep
from flowrl_deploy.policy import SeededPolicy
from flowrl_deploy.spec import PolicySpec
from flowrl_deploy.train import envs
from flowrl_deploy.train.evaluate import EVAL_STREAM, EvalResult, checkpoint_act_fn, evaluate

CPU = ["CPUExecutionProvider"]
"""The providers of `flowrl eval` and of the export's verification; on a GPU host the default is CUDA's,
whose actions equal the CPU's only to about 1e-6."""


def test_act_fn_is_the_torch_sampler_with_seeded_noise(checkpoint, tmp_path, reference):
    path = export_checkpoint(checkpoint, tmp_path / "p.onnx", ExportConfig(steps=3, samples=3)).path
    obs = np.linspace(-1, 1, SPEC.obs_dim)
    first, again = SeededPolicy(path, 7, providers=CPU), SeededPolicy(path, 7, providers=CPU)
    actions = [first(obs) for _ in range(3)]
    np.testing.assert_array_equal(actions, [again(obs) for _ in range(3)])
    noise = np.random.default_rng(7).standard_normal((3, 1, SPEC.act_dim), dtype=np.float32)
    with torch.no_grad():
        expected = [reference(torch.tensor(obs[None], dtype=torch.float32), torch.from_numpy(n), 3)[0] for n in noise]
    np.testing.assert_allclose(actions, np.stack(expected), atol=1e-5)


CARTPOLE = PolicySpec(obs_dim=5, act_dim=1, action_low=(-1.0,), action_high=(1.0,), hidden=32,
                      env_id="dmc:cartpole-swingup")  # fmt: skip


def cartpole_checkpoint(tmp_path):
    """A random cartpole-swingup-shaped actor saved as a checkpoint."""
    return save_checkpoint(tmp_path / "ck", spec=CARTPOLE, actor=actor_tensors(CARTPOLE))


def test_flowrl_eval_runs_the_onnx_policy(tmp_path):
    checkpoint = cartpole_checkpoint(tmp_path)
    path = export_checkpoint(checkpoint, tmp_path / "cartpole.onnx", ExportConfig(steps=2, samples=3)).path
    runner = CliRunner()
    result = runner.invoke(app, ["eval", str(path), "--episodes", "1"])
    assert result.exit_code == 0, result.output
    assert "dmc:cartpole-swingup: return" in result.output
    refused = runner.invoke(app, ["eval", str(path), "--flow-steps", "5"])
    assert refused.exit_code == 1 and "re-export" in refused.output

    sweep = runner.invoke(app, ["export", str(checkpoint), "--steps", "1,2", "--report", "--episodes", "1",
                                "--out", str(tmp_path / "s.onnx")])  # fmt: skip
    assert sweep.exit_code == 0, sweep.output
    rows = [line.split() for line in sweep.output.splitlines() if line.strip().startswith(("1 ", "2 "))]
    assert [r[0] for r in rows] == ["1", "2"] and all("±" not in r for r in rows)  # one episode: no spread


def test_deterministic_eval_is_the_same_for_the_checkpoint_and_both_onnx_graphs(tmp_path):
    checkpoint = cartpole_checkpoint(tmp_path)
    noisy = export_checkpoint(checkpoint, tmp_path / "noisy.onnx", ExportConfig(steps=1, samples=3)).path
    zero = export_checkpoint(checkpoint, tmp_path / "zero.onnx", ExportConfig(steps=1, samples=3, deterministic=True))
    runner = CliRunner()
    returns = []
    for policy in (checkpoint, noisy, zero.path):
        result = runner.invoke(app, ["eval", str(policy), "--episodes", "1", "--deterministic", "--device", "cpu"])
        assert result.exit_code == 0, result.output
        assert "over 1 episode (N=1 midpoint, from a0 = 0); length 1000 steps" in result.output
        returns.append(float(result.output.split("return ")[1].split()[0]))
    assert max(returns) - min(returns) < 0.5, returns  # equal up to float32 parity (1e-5 per action)
    stochastic = runner.invoke(app, ["eval", str(noisy), "--episodes", "1"])
    assert "from a0 = 0" not in stochastic.output
    # a deterministic graph starts from zero without --deterministic, and the report said nothing of it
    without_flag = runner.invoke(app, ["eval", str(zero.path), "--episodes", "1"])
    assert "over 1 episode (N=1 midpoint, from a0 = 0);" in without_flag.output, without_flag.output


PENDULUM = PolicySpec(obs_dim=3, act_dim=1, action_low=(-2.0,), action_high=(2.0,), hidden=32, env_id="Pendulum-v1")


def test_a_checkpoint_and_its_export_play_the_same_seeded_episodes(tmp_path):
    """`flowrl eval CHECKPOINT --seed S` and `flowrl eval EXPORT.onnx --seed S` draw the same noise
    (SeededPolicy's numpy stream, one block per action): the same actions to the export's parity
    tolerance, so the same returns, stochastic as well as from a0 = 0. The checkpoint used to draw
    from a torch generator: a 40-point gap that looked like a broken export."""
    checkpoint = save_checkpoint(tmp_path / "ck", spec=PENDULUM, actor=actor_tensors(PENDULUM))
    path = export_checkpoint(checkpoint, tmp_path / "p.onnx", ExportConfig(samples=3)).path  # the checkpoint's N
    played: dict[tuple[str, bool], tuple[list[np.ndarray], EvalResult]] = {}
    for deterministic in (False, True):
        for name, act_fn in (
            ("checkpoint", checkpoint_act_fn(checkpoint, device="cpu", seed=3, deterministic=deterministic)),
            ("onnx", SeededPolicy(path, 3, deterministic=deterministic, providers=CPU)),  # as flowrl eval runs it
        ):
            actions: list[np.ndarray] = []

            def recorded(obs, act_fn=act_fn, actions=actions):
                actions.append(act_fn(obs))
                return actions[-1]

            played[name, deterministic] = actions, evaluate(recorded, "Pendulum-v1", episodes=2, seed=3)
    for deterministic in (False, True):
        (torch_actions, torch_result), (onnx_actions, onnx_result) = (
            played[name, deterministic] for name in ("checkpoint", "onnx")
        )
        np.testing.assert_allclose(torch_actions[:5], onnx_actions[:5], rtol=0, atol=1e-5)
        np.testing.assert_allclose(torch_result.returns, onnx_result.returns, rtol=1e-3)
    assert not np.allclose(played["onnx", False][0][:5], played["onnx", True][0][:5], atol=1e-3)  # noise matters


def test_eval_on_an_env_of_other_sizes_is_one_clear_line(tmp_path):
    """A cartpole policy (obs 5) evaluated on Pendulum (obs 3): refused before any step, no onnxruntime traceback."""
    checkpoint = cartpole_checkpoint(tmp_path)
    path = export_checkpoint(checkpoint, tmp_path / "cartpole.onnx", ExportConfig(steps=2, samples=3)).path
    runner = CliRunner()
    for policy in (path, checkpoint):
        result = runner.invoke(app, ["eval", str(policy), "--env", "Pendulum-v1", "--episodes", "1"])
        assert result.exit_code == 1, result.output
        assert "Pendulum-v1 has obs/act dims 3/1, the policy 5/1" in result.output
        assert "Traceback" not in result.output
    sweep = runner.invoke(app, ["export", str(checkpoint), "--steps", "2", "--report", "--episodes", "1",
                                "--env", "Pendulum-v1", "--out", str(tmp_path / "s.onnx")])  # fmt: skip
    assert sweep.exit_code == 1 and "obs/act dims 3/1" in sweep.output
    assert not list(tmp_path.glob("s*.onnx"))  # refused before anything was written


def test_eval_seed_and_device_mistakes_are_one_clear_line(tmp_path):
    checkpoint = cartpole_checkpoint(tmp_path)
    runner = CliRunner()
    for args, message in (
        (["--seed", "-1"], "--seed must lie in [0, 2**32)"),
        (["--seed", str(2**32)], f"--seed must lie in [0, 2**32), got {2**32}"),  # one past the last seed
        (["--device", "tpu"], "unknown --device 'tpu'"),
        # tracebacks from torch: not compiled with CUDA, no MPS, meta tensors cannot be copied out
        (["--device", "cuda:0"], "unknown --device 'cuda:0'; use auto, cpu or cuda (to pick one of several GPUs"),
        (["--device", "mps"], "unknown --device 'mps'"),
        (["--device", "meta"], "unknown --device 'meta'"),
    ):
        result = runner.invoke(app, ["eval", str(checkpoint), "--episodes", "1", *args])
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output


def test_eval_tells_an_onnx_file_from_a_checkpoint_by_kind_not_suffix(tmp_path):
    """policy.ONNX and policy.bin were refused as 'a file, not a flowrl-deploy checkpoint'."""
    import shutil

    checkpoint = cartpole_checkpoint(tmp_path)
    path = export_checkpoint(checkpoint, tmp_path / "cartpole.onnx", ExportConfig(steps=1, samples=3)).path
    runner = CliRunner()
    for name in ("policy.ONNX", "policy.bin"):
        shutil.copyfile(path, tmp_path / name)
        result = runner.invoke(app, ["eval", str(tmp_path / name), "--episodes", "1"])
        assert result.exit_code == 0, result.output
        assert "dmc:cartpole-swingup: return" in result.output
    for policy in (checkpoint / "checkpoint.json", checkpoint / "model.safetensors"):  # a checkpoint's own files
        result = runner.invoke(app, ["eval", str(policy), "--episodes", "1", "--flow-steps", "2", "--device", "cpu"])
        assert result.exit_code == 0, result.output
        assert "(N=2 midpoint)" in result.output
    (tmp_path / "notes.txt").write_text("not a policy")
    result = runner.invoke(app, ["eval", str(tmp_path / "notes.txt")])
    assert result.exit_code == 1 and "cannot load ONNX model" in result.output and "Traceback" not in result.output


def test_eval_device_of_an_onnx_policy_is_refused_unless_it_is_the_cpu(tmp_path):
    """`--device gpu` (or cuda) was silently ignored: onnxruntime runs the graph on the CPU."""
    checkpoint = cartpole_checkpoint(tmp_path)
    path = export_checkpoint(checkpoint, tmp_path / "cartpole.onnx", ExportConfig(steps=1, samples=3)).path
    runner = CliRunner()
    for device in ("gpu", "cuda"):
        result = runner.invoke(app, ["eval", str(path), "--episodes", "1", "--device", device])
        assert result.exit_code == 1, result.output
        assert f"--device {device} does not apply to an ONNX policy" in result.output
        assert "Traceback" not in result.output
    for device in ("auto", "cpu"):
        assert runner.invoke(app, ["eval", str(path), "--episodes", "1", "--device", device]).exit_code == 0


def test_eval_of_a_diverged_checkpoint_is_one_clear_line(tmp_path):
    """NaN weights (a diverged run) are named, not a dm_control PhysicsError traceback."""
    actor = actor_tensors(CARTPOLE)
    first = sorted(actor)[0]
    actor[first] = np.full_like(actor[first], np.nan)
    checkpoint = save_checkpoint(tmp_path / "ck", spec=CARTPOLE, actor=actor)
    result = CliRunner().invoke(app, ["eval", str(checkpoint), "--episodes", "1"])
    assert result.exit_code == 1, result.output
    assert "NaN or infinite values" in result.output and "Traceback" not in result.output


def test_evaluate_refuses_a_non_finite_action():
    import pytest

    from flowrl_deploy.errors import FlowRLError
    from flowrl_deploy.train.evaluate import evaluate

    with pytest.raises(FlowRLError, match="NaN/infinite action"):
        evaluate(lambda obs: np.array([np.nan], np.float32), "dmc:cartpole-swingup", 1)


def test_a_fixed_batch_export_can_be_evaluated_swept_and_served(tmp_path):
    """`flowrl export --batch 3` used to crash eval (batch 1), the --report sweep and serve's warm-up."""
    from flowrl_deploy.client import PolicyClient
    from flowrl_deploy.policy import OnnxPolicy
    from flowrl_deploy.serve import PolicyServer, ServeConfig

    checkpoint = cartpole_checkpoint(tmp_path)
    fixed = export_checkpoint(checkpoint, tmp_path / "b3.onnx", ExportConfig(steps=2, samples=3, batch=3)).path
    dynamic = export_checkpoint(checkpoint, tmp_path / "dyn.onnx", ExportConfig(steps=2, samples=3)).path

    policy = OnnxPolicy(fixed, providers=CPU)
    assert policy.fixed_batch == 3 and OnnxPolicy(dynamic).fixed_batch is None
    rng = np.random.default_rng(0)
    obs, noise = rng.standard_normal((5, 5), dtype=np.float32), rng.standard_normal((5, 1), dtype=np.float32)
    np.testing.assert_allclose(policy.act(obs, noise), OnnxPolicy(dynamic, providers=CPU).act(obs, noise), atol=1e-6)
    assert policy.act(obs[:1], noise[:1]).shape == (1, 1)

    runner = CliRunner()
    result = runner.invoke(app, ["eval", str(fixed), "--episodes", "1"])
    assert result.exit_code == 0, result.output
    sweep = runner.invoke(
        app, ["export", str(checkpoint), "--steps", "1,2", "--batch", "3", "--out", str(tmp_path / "s.onnx")]
    )
    assert sweep.exit_code == 0, sweep.output

    with PolicyServer(ServeConfig(str(fixed), port=0, grace_s=0)).start() as server, PolicyClient(server.address) as c:
        assert c.act(obs[0], seed=1).shape == (1,)
        assert c.act(obs, seed=1).shape == (5, 1)


class CountingEnv:
    """An environment of SPEC's sizes whose episodes last 2 steps of reward 1; counts resets and closes."""

    def __init__(self) -> None:
        self.info = envs.EnvInfo("fake:counter", SPEC.obs_dim, SPEC.act_dim,
                                 np.array(SPEC.action_low), np.array(SPEC.action_high))  # fmt: skip
        self.seeds: list[int | None] = []
        self.closes = 0
        self.steps = 0
        self.unstable_steps: set[int] = set()
        """Steps, counted over all episodes from 1, that raise SimulationError (a simulation that blew up)."""
        self.total_steps = 0

    def reset(self, seed: int | None = None) -> np.ndarray:
        self.seeds.append(seed)
        self.steps = 0
        return np.zeros(SPEC.obs_dim, np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        self.total_steps += 1
        if self.total_steps in self.unstable_steps:
            raise SimulationError("fake:counter: the simulation became unstable")
        self.steps += 1
        return np.zeros(SPEC.obs_dim, np.float32), 1.0, False, self.steps >= 2

    def close(self) -> None:
        self.closes += 1


@pytest.fixture
def counting_env(monkeypatch) -> CountingEnv:
    """The one environment make_env gives; sweeps time each N briefly."""
    env = CountingEnv()
    monkeypatch.setattr(envs, "make_env", lambda env_id, seed=0: env)
    monkeypatch.setattr(sweep, "TIMING_BUDGET_S", 0.01)
    return env


def test_a_sweep_evaluates_every_n_on_the_same_episodes_and_closes_its_env(checkpoint, tmp_path, counting_env):
    """One environment for the whole sweep, every N scored on the episodes `flowrl eval --seed` plays
    (so the returns compare), and closed at the end."""
    rows = sweep.sweep_steps(checkpoint, tmp_path / "p.onnx", ExportConfig(samples=3), [1, 2], episodes=2, seed=7)
    assert [(r.steps, r.mean_return) for r in rows] == [(1, 2.0), (2, 2.0)]
    assert counting_env.seeds == [envs.episode_seed(7, i, stream=EVAL_STREAM) for i in range(2)] * 2
    assert counting_env.closes == 1


def test_a_sweep_counts_and_shows_the_episodes_an_unstable_simulation_cut_short(checkpoint, tmp_path, counting_env):
    counting_env.unstable_steps = {2}  # N=1's first episode: cut after its first step
    rows = sweep.sweep_steps(checkpoint, tmp_path / "p.onnx", ExportConfig(samples=3), [1, 2], episodes=2, seed=7)
    assert [(r.steps, r.mean_return, r.unstable_episodes) for r in rows] == [(1, 1.5, 1), (2, 2.0, 0)]
    assert [r.to_dict()["unstable_episodes"] for r in rows] == [1, 0]
    table = sweep.format_sweep(rows).splitlines()
    assert "1.5 ± 0.5 (1 cut)" in table[3] and "cut" not in table[4]
    assert table[-1].startswith("(k cut): k episodes an unstable simulation cut short")


def test_a_latency_only_sweep_checks_its_env_but_plays_no_episode(checkpoint, tmp_path, counting_env):
    (row,) = sweep.sweep_steps(checkpoint, tmp_path / "p.onnx", ExportConfig(samples=3), [1], env_id="fake:counter")
    assert row.mean_return is None and counting_env.seeds == [] and counting_env.closes == 1


def test_a_sweep_stopped_by_a_failed_export_closes_its_env(checkpoint, tmp_path, counting_env, monkeypatch):
    export, exports = sweep.export_checkpoint, []

    def second_fails(*args, **kwargs):
        exports.append(1)
        if len(exports) == 2:
            raise FlowRLError("disk full")
        return export(*args, **kwargs)

    monkeypatch.setattr(sweep, "export_checkpoint", second_fails)
    with pytest.raises(FlowRLError, match="disk full"):
        sweep.sweep_steps(checkpoint, tmp_path / "p.onnx", ExportConfig(samples=3), [1, 2], episodes=1)
    assert counting_env.closes == 1
