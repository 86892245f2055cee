"""Hot reload: versions swap without a failed call; a mismatched or broken model is refused."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
import time
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from deploying import deploy, wait_for
from fake_checkpoints import TRAINED_STEPS, FakeExporter, save_step
from tiny_policy import ACT_DIM, documented_noise, tiny_contract, write_policy

from flowrl_deploy.client import PolicyClient, ServiceError
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.policy import OnnxPolicy
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.serve import PolicyServer, ServeConfig
from flowrl_deploy.serve import metrics as metrics_module
from flowrl_deploy.serve import model as serve_model
from flowrl_deploy.serve import reload as watch

OBS = np.array([[0.5, -0.3, 0.2]], np.float32)


def _documented_noise(seed: int) -> np.ndarray:
    """The noise of one request of OBS in a session seeded with ``seed``."""
    return documented_noise(seed).standard_normal((len(OBS), ACT_DIM), dtype=np.float32)


def test_reload_swaps_versions_without_a_failed_call(served):
    _server, client, tmp = served
    new = write_policy(tmp / "v2.onnx", scale=2.0)
    old_version = client.spec().model_version
    versions, failures, stop = [], [], threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                versions.append(client.act_reply(OBS, seed=0).model_version)
            except ServiceError as exc:  # pragma: no cover - the assertion below reports it
                failures.append(exc)

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        assert wait_for(lambda: versions)  # the old model has served the hammer before the reload
        new_version, previous = client.reload(str(new))
        assert wait_for(lambda: versions[-1] == new_version)  # and the new one after it
    finally:
        stop.set()
    worker.join()
    assert not failures
    assert previous == old_version and new_version != old_version and new_version.startswith("v2-")
    assert versions[0] == old_version and versions[-1] == new_version
    assert set(versions) == {old_version, new_version}
    swap = versions.index(new_version)
    assert all(v == new_version for v in versions[swap:])  # no request ran on the old model after the swap
    np.testing.assert_allclose(client.act(OBS, seed=0), OnnxPolicy(new).act(OBS, _documented_noise(0)), atol=1e-6)


def test_mismatched_model_is_refused_and_the_old_keeps_serving(served):
    _, client, tmp = served
    version = client.spec().model_version
    other = write_policy(tmp / "other.onnx", action_high=(1.0, 5.0))
    with pytest.raises(ServiceError) as info:
        client.reload(str(other))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "action_high" in info.value.details
    broken = tmp / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    with pytest.raises(ServiceError) as info:
        client.reload(str(broken))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "reload refused" in info.value.details and version in info.value.details
    assert client.act_reply(OBS).model_version == version


def test_a_reload_whose_caller_stopped_waiting_is_abandoned_and_the_old_keeps_serving(served, monkeypatch, caplog):
    """`flowrl reload --timeout 0.001` printed DEADLINE_EXCEEDED while the server swapped the model anyway."""
    from flowrl_deploy.serve.model import ServedModel

    _, client, tmp = served
    version = client.spec().model_version
    new = write_policy(tmp / "v2.onnx", scale=2.0)
    warm_up = ServedModel.warm_up

    def slow_warm_up(self, batches, **kwargs):
        fastest_us = warm_up(self, batches, **kwargs)
        time.sleep(0.5)
        return fastest_us

    monkeypatch.setattr(ServedModel, "warm_up", slow_warm_up)
    with pytest.raises(ServiceError) as info:
        client.reload(str(new), timeout_s=0.1)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_for(lambda: "reload abandoned" in caplog.text)
    assert f"reload abandoned, still serving {version}: the caller stopped waiting" in caplog.text
    assert client.spec().model_version == version
    new_version, previous = client.reload(str(new))  # a caller that waits gets it
    assert previous == version and new_version.startswith("v2-")


def test_a_reload_whose_caller_cancelled_is_abandoned_and_the_old_keeps_serving(served, monkeypatch, caplog):
    """A caller without a deadline that cancels (Ctrl-C on `flowrl reload`) is no longer waiting either."""
    from flowrl_deploy.serve.model import ServedModel

    _, client, tmp = served
    version = client.spec().model_version
    new = write_policy(tmp / "v2.onnx", scale=2.0)
    warm_up, warmed = ServedModel.warm_up, threading.Event()

    def slow_warm_up(self, batches, **kwargs):
        fastest_us = warm_up(self, batches, **kwargs)
        warmed.set()
        time.sleep(0.5)
        return fastest_us

    monkeypatch.setattr(ServedModel, "warm_up", slow_warm_up)
    call = client.stub.Reload.future(pb.ReloadRequest(path=str(new)))
    assert warmed.wait(10)
    call.cancel()
    assert wait_for(lambda: "reload abandoned" in caplog.text)
    assert f"reload abandoned, still serving {version}: the caller stopped waiting" in caplog.text
    assert client.spec().model_version == version


def test_a_model_whose_observation_layout_differs_is_refused_and_the_old_keeps_serving(served):
    _, client, tmp = served
    reordered = (("velocity", 1), ("position", 2))  # the same obs_dim: only the meaning of each input changes
    assert [d.split(":")[0] for d in tiny_contract().differences(tiny_contract(obs_layout=reordered))] == ["obs_layout"]
    spec = client.spec()
    with pytest.raises(ServiceError) as info:
        client.reload(str(write_policy(tmp / "reordered.onnx", obs_layout=reordered)))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "obs_layout" in info.value.details and "velocity" in info.value.details
    after = client.spec()
    assert (after.model_version, after.obs_names) == (spec.model_version, spec.obs_names)
    assert client.act_reply(OBS).model_version == spec.model_version


def test_reload_of_a_file_outside_the_model_directory_is_permission_denied(served, tmp_path_factory):
    _, client, tmp = served
    version = client.spec().model_version
    elsewhere = write_policy(tmp_path_factory.mktemp("elsewhere") / "policy.onnx", scale=2.0)
    sneaky = tmp / ".." / elsewhere.parent.name / "policy.onnx"  # escapes by '..'
    for path in (elsewhere, sneaky, "/etc/passwd"):
        with pytest.raises(ServiceError) as info:
            client.reload(str(path))
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert "outside" in info.value.details and str(tmp.resolve()) in info.value.details
    assert client.act_reply(OBS).model_version == version
    (tmp / "sub").mkdir()
    beside = write_policy(tmp / "sub" / "v2.onnx", scale=2.0)  # inside the directory is fine
    assert client.reload(str(beside))[0].startswith("v2-")


def test_a_forbidden_reload_path_is_refused_at_once_during_a_reload_in_progress(served):
    """The path was checked only once a reload in progress (e.g. a checkpoint's export) had ended:
    the caller waited, and was told DEADLINE_EXCEEDED rather than PERMISSION_DENIED."""
    server, client, _ = served
    with server.servicer.slot.load_lock, pytest.raises(ServiceError) as info:  # a reload in progress
        client.reload("/etc/passwd", timeout_s=1.0)
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert client.stats().reload_failures == 1


def test_a_relative_reload_path_is_taken_from_beside_the_served_file_not_the_servers_cwd(
    served, tmp_path_factory, monkeypatch
):
    """`flowrl reload new.onnx` (the README's example) was looked up in the server's working
    directory, which its clients cannot know, and refused as "outside" the served file's folder."""
    _, client, tmp = served
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))  # the server's cwd is not the model's folder
    write_policy(tmp / "new.onnx", scale=2.0)
    version, _ = client.reload("new.onnx")
    assert version == client.spec().model_version and version.startswith("v2-")
    with pytest.raises(ServiceError) as info:
        client.reload("../escape.onnx")
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert f"'../escape.onnx' ({tmp.resolve() / '..' / 'escape.onnx'}) is outside {tmp.resolve()}" in info.value.details


