"""Names that v0.1.0 user code imported from a module that was later split keep importing from their
old home, with a DeprecationWarning naming the new one (flowrl_deploy.runtime, train.checkpointing)."""

from __future__ import annotations

import importlib
import warnings

import pytest
from extras_needed import missing_extras_reason, needs_extras

from flowrl_deploy.moved import moved_names

RUNTIME = "flowrl_deploy.runtime"
CHECKPOINTING = "flowrl_deploy.train.checkpointing"
V0_1_0_NAMES = {
    RUNTIME: {
        "import_onnxruntime", "onnxruntime_severity", "is_onnx_path", "MAX_POLICY_BYTES", "read_policy_file",
        "check_policy_file", "CUDA_DRIVER", "cuda_device_present", "default_providers", "make_session",
        "check_graph_matches_contract", "OnnxPolicy", "one_observation", "SeededPolicy", "Tensor",
    },
    CHECKPOINTING: {
        "RunCheckpoints", "RunLock", "resume_config", "holds_checkpoints", "check_new_run_dir", "run_to_resume",
        "load_actor", "actor_act_fn",
    },
}  # fmt: skip
"""The public names these modules held in v0.1.0 (``git show v0.1.0:<file>``), but checkpointing's
``missing_config_fields``, which is gone."""


def _moved_cases():
    from flowrl_deploy import runtime

    for name, home in runtime.MOVED.items():
        yield pytest.param(RUNTIME, name, home, id=f"runtime.{name}")
    if missing_extras_reason("train") is None:
        from flowrl_deploy.train import checkpointing

        for name, home in checkpointing.MOVED.items():
            yield pytest.param(CHECKPOINTING, name, home, id=f"checkpointing.{name}")


@pytest.mark.parametrize("old", [RUNTIME, pytest.param(CHECKPOINTING, marks=needs_extras("train"))])
def test_every_public_name_of_v0_1_0_still_imports_from_its_old_module(old):
    module = importlib.import_module(old)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert all(hasattr(module, name) for name in V0_1_0_NAMES[old])


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
