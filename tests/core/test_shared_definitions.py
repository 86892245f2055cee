"""Each helper, constant and choice list the stages share has one definition, in the module that owns
it, and is imported from there: a second copy drifts (a word, a file name, a solver added to one list).
Checked on the source's syntax trees, so no stage (torch) is imported."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("flowrl_deploy", "train", "export", "serve")
SOURCE_DIRS = (*PACKAGES, "bench", "scripts")


def _sources() -> list[Path]:
    return sorted(
        path
        for folder in SOURCE_DIRS
        for path in (ROOT / folder).rglob("*.py")
        if "proto" not in path.relative_to(ROOT).parts and ".venv" not in path.parts
    )


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def test_no_module_imports_a_private_name_of_another():
    """A name with a leading underscore is its module's own: one another module needs is public."""
    offenders = [
        f"{path.relative_to(ROOT)}:{node.lineno} {alias.name}"
        for path in _sources()
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]
    assert offenders == []


def _defined_at(name: str) -> list[str]:
    """The source files whose top level defines ``name`` (a function, a class or an assignment)."""
    found = []
    for path in _sources():
        for node in _tree(path).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
                found.append(str(path.relative_to(ROOT)))
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for target in targets for t in ast.walk(target) if isinstance(t, ast.Name)]
                if name in names:
                    found.append(str(path.relative_to(ROOT)))
    return found


def test_counted_is_defined_once_in_core():
    """'1 step', '2 batches': export and the CLI word their counts with core's one helper."""
    assert _defined_at("counted") == ["flowrl_deploy/errors.py"]


def test_uncounted_refusals_are_defined_once_beside_the_wire_format():
    """The limits whose GetStats ``refused`` means nothing (0 always): the server's metrics leave them
    out and `flowrl stats` shows '-', from one set."""
    assert _defined_at("UNCOUNTED_REFUSALS") == ["flowrl_deploy/codec.py"]


