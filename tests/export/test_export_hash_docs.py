"""docs/export.md says which contract fields the contract hash covers and which it does not (a metadata
edit of flow_steps or env_id goes unnoticed): the two lists are the contract's own."""

from __future__ import annotations

import dataclasses
import re

from doc_pages import section

from flowrl_deploy.contract import _HASHED, PolicyContract


def test_the_hashed_and_unhashed_fields_the_page_lists_are_the_contracts():
    text = section("docs/export.md", "What the graph holds").split("\n## ", 1)[0]
    bullet = text[text.index("- The contract hash covers") :].split("\n- ", 1)[0]
    covered, rest = bullet.split("It does not cover", 1)
    assert set(re.findall(r"`(\w+)`", covered)) == set(_HASHED)
    fields = {f.name for f in dataclasses.fields(PolicyContract)}
    unhashed = set(re.findall(r"`(\w+)`", rest)) & fields
    assert unhashed == {"flow_steps", "solver", "t_schedule", "noise_convention", "env_id"}
    assert unhashed == fields - set(_HASHED)  # every field the hash leaves out is named
