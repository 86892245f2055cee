"""Sessions on onnxruntime's CUDA provider, simulated on any machine: ``cuda_device_present`` made to
say True is the state of a GPU host whose CUDA libraries are missing (onnxruntime-gpu lists its CUDA
provider everywhere and runs on the CPU when that provider cannot load).

- TF32: onnxruntime's CUDA provider computes float MatMul/Gemm in TF32 unless told ``use_tf32=0``;
  served actions would then differ from the fp32 export that ``flowrl export`` verified.
- A provider failing a run: onnxruntime's own fallback re-made the session on the CPU mid-serving.
"""

from __future__ import annotations

import numpy as np
import pytest
from tiny_policy import ACT_DIM, OBS_DIM, write_policy

from flowrl_deploy import ort
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.policy import OnnxPolicy

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return write_policy(tmp_path_factory.mktemp("cuda") / "policy.onnx")


@pytest.fixture
def asked(monkeypatch):
    """The providers argument of every onnxruntime.InferenceSession made, in order."""
    onnxruntime = ort.import_onnxruntime()
    real = onnxruntime.InferenceSession
    calls: list[list] = []

    def recording(source, sess_options=None, providers=None, **kwargs):
        calls.append(list(providers))
        return real(source, sess_options=sess_options, providers=[CPU])  # as without CUDA's libraries

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording)
    return calls


def _cuda_options(providers: list) -> dict[str, str]:
    (entry,) = [p for p in providers if (p[0] if isinstance(p, tuple) else p) == CUDA]
    assert isinstance(entry, tuple), f"CUDA is asked for without options: {providers}"
    return entry[1]


@pytest.mark.skipif(CUDA not in ort.import_onnxruntime().get_available_providers(), reason="no CUDA build")
def test_the_default_providers_ask_cuda_for_fp32_matmuls(policy, asked, monkeypatch):
    monkeypatch.setattr(ort, "cuda_device_present", lambda: True)
    session = ort.make_session(policy)
    assert _cuda_options(asked[0])["use_tf32"] == "0"
    assert asked[0][-1] == CPU
    assert session.get_providers() == [CPU]  # names, as the banner and the metrics show them


def test_cuda_named_by_the_caller_is_asked_for_fp32_matmuls(policy, asked, monkeypatch):
    with pytest.raises(FlowRLError, match="could not start CUDAExecutionProvider"):
        ort.make_session(policy, providers=[CUDA, CPU])
    assert _cuda_options(asked[0]) == {"use_tf32": "0"}
    assert asked[0][1] == CPU


def test_a_callers_own_cuda_options_are_kept_and_tf32_stays_off_unless_asked(policy, asked):
    with pytest.raises(FlowRLError, match="could not start CUDAExecutionProvider"):
        ort.make_session(policy, providers=[(CUDA, {"device_id": "0"}), CPU])
    with pytest.raises(FlowRLError, match="could not start CUDAExecutionProvider"):
        ort.make_session(policy, providers=[(CUDA, {"use_tf32": "1"})])
    assert _cuda_options(asked[0]) == {"device_id": "0", "use_tf32": "0"}
    assert _cuda_options(asked[1]) == {"use_tf32": "1"}


def test_cpu_sessions_ask_for_the_cpu_alone(policy, asked, monkeypatch):
    monkeypatch.setattr(ort, "cuda_device_present", lambda: False)
    ort.make_session(policy)
    ort.make_session(policy, providers=[CPU])
    assert asked == [[CPU], [CPU]]


def test_a_provider_failing_a_run_raises_and_prints_nothing(policy, capfd):
    """onnxruntime's run-time fallback printed two lines on stdout and re-made the session on other
    providers while other threads ran it (a TensorRT engine rebuild failing, say): a made session
    keeps its providers, and the failure is raised."""
    from onnxruntime.capi import _pybind_state as C

    served = OnnxPolicy(policy, providers=[CPU])
    inner = served.session._sess

    class Failing:
        def __getattr__(self, name):
            return getattr(inner, name)

        def run(self, *args, **kwargs):
            raise C.EPFail("[ONNXRuntimeError] : 11 : EP_FAIL : TensorRT EP failed to create engine from network")

    served.session._sess = Failing()
    capfd.readouterr()
    with pytest.raises(C.EPFail):
        served.run(np.zeros((1, OBS_DIM), np.float32), np.zeros((1, ACT_DIM), np.float32))
    out, _ = capfd.readouterr()
    assert out == ""
    assert served.session._sess.__class__ is Failing  # not re-made behind the caller's back