@pytest.mark.parametrize(
    ("served", "paths"),
    [
        ("run", ["checkpoints/step_000000002"]),
        ("run/checkpoints", ["checkpoints/step_000000002", "step_000000002"]),
        ("run/checkpoints/last", ["checkpoints/step_000000002", "step_000000002"]),
        ("run/checkpoints/step_000000001", ["checkpoints/step_000000002", "step_000000002"]),
    ],
)
def test_a_relative_reload_path_of_a_served_run_or_checkpoint_names_a_checkpoint_of_the_run(tmp_path, served, paths):
    """`checkpoints/step_…` (docs/serve.md's and --help's example) was looked up in
    checkpoints/checkpoints/ for a served checkpoint; beside one, `step_…` works too."""
    exporter = FakeExporter()
    run = tmp_path / "run"
    save_step(run, 1)
    save_step(run, 2, link=False)
    server = PolicyServer(ServeConfig(str(tmp_path / served), port=0, grace_s=0), export_checkpoint=exporter).start()
    with server, PolicyClient(server.address) as client:
        first = client.spec().model_version
        versions = [client.reload(path)[0] for path in paths]  # each names step 2: the same model
        assert versions[0] != first and set(versions) == {client.spec().model_version}
        with pytest.raises(ServiceError) as info:  # the run's config.json is not a checkpoint of it
            client.reload("config.json")
        assert info.value.code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.FAILED_PRECONDITION)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("a\x00b", "'a\\x00b' contains a NUL byte"),
        ("x" * 300, "is no usable path (File name too long)"),
        ("loop", "'loop' is no usable path (a symbolic link loop)"),
    ],
)
def test_a_reload_path_that_is_no_usable_path_is_invalid_argument_not_internal(served, path, reason):
    """A NUL byte, an over-long name or a link loop ended as INTERNAL with a traceback in the log."""
    _, client, tmp = served
    (tmp / "loop").symlink_to(tmp / "loop")
    version = client.spec().model_version
    with pytest.raises(ServiceError) as info:
        client.reload(path)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in info.value.details
    assert client.spec().model_version == version