def test_the_solver_names_are_listed_only_in_spec():
    """The CLI's --solver choices, the ODE's check and the configs take ``spec.SOLVERS``: no literal list,
    set or Enum elsewhere holds the names (a solver added to SOLVERS would be refused or missing there)."""
    names = {"midpoint", "euler"}
    lists = []
    for path in _sources():
        if path.parts[len(ROOT.parts)] not in (*PACKAGES, "bench") or path == ROOT / "flowrl_deploy" / "spec.py":
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.ClassDef)):
                held = {c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
                if names <= held:
                    lists.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert lists == []


def test_core_takes_the_sets_of_a_runs_files_from_the_checkpoint_format():
    """Which of a run's and a checkpoint's files are text or JSON (a report never replaces them; an ONNX
    reader given one says whose file it is) is said once, beside ``RUN_OUTPUTS``."""
    lists = []
    for path in _sources():
        if path.parts[len(ROOT.parts)] != "flowrl_deploy" or path == ROOT / "flowrl_deploy" / "checkpoint.py":
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                held = {n.id for n in node.elts if isinstance(n, ast.Name)}
                if {"RUN_CONFIG_FILE", "METRICS_JSONL"} <= held:
                    lists.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert lists == []
    assert _defined_at("RUN_JSON_FILES") == _defined_at("RUN_TEXT_FILES") == ["flowrl_deploy/checkpoint.py"]


def _imports(path: Path) -> set[str]:
    return {node.module for node in ast.walk(_tree(path)) if isinstance(node, ast.ImportFrom) and node.module} | {
        alias.name for node in ast.walk(_tree(path)) if isinstance(node, ast.Import) for alias in node.names
    }


def _is_type_checking_block(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _run_time_imports(path: Path) -> set[str]:
    """The modules ``path`` imports when it runs: those under ``if TYPE_CHECKING:`` left out."""
    body = [node for node in _tree(path).body if not _is_type_checking_block(node)]
    return {node.module for top in body for node in ast.walk(top) if isinstance(node, ast.ImportFrom) and node.module}


def _run_time_body(path: Path) -> list[ast.stmt]:
    """``path``'s top-level statements as they run: an ``if TYPE_CHECKING:`` block left out, an ``if not
    TYPE_CHECKING:`` block's statements (a moved-name ``__getattr__`` hidden from type checkers) taken in."""
    body: list[ast.stmt] = []
    for node in _tree(path).body:
        if _is_type_checking_block(node):
            continue
        hidden = isinstance(node, ast.If) and isinstance(node.test, ast.UnaryOp) and isinstance(node.test.op, ast.Not)
        if hidden and isinstance(node.test.operand, ast.Name) and node.test.operand.id == "TYPE_CHECKING":
            body.extend(node.body)
        else:
            body.append(node)
    return body


def _top_level_assignments(path: Path) -> list[str]:
    return [
        t.id
        for node in _run_time_body(path)
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name)
    ]


def test_the_wire_reader_of_a_policy_file_lives_in_core():
    """`flowrl export`'s check of a file it would replace reads the ONNX wire format with protobuf alone,
    from core's onnxfile.py (the home of that reading), not from the export stage's inspect module."""
    assert _defined_at("unlike_a_flowrl_policy") == ["flowrl_deploy/onnxfile.py"]
    assert "flowrl_deploy.export.inspect" not in _imports(ROOT / "flowrl_deploy" / "cli" / "export.py")


def test_a_runs_management_is_defined_once_each_in_the_module_of_its_job():
    """train/checkpointing.py held six jobs; each now has one module, and no second definition (a copy left
    behind, or a re-export) lingers in checkpointing.py or elsewhere: checkpointing.py gives the moved names
    only through its deprecating ``__getattr__`` (:data:`MOVED`), importing their modules on use."""
    homes = {
        "train/checkpointing.py": ("EvalRecord", "save_training_checkpoint", "restore_training", "own_eval_return"),
        "train/run_lock.py": ("RunLock", "in_use", "lock_holder"),
        "train/retention.py": ("RunCheckpoints", "SAVE_LEFTOVERS"),
        "train/resume.py": (
            "run_resume_point",
            "resume_config",
            "check_new_run_dir",
            "ResumePlan",
            "plan_resume",
            "resume_warnings",
            "run_to_resume",
            "settle_run",
            "remove_leftovers",
        ),
        "train/actor.py": ("load_actor", "actor_act_fn"),
    }
    found = {name: _defined_at(name) for names in homes.values() for name in names}
    assert found == {name: [home] for home, names in homes.items() for name in names}
    old = _run_time_imports(ROOT / "train" / "checkpointing.py")
    assert not old & {f"flowrl_deploy.train.{module}" for module in ("run_lock", "retention", "resume", "actor")}
    assert _top_level_assignments(ROOT / "train" / "checkpointing.py") == ["MOVED", "__getattr__"]


def test_the_servers_session_table_and_metrics_endpoint_are_defined_once_each_in_their_own_module():
    """serve/servicer.py ran the session table beside its RPC handlers, with the table's entry class in
    core's noise.py (which only the server used), and serve/metrics.py held the HTTP endpoint beside the
    registry; each now has one module, and no copy or re-exporting import lingers in the old ones: v0.1.0's
    names come only through their deprecating ``__getattr__`` (``MOVED``, test_moved_names), which imports
    the server's module when asked, so core's noise.py imports no server module."""
    homes = {
        "serve/sessions.py": ("Session", "StreamOwner", "SessionTable"),
        "serve/metrics_http.py": (
            "start_metrics_http",
            "METRICS_TIMEOUT_S",
            "METRICS_CONNECTIONS",
            "METRICS_PER_PEER",
        ),
        "serve/metrics.py": ("Metrics", "process_lines", "build_labels"),
        "flowrl_deploy/noise.py": ("session_noise", "draw_noise", "checked_seed"),
    }
    found = {name: _defined_at(name) for names in homes.values() for name in names}
    assert found == {name: [home] for home, names in homes.items() for name in names}
    shims = {
        f"{path}: {alias.name}"
        for path, names in (("flowrl_deploy/noise.py", {"Session"}), ("serve/metrics.py", {"start_metrics_http"}))
        for top in _run_time_body(ROOT / path)
        for node in ast.walk(top)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.name in names
    }
    assert shims == set()


def test_the_local_policy_onnxruntime_and_the_policy_file_are_defined_once_each_in_their_own_module():
    """flowrl_deploy/runtime.py held seven jobs; onnxruntime (its import, the providers, CUDA, its errors, a
    quiet session) is in ort.py, the policy in policy.py, a policy file's path and bytes in onnxfile.py.
    runtime.py, the import path the docs give, only re-exports the public names (and gives the others of
    v0.1.0 through its deprecating ``__getattr__``); the package's own modules import each name from its home."""
    homes = {
        "flowrl_deploy/ort.py": (
            "import_onnxruntime",
            "onnxruntime_severity",
            "run_options",
            "cuda_device_present",
            "default_providers",
            "cuda_library_error",
            "preload_cuda_libraries",
            "CUDA_OPTIONS",
            "with_options",
            "ModelLoadError",
            "onnxruntime_text",
            "onnxruntime_reason",
            "make_session",
        ),
        "flowrl_deploy/policy.py": ("check_graph_matches_contract", "OnnxPolicy", "one_observation", "SeededPolicy"),
        "flowrl_deploy/onnxfile.py": (
            "is_onnx_path",
            "MAX_POLICY_BYTES",
            "read_policy_file",
            "check_policy_file",
            "unlike_a_policy",
            "parse_model",
        ),
    }
    found = {name: _defined_at(name) for names in homes.values() for name in names}
    assert found == {name: [home] for home, names in homes.items() for name in names}
    shim = ROOT / "flowrl_deploy" / "runtime.py"
    assert [
        type(node).__name__ for node in _run_time_body(shim) if not isinstance(node, (ast.Expr, ast.ImportFrom))
    ] == ["Assign"] * 3
    assert _top_level_assignments(shim) == ["__all__", "MOVED", "__getattr__"]  # the others moved: deprecated
    importers = sorted(str(path.relative_to(ROOT)) for path in _sources() if "flowrl_deploy.runtime" in _imports(path))
    assert importers == []


def test_the_documented_runtime_module_re_exports_the_public_names():
    """docs/client.md imports OnnxPolicy from flowrl_deploy.runtime: the names of its ``__all__`` are the
    ones of their homes."""
    from flowrl_deploy import contract, ort, policy, runtime

    assert sorted(runtime.__all__) == [
        "OnnxPolicy",
        "PolicyContract",
        "SeededPolicy",
        "default_providers",
        "make_session",
    ]
    homes = {"OnnxPolicy": policy, "SeededPolicy": policy, "PolicyContract": contract}
    assert all(getattr(runtime, name) is getattr(homes.get(name, ort), name) for name in runtime.__all__)
