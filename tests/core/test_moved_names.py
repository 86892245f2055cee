"""Names that v0.1.0 user code imported from a module that was later split keep importing from their
old home, with a DeprecationWarning naming the new one (flowrl_deploy.runtime, train.checkpointing)."""

from __future__ import annotations

import importlib
import warnings

import pytest

from flowrl_deploy.moved import moved_names
from tests.helpers.extras_needed import needs_extras

RUNTIME_MOVED = {
    "import_onnxruntime": "flowrl_deploy.ort",
    "onnxruntime_severity": "flowrl_deploy.ort",
    "CUDA_DRIVER": "flowrl_deploy.ort",
    "cuda_device_present": "flowrl_deploy.ort",
    "is_onnx_path": "flowrl_deploy.onnxfile",
    "MAX_POLICY_BYTES": "flowrl_deploy.onnxfile",
    "read_policy_file": "flowrl_deploy.onnxfile",
    "check_policy_file": "flowrl_deploy.onnxfile",
    "check_graph_matches_contract": "flowrl_deploy.policy",
    "one_observation": "flowrl_deploy.policy",
}
CHECKPOINTING_MOVED = {
    "RunLock": "flowrl_deploy.train.run_lock",
    "RunCheckpoints": "flowrl_deploy.train.retention",
    "resume_config": "flowrl_deploy.train.resume",
    "holds_checkpoints": "flowrl_deploy.train.resume",
    "check_new_run_dir": "flowrl_deploy.train.resume",
    "run_to_resume": "flowrl_deploy.train.resume",
    "load_actor": "flowrl_deploy.train.actor",
    "actor_act_fn": "flowrl_deploy.train.actor",
}


def _moved_cases():
    for name, home in RUNTIME_MOVED.items():
        yield pytest.param("flowrl_deploy.runtime", name, home, id=f"runtime.{name}")
    for name, home in CHECKPOINTING_MOVED.items():
        yield pytest.param(
            "flowrl_deploy.train.checkpointing", name, home, id=f"checkpointing.{name}", marks=needs_extras("train")
        )


@pytest.mark.parametrize(("old", "name", "home"), list(_moved_cases()))
def test_a_name_of_v0_1_0_imports_from_its_old_module_with_a_warning_naming_its_new_one(old, name, home):
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=rf"^{old}\.{name} moved to {home}: import it from there$"):
        moved = getattr(module, name)
    assert moved is getattr(importlib.import_module(home), name)


def test_from_import_of_a_moved_name_works_and_warns(tmp_path):
    (tmp_path / "policy.onnx").write_bytes(b"")
    with pytest.warns(DeprecationWarning, match="flowrl_deploy.runtime.is_onnx_path moved to flowrl_deploy.onnxfile"):
        from flowrl_deploy.runtime import is_onnx_path
    assert is_onnx_path(tmp_path / "policy.onnx")
    assert not is_onnx_path(tmp_path / "missing.onnx")


def test_the_documented_runtime_names_import_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from flowrl_deploy.runtime import OnnxPolicy, PolicyContract, SeededPolicy, default_providers, make_session
    assert all((OnnxPolicy, PolicyContract, SeededPolicy, default_providers, make_session))


def test_an_unknown_name_is_an_attribute_error_naming_the_old_module_without_a_warning():
    runtime = importlib.import_module("flowrl_deploy.runtime")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match=r"^module 'flowrl_deploy.runtime' has no attribute 'nope'$"):
            runtime.nope  # noqa: B018


def test_a_module_getattr_gives_a_moved_name_from_its_new_home_and_refuses_others():
    getattr_ = moved_names("old.place", {"dumps": "json"})
    with pytest.warns(DeprecationWarning, match=r"^old\.place\.dumps moved to json: import it from there$"):
        assert getattr_("dumps") is importlib.import_module("json").dumps
    with pytest.raises(AttributeError, match=r"^module 'old\.place' has no attribute 'loads'$"):
        getattr_("loads")
