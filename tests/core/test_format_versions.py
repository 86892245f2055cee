"""The five format versions a file records (docs/compatibility.md#format-versions): each reader refuses a
newer one and one that is no positive integer in the one wording of ``versions.version_problem``, each
with its own error class and its own note of where, and reads a file without the key."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from extras_needed import missing_extras_reason, needs_extras

from flowrl_deploy import checkpoint as ckpt
from flowrl_deploy.contract import (
    CONTRACT_VERSION,
    CONTRACT_VERSION_KEY,
    PolicyContract,
    contract_from_metadata,
    contract_to_metadata,
)
from flowrl_deploy.errors import CheckpointError, SpecError
from flowrl_deploy.spec import SPEC_VERSION, PolicySpec
from flowrl_deploy.train.config import CONFIG_VERSION, ConfigError, TrainConfig
from flowrl_deploy.versions import version_problem

SPEC = PolicySpec(obs_dim=3, act_dim=2, action_low=(-1.0, -1.0), action_high=(1.0, 1.0), hidden=4)
CONTRACT = PolicyContract(obs_dim=4, act_dim=2, action_low=(-1.0, -1.0), action_high=(1.0, 1.0), flow_steps=10)


def newer(what: str, value: int, current: int) -> str:
    return (
        f"{what} {value} was written by a newer flowrl-deploy (this version reads up to {current}); "
        "upgrade flowrl-deploy"
    )


def no_positive_integer(what: str, value: object) -> str:
    return f"{what} must be a positive integer, got {value!r}"


def test_the_shared_wording():
    assert version_problem(2, "format_version", 1) == newer("format_version", 2, 1)
    for value in ("2", 1.0, True, None, 0, -1):
        assert version_problem(value, "format_version", 1) == no_positive_integer("format_version", value)
    assert version_problem(1, "format_version", 1) is None and version_problem(2, "x", 3) is None
    assert version_problem("x" * 100, "v", 1) == "v must be a positive integer, got '" + "x" * 39  # cut short


def read_checkpoint(tmp_path, version) -> None:
    """Read a saved checkpoint whose document holds ``format_version`` ``version`` (none for ``...``)."""
    path = ckpt.save_checkpoint(tmp_path / "c", spec=SPEC, actor={"w": np.zeros(2, np.float32)}, counters={})
    document_file = path.resolve() / ckpt.DOCUMENT_FILE
    document = json.loads(document_file.read_text())
    document.pop("format_version")
    document_file.write_text(json.dumps(document | ({} if version is ... else {"format_version": version})))
    ckpt.read_document(path)


def read_spec(tmp_path, version) -> None:
    PolicySpec.from_dict(SPEC.to_dict() | ({} if version is ... else {"spec_version": version}))


def read_contract(tmp_path, version) -> None:
    metadata = contract_to_metadata(CONTRACT, {})
    del metadata[CONTRACT_VERSION_KEY]
    if version is not ...:
        metadata[CONTRACT_VERSION_KEY] = str(version)  # ONNX metadata holds strings
    contract_from_metadata(metadata)


def read_config(tmp_path, version) -> None:
    TrainConfig.from_dict({} if version is ... else {"config_version": version}, source="run/config.json")


def read_training_state(tmp_path, version) -> None:
    from flowrl_deploy.train.algorithm import FlowRL

    FlowRL._check_layout_version({} if version is ... else {"layout_version": version})


def training_state_version() -> int:
    from flowrl_deploy.train.algorithm import TRAINING_STATE_VERSION

    return TRAINING_STATE_VERSION


READERS = [  # reader, the field as its message names it, its version now, its error, where, a note after it
    pytest.param(
        read_checkpoint,
        "format_version",
        lambda: ckpt.FORMAT_VERSION,
        CheckpointError,
        lambda tmp_path: f"{(tmp_path / 'c').resolve() / ckpt.DOCUMENT_FILE}: ",
        "",
        id="checkpoint",
    ),
    pytest.param(read_spec, "spec_version", lambda: SPEC_VERSION, SpecError, lambda _: "", "", id="spec"),
    pytest.param(
        read_contract,
        CONTRACT_VERSION_KEY,
        lambda: CONTRACT_VERSION,
        SpecError,
        lambda _: "the model's ",
        "",
        id="contract",
    ),
    pytest.param(
        read_config,
        "config_version",
        lambda: CONFIG_VERSION,
        ConfigError,
        lambda _: "run/config.json: ",
        "",
        id="config",
    ),
    pytest.param(
        read_training_state,
        "layout_version",
        training_state_version,
        CheckpointError,
        lambda _: "training state: ",
        " to resume it (its checkpoints can still be exported, evaluated and served, not resumed by this version)",
        id="training_state",
        marks=needs_extras("train"),
    ),
]


FIELDS = ("read", "what", "current", "error", "where", "note")


@pytest.mark.parametrize(FIELDS, READERS)
def test_a_newer_version_is_refused_asking_for_an_upgrade(tmp_path, read, what, current, error, where, note):
    version = current() + 1
    with pytest.raises(error) as refused:
        read(tmp_path, version)
    assert str(refused.value) == where(tmp_path) + newer(what, version, current()) + note
    read(tmp_path / "today", current())  # today's reads


@pytest.mark.parametrize("value", ["x", 0, 1.5, True])
@pytest.mark.parametrize(FIELDS, READERS)
def test_a_version_that_is_no_positive_integer_is_refused(tmp_path, read, what, current, error, where, note, value):
    with pytest.raises(error) as refused:
        read(tmp_path, value)
    found = str(value) if read is read_contract and value != 0 else value  # metadata holds strings: '1.5'
    assert str(refused.value) == where(tmp_path) + no_positive_integer(what, found)


@pytest.mark.parametrize(FIELDS, READERS)
def test_a_file_without_the_version_reads(tmp_path, read: Callable, what, current, error, where, note):
    """Written before the key existed (or, for a caller's own config dict, today's): no refusal."""
    read(tmp_path, ...)


def test_the_contract_reads_its_version_as_ascii_digits():
    """'²' and '١' (Arabic-Indic 1) are digits to str.isdigit, and '01' is 1, as before."""
    for text in ("\u00b2", "\u0661", " 1", "-1", "1.0"):
        message = "the model's " + no_positive_integer(CONTRACT_VERSION_KEY, text)
        with pytest.raises(SpecError, match=f"^{re.escape(message)}$"):
            read_contract(None, text)
    read_contract(None, "01")


def test_the_compatibility_table_states_each_version_now():
    """docs/compatibility.md#format-versions names the five and the version each is at."""
    table = (
        (Path(__file__).resolve().parents[2] / "docs" / "compatibility.md").read_text().split("## Format versions")[1]
    )
    stated = dict(re.findall(r"^\| `([\w.]+)` \((\d+)\) \|", table, re.MULTILINE))
    assert stated == {
        "format_version": str(ckpt.FORMAT_VERSION),
        "spec_version": str(SPEC_VERSION),
        CONTRACT_VERSION_KEY: str(CONTRACT_VERSION),
        "config_version": str(CONFIG_VERSION),
        "layout_version": stated["layout_version"] if missing_extras_reason("train") else str(training_state_version()),
    }
