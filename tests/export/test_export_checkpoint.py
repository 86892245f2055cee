"""export_checkpoint: contract and provenance, verification, clear errors for bad checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import replace
from typing import Any

import numpy as np
import onnx
import pytest
from export_fixtures import SPEC, actor_tensors

from flowrl_deploy.checkpoint import save_checkpoint
from flowrl_deploy.errors import CheckpointError, FlowRLError
from flowrl_deploy.export import ExportConfig, export_checkpoint
from flowrl_deploy.export import graph as graph_module
from flowrl_deploy.export import verify as verify_module
from flowrl_deploy.export.verify import VerificationError, check_structure, verify_parity
from flowrl_deploy.policy import OnnxPolicy


def test_contract_and_provenance_round_trip(checkpoint, tmp_path):
    config = ExportConfig(steps=3, solver="euler", samples=10)
    report = export_checkpoint(checkpoint, tmp_path / "policy.onnx", config)
    policy = OnnxPolicy(report.path, providers=["CPUExecutionProvider"])
    contract = policy.contract
    assert policy.contract_hash == report.contract_hash == contract.hash()
    assert (contract.obs_dim, contract.act_dim) == (5, 3)
    assert contract.obs_layout == SPEC.obs_layout and contract.action_names == SPEC.action_names
    assert contract.action_low == SPEC.action_low and contract.action_high == SPEC.action_high
    assert contract.action_rescaled and contract.obs_normalization == "none"
    assert (contract.flow_steps, contract.solver, contract.env_id) == (3, "euler", "dmc:test-task")
    assert contract.control_period_s == 0.02 and not contract.deterministic
    assert "clamp(noise, -1, 1)" in contract.noise_convention
    model_bytes = (checkpoint / "model.safetensors").read_bytes()
    assert policy.provenance["source_sha256"] == hashlib.sha256(model_bytes).hexdigest()
    assert policy.provenance["export_config"]["steps"] == 3
    assert policy.provenance["opset"] == 18 and policy.provenance["dtype"] == "fp32"
    assert policy.provenance["verification"]["passed"]
    assert {"torch", "onnx", "flowrl-deploy"} <= policy.provenance["versions"].keys()
    assert report.sha256 == hashlib.sha256(report.path.read_bytes()).hexdigest()
    assert onnx.load(report.path).opset_import[0].version == 18


def test_without_steps_the_export_samples_with_the_checkpoints_own_n(tmp_path):
    three_step = save_checkpoint(tmp_path / "step_1", spec=replace(SPEC, flow_steps=3), actor=actor_tensors())
    report = export_checkpoint(three_step, tmp_path / "policy.onnx", ExportConfig(samples=10))
    assert report.contract.flow_steps == 3
    assert OnnxPolicy(report.path, providers=["CPUExecutionProvider"]).contract.flow_steps == 3


def test_a_sweep_names_each_file_after_its_n_with_an_onnx_suffix(tmp_path):
    from flowrl_deploy.export.sweep import sweep_paths

    assert sweep_paths(tmp_path / "policy.onnx", [4]) == [tmp_path / "policy.onnx"]
    assert sweep_paths(tmp_path / "policy.onnx", [1, 10]) == [tmp_path / "policy.n1.onnx", tmp_path / "policy.n10.onnx"]
    assert sweep_paths(tmp_path / "policy", [1, 10]) == [tmp_path / "policy.n1.onnx", tmp_path / "policy.n10.onnx"]


def test_the_onnx_file_gets_the_permissions_of_the_umask(checkpoint, tmp_path):
    old = os.umask(0o022)
    try:
        report = export_checkpoint(checkpoint, tmp_path / "policy.onnx", ExportConfig(steps=1, samples=10))
    finally:
        os.umask(old)
    assert report.path.stat().st_mode & 0o777 == 0o644  # readable by a server running as another user
    for mode in (0o600, 0o644):  # an overwrite keeps the file's own permissions
        report.path.chmod(mode)
        export_checkpoint(checkpoint, report.path, ExportConfig(steps=1, samples=10))
        assert report.path.stat().st_mode & 0o777 == mode


def test_solver_defaults_to_the_checkpoint_and_steps_do_not_change_the_hash(checkpoint, tmp_path):
    ten = export_checkpoint(checkpoint, tmp_path / "a.onnx", ExportConfig(steps=10, samples=5))
    two = export_checkpoint(checkpoint, tmp_path / "b.onnx", ExportConfig(steps=2, samples=5))
    assert ten.contract.solver == SPEC.solver
    assert ten.contract_hash == two.contract_hash
    deterministic = export_checkpoint(
        checkpoint, tmp_path / "c.onnx", ExportConfig(steps=10, deterministic=True, samples=5)
    )
    assert deterministic.contract_hash != ten.contract_hash
    assert deterministic.contract.input_names == ("obs",)


def test_report_covers_every_batch_size_and_prints_errors(checkpoint, tmp_path):
    report = export_checkpoint(checkpoint, tmp_path / "p.onnx", ExportConfig(steps=10, samples=100))
    assert report.parity.batch_sizes == (1, 2, 7, 64)
    assert report.parity.pairs_per_batch_size == (100, 100, 105, 128)  # whole batches: at least 100 each
    assert report.parity.max_abs_error_action < 1e-5 and report.parity.bit_identical_repeat
    assert "batch sizes 1, 2, 7, 64 with 100, 100, 105, 128 pairs" in report.summary()
    assert "max |Δaction|" in report.summary() and "PASSED" in report.summary()


def test_fixed_batch_is_verified_at_that_size(checkpoint, tmp_path):
    report = export_checkpoint(checkpoint, tmp_path / "p.onnx", ExportConfig(steps=10, batch=5, samples=10))
    assert (report.parity.batch_sizes, report.parity.pairs_per_batch_size) == ((5,), (10,))
    assert export_checkpoint(
        checkpoint, tmp_path / "q.onnx", ExportConfig(steps=10, batch=64, samples=100)
    ).parity.pairs_per_batch_size == (128,)
    dims = onnx.load(report.path).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [5, SPEC.obs_dim]


def test_wrong_graph_fails_verification_and_writes_nothing(checkpoint, tmp_path, monkeypatch):
    build = graph_module.build_policy_graph

    def off_by_a_little(weights, *args, **kwargs):
        return build(replace(weights, b_out=weights.b_out + 1e-3), *args, **kwargs)

    monkeypatch.setattr(graph_module, "build_policy_graph", off_by_a_little)
    out = tmp_path / "policy.onnx"
    with pytest.raises(VerificationError, match="does not match the torch sampler"):
        export_checkpoint(checkpoint, out, ExportConfig(steps=10, samples=5))
    assert not out.exists()


class DriftingSession:
    """An onnxruntime session whose second run returns the action one ulp higher."""

    def __init__(self, session: Any) -> None:
        self._session, self._runs = session, 0

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = self._session.run(output_names, feeds)
        self._runs += 1
        if self._runs == 2:
            outputs[0] = np.nextafter(outputs[0], np.float32(np.inf))
        return outputs


def test_a_repeat_that_differs_by_one_ulp_fails_verification_and_writes_nothing(checkpoint, tmp_path, monkeypatch):
    """The repeat is the first input run again, well within parity's tolerance: only bit-equality sees it."""
    make_session = verify_module.make_session
    monkeypatch.setattr(verify_module, "make_session", lambda *a, **k: DriftingSession(make_session(*a, **k)))
    out = tmp_path / "policy.onnx"
    with pytest.raises(VerificationError, match=r"different actions for the same input: .*repeat bit-identical: NO"):
        export_checkpoint(checkpoint, out, ExportConfig(steps=2, samples=5))
    assert not out.exists()


