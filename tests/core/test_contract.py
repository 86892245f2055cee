import json
from dataclasses import fields, replace

import pytest

from flowrl_deploy import contract
from flowrl_deploy.contract import CONTRACT_HASH_KEY, PolicyContract, contract_from_metadata, contract_to_metadata
from flowrl_deploy.errors import SpecError
from flowrl_deploy.spec import PolicySpec

BASE = PolicyContract(obs_dim=4, act_dim=2, action_low=(-1.0, -1.0), action_high=(1.0, 1.0), flow_steps=10)


def test_metadata_round_trip():
    contract, provenance = contract_from_metadata(contract_to_metadata(BASE, {"opset": 18}))
    assert contract == BASE
    assert provenance == {"opset": 18}


def test_hash_ignores_sampler_settings_but_not_interface():
    assert replace(BASE, flow_steps=5, solver="euler").hash() == BASE.hash()
    changed = replace(BASE, action_high=(2.0, 1.0))
    assert changed.hash() != BASE.hash()
    assert changed.differences(BASE) == ["action_high: [2.0, 1.0] != [1.0, 1.0]"]


LABELLED = replace(BASE, obs_layout=(("position", 2), ("velocity", 2)), action_names=("hip", "knee"))
CLIENT_FACING = {  # field -> a change of it (the dims cannot change without their layout, names and bounds)
    "obs_dim": {"obs_dim": 5, "obs_layout": (("position", 2), ("velocity", 3))},
    "act_dim": {"act_dim": 1, "action_low": (-1.0,), "action_high": (1.0,), "action_names": ("hip",)},
    "obs_layout": {"obs_layout": (("velocity", 2), ("position", 2))},
    "action_names": {"action_names": ("knee", "hip")},
    "action_low": {"action_low": (-2.0, -1.0)},
    "action_high": {"action_high": (1.0, 2.0)},
    "obs_normalization": {"obs_normalization": "inside"},
    "control_period_s": {"control_period_s": 0.02},
    "deterministic": {"deterministic": True},
    "input_names": {"input_names": ("obs",)},
    "output_name": {"output_name": "actions"},
}
SAMPLER_SETTINGS = {
    "flow_steps": 5,
    "solver": "euler",
    "t_schedule": "cosine",
    "noise_convention": "a0 = noise",
    "env_id": "dmc:other-task",
}


ONE_VALUE_NOW = {"action_rescaled"}
"""Client-facing fields this version takes one value of (others are refused, below): in the hash, so
that a later version's other value is told apart, but no change of them can be built here."""


def test_every_contract_field_is_either_client_facing_or_a_sampler_setting():
    client_facing = CLIENT_FACING.keys() | ONE_VALUE_NOW
    assert client_facing | SAMPLER_SETTINGS.keys() == {f.name for f in fields(PolicyContract)}
    assert not client_facing & SAMPLER_SETTINGS.keys()
    assert set(contract._HASHED) >= ONE_VALUE_NOW


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"action_rescaled": False}, r"^policy contract field action_rescaled is False: .*rescaled to its bounds"),
        ({"obs_normalization": "outside"}, r"^policy contract field obs_normalization is 'outside': .*'inside'"),
    ],
)
def test_a_contract_this_version_cannot_honour_is_refused_not_served_as_if_it_could(change, message):
    """A file whose contract said its observations must be normalized by the caller, or its output
    rescaled by it, was served and applied as if it took raw observations and gave the action."""
    with pytest.raises(SpecError, match=message):
        replace(BASE, **change)
    metadata = contract_to_metadata(BASE, {})
    metadata[contract.CONTRACT_KEY] = json.dumps({**BASE.to_dict(), **change})
    with pytest.raises(SpecError, match=r"^the model file's policy contract field"):
        contract_from_metadata(metadata)


@pytest.mark.parametrize("field", CLIENT_FACING)
def test_a_change_of_any_client_facing_field_changes_the_hash_and_is_named(field):
    """A client pinned to the old hash must be refused, with the field named in the message."""
    changed = replace(LABELLED, **CLIENT_FACING[field])
    assert changed.hash() != LABELLED.hash()
    named = {line.split(":")[0] for line in changed.differences(LABELLED)}
    assert named == set(CLIENT_FACING[field])


@pytest.mark.parametrize("field", SAMPLER_SETTINGS)
def test_a_sampler_setting_keeps_the_hash(field):
    """Another N, solver or schedule can be hot-swapped in: clients see the same interface."""
    changed = replace(LABELLED, **{field: SAMPLER_SETTINGS[field]})
    assert changed != LABELLED
    assert changed.hash() == LABELLED.hash()
    assert changed.differences(LABELLED) == []


