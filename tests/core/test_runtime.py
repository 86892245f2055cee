import ctypes
import os
import re

import numpy as np
import pytest
from tiny_policy import ACT_DIM, OBS_DIM, write_policy

from flowrl_deploy import onnxfile, ort
from flowrl_deploy.codec import TensorError
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.policy import OnnxPolicy

CPU = ["CPUExecutionProvider"]
CORES = os.cpu_count() or 1


def test_cpu_is_always_offered_and_cuda_only_with_a_gpu(monkeypatch):
    monkeypatch.setattr(ort, "cuda_device_present", lambda: False)
    assert ort.default_providers() == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "cuda_device_present", lambda: True)
    providers = ort.default_providers()
    assert providers[-1] == "CPUExecutionProvider"
    assert providers[0] == "CUDAExecutionProvider" or len(providers) == 1  # a CPU-only onnxruntime build


def test_no_driver_means_no_gpu(monkeypatch):
    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", missing)
    assert ort.cuda_device_present() is False


def test_a_checkpoint_is_a_directory_or_its_files_and_anything_else_is_a_graph(tmp_path):
    from flowrl_deploy.checkpoint import DOCUMENT_FILE, MODEL_FILE
    from flowrl_deploy.onnxfile import is_onnx_path

    (tmp_path / "run").mkdir()
    for name in ("policy.onnx", "policy.ONNX", "policy.bin", DOCUMENT_FILE, MODEL_FILE):
        (tmp_path / name).write_bytes(b"")
    assert not is_onnx_path(tmp_path / "run")
    assert not is_onnx_path(tmp_path / DOCUMENT_FILE) and not is_onnx_path(tmp_path / MODEL_FILE)
    assert all(is_onnx_path(tmp_path / n) for n in ("policy.onnx", "policy.ONNX", "policy.bin"))
    assert not is_onnx_path(tmp_path / "typo")  # `flowrl serve runs/typo --steps 5` called it an ONNX file


def test_a_runs_last_pointer_file_is_a_checkpoint_and_a_graph_called_best_is_a_graph(tmp_path):
    """Where no symlink can be made (Windows) a run's ``last`` is a file naming its checkpoint:
    ``flowrl serve runs/x/checkpoints/last`` read it as an ONNX file."""
    from flowrl_deploy.onnxfile import is_onnx_path

    (tmp_path / "step_000000100").mkdir()
    (tmp_path / "last").write_text("step_000000100\n", encoding="utf-8")
    (tmp_path / "best").write_bytes(b"\x08\x07\x12\x04onnx" + bytes(300))  # an ONNX file someone called best
    assert not is_onnx_path(tmp_path / "last")
    assert is_onnx_path(tmp_path / "best")
    (tmp_path / "other").write_text("step_000000100", encoding="utf-8")
    assert is_onnx_path(tmp_path / "other")  # only last and best are pointers
    graphs = tmp_path / "graphs"
    graphs.mkdir()
    (graphs / "last").symlink_to(tmp_path / "best")  # a link called last to a graph: the graph
    assert is_onnx_path(graphs / "last")


def _fixed_batch(path, batch: int):
    """The graph at ``path`` with its batch dimension fixed, as ``flowrl export --batch`` makes it."""
    import onnx

    model = onnx.load(str(path))
    for tensor in (*model.graph.input, *model.graph.output):
        tensor.type.tensor_type.shape.dim[0].dim_value = batch
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def stochastic(tmp_path_factory):
    return OnnxPolicy(write_policy(tmp_path_factory.mktemp("policy") / "policy.onnx"), providers=CPU)


OBS, NOISE = np.zeros((2, OBS_DIM), np.float32), np.zeros((2, ACT_DIM), np.float32)
NON_FINITE = "holds NaN, infinite or beyond-float32 values"


@pytest.mark.parametrize(
    ("obs", "noise", "message"),
    [
        (np.full((2, OBS_DIM), np.nan), NOISE, f"obs: {NON_FINITE}"),  # the server's words
        (np.full(OBS_DIM, -np.inf), NOISE[:1], f"obs: {NON_FINITE}"),
        (np.full((2, OBS_DIM), 1e39), NOISE, f"obs: {NON_FINITE}"),  # float64 beyond float32: Inf
        (OBS, np.full((2, ACT_DIM), np.nan), f"noise: {NON_FINITE}"),
        (np.array([[None] * OBS_DIM]), NOISE[:1], "obs: dtype object is not accepted"),
        (np.zeros((2, OBS_DIM), bool), NOISE, "obs: dtype bool is not accepted"),
        ([[1, 2, 3], [4]], NOISE, "obs: not a rectangular array"),
        (np.zeros((2, OBS_DIM + 1)), NOISE, rf"obs: shape \[2, {OBS_DIM + 1}\] does not match \[{OBS_DIM}\] or \[B, "),
        (np.zeros((1, 1, OBS_DIM)), NOISE[:1], r"obs: shape \[1, 1, 3\] does not match"),
        (np.float32(0), NOISE[:1], r"obs: shape \[\] does not match"),
        (np.zeros((0, OBS_DIM)), NOISE[:0], r"obs: empty batch \(shape \[0, 3\]\)"),
        (OBS, np.zeros((2, ACT_DIM + 1)), rf"noise: shape \[2, {ACT_DIM + 1}\] does not match"),
        (OBS, np.zeros((3, ACT_DIM)), "noise: batch of 3 does not match obs's batch of 2"),
    ],
)
def test_act_refuses_what_the_server_refuses_before_onnxruntime_runs(stochastic, obs, noise, message):
    with pytest.raises(TensorError, match=message):
        stochastic.act(obs, noise)