def test_a_reload_of_a_pipe_is_refused_at_once_and_the_old_keeps_serving(served):
    """Reading a FIFO blocked the reload forever, holding the reload lock."""
    _, client, tmp = served
    fifo = tmp / "next.onnx"
    os.mkfifo(fifo)
    version = client.spec().model_version
    try:
        with pytest.raises(ServiceError) as info:
            client.reload("next.onnx", timeout_s=30)
    finally:  # a reader blocked on the pipe (the bug) gets end-of-file, so the server can stop
        with contextlib.suppress(OSError):  # ENXIO: no reader
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "is not a regular file (a device, pipe or socket)" in info.value.details
    assert client.spec().model_version == version


def test_watch_reloads_when_the_file_changes(served):
    server, client, tmp = served
    version = client.spec().model_version
    staged = write_policy(tmp / "staged.onnx", scale=3.0)
    target = tmp / "policy.onnx"
    shutil.copy(staged, tmp / "incoming.onnx")
    os.replace(tmp / "incoming.onnx", target)  # atomic, as a deploy script should
    assert wait_for(lambda: client.spec().model_version != version)
    assert client.spec().model_version.startswith("v2-")
    assert wait_for(lambda: server.servicer.metrics.reloads == 1)  # counted just after the swap


def test_a_file_replaced_by_one_of_the_same_size_and_time_is_a_change(tmp_path):
    """A deploy that keeps the modification time (cp -p, rsync -t) may bring a file of the same
    size: it is another file (inode) all the same, and --watch must load it."""
    served = tmp_path / "policy.onnx"
    served.write_bytes(b"a" * 64)
    before = watch.served_stamp(served)
    incoming = tmp_path / "incoming.onnx"
    incoming.write_bytes(b"b" * 64)
    times = served.stat()
    os.utime(incoming, ns=(times.st_atime_ns, times.st_mtime_ns))
    os.replace(incoming, served)
    assert served.stat().st_mtime_ns == times.st_mtime_ns
    assert watch.served_stamp(served) != before


def test_watch_survives_a_bad_file_and_loads_the_good_one_after_it(served, caplog):
    server, client, tmp = served
    version = client.spec().model_version
    target = tmp / "policy.onnx"
    garbage = tmp / "garbage.bin"
    garbage.write_bytes(b"not an onnx file")
    with caplog.at_level("WARNING", logger="flowrl.serve"):
        deploy(garbage, target)
        assert wait_for(lambda: any("(--watch) refused" in r.getMessage() for r in caplog.records))
    assert client.act_reply(OBS).model_version == version  # the old model keeps serving
    good = write_policy(tmp / "staged.onnx", scale=2.0)  # the same contract, other weights
    deploy(good, target)
    assert wait_for(lambda: client.spec().model_version != version)
    assert client.spec().model_version.startswith("v2-")
    assert wait_for(lambda: server.servicer.metrics.reloads == 1)  # counted just after the swap
    np.testing.assert_allclose(client.act(OBS, seed=3), OnnxPolicy(good).act(OBS, _documented_noise(3)), atol=1e-6)