def test_pre_tanh_is_checked_even_where_tanh_saturates():
    weights = graph_module.VelocityWeights.from_actor(actor_tensors(), SPEC)
    saturated = replace(weights, b_out=weights.b_out + 50.0)
    model = graph_module.build_policy_graph(saturated, SPEC, steps=2, solver="midpoint")
    exact = {**actor_tensors(), "velocity.net.6.bias": actor_tensors()["velocity.net.6.bias"] + 50.0}
    verify_parity(model, exact, SPEC, steps=2, solver="midpoint", deterministic=False, batch=None, samples=5)
    bumped = {**exact, "velocity.net.6.bias": exact["velocity.net.6.bias"] + 1e-2}
    # only pre-tanh differs: tanh is flat at 50
    with pytest.raises(VerificationError, match=r"max \|Δaction\| = 0 × half-range \(0 absolute\),"):
        verify_parity(model, bumped, SPEC, steps=2, solver="midpoint", deterministic=False, batch=None, samples=5)


def test_fp32_parity_allows_one_float32_step_of_a_large_action():
    """The fp32 action tolerance is 1e-5 plus 1e-4 of the action: with bounds [999, 1001], actions
    one float32 step (6.1e-5) off, the spacing of floats near 1000, pass."""
    from onnx import numpy_helper

    spec = replace(SPEC, action_low=(999.0,) * 3, action_high=(1001.0,) * 3)
    actor = actor_tensors(spec)
    model = graph_module.build_policy_graph(
        graph_module.VelocityWeights.from_actor(actor, spec), spec, steps=1, solver="euler"
    )
    bias = next(t for t in model.graph.initializer if t.name == "action.bias")
    bias.CopyFrom(numpy_helper.from_array(np.nextafter(numpy_helper.to_array(bias), np.float32(np.inf)), bias.name))
    report = verify_parity(model, actor, spec, steps=1, solver="euler", deterministic=False, batch=None, samples=5)
    assert report.passed and report.max_abs_error_action > verify_module.FP32_ATOL