def _cuda_library_loads() -> bool:
    import ctypes
    from pathlib import Path

    capi = Path(ort.import_onnxruntime().__file__).parent / "capi"
    try:
        ctypes.CDLL(str(capi / "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(capi / "libonnxruntime_providers_cuda.so"))
    except OSError:
        return False
    return True


needs_a_cuda_build_without_its_libraries = pytest.mark.skipif(
    CUDA not in ort.import_onnxruntime().get_available_providers() or _cuda_library_loads(),
    reason="needs onnxruntime-gpu without CUDA's libraries (a CPU build, or one whose CUDA provider loads)",
)


@pytest.fixture
def warnings_logged():
    """The WARNING records of logger flowrl.runtime (a handler of its own: another test's logging
    set-up may stop them reaching the root's)."""
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("flowrl.runtime")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@needs_a_cuda_build_without_its_libraries
def test_a_gpu_without_cudas_libraries_runs_on_the_cpu_with_one_warning_saying_why(
    policy, monkeypatch, capfd, warnings_logged
):
    """onnxruntime printed a coloured two-line ERROR of its own (no JSON log line) on every load, and
    flowrl only named CPUExecutionProvider at the end of its INFO line."""
    monkeypatch.setattr(ort, "cuda_device_present", lambda: True)
    capfd.readouterr()
    session = ort.make_session(policy)
    out, err = capfd.readouterr()
    assert session.get_providers() == [CPU]
    assert out == "" and err == "", (out, err)
    (warning,) = [r.getMessage() for r in warnings_logged]
    assert warning.startswith("a GPU is present but onnxruntime's CUDA provider cannot load (lib"), warning
    assert "cannot open shared object file" in warning and "\n" not in warning, warning
    assert 'pip install "onnxruntime-gpu[cuda,cudnn]"' in warning and "--providers cpu" in warning, warning


@needs_a_cuda_build_without_its_libraries
def test_preloading_cudas_libraries_prints_nothing_where_they_are_missing(monkeypatch, capfd):
    """onnxruntime.preload_dlls prints 'Failed to load …' lines on stdout for each library it misses."""
    monkeypatch.setattr(ort, "_cuda_libraries_preloaded", False)
    capfd.readouterr()
    ort.preload_cuda_libraries()
    assert capfd.readouterr() == ("", "")


@needs_a_cuda_build_without_its_libraries
def test_cuda_named_on_a_gpu_without_its_libraries_is_refused_naming_the_missing_library(policy, monkeypatch, capfd):
    monkeypatch.setattr(ort, "cuda_device_present", lambda: True)
    with pytest.raises(FlowRLError) as refused:
        ort.make_session(policy, providers=[CUDA])
    message = str(refused.value)
    assert message.startswith(
        "onnxruntime could not start CUDAExecutionProvider here: a GPU is present but the CUDA provider's "
        "library cannot load (lib"
    ), message
    assert "cannot open shared object file" in message and "--providers cpu" in message, message
    assert capfd.readouterr() == ("", "")


@pytest.mark.skipif(CUDA not in ort.import_onnxruntime().get_available_providers(), reason="no CUDA build")
@pytest.mark.skipif(
    ort.cuda_device_present() and _cuda_library_loads(),
    reason="a GPU is here and onnxruntime's CUDA provider starts on it: a host without one cannot be simulated",
)
def test_cuda_named_without_a_gpu_is_refused_saying_there_is_none(policy, monkeypatch):
    monkeypatch.setattr(ort, "cuda_device_present", lambda: False)
    said = r"CUDAExecutionProvider here \(no GPU: the NVIDIA driver is missing or reports none\)"
    with pytest.raises(FlowRLError, match=said):
        ort.make_session(policy, providers=[CUDA, CPU])


def test_cuda_asked_of_the_cpu_only_onnxruntime_is_refused_naming_the_package_to_install(policy, monkeypatch):
    """The plain onnxruntime package (macOS, aarch64, a CPU-only install) has no CUDA provider at all."""
    monkeypatch.setattr(ort.import_onnxruntime(), "get_available_providers", lambda: [CPU])
    with pytest.raises(FlowRLError, match=r"does not offer it .*install onnxruntime-gpu in its place"):
        ort.make_session(str(policy), providers=[CUDA, CPU])
