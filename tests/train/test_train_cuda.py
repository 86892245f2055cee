"""FlowRL on either device: the same networks on a GPU as on the CPU, updates that stay on their
device, bf16 and torch.compile, and training state that moves between devices.

The CUDA cases skip where torch sees no GPU (CI, with that reason); they run wherever one is present.
"""

import gc

import numpy as np
import pytest
import torch

from flowrl_deploy.spec import PolicySpec
from flowrl_deploy.train.actor import actor_act_fn
from flowrl_deploy.train.algorithm import FlowRL
from flowrl_deploy.train.config import TrainConfig
from flowrl_deploy.train.replay import Batch

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="torch sees no CUDA device (this runs where a GPU is present)"
)
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]

SPEC = PolicySpec(obs_dim=5, act_dim=3, action_low=(-1.0, -2.0, 0.0), action_high=(1.0, 2.0, 4.0), hidden=32)
BATCH = 64


def make_agent(device: str, seed: int = 0, **overrides) -> FlowRL:
    torch.manual_seed(seed)  # initialised on the CPU, then moved: the same weights on either device
    return FlowRL(SPEC, TrainConfig(hidden=32, batch_size=BATCH, **overrides), device)


def random_batch(seed: int, reward: float | None = None, mask: float = 1.0) -> Batch:
    rng = np.random.default_rng(seed)
    rewards = rng.standard_normal(BATCH, dtype=np.float32) if reward is None else np.full(BATCH, reward, np.float32)
    return Batch(
        obs=rng.standard_normal((BATCH, SPEC.obs_dim), dtype=np.float32),
        action=rng.uniform(SPEC.action_low, SPEC.action_high, (BATCH, SPEC.act_dim)).astype(np.float32),
        reward=rewards,
        next_obs=rng.standard_normal((BATCH, SPEC.obs_dim), dtype=np.float32),
        mask=np.full(BATCH, mask, np.float32),
    )


@needs_cuda
def test_networks_on_the_gpu_compute_what_they_compute_on_the_cpu():
    cpu, gpu = make_agent("cpu"), make_agent("cuda")
    obs = torch.randn(BATCH, SPEC.obs_dim) * 10
    noise = torch.randn(BATCH, SPEC.act_dim) * 3
    action = torch.rand(BATCH, SPEC.act_dim) * 2 - 1
    pairs = [
        (cpu.actor(obs, noise, num_steps=10), gpu.actor(obs.cuda(), noise.cuda(), num_steps=10)),
        (cpu.q_pi(obs, action), gpu.q_pi(obs.cuda(), action.cuda())),
        (cpu.q_beta(obs, action), gpu.q_beta(obs.cuda(), action.cuda())),
        (cpu.value(obs), gpu.value(obs.cuda())),
    ]
    for want, got in pairs:
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.detach().cpu(), want.detach(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_updates_keep_every_tensor_on_their_device(device):
    agent = make_agent(device)
    before = [p.detach().clone() for p in agent.actor.parameters()]
    for i in range(7):  # on a GPU: eager warm-up, then CUDA graph replays
        metrics = agent.update(random_batch(i))
    assert all(v.device.type == device and torch.isfinite(v) for v in metrics.values())  # no host sync per update
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.actor.parameters(), strict=True))
    for name in FlowRL.NETWORKS:
        assert all(p.device.type == device for p in getattr(agent, name).parameters()), name
    for name in FlowRL.OPTIMIZERS:
        for state in getattr(agent, name).state.values():
            assert all(v.device.type == device for v in state.values() if v.dim() > 0), name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_critics_learn_a_known_value(device, bf16):
    """Terminal transitions of reward 1: both critics and V must reach 1 on the buffer's (s, a)."""
    agent = make_agent(device, bf16=bf16, lr=1e-3)
    batches = [random_batch(i, reward=1.0, mask=0.0) for i in range(4)]
    for i in range(300):
        agent.update(batches[i % len(batches)])
    obs = torch.as_tensor(batches[0].obs, device=device)
    action = torch.as_tensor(batches[0].action, device=device)
    with torch.no_grad(), agent._autocast():
        q_pi, q_beta, value = agent.q_pi(obs, action), agent.q_beta(obs, action), agent.value(obs)
    assert q_pi.dtype == torch.float32  # critics return float32 even under autocast
    for estimate in (q_pi, q_beta, value):
        assert (estimate - 1).abs().mean() < 0.05, estimate


@needs_cuda
def test_compiled_agent_takes_the_same_first_update_as_the_eager_one(monkeypatch):
    monkeypatch.setattr("torch._inductor.config.fallback_random", True)  # torch's RNG inside compiled graphs
    eager, compiled = make_agent("cuda"), make_agent("cuda", compile=True)
    batch = random_batch(0)
    torch.manual_seed(1)
    want = eager.update(batch)
    torch.manual_seed(1)
    got = compiled.update(batch)
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-4, rtol=1e-3)


@needs_cuda
def test_training_state_saved_on_the_gpu_resumes_on_the_gpu_and_loads_on_the_cpu():
    agent = make_agent("cuda")
    for i in range(3):
        agent.update(random_batch(i))
    actor = {k: v.cpu().numpy().copy() for k, v in agent.actor.state_dict().items()}
    tensors, state = agent.state_tensors(), agent.state_json()
    assert "rng.torch_cuda" in tensors
    want = agent.update(random_batch(9))
    clone = make_agent("cuda", seed=123)  # reseeds the CUDA generator, which load_state rewinds
    clone.load_state(actor, tensors, state)
    got = clone.update(random_batch(9))
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-6, rtol=1e-5)

    on_cpu = make_agent("cpu", seed=123)
    on_cpu.load_state(actor, tensors, state)  # the CUDA generator's state is not needed there
    assert on_cpu.updates == 3
    clone.load_state(actor, tensors, state)
    obs = torch.randn(BATCH, SPEC.obs_dim)
    action = torch.rand(BATCH, SPEC.act_dim) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(
            on_cpu.q_beta(obs, action), clone.q_beta(obs.cuda(), action.cuda()).cpu(), atol=1e-5, rtol=1e-4
        )