def test_a_contract_without_its_hash_is_refused_saying_the_hash_is_missing():
    """It read "the model's contract hash None does not match its contract"."""
    metadata = contract_to_metadata(BASE, {})
    del metadata[CONTRACT_HASH_KEY]
    with pytest.raises(SpecError, match=rf"^the model has no contract hash \({CONTRACT_HASH_KEY} missing"):
        contract_from_metadata(metadata)


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
        ({"obs_dim": "4"}, "obs_dim must be an integer, got '4'"),
        ({"control_period_s": "0.02"}, "control_period_s must be a number, got '0.02'"),
        ({"deterministic": 1}, "deterministic must be true or false, got 1"),
        ({"act_dim": 0}, "act_dim must be >= 1, got 0"),
        ({"flow_steps": 0}, r"flow_steps must lie in \[1, 1000\], got 0"),
        ({"action_low": [-1.0]}, "must hold act_dim = 2 values"),
        ({"action_high": [1.0]}, "must hold act_dim = 2 values"),
        ({"action_high": [1.0, float("nan")]}, "must be finite"),
        ({"action_low": [2.0, -1.0]}, "action_low must lie below action_high: action 0 has 2 >= 1"),
        ({"action_low": [-1.0, 1.0]}, "action_low must lie below action_high: action 1 has 1 >= 1"),
        ({"action_names": ["a", "b", "c"]}, "action_names holds 3 names for act_dim = 2"),
        ({"obs_layout": [["x", 2]]}, r"obs_layout has block sizes \[2\]: .* add up to obs_dim = 4"),
        ({"obs_layout": [["x", 5], ["y", -1]]}, "obs_layout has block sizes"),
        ({"obs_layout": [["x", 2.5], ["y", 1.5]]}, r"obs_layout has block sizes \[2.5, 1.5\]: each must be an integer"),
        ({"obs_layout": [["x", 2.9], ["y", 2]]}, r"obs_layout has block sizes \[2.9, 2\]"),  # int(): 2 + 2 = 4
        ({"flow_steps": 10**9}, r"flow_steps must lie in \[1, 1000\], got 1000000000"),
        ({"action_high": [1e39, 1.0]}, r"field action_high\[0\] = 1e\+39 does not fit float32"),
        ({"action_low": [-1e308, -1.0], "action_high": [1e308, 1.0]}, r"field action_low\[0\] = -1e\+308 does not"),
        ({"action_low": [-3e38, -1.0], "action_high": [3e38, 1.0]}, r"action_high\[0\] = 3e\+38 have a range or sum"),
        ({"solver": "rk4"}, "solver must be midpoint or euler, got 'rk4'"),
        ({"control_period_s": 1e9}, r"control_period_s is 1e\+09 s; it must be 0 \(none\) or lie in \[0.0001, 10\]"),
        ({"control_period_s": 1e-9}, "control_period_s is 1e-09 s"),
        ({"control_period_s": -0.02}, "control_period_s is -0.02 s"),
        ({"control_period_s": float("nan")}, "control_period_s is nan s"),
        ({"control_period_s": float("inf")}, "control_period_s is inf s"),
    ],
)
def test_a_contract_no_export_can_have_is_refused_even_with_a_matching_hash(change, message):
    """A hand-edited file may carry a hash recomputed over its edits: the fields are checked too."""
    data = {**BASE.to_dict(), **change}
    with pytest.raises(SpecError, match=message):
        PolicyContract.from_dict(data)


@pytest.mark.parametrize("period", [0.0, 1e-4, 0.02, 10.0])
def test_no_control_period_or_one_from_10_khz_to_0_1_hz_is_accepted(period):
    assert replace(BASE, control_period_s=period).control_period_s == period


def test_an_impossible_contract_in_a_model_file_says_it_comes_from_the_file():
    """A hand-edited contract with its hash recomputed: the error points at the file's metadata."""
    bad = {**BASE.to_dict(), "solver": "rk4"}
    metadata = {**contract_to_metadata(BASE, {}), "flowrl.contract": json.dumps(bad)}
    with pytest.raises(SpecError) as info:
        contract_from_metadata(metadata)
    assert str(info.value) == "the model file's policy contract field solver must be midpoint or euler, got 'rk4'"


def test_contract_and_provenance_must_be_json_objects():
    metadata = contract_to_metadata(BASE, {})
    with pytest.raises(SpecError, match="policy contract must be a JSON object, got list"):
        contract_from_metadata({**metadata, "flowrl.contract": "[1, 2]"})
    with pytest.raises(SpecError, match="provenance record is not a JSON object"):
        contract_from_metadata({**metadata, "flowrl.provenance": "[]"})


