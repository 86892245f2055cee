"""The committed generated modules are what scripts/gen_proto.py makes from policy.proto now."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_current(tmp_path):
    gen = _generator()
    for fresh in gen.generate(tmp_path):
        committed = ROOT / "flowrl_deploy" / "proto" / "flowrl" / "v1" / fresh.name
        assert committed.read_text() == fresh.read_text(), (
            f"{committed.name} is stale: run `python scripts/gen_proto.py` and commit the result"
        )


def test_staleness_check_notices_an_edited_proto(tmp_path, monkeypatch):
    gen = _generator()
    proto_root = tmp_path / "proto"
    (proto_root / "flowrl" / "v1").mkdir(parents=True)
    source = (gen.PROTO_ROOT / gen.PROTO_FILE).read_text()
    (proto_root / gen.PROTO_FILE).write_text(
        source.replace("message GetStatsRequest {}", "message GetStatsRequest { int32 x = 1; }")
    )
    monkeypatch.setattr(gen, "PROTO_ROOT", proto_root)
    fresh = {p.name: p.read_text() for p in gen.generate(tmp_path / "out")}
    committed = ROOT / "flowrl_deploy" / "proto" / "flowrl" / "v1" / "policy_pb2.py"
    assert fresh["policy_pb2.py"] != committed.read_text()


def test_generated_imports_use_the_installed_package():
    text = (ROOT / "flowrl_deploy" / "proto" / "flowrl" / "v1" / "policy_pb2_grpc.py").read_text()
    assert "from flowrl_deploy.proto.flowrl.v1 import policy_pb2" in text
    assert "from flowrl.v1" not in text


def test_every_generated_module_has_a_type_stub():
    """A module without its ``.pyi`` is untyped to a user's mypy --strict ('Call to untyped function
    "PolicyServiceStub"'); the stubs are generated too, so the staleness check covers them."""
    generated = _generator().GENERATED
    modules = {name.removesuffix(".py") for name in generated if name.endswith(".py")}
    assert {name.removesuffix(".pyi") for name in generated if name.endswith(".pyi")} == modules
