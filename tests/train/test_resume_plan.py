"""The resume's planning lives in the library (`plan_resume`), and `train()` says what `flowrl train` says
before its first step: a Python caller got the command's refusals but neither of its two resume warnings
(the replay buffer not saved, config fields filled with defaults) nor the one of a run without updates."""

import json
import logging

import pytest
from tiny_training import TINY, TINY_FLAGS
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.train.config import ConfigError, TrainConfig
from flowrl_deploy.train.loop import train
from flowrl_deploy.train.resume import plan_resume, resume_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

runner = CliRunner()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run of 120 steps, saved without its replay buffer, whose checkpoint's config lacks gamma and lr."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(TrainConfig(steps=120, out=str(out), **TINY), progress=False)
    document = out / "checkpoints" / "last" / "checkpoint.json"
    saved = json.loads(document.read_text())
    del saved["config"]["gamma"], saved["config"]["lr"]
    document.write_text(json.dumps(saved))
    return out


def library_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "flowrl.train"]


def test_the_library_resume_says_the_commands_warnings_in_its_order(finished, tmp_path, caplog):
    import shutil

    cli_run, library_run = (shutil.copytree(finished, tmp_path / name, symlinks=True) for name in ("cli", "library"))
    result = runner.invoke(app, ["train", "--resume", str(cli_run), "--steps", "130", "--no-progress"])
    assert result.exit_code == 0, result.output
    printed = [line.removeprefix("warning: ") for line in result.output.splitlines() if line.startswith("warning: ")]
    with caplog.at_level(logging.WARNING, logger="flowrl.train"):
        train(resume_config(library_run, steps=130), resume=library_run, progress=False)
    assert (
        library_warnings(caplog)
        == printed
        == [
            "the replay buffer was not saved (--save-replay): it restarts empty, and updates wait until it holds 100 "
            "transitions",
            "the checkpoint's config has no gamma, lr (saved by an older version or edited by hand); the resumed run "
            f"uses the defaults: gamma {TrainConfig.gamma}, lr {TrainConfig.lr}",
        ]
    )


def test_a_field_the_caller_sets_is_not_called_defaulted(finished, tmp_path, caplog):
    """As `flowrl train --resume RUN --log-every 50` does not call log_every defaulted."""
    import shutil

    run = shutil.copytree(finished, tmp_path / "run", symlinks=True)
    document = run / "checkpoints" / "last" / "checkpoint.json"
    saved = json.loads(document.read_text())
    del saved["config"]["log_every"]
    document.write_text(json.dumps(saved))
    with caplog.at_level(logging.WARNING, logger="flowrl.train"):
        train(resume_config(run, steps=130).override(log_every=50), resume=run, progress=False)
    assert [text for text in library_warnings(caplog) if "config has no" in text] == [
        "the checkpoint's config has no gamma, lr (saved by an older version or edited by hand); the resumed run "
        f"uses the defaults: gamma {TrainConfig.gamma}, lr {TrainConfig.lr}"
    ]


def test_a_run_without_updates_is_warned_about_by_the_library_too(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="flowrl.train"):
        train(TrainConfig(**{**TINY, "steps": 40, "start_steps": 41, "eval_every": 0}, out=str(tmp_path / "run")),
              progress=False)  # fmt: skip
    assert library_warnings(caplog) == [
        "--start-steps 41 > --steps 40: every step is random warm-up, so no gradient update will run and the "
        "checkpoint holds the untrained policy"
    ]


def test_plan_resume_takes_the_overrides_and_refuses_the_rest(finished):
    plan = plan_resume(finished, 150, {"eval_every": 0, "steps": 150, "threads": 1})
    assert (plan.cfg.steps, plan.cfg.eval_every, plan.cfg.threads, plan.finished_at) == (150, 0, 1, None)
    assert plan.cfg.gamma == TrainConfig.gamma  # the default of a field the checkpoint lacks
    with pytest.raises(ConfigError, match=r"^--hidden cannot change when resuming"):
        plan_resume(finished, 150, {"hidden": 32})
    with pytest.raises(ConfigError, match=r"^hidden cannot change when resuming"):
        plan_resume(finished, 150, {"hidden": 32}, flags=False)


def test_plan_resume_of_a_finished_run_is_refused_unless_finished_ok(finished):
    with pytest.raises(ConfigError, match=r"already finished at 120 env steps \(--steps 120\)"):
        plan_resume(finished)
    plan = plan_resume(finished, finished_ok=True)
    assert (plan.finished_at, plan.cfg.steps, plan.warnings) == (120, 120, ())
    result = runner.invoke(app, ["train", *TINY_FLAGS, "--steps", "120", "--out", str(finished), "--resume-if-exists"])
    assert result.exit_code == 0 and result.output == f"{finished} already finished at 120 env steps (--steps 120)\n"
