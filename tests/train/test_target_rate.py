"""`--tau` is the step of the target critics toward the online ones (θ̄ ← (1 − tau)·θ̄ + tau·θ, as in
TD3/SAC and the reference code); a config stored before that (no ``config_version``: tau was the share
kept) is converted on reading, so an old run resumes with the same target updates, and says so once."""

import json
import re
from pathlib import Path

import pytest
import torch
from tiny_training import random_batch
from typer.testing import CliRunner

from flowrl_deploy.checkpoint import DOCUMENT_FILE
from flowrl_deploy.cli import app
from flowrl_deploy.spec import PolicySpec
from flowrl_deploy.train.algorithm import FlowRL
from flowrl_deploy.train.config import (
    CONFIG_VERSION,
    ConfigError,
    TrainConfig,
    check_resume_settings,
    large_tau_note,
    tau_conversion,
)
from flowrl_deploy.train.loop import train
from flowrl_deploy.train.replay import Batch
from flowrl_deploy.train.resume import resume_config

TINY = dict(env="Pendulum-v1", hidden=8, batch_size=8, start_steps=50, eval_every=0, save_every=0, log_every=50,
            threads=1)  # fmt: skip
SPEC = PolicySpec(obs_dim=3, act_dim=2, action_low=(-1.0, -1.0), action_high=(1.0, 1.0), hidden=16)


def batch(seed: int) -> Batch:
    return random_batch(seed)


def test_tau_is_the_step_toward_the_online_critics_and_defaults_to_5_percent():
    assert TrainConfig().tau == 0.05
    assert TrainConfig(tau=1.0).tau == 1.0  # a copy at each target update
    assert TrainConfig(tau=0.005).tau == 0.005  # SAC's value means what it means there


@pytest.mark.parametrize("tau", [0.0, -0.1, 1.5])
def test_a_tau_outside_0_to_1_is_refused_naming_the_flag(tau):
    with pytest.raises(ConfigError, match=rf"^--tau must lie in \(0, 1\], got {re.escape(str(tau))}: .*never move"):
        TrainConfig(tau=tau)


@pytest.mark.parametrize(("tau", "kept"), [(0.05, 0.95), (1.0, 0.0)])
def test_a_target_update_moves_each_target_tau_of_the_way_to_its_online_critic(tau, kept):
    torch.manual_seed(0)
    agent = FlowRL(SPEC, TrainConfig(hidden=16, batch_size=8, tau=tau))
    pairs = [(agent.q_pi_target, agent.q_pi), (agent.q_beta_target, agent.q_beta)]
    agent.update(batch(0))  # a target update: the critics have moved away from their targets
    agent.update(batch(1))  # none (policy_delay 2)
    old = [[p.clone() for p in target.parameters()] for target, _ in pairs]
    agent.update(batch(2))  # the critics' step, then the actor's and the targets'
    for (target, online), was in zip(pairs, old, strict=True):
        for got, before, toward in zip(target.parameters(), was, online.parameters(), strict=True):
            torch.testing.assert_close(got, kept * before + tau * toward)


def test_a_stored_config_records_its_version_and_reads_back_unchanged(tmp_path):
    cfg = TrainConfig(tau=0.3, hidden=8, out=str(tmp_path))
    assert cfg.to_dict()["config_version"] == CONFIG_VERSION == 2
    assert json.loads(cfg.save(tmp_path).read_text())["config_version"] == CONFIG_VERSION
    assert TrainConfig.load(tmp_path / "config.json") == cfg


@pytest.mark.parametrize(("stored", "tau"), [(0.95, 0.05), (0.9, 0.1), (0.0, 1.0), (0.995, 0.005)])
def test_a_config_stored_before_the_version_has_its_kept_share_converted(stored, tau):
    assert TrainConfig.from_dict({"tau": stored, "hidden": 8}, source="run/config.json").tau == tau
    assert TrainConfig.from_dict({"tau": stored, "config_version": 1}).tau == tau
    if stored > 0:  # 0 was "keep none" (a copy); today it would never move the targets
        assert TrainConfig.from_dict({"tau": stored, "config_version": 2}).tau == stored
        # a caller's own dict (no file, no version) means today's tau: never flipped behind its back
        assert TrainConfig.from_dict({"tau": stored, "hidden": 8}).tau == stored
    assert TrainConfig.from_dict({"hidden": 8}, source="run/config.json").tau == TrainConfig.tau  # the old default


def test_reading_a_stored_config_leaves_the_callers_dict_as_it_was():
    stored = {"tau": 0.95, "config_version": 1}
    assert TrainConfig.from_dict(stored, source="run/config.json").tau == pytest.approx(0.05)
    assert stored == {"tau": 0.95, "config_version": 1}


def test_the_conversion_is_said_for_an_explicit_version_1_too():
    assert tau_conversion({"tau": 0.9, "config_version": 1}, "run/config.json") is not None
    assert tau_conversion({"tau": 0.9}, "run/config.json") is not None
    assert tau_conversion({"tau": 0.1, "config_version": 2}, "run/config.json") is None