def test_watch_of_a_run_directory_follows_last_and_ignores_other_files(tmp_path):
    exporter = FakeExporter()
    run = tmp_path / "run"
    first = save_step(run, 1)
    config = ServeConfig(str(run), port=0, watch=True, watch_interval_s=0.02, grace_s=0)
    with PolicyServer(config, export_checkpoint=exporter).start() as server, PolicyClient(server.address) as client:
        version = client.spec().model_version
        # a resume starts: config.json rewritten, a new log file; the served checkpoint is the same
        (run / "config.json.tmp").write_text("{}")
        os.replace(run / "config.json.tmp", run / "config.json")
        (run / "metrics.jsonl").write_text("{}\n")
        time.sleep(0.3)
        assert server.servicer.metrics.reloads == 0 and client.spec().model_version == version
        second = save_step(run, 2)  # training moves checkpoints/last
        assert wait_for(lambda: client.spec().model_version != version)
        assert client.spec().model_version.startswith("v2-")
        assert wait_for(lambda: server.servicer.metrics.reloads == 1)  # counted just after the swap
        time.sleep(0.2)
        assert server.servicer.metrics.reloads == 1  # and once
    assert [c for c, _ in exporter.calls] == [first.resolve(), second.resolve()]


def test_watch_of_a_checkpoint_reloads_when_it_is_saved_again(tmp_path):
    exporter = FakeExporter()
    step = save_step(tmp_path / "run", 1, link=False)
    config = ServeConfig(str(step), port=0, watch=True, watch_interval_s=0.02, grace_s=0)
    with PolicyServer(config, export_checkpoint=exporter).start() as server, PolicyClient(server.address) as client:
        version = client.spec().model_version
        (step / "eval.json").write_text("{}")  # a file beside the checkpoint's own
        (step.parent / "unrelated.txt").write_text("x")
        time.sleep(0.2)
        assert server.servicer.metrics.reloads == 0
        save_step(tmp_path / "run", 1, link=False, weight_scale=3)  # the same step rewritten, other weights
        assert wait_for(lambda: client.spec().model_version != version)


def test_served_checkpoints_are_exported_at_their_training_steps_or_steps(tmp_path):
    exporter = FakeExporter()
    run = tmp_path / "run"
    save_step(run, 1)
    with PolicyServer(ServeConfig(str(run), port=0, grace_s=0), export_checkpoint=exporter).start() as server:
        assert server.servicer.model.contract.flow_steps == TRAINED_STEPS
    config = ServeConfig(str(run), port=0, steps=1, watch=True, watch_interval_s=0.02, grace_s=0)
    with PolicyServer(config, export_checkpoint=exporter).start() as server, PolicyClient(server.address) as client:
        assert client.spec().flow_steps == 1
        save_step(run, 2)
        assert wait_for(lambda: client.spec().model_version.startswith("v2-"))
        assert client.spec().flow_steps == 1
        client.reload(str(run / "checkpoints" / "step_000000001"))  # Reload re-exports at the same N
        assert client.spec().flow_steps == 1
    assert [steps for _, steps in exporter.calls] == [TRAINED_STEPS, 1, 1, 1]


def test_steps_with_an_onnx_file_is_refused(tmp_path):
    path = write_policy(tmp_path / "policy.onnx")
    with pytest.raises(FlowRLError, match="applies to a checkpoint"):
        PolicyServer(ServeConfig(str(path), port=0, steps=3)).start()


def test_reload_of_a_served_directory_is_confined_to_that_directory(tmp_path):
    exporter = FakeExporter()
    run = tmp_path / "run"
    save_step(run, 1)
    beside = write_policy(tmp_path / "beside.onnx", scale=2.0)  # under the run's parent, not the run
    with PolicyServer(ServeConfig(str(run), port=0, grace_s=0), export_checkpoint=exporter).start() as server:
        with PolicyClient(server.address) as client, pytest.raises(ServiceError) as info:
            client.reload(str(beside))
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert f"outside {run.resolve()}, the served run directory" in info.value.details
        with PolicyClient(server.address) as client:
            assert client.reload(str(save_step(run, 2, link=False)))[0].startswith("v2-")


def test_a_served_checkpoint_may_reload_a_later_one_of_its_run(tmp_path):
    exporter = FakeExporter()
    run = tmp_path / "run"
    save_step(run, 1)
    server = PolicyServer(
        ServeConfig(str(run / "checkpoints" / "last"), port=0, grace_s=0), export_checkpoint=exporter
    ).start()
    with server, PolicyClient(server.address) as client:
        assert client.reload(str(save_step(run, 2)))[0].startswith("v2-")  # a sibling of step 1
        with pytest.raises(ServiceError) as info:
            client.reload(str(write_policy(tmp_path / "beside_the_run.onnx")))
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert f"outside {(run / 'checkpoints').resolve()}, the served checkpoint's run" in info.value.details


