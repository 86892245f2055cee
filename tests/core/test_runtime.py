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
