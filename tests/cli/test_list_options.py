"""A list option with a missing piece is refused, not read leniently: `--cpus 1-` (a truncated `1-3`)
pinned to core 1 alone, and `flowrl export --steps 1,,2` dropped the empty item."""

from __future__ import annotations

import pytest

from flowrl_deploy.affinity import parse_cpus
from flowrl_deploy.cli.export import parse_steps
from flowrl_deploy.errors import FlowRLError


@pytest.mark.parametrize("text", ["1-", "0-", "-1", "0,1-", "1 - "])
def test_a_range_missing_a_side_is_refused(text):
    with pytest.raises(FlowRLError, match=r"--cpus .*: .* lacks an end: a range needs both ends, such as 0-3"):
        parse_cpus(text)


def test_whole_ranges_and_single_cores_still_parse():
    assert parse_cpus("0") == (0,) and parse_cpus("0-0") == (0,) and parse_cpus("") == ()


@pytest.mark.parametrize("text", ["1,,2", "1,2,", ",1", "1, ,2"])
def test_an_empty_steps_item_is_refused(text):
    with pytest.raises(FlowRLError, match=rf"--steps {text!r} has an empty item: give numbers separated by commas"):
        parse_steps(text)


def test_steps_lists_still_parse():
    assert parse_steps("1,2,5") == [1, 2, 5] and parse_steps(" 10 ") == [10] and parse_steps("1, 2") == [1, 2]
