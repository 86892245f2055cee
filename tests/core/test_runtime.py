import ctypes

from flowrl_deploy import runtime


def test_cpu_is_always_offered_and_cuda_only_with_a_gpu(monkeypatch):
    monkeypatch.setattr(runtime, "cuda_device_present", lambda: False)
    assert runtime.default_providers() == ["CPUExecutionProvider"]
    monkeypatch.setattr(runtime, "cuda_device_present", lambda: True)
    providers = runtime.default_providers()
    assert providers[-1] == "CPUExecutionProvider"
    assert providers[0] == "CUDAExecutionProvider" or len(providers) == 1  # a CPU-only onnxruntime build


def test_no_driver_means_no_gpu(monkeypatch):
    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", missing)
    assert runtime.cuda_device_present() is False


def test_a_checkpoint_is_a_directory_or_its_files_and_anything_else_is_a_graph(tmp_path):
    from flowrl_deploy.checkpoint import DOCUMENT_FILE, MODEL_FILE
    from flowrl_deploy.runtime import is_onnx_path

    (tmp_path / "run").mkdir()
    for name in ("policy.onnx", "policy.ONNX", "policy.bin", DOCUMENT_FILE, MODEL_FILE):
        (tmp_path / name).write_bytes(b"")
    assert not is_onnx_path(tmp_path / "run")
    assert not is_onnx_path(tmp_path / DOCUMENT_FILE) and not is_onnx_path(tmp_path / MODEL_FILE)
    assert all(is_onnx_path(tmp_path / n) for n in ("policy.onnx", "policy.ONNX", "policy.bin"))
    assert not is_onnx_path(tmp_path / "typo")  # `flowrl serve runs/typo --steps 5` called it an ONNX file
