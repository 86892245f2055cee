import pytest

from flowrl_deploy.contract import PolicyContract, contract_from_metadata, contract_to_metadata
from flowrl_deploy.errors import SpecError

BASE = PolicyContract(obs_dim=4, act_dim=2, action_low=(-1.0, -1.0), action_high=(1.0, 1.0), flow_steps=10)


def test_metadata_round_trip():
    contract, provenance = contract_from_metadata(contract_to_metadata(BASE, {"opset": 18}))
    assert contract == BASE
    assert provenance == {"opset": 18}


def test_hash_ignores_sampler_settings_but_not_interface():
    from dataclasses import replace

    assert replace(BASE, flow_steps=5, solver="euler").hash() == BASE.hash()
    changed = replace(BASE, action_high=(2.0, 1.0))
    assert changed.hash() != BASE.hash()
    assert changed.differences(BASE) == ["action_high: [2.0, 1.0] != [1.0, 1.0]"]


def test_tampered_contract_is_refused():
    metadata = contract_to_metadata(BASE, {})
    metadata["flowrl.contract"] = metadata["flowrl.contract"].replace('"obs_dim": 4', '"obs_dim": 5')
    with pytest.raises(SpecError, match="does not match its contract"):
        contract_from_metadata(metadata)


def test_missing_contract_names_the_exporter():
    with pytest.raises(SpecError, match="flowrl export"):
        contract_from_metadata({})