def test_one_observation_gives_one_action_also_from_a_fixed_batch_graph(tmp_path, stochastic):
    rng = np.random.default_rng(0)
    obs, noise = rng.standard_normal((5, OBS_DIM)), rng.standard_normal((5, ACT_DIM))
    expected = stochastic.act(obs, noise)
    assert expected.shape == (5, ACT_DIM)
    fixed = OnnxPolicy(_fixed_batch(write_policy(tmp_path / "fixed.onnx"), 3), providers=CPU)
    assert fixed.fixed_batch == 3
    for policy in (stochastic, fixed):
        np.testing.assert_allclose(policy.act(obs, noise), expected, atol=1e-6)
        one = policy.act(obs[1], noise[1])  # [obs_dim] → [act_dim], as PolicyClient.act
        assert one.shape == (ACT_DIM,)
        np.testing.assert_allclose(one, expected[1], atol=1e-6)


def test_noise_for_a_deterministic_graph_is_refused_not_ignored(tmp_path):
    policy = OnnxPolicy(write_policy(tmp_path / "det.onnx", deterministic=True), providers=CPU)
    assert policy.act(OBS).shape == (2, ACT_DIM)
    with pytest.raises(FlowRLError, match=r"this policy is deterministic \(no noise input\); pass noise=None"):
        policy.act(OBS, NOISE)


@pytest.mark.parametrize(
    ("threads", "message"),
    [
        (0, "threads must be a whole number >= 1, got 0"),
        (-1, "got -1"),
        (1.5, "got 1.5"),
        (True, "got True"),
        (CORES + 1, f"threads {CORES + 1} is more than this machine can run"),  # not 100000: unchecked, that many start
    ],
)
def test_thread_counts_onnxruntime_would_misread_are_refused(tmp_path, threads, message):
    path = write_policy(tmp_path / "policy.onnx")
    with pytest.raises(FlowRLError, match=message):
        OnnxPolicy(path, providers=CPU, threads=threads)


def test_a_model_that_is_neither_a_path_nor_bytes_is_named():
    with pytest.raises(FlowRLError, match="model must be an ONNX file's path or its bytes, got NoneType"):
        OnnxPolicy(None)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("run", "{path} is a directory, not an ONNX file (a checkpoint? `flowrl export {path}` makes one)"),
        ("missing.onnx", "ONNX model not found: {path}"),
        ("fifo", "{path} is not a regular file (a device, pipe or socket), so not an ONNX model"),  # never opened
        ("dangling", "ONNX model not found: {path}"),
    ],
)
def test_a_path_that_is_no_onnx_file_says_what_it_is(tmp_path, name, message):
    (tmp_path / "run").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dangling").symlink_to("gone.onnx")
    path = tmp_path / name
    with pytest.raises(FlowRLError, match=f"^{re.escape(message.format(path=path))}$"):
        OnnxPolicy(path, providers=CPU)
    with pytest.raises(FlowRLError, match=f"^{re.escape(message.format(path=path))}$"):
        onnxfile.check_policy_file(str(path))


def test_a_named_provider_that_onnxruntime_quietly_drops_is_refused(tmp_path, monkeypatch):
    """onnxruntime falls back to the CPU when a provider cannot start; one asked for by name must run."""
    import onnxruntime

    real = onnxruntime.InferenceSession

    def falling_back(source, sess_options=None, providers=None):
        return real(source, sess_options=sess_options, providers=CPU)  # as without CUDA libraries or a GPU

    monkeypatch.setattr(onnxruntime, "InferenceSession", falling_back)
    path = write_policy(tmp_path / "policy.onnx")
    with pytest.raises(FlowRLError, match="could not start CUDAExecutionProvider here"):
        ort.make_session(path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert ort.make_session(path, providers=CPU).get_providers() == CPU
