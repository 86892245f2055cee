"""docs/train.md's details for readers of the paper: the numbers it gives are what the code does."""

import dataclasses
import math
import re
from pathlib import Path

import torch

from flowrl_deploy.spec import PolicySpec
from flowrl_deploy.train.actor import FlowActor
from flowrl_deploy.train.config import TrainConfig

DOCS = Path(__file__).parents[2] / "docs" / "train.md"


def section(heading: str) -> str:
    """One ``## heading`` section of docs/train.md, up to the next."""
    return DOCS.read_text(encoding="utf-8").split(f"## {heading}\n")[1].split("\n## ")[0]


def test_the_tanh_mismatch_of_flow_matching_is_listed_with_what_the_actor_executes():
    """Flow matching fits the ODE endpoint to the buffer action, and the actor executes its tanh: the
    doc's pairs (0.9 → 0.716) are the actor's own squash of the fitted endpoint, not numbers typed once."""
    details = section("Paper details and learning results")
    bullet = " ".join(details.split("- **Flow matching through tanh")[1].split("\n- **")[0].split())
    pairs = re.findall(r"(\d\.\d+) → (\d\.\d+)", bullet)
    assert ("0.9", "0.716") in pairs and len(pairs) >= 3
    actor = FlowActor(PolicySpec(obs_dim=1, act_dim=1, action_low=(-1.0,), action_high=(1.0,), hidden=8))
    for fitted, executed in pairs:
        buffer_action = torch.tensor([[float(fitted)]])
        endpoint = actor.to_normalized(buffer_action)  # the flow-matching target: no atanh
        assert torch.equal(endpoint, buffer_action)
        assert round(float(actor.squash(endpoint)), 3) == float(executed)
        assert round(math.tanh(float(fitted)), 3) == float(executed)


NOT_IN_THE_TABLE = {
    "env", "steps", "seed", "out", "eval_every", "eval_episodes", "log_every", "save_every", "save_replay",
    "device", "bf16", "compile", "cuda_graphs", "threads",
}  # fmt: skip
"""The run's task, length, logging and compute: not settings of the algorithm, so not in the table."""


def default_settings() -> dict[str, list[str]]:
    """docs/train.md's table of default settings: field → its row's cells (flag, default, reference, note)."""
    rows = {}
    for line in section("Default settings").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `--"):
            rows[cells[0].strip("`")[2:].replace("-", "_")] = cells
    return rows


def test_the_table_of_default_settings_holds_every_algorithm_setting_at_its_train_config_default():
    """The doc cannot drift from TrainConfig: each row's default is the field's, and every setting of the
    algorithm (all but the run's task, length, logging and compute) has a row."""
    rows = default_settings()
    algorithm = {f.name for f in dataclasses.fields(TrainConfig)} - NOT_IN_THE_TABLE
    assert set(rows) == algorithm
    defaults = TrainConfig()
    for name, (_, default, *_) in rows.items():
        want, shown = getattr(defaults, name), default.strip("`")
        if isinstance(want, str):
            assert shown == want, name
        else:
            assert float(shown.replace(",", "")) == want, name


def test_the_table_gives_the_reference_codes_tau_and_its_humanoidbench_expectile():
    rows = default_settings()
    assert rows["tau"][2].strip("`") == "0.95" and "--tau 0.95" in rows["tau"][3]
    assert rows["expectile"][2].startswith("0.9")
    assert "0.8" in rows["expectile"][3] and "HumanoidBench" in rows["expectile"][3]