def test_a_missing_field_is_named():
    data = BASE.to_dict()
    del data["action_low"]
    with pytest.raises(SpecError, match=r"^policy contract lacks action_low$"):
        PolicyContract.from_dict(data)


def test_a_bound_no_float_holds_is_malformed_not_a_traceback():
    """A server's contract_json (or an edited file) with -10**400: OverflowError escaped before."""
    with pytest.raises(SpecError, match=r"^policy contract is malformed: "):
        PolicyContract.from_dict({**BASE.to_dict(), "action_low": [-(10**400), -1.0]})


def test_fields_a_newer_flowrl_deploy_adds_are_ignored_unlike_in_a_spec():
    """A robot's older client must read a newer export's contract (from_dict's docstring says why);
    a checkpoint's spec is our own file, where an unknown field is a misspelling and refused."""
    newer = {**BASE.to_dict(), "sampler_seed": 7}
    metadata = {**contract_to_metadata(BASE, {}), "flowrl.contract": json.dumps(newer)}
    assert contract_from_metadata(metadata)[0] == BASE
    spec = PolicySpec(obs_dim=4, act_dim=2, action_low=(-1.0, -1.0), action_high=(1.0, 1.0))
    with pytest.raises(SpecError, match="policy spec has unknown fields sampler_seed"):
        PolicySpec.from_dict({**spec.to_dict(), "sampler_seed": 7})


SHARED_MISTAKES = [  # what a spec and a contract both state, and so check alike
    {"obs_dim": 0},
    {"action_low": (-1.0,)},
    {"action_high": (1.0, float("nan"))},
    {"action_low": (2.0, -1.0)},
    {"action_high": (1e39, 1.0)},
    {"solver": "rk4"},
    {"flow_steps": 10**9},
    {"action_names": ("a", "b", "c")},
    {"obs_layout": (("x", 5),)},
    {"act_dim": 2.0},
]


@pytest.mark.parametrize("mistake", SHARED_MISTAKES)
def test_a_spec_and_a_contract_name_the_same_mistake_alike(mistake):
    base = {name: getattr(BASE, name) for name in ("obs_dim", "act_dim", "action_low", "action_high", "flow_steps")}
    with pytest.raises(SpecError) as spec_error:
        PolicySpec(**{**base, **mistake})
    with pytest.raises(SpecError) as contract_error:
        replace(BASE, **mistake)
    assert str(contract_error.value) == f"policy contract field {spec_error.value}"


def test_the_metadata_records_the_contract_version():
    metadata = contract_to_metadata(BASE, {})
    assert metadata["flowrl.contract_version"] == str(contract.CONTRACT_VERSION)
    del metadata["flowrl.contract_version"]  # exported before the key existed: today's contract
    assert contract_from_metadata(metadata)[0] == BASE


def test_a_newer_contract_version_says_upgrade_not_hash_mismatch():
    """The day a field enters the hash, an older client's local fallback and an older server read the
    new file's hash as tampering; the version says what happened."""
    newer = {**BASE.to_dict(), "obs_scale": [1.0, 2.0, 3.0]}
    metadata = {
        **contract_to_metadata(BASE, {}),
        "flowrl.contract": json.dumps(newer),
        "flowrl.contract_hash": "5fb37672152a0fe6",
        "flowrl.contract_version": str(contract.CONTRACT_VERSION + 1),
    }
    with pytest.raises(
        SpecError, match=r"contract_version 2 was written by a newer flowrl-deploy \(this version reads up"
    ):
        contract_from_metadata(metadata)


def test_a_hash_mismatch_with_fields_this_version_does_not_know_names_them():
    newer = {**BASE.to_dict(), "obs_scale": [1.0, 2.0, 3.0]}
    metadata = {
        **contract_to_metadata(BASE, {}),
        "flowrl.contract": json.dumps(newer),
        "flowrl.contract_hash": "0" * 16,
    }
    with pytest.raises(
        SpecError, match=r"does not match its contract .*fields this version does not know \(obs_scale\)"
    ):
        contract_from_metadata(metadata)


@pytest.mark.parametrize("version", ["x", "0", "-1", "1.5", "\u00b2", "\u0661"])  # ², Arabic-Indic 1
def test_a_contract_version_that_is_no_positive_integer_is_refused(version):
    metadata = {**contract_to_metadata(BASE, {}), "flowrl.contract_version": version}
    with pytest.raises(SpecError, match=r"^the model's flowrl\.contract_version must be a positive integer, got "):
        contract_from_metadata(metadata)
