"""What the .proto and the docs tell a client in another language, checked against the code: the
noise rule's test values and the ONNX metadata entries that hold the contract."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from flowrl_deploy.contract import CONTRACT_HASH_KEY, CONTRACT_KEY, CONTRACT_VERSION_KEY, PROVENANCE_KEY
from flowrl_deploy.noise import draw_noise, session_noise

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "flowrl_deploy" / "proto" / "flowrl" / "v1" / "policy.proto"


def _proto_comment_text() -> str:
    lines = PROTO.read_text(encoding="utf-8").splitlines()
    return " ".join(line.strip().removeprefix("//").strip() for line in lines if line.strip().startswith("//"))


def test_the_protos_noise_test_values_are_the_servers_first_draws():
    text = _proto_comment_text()
    for seed, ordinal in ((0, "0's"), (1, "1's")):
        found = re.search(rf"[Ss]eed {ordinal} (?:first four draws are )?((?:-?\d\.\d+,? ?){{4}})", text)
        assert found, f"no test values for seed {seed} in the .proto"
        documented = np.array([float(v) for v in found.group(1).replace(",", " ").split()], dtype=np.float64)
        drawn = draw_noise(session_noise(seed), 1, 4)[0].astype(np.float64)
        np.testing.assert_allclose(documented, drawn, atol=1e-7)


def test_the_protos_noise_rule_names_the_call_the_server_makes():
    text = _proto_comment_text()
    assert "Generator(PCG64(seed))" in text and "standard_normal((B, act_dim), dtype=float32)" in text


def test_the_docs_name_the_metadata_entries_an_export_writes():
    export_md = (ROOT / "docs" / "export.md").read_text(encoding="utf-8")
    client_md = (ROOT / "docs" / "client.md").read_text(encoding="utf-8")
    for key in (CONTRACT_KEY, CONTRACT_HASH_KEY, CONTRACT_VERSION_KEY, PROVENANCE_KEY):
        assert f"`{key}`" in export_md, key
    assert f"`{CONTRACT_HASH_KEY}`" in client_md and f"`{CONTRACT_KEY}`" in client_md
