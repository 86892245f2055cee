"""A model that loads but whose warm-up run fails (where a GPU provider's errors first show: no kernel
image for the device, out of memory, an old driver) is refused in one line naming the file and the
providers, at start and on Reload; the old model keeps serving."""

from __future__ import annotations

import grpc
import onnxruntime
import pytest
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
from tiny_policy import write_policy
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.client import PolicyClient, ServiceError
from flowrl_deploy.serve import PolicyServer, ServeConfig

CUDA_FAILURE = (
    "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running MatMul node. Name:'MatMul_0' "
    "Status Message: CUDA error cudaErrorNoKernelImageForDevice:no kernel image is available for execution"
)


def _failing_runs(monkeypatch) -> None:
    def fail(self, *args, **kwargs):
        raise ort_state.Fail(CUDA_FAILURE)

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", fail)


def test_a_failed_warm_up_at_start_is_one_error_line_naming_file_and_providers(tmp_path, monkeypatch):
    path = write_policy(tmp_path / "policy.onnx")
    _failing_runs(monkeypatch)
    result = CliRunner().invoke(app, ["serve", str(path), "--port", "0", "--providers", "cpu"])  # on a GPU host too
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    (error,) = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert f"cannot run {path} on CPUExecutionProvider" in error
    assert "cudaErrorNoKernelImageForDevice" in error and "[ONNXRuntimeError]" not in error


def test_a_reload_whose_warm_up_fails_is_refused_with_its_reason_and_the_old_model_serves_on(tmp_path, monkeypatch):
    path = write_policy(tmp_path / "policy.onnx")
    new = write_policy(tmp_path / "new.onnx", scale=2.0)
    config = ServeConfig(str(path), port=0, grace_s=0)
    with PolicyServer(config).start() as server, PolicyClient(server.address) as client:
        served = client.spec().model_version
        run = onnxruntime.InferenceSession.run
        calls = []

        def fail_on_the_new_model(self, *args, **kwargs):
            if self is not server.servicer.slot.model.policy.session:  # the new model's warm-up
                calls.append(1)
                raise ort_state.Fail(CUDA_FAILURE)
            return run(self, *args, **kwargs)

        monkeypatch.setattr(onnxruntime.InferenceSession, "run", fail_on_the_new_model)
        with pytest.raises(ServiceError) as info:
            client.reload(str(new))
        assert calls
        assert info.value.code != grpc.StatusCode.INTERNAL
        assert f"cannot run {new}" in info.value.details and "cudaErrorNoKernelImageForDevice" in info.value.details
        assert client.spec().model_version == served
        assert client.act([0.1, 0.2, 0.3]).shape == (2,)


def test_the_load_line_gives_the_fastest_batch_1_run_of_the_warm_up(tmp_path, monkeypatch, caplog):
    """The first runs of a session are the slow ones (a GPU's especially): the figure is their minimum."""
    import itertools
    import logging
    import re
    import time

    from flowrl_deploy.serve import model
    from flowrl_deploy.serve.model import WARMUP_RUNS

    path = write_policy(tmp_path / "policy.onnx")
    # the batch-1 runs come first (sorted batches), then max_batch's
    durations_us = itertools.chain([900, 300, 120, 450, 610][:WARMUP_RUNS], itertools.repeat(5000))

    class Clock:  # each run reads the clock before and after: the second reading is the run's duration later
        now, reading = 0, itertools.cycle([False, True])

        def perf_counter_ns(self) -> int:
            if next(self.reading):
                self.now += next(durations_us) * 1000
            return self.now

        def __getattr__(self, name: str):
            return getattr(time, name)

    monkeypatch.setattr(model, "time", Clock())
    with caplog.at_level(logging.INFO, logger="flowrl.serve"):
        PolicyServer(ServeConfig(str(path), port=0, grace_s=0, max_batch=4)).start().stop()
    (loaded,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded ")]
    assert re.search(r"; a batch-1 call in 120 µs at warm-up\)$", loaded), loaded
