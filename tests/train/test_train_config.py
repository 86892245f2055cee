"""TrainConfig: every setting's range names its flag; a config read from a file names that file and
its field instead, since the user typed no flag."""

import json
import re

import pytest

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.spec import MAX_FLOW_STEPS
from flowrl_deploy.train.config import ConfigError, TrainConfig
from flowrl_deploy.train.loop import train


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seed": -1}, "--seed must lie in [0, 2**32), got -1"),
        ({"seed": 2**32}, "--seed must lie in [0, 2**32), got 4294967296"),
        ({"seed": 10**20}, "--seed must lie in [0, 2**32), got 100000000000000000000"),
        ({"flow_steps": 0}, "--flow-steps must lie in [1, 1000], got 0"),
        ({"flow_steps": MAX_FLOW_STEPS + 1}, "--flow-steps must lie in [1, 1000], got 1001"),
        ({"hidden": "32"}, "--hidden must be an integer, got '32'"),
        ({"batch_size": 64, "buffer_size": 32}, "--batch-size (64) cannot exceed --buffer-size (32)"),
    ],
)
def test_a_setting_out_of_range_names_its_flag(changes, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        TrainConfig(**changes)


def test_the_largest_seed_trains_on_dm_control(tmp_path):
    """dm_control takes seeds below 2**32 only: the evaluation env's seed (the run's + 1) wraps round."""
    cfg = TrainConfig(env="dmc:cartpole-balance", steps=20, seed=2**32 - 1, out=str(tmp_path), hidden=8,
                      batch_size=4, start_steps=10, eval_every=0, threads=1)  # fmt: skip
    assert train(cfg, progress=False).counters.env_steps == 20
    assert TrainConfig(flow_steps=MAX_FLOW_STEPS).flow_steps == MAX_FLOW_STEPS


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1], "config must be a JSON object, got list"),
        ("x", "config must be a JSON object, got str"),
        ({"foo": 1, "hidden": 8}, "unknown config fields: foo"),
        ({"hidden": "32"}, "config.hidden must be an integer, got '32'"),
        ({"hidden": 32.0}, "config.hidden must be an integer, got 32.0"),
        ({"flow_steps": 100000}, "config.flow_steps must lie in [1, 1000], got 100000"),
        ({"batch_size": 64, "buffer_size": 32}, "config.batch_size (64) cannot exceed config.buffer_size (32)"),
        ({"seed": 2**32}, "config.seed must lie in [0, 2**32), got 4294967296"),
    ],
)
def test_a_bad_config_in_a_file_names_the_file_and_field_not_a_flag(data, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(f'ck/checkpoint.json: {message}')}$"):
        TrainConfig.from_dict(data, source="ck/checkpoint.json", key="config")


def test_a_config_read_back_equals_the_one_saved_and_missing_fields_take_defaults(tmp_path):
    cfg = TrainConfig(hidden=8, seed=3, out=str(tmp_path))
    assert TrainConfig.load(cfg.save(tmp_path)) == cfg
    assert TrainConfig.from_dict({"hidden": 8}, source="f.json") == TrainConfig(hidden=8)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1]", "config must be a JSON object, got list"),
        ('{"lr": "fast"}', "lr must be a number, got 'fast'"),
        ("{oops", "cannot read a training config from"),
        (b"\xff\xfe", "cannot read a training config from"),
    ],
)
def test_a_bad_config_json_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "config.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainConfig.load(path)


def test_a_config_that_cannot_be_written_is_a_clear_error_and_keeps_the_old_one(tmp_path):
    (tmp_path / "config.json").mkdir()
    with pytest.raises(FlowRLError, match=f"cannot write {re.escape(str(tmp_path / 'config.json'))}: Is a directory"):
        TrainConfig().save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # no temporary file left
    (tmp_path / "config.json").rmdir()
    TrainConfig(hidden=8).save(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["hidden"] == 8


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_a_config_json_saved_by_notepad_reads(tmp_path, encoding):
    """Notepad saves UTF-8 with a byte-order mark (PowerShell 5's `>` UTF-16): read_text() in the
    locale's encoding made a hand-edited config.json 'not valid JSON'."""
    cfg = TrainConfig(hidden=8, seed=3, out=str(tmp_path))
    path = cfg.save(tmp_path)
    path.write_bytes(path.read_text().encode(encoding))
    assert TrainConfig.load(path) == cfg
