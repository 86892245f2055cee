"""Names that v0.1.0 user code imported from a module that was later split keep importing from their
old home, with a DeprecationWarning naming the new one (flowrl_deploy.runtime, .session, .noise,
serve.metrics, train.checkpointing)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from extras_needed import missing_extras_reason, needs_extras

from flowrl_deploy.moved import moved_names

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = "flowrl_deploy.runtime"
SESSION = "flowrl_deploy.session"
NOISE = "flowrl_deploy.noise"
METRICS = "flowrl_deploy.serve.metrics"
CHECKPOINTING = "flowrl_deploy.train.checkpointing"
V0_1_0_NAMES = {
    RUNTIME: {
        "import_onnxruntime", "onnxruntime_severity", "is_onnx_path", "MAX_POLICY_BYTES", "read_policy_file",
        "check_policy_file", "CUDA_DRIVER", "cuda_device_present", "default_providers", "make_session",
        "check_graph_matches_contract", "OnnxPolicy", "one_observation", "SeededPolicy", "Tensor",
        # what it imported from the package's other modules, which user code reached through it
        "session_noise", "draw_noise", "Seed", "contract_from_metadata", "OBS_INPUT", "NOISE_INPUT",
        "PolicyContract", "read_checkpoint_link", "BEST", "LAST", "MODEL_FILE", "DOCUMENT_FILE",
        "check_thread_count", "FlowRLError", "SpecError",
    },
    SESSION: {
        "CallTiming", "ControlSession", "WatchdogError", "DEADLINE", "DISCONNECTED", "TRANSIENT", "FALLBACKS",
        "DEFAULT_MAX_TIMINGS", "DEFAULT_RESET_TIMEOUT_S", "PERIOD_MISMATCH", "SESSION_ARGUMENTS",
        "check_session_settings", "session_deadline", "log", "PolicyContract", "PolicyClient", "ServiceError",
        "FlowRLError", "TensorError", "Seed", "checked_seed", "checked_timeout", "as_float32", "check_finite",
        "decode", "MIN_HZ", "MAX_HZ", "MIN_CONTROL_PERIOD_S", "MAX_CONTROL_PERIOD_S",
    },
    NOISE: {"Seed", "Session", "checked_seed", "draw_noise", "run_seed_problem", "session_noise", "FlowRLError"},
    METRICS: {
        "Metrics", "Histogram", "BATCH_BUCKETS", "LATENCY_BUCKETS_S", "LIMIT_WARNING_S", "RECENT",
        "METRICS_CONNECTIONS", "log", "start_metrics_http", "METRICS_TIMEOUT_S",
    },
    CHECKPOINTING: {
        "RunCheckpoints", "RunLock", "resume_config", "holds_checkpoints", "check_new_run_dir", "run_to_resume",
        "load_actor", "actor_act_fn",
    },
}  # fmt: skip
"""The public names these modules held in 0.1.0 (``git show 67827a9:<file>``), but checkpointing's
``missing_config_fields``, which is gone, and the helpers session.py and noise.py imported for their
own use (``shown``, ``is_integer``, ``encode``, ``service_error`` …: each from its own module)."""
OLD_MODULES = {
    RUNTIME: "flowrl_deploy/runtime.py",
    SESSION: "flowrl_deploy/session.py",
    NOISE: "flowrl_deploy/noise.py",
}


def _moved_cases():
    for old in (RUNTIME, SESSION, NOISE, METRICS):
        for name, home in getattr(importlib.import_module(old), "MOVED", {}).items():
            yield pytest.param(old, name, home, id=f"{old.rsplit('.', 1)[1]}.{name}")
    if missing_extras_reason("train") is None:
        from flowrl_deploy.train import checkpointing

        for name, home in checkpointing.MOVED.items():
            yield pytest.param(CHECKPOINTING, name, home, id=f"checkpointing.{name}")


@pytest.mark.parametrize(
    "old", [RUNTIME, SESSION, NOISE, METRICS, pytest.param(CHECKPOINTING, marks=needs_extras("train"))]
)
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


def _typed_moved_names(path: Path) -> dict[str, str]:
    """The names ``path``'s ``if TYPE_CHECKING:`` blocks import as ``from M import X as X``, with M."""
    return {
        alias.name: node.module
        for block in ast.parse(path.read_text(encoding="utf-8")).body
        if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
        for node in block.body
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
        if alias.asname == alias.name
    }


@pytest.mark.parametrize("old", [RUNTIME, SESSION])
def test_a_type_checker_reads_each_moved_name_with_its_type(old):
    """A moved name not imported under TYPE_CHECKING is ``object`` to mypy (the ``__getattr__``'s type)."""
    typed = _typed_moved_names(ROOT / OLD_MODULES[old])
    moved = getattr(importlib.import_module(old), "MOVED", {})
    assert {name: typed.get(name) for name in moved} == moved


def test_the_servers_names_moved_out_of_core_load_no_server_until_asked():
    """``flowrl_deploy.noise.Session`` is the server's (``serve.sessions``): core's noise module names it
    only in ``MOVED``, so importing core loads no server module, and a type checker of a robot's code is
    not led into serve/."""
    code = (
        "import sys, warnings; import flowrl_deploy.noise as noise, flowrl_deploy.session, flowrl_deploy.runtime; "
        "assert not [m for m in sys.modules if m.startswith('flowrl_deploy.serve')], 'imported early'; "
        "warnings.simplefilter('ignore'); noise.Session; assert 'flowrl_deploy.serve.sessions' in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Session" not in _typed_moved_names(ROOT / OLD_MODULES[NOISE])