def test_refused_reloads_are_logged_with_their_reason(served, caplog, tmp_path_factory, monkeypatch):
    _, client, tmp = served
    monkeypatch.setattr(metrics_module, "LIMIT_WARNING_S", 0.0)  # every refusal's warning is due
    broken = tmp / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    refused = {
        str(tmp_path_factory.mktemp("elsewhere") / "policy.onnx"): "outside",
        str(tmp / "missing.onnx"): "model not found",
        str(write_policy(tmp / "other.onnx", action_high=(1.0, 5.0))): "action_high",
        str(broken): "cannot load ONNX model",
    }
    with caplog.at_level("WARNING", logger="flowrl.serve"):
        for path in refused:
            with pytest.raises(ServiceError):
                client.reload(path)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == len(refused)
    for line, (path, reason) in zip(warnings, refused.items(), strict=True):
        assert "Reload" in line and path in line and reason in line


def test_refused_reloads_warn_at_most_once_a_minute_per_status_with_the_count_held_back(served, caplog, monkeypatch):
    """Each refused Reload was a WARNING: a token holder, or a broken deploy script in a loop, could
    flood the log. Like the refusals at a limit, each status warns at most once a minute, and the
    next warning counts the refusals held back; every refusal is still counted for monitoring."""
    _, client, tmp = served
    now = [1000.0]
    monkeypatch.setattr(metrics_module, "time", SimpleNamespace(monotonic=lambda: now[0]))

    def refused(path: str) -> None:
        with pytest.raises(ServiceError):
            client.reload(path)

    with caplog.at_level("WARNING", logger="flowrl.serve"):
        for _ in range(5):
            refused("/etc/passwd")
            now[0] += 10
        refused("missing.onnx")  # another status: warned of on its own
        now[0] += 30  # 80 s after the first warning
        refused("/etc/shadow")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 3, warnings
    caller = re.compile(r" from ipv4:127\.0\.0\.1:\d+\b")
    warnings = [caller.sub(" from CALLER", line) for line in warnings]
    assert warnings[0].startswith("Reload of '/etc/passwd' from CALLER refused (PERMISSION_DENIED): ")
    assert warnings[0].endswith("put the new model there")
    assert warnings[1].startswith("Reload of 'missing.onnx' from CALLER refused (FAILED_PRECONDITION): ")
    assert warnings[2].startswith("Reload of '/etc/shadow' from CALLER refused (PERMISSION_DENIED): ")
    assert warnings[2].endswith(
        "put the new model there (and 4 more Reloads refused PERMISSION_DENIED in the last 80 s, not logged; "
        "the latest, of '/etc/passwd' from CALLER: reload refused: '/etc/passwd' is outside "
        f"{tmp.resolve()}, the served file's directory; put the new model there)"
    )
    assert client.stats().reload_failures == 7


def test_a_link_inside_the_allowed_area_cannot_reload_a_checkpoint_outside_it(tmp_path):
    exporter = FakeExporter()
    run, secret = tmp_path / "run", save_step(tmp_path / "secret", 7)
    save_step(run, 1)
    (run / "evil").mkdir()
    (run / "evil" / "last").symlink_to(secret)  # resolve_checkpoint follows a directory's 'last'
    server = PolicyServer(ServeConfig(str(run), port=0, grace_s=0), export_checkpoint=exporter).start()
    with server, PolicyClient(server.address) as client, pytest.raises(ServiceError) as info:
        client.reload(str(run / "evil"))
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert secret.resolve() not in [c for c, _ in exporter.calls]