@pytest.mark.parametrize("bound", [100.0, 1000.0])
@pytest.mark.parametrize("weights_seed", [0, 1, 2])
def test_a_correct_graph_with_large_action_bounds_passes_verification(tmp_path, bound, weights_seed):
    """Raw torque limits of ±100: float32 rounding of tanh (about 1e-7) times the half-range put a
    correct graph's actions near 0 beyond an absolute 1e-5, and the export was refused; the action's
    atol now counts in half-ranges."""
    spec = replace(SPEC, action_low=(-bound,) * 3, action_high=(bound,) * 3)
    checkpoint = save_checkpoint(tmp_path / "step_1", spec=spec, actor=actor_tensors(spec, seed=weights_seed))
    report = export_checkpoint(checkpoint, tmp_path / "policy.onnx", ExportConfig(steps=1, solver="euler"))
    assert report.parity.passed and report.parity.max_abs_error_action <= verify_module.FP32_ATOL * bound


def test_invalid_graph_fails_the_structural_check():
    model = graph_module.build_policy_graph(
        graph_module.VelocityWeights.from_actor(actor_tensors(), SPEC), SPEC, steps=1, solver="euler"
    )
    model.graph.node[0].input[0] = "no_such_tensor"
    with pytest.raises(VerificationError, match="not valid ONNX"):
        check_structure(model)


def test_a_graph_with_control_flow_fails_the_structural_check():
    """The sampler must be unrolled: an If (or Loop) node is refused even in a valid graph."""
    from onnx import TensorProto, helper

    def branch(name: str, value: float) -> onnx.GraphProto:
        constant = helper.make_node("Constant", [], [f"{name}_out"], value_float=value)
        return helper.make_graph(
            [constant], name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [])]
        )

    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", 1.0), else_branch=branch("else", 0.0))],
        "branching",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(VerificationError, match=r"holds control flow \(If\); it must be unrolled"):
        check_structure(model)


def test_an_existing_file_inside_a_checkpoint_outside_any_run_is_no_export_target(tmp_path):
    """A checkpoint outside a run is its own run: none of its files (even nested) is replaced."""
    from flowrl_deploy.export.exporter import check_run_output

    checkpoint = save_checkpoint(tmp_path / "step_1", spec=SPEC, actor=actor_tensors())
    (checkpoint / "notes").mkdir()
    (checkpoint / "notes" / "old.onnx").write_bytes(b"earlier export")
    with pytest.raises(FlowRLError, match=r"notes/old.onnx of the run .*step_1 being exported"):
        check_run_output("--out", checkpoint / "notes" / "old.onnx", checkpoint)
    check_run_output("--out", tmp_path / "beside.onnx", checkpoint)  # outside it: fine