@needs_cuda
def test_evaluation_noise_is_the_same_on_the_gpu_as_on_the_cpu():
    """``flowrl eval --seed S`` plays the same episodes whichever device holds the actor."""
    cpu, gpu = make_agent("cpu").actor.eval(), make_agent("cuda").actor.eval()
    act_cpu, act_gpu = actor_act_fn(cpu, seed=3, num_steps=10), actor_act_fn(gpu, seed=3, num_steps=10)
    rng = np.random.default_rng(1)
    for _ in range(5):
        obs = rng.standard_normal(SPEC.obs_dim).astype(np.float32)
        np.testing.assert_allclose(act_gpu(obs), act_cpu(obs), atol=1e-5, rtol=1e-4)


@needs_cuda
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_cuda_graphs_take_the_same_updates_as_eager_execution(bf16):
    graphed, eager = make_agent("cuda", bf16=bf16), make_agent("cuda", bf16=bf16, cuda_graphs=False)
    batches = [random_batch(i) for i in range(10)]

    def run(agent: FlowRL, seed: int, count: int) -> list[dict[str, torch.Tensor]]:
        torch.manual_seed(seed)  # the same CUDA generator state: graph replays draw the same noise
        return [agent.update(b) for b in batches[:count]]

    assert_same_updates(run(graphed, 1, 10), run(eager, 1, 10), bf16)
    assert graphed._graphed.critic_graph is not None and eager._graphed is None  # the last updates were replays
    if not bf16:  # an Adam step moves a weight by about lr whatever its gradient: bf16 weights cannot tell
        assert_same_networks(graphed, eager)
    groups = [g for name in FlowRL.OPTIMIZERS for g in graphed.state_json()["param_groups"][name]]
    assert not any(g["capturable"] for g in groups)  # its checkpoints load on a CPU

    # Loading a checkpoint into an agent whose graphs are captured: the graphs must be captured again
    # around the loaded Adam state (the old ones would go on with the moments of the 3 extra updates).
    actor = {k: v.cpu().numpy().copy() for k, v in graphed.actor.state_dict().items()}
    tensors, state = graphed.state_tensors(), graphed.state_json()
    run(graphed, 3, 3)
    graphed.load_state(actor, tensors, state)
    eager.load_state(actor, tensors, state)
    assert_same_updates(run(graphed, 2, 8), run(eager, 2, 8), bf16)
    assert graphed._graphed.critic_graph is not None
    if not bf16:
        assert_same_networks(graphed, eager)


def assert_same_updates(got: list[dict[str, torch.Tensor]], want: list[dict[str, torch.Tensor]], bf16: bool) -> None:
    """fp32: the same numbers. bf16: the capture stream's cuBLAS may sum in another order, which bf16's
    8-bit mantissa turns into differences of ~1e-3 (1.1e-3 seen on an H100)."""
    tolerance = {"atol": 1e-2, "rtol": 1e-2} if bf16 else {"atol": 1e-5, "rtol": 1e-4}
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for key in w:
            torch.testing.assert_close(g[key], w[key], **tolerance)


def assert_same_networks(a: FlowRL, b: FlowRL) -> None:
    for name in FlowRL.NETWORKS:
        for p, q in zip(getattr(a, name).parameters(), getattr(b, name).parameters(), strict=True):
            torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)
    assert a.updates == b.updates


def test_the_collector_is_paused_inside_the_block_and_left_as_it_was():
    from flowrl_deploy.train.cuda_graphs import collector_paused

    was = gc.isenabled()
    try:
        for enabled in (True, False):
            (gc.enable if enabled else gc.disable)()
            with collector_paused():
                assert not gc.isenabled()
            assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


@needs_cuda
def test_a_collection_that_would_free_another_agents_graphs_does_not_break_a_capture(monkeypatch):
    """A finished agent's CUDA graphs, unreachable in a reference cycle, reach the collector while a new agent
    captures (session 25's GPU suite: `cudaErrorStreamCaptureInvalidated` in a test that passed alone)."""
    old = make_agent("cuda", seed=1)
    for i in range(6):
        old.update(random_batch(i))
    assert old._graphed.critic_graph is not None
    graveyard = [old, {"cycle": None}]
    graveyard[1]["cycle"] = graveyard  # only a collection frees it
    del old
    agent = make_agent("cuda", seed=2)
    actor_step = agent.actor_step

    def dropping_the_old_agent(*args, **kwargs):
        if torch.cuda.is_current_stream_capturing():  # the actor graph's capture, not an eager warm-up update
            graveyard.clear()  # garbage now: the next automatic collection (any allocation, at these thresholds)
        return actor_step(*args, **kwargs)

    monkeypatch.setattr(agent, "actor_step", dropping_the_old_agent)
    thresholds = gc.get_threshold()
    gc.set_threshold(1, 1, 1)
    try:
        updates = [agent.update(random_batch(i)) for i in range(8)]
    finally:
        gc.set_threshold(*thresholds)
    assert not graveyard and agent._graphed.critic_graph is not None and agent._graphed.actor_graph is not None
    assert all(torch.isfinite(value).all() for update in updates for value in update.values())
    torch.randn(4, device="cuda")  # the CUDA generator still works
