import re

import pytest

from flowrl_deploy.errors import SpecError
from flowrl_deploy.spec import MAX_FLOW_STEPS, PolicySpec


def make_spec(**overrides):
    fields = dict(obs_dim=3, act_dim=2, action_low=(-1.0, -2.0), action_high=(1.0, 2.0), hidden=8)
    fields.update(overrides)
    return PolicySpec(**fields)


class TestPolicySpec:
    def test_json_round_trip(self):
        spec = make_spec(obs_layout=(("position", 2), ("velocity", 1)), action_names=("a", "b"), flow_steps=3)
        assert PolicySpec.from_dict(spec.to_dict()) == spec

    @pytest.mark.parametrize(
        ("overrides", "message"),
        [
            ({"action_low": (-1.0,)}, "action_low must hold act_dim = 2 values, got 1"),
            ({"action_high": (1.0, -3.0)}, "action_low must lie below action_high: action 1 has -2 >= -3"),
            ({"solver": "rk4"}, "solver must be midpoint or euler, got 'rk4'"),
            ({"flow_steps": 0}, "flow_steps must lie in [1, 1000], got 0"),
            ({"flow_steps": MAX_FLOW_STEPS + 1}, "flow_steps must lie in [1, 1000], got 1001"),
            ({"noise_clip": -1.0}, "noise_clip must be a finite number > 0, got -1.0"),
            ({"noise_clip": 0.0}, "noise_clip must be a finite number > 0, got 0.0"),
            ({"noise_clip": float("inf")}, "noise_clip must be a finite number > 0, got inf"),
            ({"obs_layout": (("x", 5),)}, "obs_layout has block sizes [5]: each must be an integer >= 1"),
            ({"obs_layout": (("x", 4), ("y", -1))}, "obs_layout has block sizes [4, -1]"),
            ({"obs_layout": (("x", 3), ("empty", 0))}, "obs_layout has block sizes [3, 0]: each must be an integer"),
            ({"action_high": (1.0, float("inf"))}, "must be finite"),
            ({"obs_dim": 0}, "obs_dim must be >= 1, got 0"),
            ({"action_names": ("a",)}, "action_names holds 1 names for act_dim = 2"),
            ({"hidden": 0}, "hidden must be >= 1, got 0"),
            ({"activation": "relu"}, "unknown activation 'relu'; supported: elu"),
            # the contract's range, refused where the spec is read, not first at export
            ({"control_period_s": -0.01}, "control_period_s is -0.01 s; it must be 0 (none) or lie in [0.0001, 10] s"),
            ({"control_period_s": 100.0}, "control_period_s is 100 s; it must be 0 (none) or lie in"),
            ({"control_period_s": float("nan")}, "control_period_s is nan s; it must be 0 (none)"),
            # finite in float64, but the float32 sampler would output only NaN
            ({"action_high": (1e39, 2.0)}, "action_high[0] = 1e+39 does not fit float32 (|x| <= 3.403e+38)"),
            ({"action_low": (-1.0, -1e308)}, "action_low[1] = -1e+308 does not fit float32"),
            ({"action_low": (-3e38, -2.0), "action_high": (3e38, 2.0)}, "action_high[0] = 3e+38 have a range or sum"),
            ({"action_low": (-1.0, 2e38), "action_high": (1.0, 3e38)}, "action_low[1] = 2e+38 and action_high[1]"),
            ({"action_high": (1.0, -2.0 + 1e-9)}, "action_high[1] = -1.999999999 are the same float32"),
            (
                {"noise_clip": 1e39},
                "noise_clip must fit float32 (<= 3.403e+38), in which the noise is clamped, got 1e+39",
            ),
            (
                {"noise_clip": 1e300},
                "noise_clip must fit float32 (<= 3.403e+38), in which the noise is clamped, got 1e+300",
            ),
        ],
    )
    def test_impossible_values_are_named(self, overrides, message):
        with pytest.raises(SpecError, match=re.escape(message)):
            make_spec(**overrides)

    @pytest.mark.parametrize(
        ("field", "value", "message"),
        [
            ("hidden", 32.0, "hidden must be an integer, got 32.0"),
            ("flow_steps", 1.5, "flow_steps must be an integer, got 1.5"),
            ("obs_dim", "3", "obs_dim must be an integer, got '3'"),
            ("act_dim", True, "act_dim must be an integer, got True"),
            ("noise_clip", "x", "noise_clip must be a number, got 'x'"),
            ("solver", 3, "solver must be a string, got 3"),
            ("control_period_s", None, "control_period_s must be a number, got None"),
            ("spec_version", "2", "spec_version must be a positive integer, got '2'"),
            (
                "obs_layout",
                [["position", 2.5], ["velocity", 0.5]],
                "obs_layout has block sizes [2.5, 0.5]: each must be an integer",
            ),
            (
                "obs_layout",
                [["position", 2.9], ["velocity", 1]],
                "obs_layout has block sizes [2.9, 1]",
            ),  # int(): 2 + 1 = 3
        ],
    )
    def test_a_hand_edited_field_of_the_wrong_type_is_named(self, field, value, message):
        with pytest.raises(SpecError, match=re.escape(message)):
            PolicySpec.from_dict(make_spec().to_dict() | {field: value})

    def test_missing_fields_are_named(self):
        with pytest.raises(SpecError, match="lacks act_dim"):
            PolicySpec.from_dict({"obs_dim": 3, "action_low": [0], "action_high": [1]})

    @pytest.mark.parametrize(
        ("data", "message"),
        [
            ([1], "policy spec must be a JSON object, got list"),
            (None, "policy spec is missing (or null)"),  # a checkpoint.json without "spec": not 'got NoneType'
            ({"obs_dim": 3, "act_dim": 1, "action_low": 0, "action_high": [1]}, "policy spec is malformed: "),
            ({"obs_dim": 3, "act_dim": 1, "action_low": ["x"], "action_high": [1]}, "policy spec is malformed: "),
            # an integer no float holds: OverflowError escaped as a traceback
            ({"obs_dim": 3, "act_dim": 1, "action_low": [-(10**400)], "action_high": [1]}, "spec is malformed: "),
        ],
    )
    def test_malformed_json_is_a_clear_error(self, data, message):
        with pytest.raises(SpecError, match=re.escape(message)):
            PolicySpec.from_dict(data)

    def test_unknown_fields_are_named_not_dropped(self):
        """A misspelt field (a hand-edited checkpoint.json) silently fell back to its default: hidden 512."""
        data = make_spec().to_dict() | {"hiden": 64, "flowsteps": 10}
        with pytest.raises(SpecError, match=r"policy spec has unknown fields flowsteps, hiden \(known: "):
            PolicySpec.from_dict(data)

    def test_newer_version_asks_for_upgrade(self):
        data = make_spec().to_dict() | {"spec_version": 99}
        with pytest.raises(SpecError, match="upgrade flowrl-deploy"):
            PolicySpec.from_dict(data)


def test_cli_solver_choices_are_the_spec_solvers():
    from flowrl_deploy.cli._common import Solver
    from flowrl_deploy.spec import SOLVERS

    assert tuple(s.value for s in Solver) == SOLVERS


def test_flow_steps_at_the_maximum_is_a_valid_spec():
    spec = PolicySpec(obs_dim=3, act_dim=1, action_low=(-1.0,), action_high=(1.0,), flow_steps=MAX_FLOW_STEPS)
    assert PolicySpec.from_dict(spec.to_dict()).flow_steps == MAX_FLOW_STEPS