def test_a_refused_reload_tells_the_client_the_path_it_sent_not_where_its_links_lead(tmp_path, caplog):
    """A link in the served area leading outside it was refused with where it leads: a caller learnt
    the location of files outside what it may load. The client is told of the path it sent (and,
    for a relative one, where in the served area that is); the server's log also says where it leads."""
    exporter = FakeExporter()
    run, secret = tmp_path / "run", save_step(tmp_path / "secret", 7)
    save_step(run, 1)
    (run / "evil").mkdir()
    (run / "evil" / "last").symlink_to(secret)
    (run / "away.onnx").symlink_to(write_policy(tmp_path / "secret" / "away.onnx"))
    server = PolicyServer(ServeConfig(str(run), port=0, grace_s=0), export_checkpoint=exporter).start()
    refusals = []
    with server, PolicyClient(server.address) as client, caplog.at_level("WARNING", logger="flowrl.serve"):
        for path in ("evil", str(run / "evil"), "away.onnx"):
            with pytest.raises(ServiceError) as info:
                client.reload(path)
            assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
            refusals.append(info.value.details)
    for details in refusals:
        assert "secret" not in details and f"is outside {run.resolve()}, the served run directory" in details
    assert refusals[0].startswith(f"reload refused: 'evil' ({run / 'evil'}) is outside")
    assert refusals[1].startswith(f"reload refused: '{run / 'evil'}' is outside")
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(logged) == 1 and f"leads to {secret.resolve()}" in logged[0]  # once a minute: the first


@pytest.mark.parametrize("link", ["last", "checkpoints/last"])
def test_a_dangling_link_leading_outside_the_served_area_is_refused_without_saying_where(tmp_path, caplog, link):
    """A dangling ``last`` leading outside reached resolve_checkpoint before the area check, and its
    "points at <target>, which is missing" went to the client: where the link leads stays in the log."""
    exporter = FakeExporter()
    run = tmp_path / "run"
    save_step(run, 1)
    (run / "evil" / link).parent.mkdir(parents=True, exist_ok=True)
    (run / "evil" / link).symlink_to(tmp_path / "secret-place" / "step_5")
    server = PolicyServer(ServeConfig(str(run), port=0, grace_s=0), export_checkpoint=exporter).start()
    with (
        server,
        PolicyClient(server.address) as client,
        caplog.at_level("WARNING", logger="flowrl.serve"),
        pytest.raises(ServiceError) as info,
    ):
        client.reload("evil")
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "secret-place" not in info.value.details
    assert info.value.details.startswith(f"reload refused: 'evil' ({run / 'evil'}) is outside {run.resolve()}")
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(logged) == 1 and f"leads to {(tmp_path / 'secret-place' / 'step_5').resolve()}" in logged[0]
    assert len(exporter.calls) == 1  # the served checkpoint's, at the start


def test_a_served_link_allows_files_beside_the_link_not_beside_its_target(tmp_path):
    (tmp_path / "deploy").mkdir()
    (tmp_path / "models").mkdir()
    current = tmp_path / "deploy" / "current.onnx"
    current.symlink_to(write_policy(tmp_path / "models" / "v1.onnx"))
    beside_link, beside_target = (write_policy(tmp_path / d / "v2.onnx", scale=2.0) for d in ("deploy", "models"))
    server = PolicyServer(ServeConfig(str(current), port=0, grace_s=0)).start()
    with server, PolicyClient(server.address) as client:
        assert client.reload(str(beside_link))[0].startswith("v2-")
        with pytest.raises(ServiceError) as info:
            client.reload(str(beside_target))
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_a_reloaded_checkpoint_is_exported_at_the_n_served_now(tmp_path):
    exporter = FakeExporter()
    first = write_policy(tmp_path / "policy.onnx", flow_steps=10)
    server = PolicyServer(ServeConfig(str(first), port=0, grace_s=0), export_checkpoint=exporter).start()
    with server, PolicyClient(server.address) as client:
        client.reload(str(write_policy(tmp_path / "one_step.onnx", flow_steps=1)))  # same contract hash
        client.reload(str(save_step(tmp_path / "run", 2)))
        assert client.spec().flow_steps == 1
    assert [steps for _, steps in exporter.calls] == [1]


def test_steps_stays_the_n_of_checkpoints_reloaded_after_an_onnx_file_of_another_n(tmp_path):
    """An .onnx file reloaded in between serves its own N; --steps still names the N of checkpoints."""
    exporter = FakeExporter()
    run = tmp_path / "run"
    save_step(run, 1)
    config = ServeConfig(str(run), port=0, steps=1, grace_s=0)
    with PolicyServer(config, export_checkpoint=exporter).start() as server, PolicyClient(server.address) as client:
        client.reload(str(write_policy(run / "three_steps.onnx", flow_steps=3)))
        assert client.spec().flow_steps == 3
        client.reload(str(save_step(run, 2)))
        assert client.spec().flow_steps == 1
    assert [steps for _, steps in exporter.calls] == [1, 1]


