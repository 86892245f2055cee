"""`flowrl query --obs '0.1 0.2 0.3'` (values separated by spaces, as a shell user writes a vector) got JSON's
'Extra data: line 1 column 5 (char 4)', which says nothing of what to write; the values with commas and no
brackets already got the list to write."""

from __future__ import annotations

import re

import pytest

from flowrl_deploy.cli.query import read_observation
from flowrl_deploy.errors import FlowRLError


@pytest.mark.parametrize(
    ("given", "hint"),
    [
        ("0.1 0.2 0.3 0.4 0.5", "[0.1, 0.2, 0.3, 0.4, 0.5]"),
        ("  1  -2e-3\t4 ", "[1, -2e-3, 4]"),
    ],
)
def test_obs_values_separated_by_spaces_get_the_list_to_write(given, hint):
    with pytest.raises(FlowRLError, match=re.escape(f"--obs is not JSON: write the values as a list: {hint}")):
        read_observation(given, None)


def test_words_separated_by_spaces_keep_jsons_reason():
    with pytest.raises(FlowRLError, match=re.escape("--obs is not JSON (Extra data")):
        read_observation("0.1 zero", None)