@pytest.mark.parametrize("stored", [-0.5, 1.0, 1.5, float("inf"), float("nan")])
def test_an_old_configs_tau_out_of_range_is_refused_as_stored_not_as_converted(stored):
    """The file says -0.5: the refusal must too, not the 1.5 it would have been read as."""
    with pytest.raises(ConfigError) as refused:
        TrainConfig.from_dict({"tau": stored}, source="ck/checkpoint.json", key="config")
    assert str(refused.value) == (
        "ck/checkpoint.json: config.tau must lie in [0, 1) in a config saved before config_version 2 "
        f"(the share of the target critics kept), got {stored}"
    )


def test_a_new_run_given_a_tau_over_one_half_is_told_the_meaning_changed(tmp_path):
    """A script written for 0.1.x passing --tau 0.9 ('keep 90 %') now moves the targets 90 % per update."""
    args = ["train", "--env", "Pendulum-v1", "--steps", "2", "--hidden", "8", "--batch-size", "2", "--start-steps", "1"]
    args += ["--eval-every", "0", "--threads", "1", "--no-progress"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "a"), "--tau", "0.9"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "tau 0.9 moves the target critics 90 % of the way to the online ones at each update" in output
    assert "to keep 90 % as tau 0.9 did before config_version 2, give tau 0.1 (flowrl train --tau 0.1," in output
    quiet = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "b"), "--tau", "0.2"])
    assert quiet.exit_code == 0 and "config_version" not in quiet.output, quiet.output


def test_the_cli_says_the_large_tau_note_once(tmp_path):
    """The note comes from train() itself (the CLI prints the library's warnings): said once, not twice."""
    args = ["train", "--env", "Pendulum-v1", "--steps", "2", "--hidden", "8", "--batch-size", "2", "--start-steps", "1"]
    args += ["--eval-every", "0", "--threads", "1", "--no-progress", "--out", str(tmp_path / "a"), "--tau", "0.9"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert " ".join(result.output.split()).count("moves the target critics 90 %") == 1, result.output


def tau_notes(caplog: pytest.LogCaptureFixture) -> list[str]:
    said = [record.getMessage() for record in caplog.records if record.name == "flowrl.train"]
    return [text for text in said if "moves the target critics" in text]


def test_a_new_run_from_python_given_a_tau_over_one_half_is_told_the_meaning_changed(tmp_path, caplog):
    """The v0.1.0 README's snippet with its default spelt out, TrainConfig(tau=0.95), trained with the new
    meaning (near-hard target updates) and said nothing: only flowrl train warned."""
    caplog.set_level("WARNING", logger="flowrl.train")
    train(TrainConfig(steps=2, out=str(tmp_path / "a"), tau=0.95, **{**TINY, "start_steps": 1, "batch_size": 2}),
          progress=False)  # fmt: skip
    assert tau_notes(caplog) == [large_tau_note(0.95)]
    # the words fit a Python caller too
    assert "give tau 0.05 (flowrl train --tau 0.05, TrainConfig(tau=0.05))" in large_tau_note(0.95)
    caplog.clear()
    # a caller's own dict (no version) is read as today's tau, so it is told too
    train(TrainConfig.from_dict({"steps": 2, "out": str(tmp_path / "b"), "tau": 0.9, **TINY, "start_steps": 1,
                                 "batch_size": 2}), progress=False)  # fmt: skip
    assert tau_notes(caplog) == [large_tau_note(0.9)]


def test_a_stored_config_of_today_or_a_resume_is_not_told_of_its_large_tau(tmp_path, caplog):
    """A config read back with config_version 2 meant today's tau when it was written: no note, in a new
    run made from it (another out, seed or budget) or in a resume of its run."""
    caplog.set_level("WARNING", logger="flowrl.train")
    first = train(TrainConfig(steps=2, out=str(tmp_path / "a"), tau=0.9, **{**TINY, "start_steps": 1, "batch_size": 2}),
                  progress=False)  # fmt: skip
    assert len(tau_notes(caplog)) == 1
    caplog.clear()
    stored = resume_config(first.run_dir)
    train(stored.override(out=str(tmp_path / "b"), seed=3), progress=False)
    train(TrainConfig.from_dict(stored.override(out=str(tmp_path / "c")).to_dict()), progress=False)
    train(TrainConfig.load(first.run_dir / "config.json").override(out=str(tmp_path / "d")), progress=False)
    train(resume_config(first.run_dir, steps=4), resume=first.run_dir, progress=False)
    assert tau_notes(caplog) == []
    train(stored.override(out=str(tmp_path / "e"), tau=0.8), progress=False)  # a tau of the caller's own again
    assert tau_notes(caplog) == [large_tau_note(0.8)]


@pytest.mark.parametrize(("tau", "noted"), [(0.5, False), (0.5000001, True), (0.6, True)])
def test_the_note_on_a_large_tau_starts_just_over_one_half(tau, noted):
    assert (large_tau_note(tau) is not None) == noted


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (3, "config.config_version 3 was written by a newer flowrl-deploy (this version reads up to 2); upgrade"),
        (0, "config.config_version must be a positive integer, got 0"),
        ("2", "config.config_version must be a positive integer, got '2'"),
        (True, "config.config_version must be a positive integer, got True"),
    ],
)
def test_a_config_version_this_build_cannot_read_is_refused_naming_the_file(version, message):
    with pytest.raises(ConfigError, match=f"^{re.escape('ck/checkpoint.json: ' + message)}"):
        TrainConfig.from_dict({"config_version": version}, source="ck/checkpoint.json", key="config")


