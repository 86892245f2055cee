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


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"obs_dim": "4"}, "obs_dim has the wrong type"),
        ({"control_period_s": "0.02"}, "control_period_s has the wrong type"),
        ({"deterministic": 1}, "deterministic has the wrong type"),
        ({"act_dim": 0}, "must be >= 1"),
        ({"action_low": [-1.0]}, "must hold act_dim = 2 values"),
        ({"action_high": [1.0, float("nan")]}, "must be finite"),
        ({"action_low": [2.0, -1.0]}, "low bound lies above its high bound"),
    ],
)
def test_a_contract_no_export_can_have_is_refused_even_with_a_matching_hash(change, message):
    """A hand-edited file may carry a hash recomputed over its edits: the fields are checked too."""
    data = {**BASE.to_dict(), **change}
    with pytest.raises(SpecError, match=message):
        PolicyContract.from_dict(data)


def test_contract_and_provenance_must_be_json_objects():
    metadata = contract_to_metadata(BASE, {})
    with pytest.raises(SpecError, match="JSON object was expected, got list"):
        contract_from_metadata({**metadata, "flowrl.contract": "[1, 2]"})
    with pytest.raises(SpecError, match="provenance record is not a JSON object"):
        contract_from_metadata({**metadata, "flowrl.provenance": "[]"})