def _watch_scripted_stamps(tmp_path, monkeypatch, stamps: list, polls_wanted: int) -> list:
    """Run a FileWatcher whose polls see ``stamps`` in turn (then the last one for good) until it
    has polled ``polls_wanted`` times; returns, for each load, the stamps seen up to it."""
    polls: list = []

    def stamp(_path):
        polls.append(stamps[min(len(polls), len(stamps) - 1)])
        return polls[-1]

    monkeypatch.setattr(watch, "served_stamp", stamp)
    loads: list = []
    watcher = watch.FileWatcher(tmp_path / "policy.onnx", lambda: loads.append(list(polls)), interval_s=0.005)
    watcher.start()
    try:
        assert wait_for(lambda: len(polls) >= polls_wanted)
    finally:
        watcher.stop(5)
    return loads


def test_watch_reloads_only_once_the_file_has_stayed_the_same_for_one_interval(tmp_path, monkeypatch):
    """A file still being copied in (its stamp changing at every poll) is not loaded half-written."""
    served, copying, copied = "v1", ("v2", 1000), ("v2", 2000)
    loads = _watch_scripted_stamps(tmp_path, monkeypatch, [served, copying, copied], 10)
    assert loads == [[served, copying, copied, copied]]  # once, at the second poll that saw it unchanged


def test_reload_of_a_missing_file_outside_the_model_directory_is_refused_not_looked_up(served, tmp_path_factory):
    """'..' and links are resolved before the existence check: Reload must not tell a caller
    which files exist outside the served directory."""
    _, client, tmp = served
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (tmp / "link").symlink_to(elsewhere, target_is_directory=True)
    for path in (tmp / ".." / elsewhere.name / "missing.onnx", tmp / "link" / "missing.onnx"):
        with pytest.raises(ServiceError) as info:
            client.reload(str(path))
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED, info.value.details
        assert "outside" in info.value.details and "not found" not in info.value.details


def test_watch_does_not_reload_while_the_served_file_is_missing(tmp_path, monkeypatch):
    """A file removed before its new copy lands (rm, then cp) is not a model to load: only the copy is."""
    served, replaced = "v1", "v2"
    loads = _watch_scripted_stamps(tmp_path, monkeypatch, [served, None, None, None, None, replaced], 12)
    assert [seen[-1] for seen in loads] == [replaced]


def test_a_reload_path_cannot_write_lines_or_escapes_into_the_log(served, caplog, monkeypatch):
    """The requested path used to be logged as sent: a newline in it forged a log line of its own,
    an ANSI escape drove the operator's terminal, a NUL reached the log."""
    _, client, tmp = served
    monkeypatch.setattr(metrics_module, "LIMIT_WARNING_S", 0.0)  # every refusal's warning is due
    forged = "2026-11-26 14:31:00,000 INFO flowrl.serve: reloaded models/served.onnx: v1 -> v9 (forged)"
    paths = [f"evil\n{forged}", "evil\x1b[2J\x1b[31mred", "evil\x00nul", "evil\u2028line"]
    with caplog.at_level("INFO", logger="flowrl.serve"):
        for path in paths:
            with pytest.raises(ServiceError):
                client.reload(path)
        named = write_policy(tmp / "new\nINFO flowrl.serve: forged.onnx", scale=2.0)  # a file beside the served one
        client.reload(named.name)
    messages = [r.getMessage() for r in caplog.records if r.name == "flowrl.serve"]
    assert len(messages) == len(paths) + 1
    for message in messages:
        assert message.isprintable(), message  # no newline, escape, NUL or line separator
    assert "Reload of 'evil\\n2026-11-26" in messages[0] and "\\x1b[2J" in messages[1] and "\\x00" in messages[2]
    assert messages[-1].startswith("reloaded ") and "new\\nINFO flowrl.serve: forged.onnx" in messages[-1]