def old_run(tmp_path, kept: float):
    """A run as flowrl-deploy wrote it before config_version: tau stored as the share of the targets kept."""
    run = train(TrainConfig(steps=100, out=str(tmp_path / "run"), tau=round(1 - kept, 12), **TINY), progress=False)
    checkpoint = (run.run_dir / "checkpoints" / "last").resolve()
    for path, key in ((run.run_dir / "config.json", None), (checkpoint / DOCUMENT_FILE, "config")):
        document = json.loads(path.read_text())
        config = document[key] if key else document
        del config["config_version"]
        config["tau"] = kept
        path.write_text(json.dumps(document, indent=2))
    return run.run_dir, checkpoint


def test_an_old_run_resumes_with_the_same_target_updates_and_says_so_once(tmp_path):
    run_dir, checkpoint = old_run(tmp_path, kept=0.9)
    assert resume_config(checkpoint).tau == pytest.approx(0.1, abs=1e-12)
    result = CliRunner().invoke(app, ["train", "--resume", str(run_dir), "--steps", "120", "--no-progress"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    note = (
        f"warning: {checkpoint / DOCUMENT_FILE}: config saved before config_version 2, when tau was the share of the "
        "target critics kept: its tau 0.9 is read as --tau 0.1 (the step toward the online critics), the same "
        "target updates"
    )
    assert note in output and output.count("config_version") == 1, result.output
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["config_version"] == CONFIG_VERSION and saved["tau"] == pytest.approx(0.1, abs=1e-12)
    resumed = json.loads(((run_dir / "checkpoints" / "last").resolve() / DOCUMENT_FILE).read_text())["config"]
    assert resumed["config_version"] == CONFIG_VERSION and resumed["tau"] == pytest.approx(0.1, abs=1e-12)


def test_resuming_an_old_run_with_its_stored_tau_given_again_is_refused_not_flipped(tmp_path):
    """--tau 0.9 meant 'keep 90 %' when the run was started; now it means 'move 90 %': a changed setting."""
    run_dir, _ = old_run(tmp_path, kept=0.9)
    result = CliRunner().invoke(app, ["train", "--resume", str(run_dir), "--steps", "120", "--tau", "0.9"])
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert "--tau cannot change when resuming" in output
    # the same command line as before the upgrade: say why it counts as a change, and what to pass
    assert (
        "--tau is the step toward the online critics since config_version 2: this run's --tau 0.9 of before" in output
    )
    assert "is --tau 0.1 now" in output


def test_a_changed_tau_that_is_not_the_old_meaning_of_the_saved_one_is_refused_without_the_meaning_clause():
    """Only --tau 1 - saved (a 0.1.x script's spelling of the same run) gets 'since config_version 2'."""
    saved = TrainConfig(tau=0.05, hidden=8)
    with pytest.raises(ConfigError) as refused:
        check_resume_settings({"tau": 0.3}, saved)
    assert "--tau cannot change when resuming" in str(refused.value)
    assert "config_version" not in str(refused.value)
    with pytest.raises(ConfigError, match="since config_version 2"):
        check_resume_settings({"tau": 0.95}, saved)


def flat(text: str) -> str:
    """Text with rich's panel borders dropped and every run of white space one space."""
    return " ".join(text.replace("│", " ").split())


def test_the_help_and_the_docs_say_plainly_how_to_train_with_the_reference_codes_target_rate():
    """The one departure from the reference code meant to change learning is said where users look first:
    `flowrl train --help` and docs/train.md's settings, with --tau 0.95 to reproduce the paper's code."""
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert "The paper's reference code moves them 95 % per update: pass --tau 0.95 to reproduce it." in text
    assert "The default 0.05 differs on purpose" in text
    docs = (Path(__file__).parents[2] / "docs" / "train.md").read_text(encoding="utf-8")
    settings = flat(docs.split("## Tasks and settings")[1].split("\n## ")[0])
    assert "The paper's reference code moves the target critics 95 % of the way" in settings
    assert "pass `--tau 0.95`" in settings and "`--tau 0.05`" in settings and "differs on purpose" in settings