def test_an_out_that_is_a_directory_suggests_a_file_in_it(checkpoint, tmp_path):
    with pytest.raises(
        FlowRLError, match=f"out_path {re.escape(str(tmp_path))} is a directory; give a file path such as"
    ):
        export_checkpoint(checkpoint, tmp_path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        export_checkpoint(tmp_path / "nothing", tmp_path / "p.onnx")


def test_foreign_checkpoint(tmp_path):
    (tmp_path / "checkpoint.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a flowrl-deploy checkpoint"):
        export_checkpoint(tmp_path, tmp_path / "p.onnx")


def test_corrupt_weights(tmp_path):
    path = save_checkpoint(tmp_path / "ck", spec=SPEC, actor=actor_tensors())
    (path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        export_checkpoint(path, tmp_path / "p.onnx")


def test_weights_that_do_not_fit_the_spec(tmp_path):
    tensors = actor_tensors()
    tensors["velocity.net.3.weight"] = np.zeros((32, 16), np.float32)
    path = save_checkpoint(tmp_path / "ck", spec=SPEC, actor=tensors)
    with pytest.raises(CheckpointError, match=r"velocity\.net\.3\.weight has shape \(32, 16\)"):
        export_checkpoint(path, tmp_path / "p.onnx")
    extra = save_checkpoint(tmp_path / "ck2", spec=SPEC, actor={**actor_tensors(), "obs_norm.mean": np.zeros(5)})
    with pytest.raises(CheckpointError, match=r"do not match its spec: unknown tensors \[.obs_norm\.mean.\]"):
        export_checkpoint(extra, tmp_path / "p.onnx")


def test_bad_config_values():
    for kwargs in ({"steps": 0}, {"solver": "rk4"}, {"opset": 12}, {"batch": 0}, {"dtype": "int4"}):
        with pytest.raises(FlowRLError):
            ExportConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch": True}, "--batch must be 'dynamic' or an integer from 1 to 65536, got True"),  # not batch 1
        ({"batch": 2.0}, "--batch must be 'dynamic' or an integer from 1 to 65536, got 2.0"),
        ({"deterministic": "no"}, "ExportConfig.deterministic must be true or false, got 'no'"),  # not truthy
        ({"optimize": 0}, "ExportConfig.optimize must be true or false, got 0"),
        ({"verify": None}, "ExportConfig.verify must be true or false, got None"),
        ({"steps": 2.5}, "ExportConfig.steps must be an integer or None, got 2.5"),
        ({"steps": "10"}, "ExportConfig.steps must be an integer or None, got '10'"),
        ({"steps": True}, "ExportConfig.steps must be an integer or None, got True"),
        ({"solver": 1}, "ExportConfig.solver must be a string or None, got 1"),
        ({"opset": "18"}, "ExportConfig.opset must be an integer, got '18'"),
        ({"dtype": None}, "ExportConfig.dtype must be a string, got None"),
        ({"samples": 10.0}, "ExportConfig.samples must be an integer, got 10.0"),
        ({"seed": False}, "ExportConfig.seed must be an integer, got False"),
    ],
)
def test_config_values_of_the_wrong_type_are_named(kwargs, message):
    with pytest.raises(FlowRLError, match=f"^{re.escape(message)}$"):
        ExportConfig(**kwargs)


def test_config_fields_of_the_right_type_are_taken():
    config = ExportConfig(steps=None, solver=None, batch=3, deterministic=True, samples=1)
    assert (config.batch_dim, config.deterministic) == (3, True)
    assert ExportConfig(steps=7, solver="euler").steps == 7


def test_finite_weights_that_overflow_are_refused_naming_the_non_finite_actions(tmp_path):
    """Finite weights whose products overflow float32 made NaN actions, and the parity failure read
    'max |Δaction| = 0' (max(0.0, nan) is 0.0 in Python) without a word of NaN."""
    actor = actor_tensors()
    actor["velocity.net.0.weight"] = np.full_like(actor["velocity.net.0.weight"], 3e38)
    checkpoint = save_checkpoint(tmp_path / "step_1", spec=SPEC, actor=actor)
    with pytest.raises(VerificationError, match=r"NaN or infinite for \d+ of \d+ verification inputs") as info:
        export_checkpoint(checkpoint, tmp_path / "policy.onnx", ExportConfig(steps=1, samples=5))
    assert "= 0 ×" not in str(info.value)
    assert not (tmp_path / "policy.onnx").exists()
