"""A copy of an export cut off right after one of its metadata entries still parses (the graph and
opset come first in the file, the contract first among the metadata), and `--watch` loaded it: a
`sha256` and model info of bytes that never existed as a file. `flowrl export` writes the provenance
record last, so a file without it is refused as incomplete; old exports (no contract version) load."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from tiny_policy import write_policy

from flowrl_deploy.contract import (
    CONTRACT_HASH_KEY,
    CONTRACT_KEY,
    CONTRACT_VERSION_KEY,
    PROVENANCE_KEY,
    contract_from_metadata,
)
from flowrl_deploy.errors import FlowRLError, SpecError
from flowrl_deploy.serve.model import load_model

CPU = ["CPUExecutionProvider"]


def _load(data: bytes):
    return load_model(Path("policy.onnx"), data, "0" * 64, 1, providers=CPU, threads=1)


def _cuts(model: onnx.ModelProto) -> list[bytes]:
    """The file's bytes cut off right after each of its metadata entries but the last: prefixes of
    the whole file, as a copy caught half-written has them."""
    whole = model.SerializeToString()
    entries = list(model.metadata_props)
    cuts = []
    for kept in range(len(entries)):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        del copy.metadata_props[kept:]
        data = copy.SerializeToString()
        assert whole.startswith(data), "metadata is no longer the file's last field"
        cuts.append(data)
    return cuts


def test_a_copy_cut_off_between_metadata_entries_is_refused_as_incomplete(tmp_path):
    model = onnx.load(str(write_policy(tmp_path / "policy.onnx")))
    keys = [p.key for p in model.metadata_props]
    assert keys == [CONTRACT_KEY, CONTRACT_HASH_KEY, CONTRACT_VERSION_KEY, PROVENANCE_KEY]  # as the exporter writes
    for data in _cuts(model)[2:]:  # with the contract and its hash: these loaded
        with pytest.raises(FlowRLError, match=r"no provenance record \(flowrl\.provenance\).*cut-off copy"):
            _load(data)
    for data in _cuts(model)[:2]:  # refused before, for the contract or its hash missing
        with pytest.raises(FlowRLError):
            _load(data)
    assert _load(model.SerializeToString()).contract is not None


def test_an_export_older_than_the_contract_version_still_loads_and_its_cut_copies_do_not(tmp_path):
    """Exports before flowrl.contract_version (docs/compatibility.md: none reads as 1) always wrote
    their provenance record last too."""
    model = onnx.load(str(write_policy(tmp_path / "policy.onnx")))
    old = [p for p in model.metadata_props if p.key != CONTRACT_VERSION_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(old)
    assert _load(model.SerializeToString()).contract is not None
    with pytest.raises(FlowRLError, match="cut-off copy"):
        _load(_cuts(model)[2])


def test_the_contracts_readers_refuse_metadata_without_provenance():
    from tiny_policy import tiny_contract

    from flowrl_deploy.contract import contract_to_metadata

    metadata = contract_to_metadata(tiny_contract(), {"source": "test"})
    assert list(metadata)[-1] == PROVENANCE_KEY  # the exporter's order: the record comes last in the file
    assert contract_from_metadata(metadata)[1] == {"source": "test"}
    del metadata[PROVENANCE_KEY]
    with pytest.raises(SpecError, match="no provenance record"):
        contract_from_metadata(metadata)
    assert json.loads(contract_to_metadata(tiny_contract(), {})[PROVENANCE_KEY]) == {}  # an empty record is whole