def test_refused_reloads_are_counted_for_monitoring(served, caplog, tmp_path_factory):
    """A refused --watch reload was only logged and flowrl_reloads_total counts successes only:
    monitoring could not see that the deployed model never took over."""
    server, client, tmp = served
    assert "\nflowrl_reload_failures_total 0\n" in server.servicer.metrics.exposition()
    broken = tmp / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    for path in (str(tmp_path_factory.mktemp("elsewhere") / "policy.onnx"), str(broken)):  # refused before, at load
        with pytest.raises(ServiceError):
            client.reload(path)
    with caplog.at_level("WARNING", logger="flowrl.serve"):
        deploy(broken, tmp / "policy.onnx")
        assert wait_for(lambda: any("(--watch) refused" in r.getMessage() for r in caplog.records))
    assert client.stats().reload_failures == 3 and client.stats().reloads == 0
    exposition = server.servicer.metrics.exposition()
    assert "\nflowrl_reload_failures_total 3\n" in exposition and "\nflowrl_reloads_total 0\n" in exposition
    deploy(write_policy(tmp / "staged.onnx", scale=2.0), tmp / "policy.onnx")
    assert wait_for(lambda: client.stats().reloads == 1)
    assert client.stats().reload_failures == 3


def test_a_file_missing_for_one_poll_only_is_a_replacement_not_warned_about(tmp_path, monkeypatch, caplog):
    """rm then cp seen between them by one poll: the copy is loaded and nothing is said to be unreadable."""
    served, replaced = "v1", "v2"
    with caplog.at_level("INFO", logger="flowrl.serve"):
        loads = _watch_scripted_stamps(tmp_path, monkeypatch, [served, None, replaced, replaced], 8)
    assert [seen[-1] for seen in loads] == [replaced]
    assert not [r for r in caplog.records if "cannot be read" in r.getMessage()]


def test_watch_warns_once_when_the_served_file_disappears_and_says_when_it_is_back(served, caplog, monkeypatch):
    """A deleted file logged nothing: the server kept serving a model whose file was gone, unseen."""
    _, client, tmp = served
    version = client.spec().model_version
    polls = []

    def counted(path):
        polls.append(path)
        return stamp(path)

    stamp = watch.served_stamp
    monkeypatch.setattr(watch, "served_stamp", counted)
    target = tmp / "policy.onnx"
    target.rename(tmp / "away.onnx")
    with caplog.at_level("INFO", logger="flowrl.serve"):
        assert wait_for(lambda: any("cannot be read" in r.getMessage() for r in caplog.records))
        after = len(polls)
        assert wait_for(lambda: len(polls) >= after + 10)  # ten more polls of the missing file
        missing = [r for r in caplog.records if "cannot be read" in r.getMessage()]
        assert len(missing) == 1 and missing[0].levelname == "WARNING" and str(target) in missing[0].getMessage()
        assert client.spec().model_version == version  # still served
        deploy(write_policy(tmp / "staged.onnx", scale=2.0), target)
        assert wait_for(lambda: client.spec().model_version.startswith("v2-"))
    back = [r for r in caplog.records if "can be read again" in r.getMessage()]
    assert len(back) == 1 and back[0].levelname == "INFO"


def test_watch_sees_a_copy_whose_modification_time_was_put_back(served):
    """`cp new policy.onnx && touch -r old policy.onnx`: the same inode, size and mtime; only the
    change time (ctime), which no one can set, tells that the content changed."""
    _, client, tmp = served
    target = tmp / "policy.onnx"
    before = target.stat()
    new = write_policy(tmp / "staged.onnx", scale=2.0)
    assert new.stat().st_size == before.st_size
    shutil.copyfile(new, target)  # in place: the same inode
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = target.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert wait_for(lambda: client.spec().model_version.startswith("v2-"))


def test_touching_the_served_file_reloads_nothing(served, caplog):
    """`touch policy.onnx` reloaded the same bytes as a new version (v1-95294704e8 -> v2-95294704e8)."""
    server, client, tmp = served
    version = client.spec().model_version
    with caplog.at_level("INFO", logger="flowrl.serve"):
        os.utime(tmp / "policy.onnx")
        assert wait_for(lambda: any("holds the model served now" in r.getMessage() for r in caplog.records))
    assert client.reload() == (version, version)  # nor does a Reload of the same bytes
    assert client.spec().model_version == version
    assert server.servicer.metrics.reloads == 0 and server.servicer.metrics.reload_failures == 0


def test_a_reload_of_the_served_bytes_builds_no_session(served, monkeypatch):
    """The unchanged file is recognised by its digest before onnxruntime builds a session for it."""
    _, client, _ = served
    version = client.spec().model_version
    built = []
    monkeypatch.setattr(serve_model, "OnnxPolicy", lambda *args, **kwargs: built.append(args))
    assert client.reload() == (version, version)
    assert built == []
