"""`flowrl train` and `flowrl eval` through Typer's CliRunner."""

import dataclasses
import json
import re
import shutil
import subprocess
import sys

import pytest
import typer
from tiny_training import Killed, kill_when_linking, linked, signal_at
from typer.testing import CliRunner

from flowrl_deploy.checkpoint import LAST, read_document
from flowrl_deploy.cli import app
from flowrl_deploy.train import loop
from flowrl_deploy.train.config import TrainConfig, flag
from flowrl_deploy.train.evaluate import EvalResult, checkpoint_act_fn, evaluate

runner = CliRunner()
TINY = [
    "--env",
    "Pendulum-v1",
    "--hidden",
    "16",
    "--batch-size",
    "16",
    "--start-steps",
    "100",
    "--eval-every",
    "200",
    "--eval-episodes",
    "1",
    "--save-every",
    "200",
    "--threads",
    "1",
    "--no-progress",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny networks (see tests/conftest.py)


def test_every_config_field_is_an_option_of_the_same_name():
    command = typer.main.get_command(app).commands["train"]
    options = {name for param in command.params for name in param.opts}
    for field in dataclasses.fields(TrainConfig):
        assert f"--{field.name.replace('_', '-')}" in options, field.name


@pytest.fixture
def fake_training(monkeypatch, tmp_path):
    """`loop.train` replaced by a recorder that returns at once: a bug that lets a setting through
    to training fails fast instead of starting a real (default: 1,000,000-step) run."""
    seen = {}

    def fake_train(cfg, resume=None, progress=True, **kwargs):
        seen.update(cfg=cfg, resume=resume)
        return loop.TrainResult(tmp_path, tmp_path / "ckpt", loop.Counters(env_steps=cfg.steps))

    monkeypatch.setattr(loop, "train", fake_train)
    return seen


def test_options_reach_the_config(fake_training, tmp_path):
    """Every option, each given a valid value other than its default, lands in the config as given."""
    values = dict(
        env="dmc:dog-run", steps=123, seed=7, out=str(tmp_path), hidden=64, flow_steps=3, solver="euler",
        gamma=0.98, lr=1e-3, tau=0.9, policy_delay=3, lam=0.2, expectile=0.8, cfm_weighting="sample",
        batch_size=64, buffer_size=5000, start_steps=100, recent_fraction=0.3, recent_window=512, eval_every=500,
        eval_episodes=2, log_every=50, save_every=1000, save_replay=True, device="cpu", bf16=True, compile=True,
        cuda_graphs=False, threads=1,
    )  # fmt: skip
    default = TrainConfig()
    assert list(values) == [field.name for field in dataclasses.fields(TrainConfig)]  # a new field joins the table
    args = ["train"]
    for name, value in values.items():
        assert value != getattr(default, name), name  # else a dropped option would pass unseen
        option = flag(name)
        args += [option if value else f"--no-{option[2:]}"] if isinstance(value, bool) else [option, str(value)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert fake_training["cfg"] == TrainConfig(**values)
    assert fake_training["resume"] is None


def test_a_run_that_is_all_warm_up_is_warned_about(tmp_path):
    for start, updates in ((41, 0), (40, 1)):  # updates begin at step --start-steps
        out = tmp_path / str(start)
        args = ["train", *TINY, "--steps", "40", "--start-steps", str(start), "--eval-every", "0", "--out", str(out)]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert read_document(out / "checkpoints" / "last")["counters"]["updates"] == updates
        assert ("no gradient update will run" in result.output) == (updates == 0)


def test_a_refused_run_is_one_error_line_without_the_no_update_warning_before_it(tmp_path):
    """`--out` an existing run printed the warm-up warning first, then the real error."""
    out = tmp_path / "run"
    assert runner.invoke(app, ["train", *TINY, "--steps", "40", "--eval-every", "0", "--out", str(out)]).exit_code == 0
    result = runner.invoke(app, ["train", *TINY, "--steps", "40", "--start-steps", "41", "--out", str(out)])
    assert result.exit_code == 1
    assert "warning" not in result.output and result.output.startswith("error: ")


def test_no_update_at_all_is_warned_about_whatever_the_reason(tmp_path):
    """Updates need the warm-up over and a batch in the buffer: --batch-size above --steps means none."""
    for batch, updates in ((41, 0), (40, 1)):
        out = tmp_path / str(batch)
        args = ["train", *TINY, "--steps", "40", "--start-steps", "10", "--batch-size", str(batch), "--eval-every",
                "0", "--out", str(out)]  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert read_document(out / "checkpoints" / "last")["counters"]["updates"] == updates
        warning = f"warning: --batch-size {batch} > --steps 40: the buffer never holds a batch, so no gradient update"
        assert (warning in result.output) == (updates == 0)


def test_train_then_eval_then_resume(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", *TINY, "--steps", "200", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "last checkpoint" in result.output

    result = runner.invoke(app, ["eval", str(out), "--episodes", "2", "--flow-steps", "4"])
    assert result.exit_code == 0, result.output
    assert "Pendulum-v1: return" in result.output and "±" in result.output
    # --flow-steps 4; Pendulum's episodes end by their 200-step time limit only
    assert result.output.strip().endswith(
        "over 2 episodes (N=4 midpoint); length 200 ± 0 steps, 0 of 2 ended by termination"
    )

    returns: dict[int, EvalResult] = {}  # --flow-steps reaches the sampler, not only the label
    for n in (1, 4):
        result = runner.invoke(app, ["eval", str(out), "--episodes", "2", "--flow-steps", str(n), "--device", "cpu"])
        assert result.exit_code == 0, result.output
        returns[n] = evaluate(checkpoint_act_fn(out, n, "cpu"), "Pendulum-v1", 2)
        assert f"return {returns[n]} (N={n} midpoint)" in result.output
    assert returns[1].returns != returns[4].returns

    result = runner.invoke(app, ["train", "--resume", str(out), "--steps", "400", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert read_document(out / "checkpoints" / "last")["counters"]["env_steps"] == 400


def test_resuming_from_an_older_checkpoint_refuses_to_overwrite_later_ones(tmp_path):
    out = tmp_path / "run"
    args = ["train", *TINY, "--steps", "300", "--save-every", "100", "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    later = out / "checkpoints" / "step_000000300" / "model.safetensors"
    before = later.read_bytes()
    result = runner.invoke(app, ["train", "--resume", str(out / "checkpoints" / "step_000000100"), "--no-progress"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "checkpoints after step_000000100 (step_000000200, step_000000300)" in result.output
    assert f"continue the run with --resume {out} (from step_000000300)" in result.output  # not "the last one"
    assert later.read_bytes() == before


def test_resuming_a_copy_of_a_checkpoint_outside_its_run_is_refused_and_deletes_nothing(tmp_path):
    out = tmp_path / "run"
    args = ["train", *TINY, "--steps", "200", "--save-every", "100", "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    backup = shutil.copytree(out / "checkpoints" / "step_000000100", out / "backup" / "step_000000100")
    result = runner.invoke(app, ["train", "--resume", str(backup), "--steps", "150", "--no-progress"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "does not lie in the checkpoints/ folder of a run directory" in result.output
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before
    assert "step_000000200" in before


def test_a_file_in_place_of_the_checkpoints_folder_fails_before_training(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoints").write_text("")
    result = runner.invoke(app, ["train", *TINY, "--steps", "100000", "--out", str(out)])  # would take minutes
    assert result.exit_code == 1
    assert result.output == f"error: cannot create the checkpoints folder {out}/checkpoints: File exists\n"


def test_a_checkpoint_too_large_to_write_stops_with_one_line_not_a_traceback(tmp_path):
    """The review's `ulimit -f 200` run: the checkpoint at the end cannot be written."""
    args = ["train", "--env", "dmc:cartpole-balance", "--steps", "300", "--start-steps", "200", "--hidden", "32",
            "--eval-every", "0", "--threads", "1", "--no-progress", "--out", str(tmp_path / "run")]  # fmt: skip
    # the limit is set in the child itself: a preexec_fn runs between fork and exec, where gRPC's fork
    # handlers (gRPC is loaded by earlier tests) once aborted the child
    limited = (
        "import resource, runpy; "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1])); "
    )
    result = subprocess.run(
        [sys.executable, "-c", limited + "runpy.run_module('flowrl_deploy.cli', run_name='__main__')", *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"error: cannot write the checkpoint {tmp_path}/run/checkpoints/step_000000300:")
    assert result.stderr.endswith("File too large; training stopped at env step 300, and no checkpoint was saved\n")
    assert list((tmp_path / "run" / "checkpoints").iterdir()) == []  # no partial checkpoint


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: (p / "checkpoint.json").write_text("{oops"), "corrupt"),
        (lambda p: (p / "checkpoint.json").write_text('{"format": "someone-else"}'), "not a flowrl-deploy checkpoint"),
        (lambda p: None, "no flowrl-deploy checkpoint"),
    ],
)
def test_eval_of_a_bad_checkpoint_is_one_clear_line(tmp_path, setup, message):
    setup(tmp_path)
    result = runner.invoke(app, ["eval", str(tmp_path)])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_an_unknown_env_fails_at_once(tmp_path):
    result = runner.invoke(app, ["train", "--env", "dmc:cartpole-fly", "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 1
    assert "dmc:<domain>-<task>" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--expectile", "1.5"], "--expectile must lie in [0, 1]"),
        (["--batch-size", "64", "--buffer-size", "32"], "--batch-size (64) cannot exceed --buffer-size (32)"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--tau", "0"], "--tau must lie in (0, 1], got 0.0"),
        (["--out", ""], "--out must name a directory"),
        (["--seed", "4294967296"], "--seed must lie in [0, 2**32), got 4294967296"),
        (["--seed", "99999999999999999999"], "--seed must lie in [0, 2**32), got 99999999999999999999"),
        (["--flow-steps", "100000"], "--flow-steps must lie in [1, 1000], got 100000"),
    ],
)
def test_an_out_of_range_setting_is_one_clear_line(fake_training, tmp_path, args, message):
    result = runner.invoke(app, ["train", "--out", str(tmp_path), *args])
    assert "cfg" not in fake_training, "training started"
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {message}") and result.output.count("\n") == 1


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "fast"])
def test_a_float_option_takes_only_finite_numbers(tmp_path, value):
    result = runner.invoke(app, ["train", "--lr", value, "--out", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output  # a usage error, before anything runs
    assert "Invalid value for '--lr'" in result.output
    assert "finite number" in result.output or "is not a number" in result.output


@pytest.mark.parametrize("args", [["--hidden", "100000"], ["--buffer-size", "100000000000"]])
def test_sizes_beyond_the_machines_memory_are_refused_before_allocating(tmp_path, args):
    # on the CPU: on a GPU the networks are weighed against GPU memory ("GiB of GPU memory for ...")
    result = runner.invoke(app, ["train", *TINY, *args, "--device", "cpu", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "GiB of memory for Pendulum-v1" in result.output and "this machine has" in result.output
    assert not (tmp_path / "run").exists()


def test_more_threads_than_cores_is_one_clear_line(tmp_path):
    result = runner.invoke(app, ["train", *TINY, "--threads", "100000", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "--threads 100000 is more than this machine can run" in result.output
    assert not (tmp_path / "run").exists()


def test_a_config_file_with_a_wrong_type_is_one_clear_line(tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, ["train", *TINY, "--steps", "120", "--out", str(out)]).exit_code == 0
    document = out / "checkpoints" / "last" / "checkpoint.json"  # resume reads the checkpoint's own config
    saved = json.loads(document.read_text())
    saved["config"]["hidden"] = "64"
    document.write_text(json.dumps(saved))
    result = runner.invoke(app, ["train", "--resume", str(out), "--steps", "150", "--no-progress"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output == f"error: {document.resolve()}: config.hidden must be an integer, got '64'\n"  # no flag


def test_out_pointing_at_a_file_is_one_clear_line(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    result = runner.invoke(app, ["train", *TINY, "--steps", "50", "--out", str(target)])
    assert result.exit_code == 1
    assert "is a file, not a directory" in result.output and "Traceback" not in result.output
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("first", ["SIGINT", "SIGTERM"])
def test_a_second_ctrl_c_interrupts_at_once_with_its_exit_status(monkeypatch, tmp_path, first):
    """A second Ctrl-C does not wait for the step to end, whatever the first signal was; the exit status is
    the shell's 130."""
    import signal

    signal_at(monkeypatch, 250, getattr(signal, first), signal.SIGINT)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", *TINY, "--steps", "100000", "--out", str(out)])
    assert result.exit_code == 130, result.output
    assert result.output.splitlines()[-1:] == [  # the last good checkpoint is named (it was not): step 200's
        f"stopped at once by a second Ctrl-C: the last checkpoint saved is {out / 'checkpoints' / 'step_000000200'}; "
        f"continue with --resume {out}",
    ]  # and only that: the generic "interrupted (Ctrl-C): flowrl train stopped before it finished" said less
    assert "interrupted (Ctrl-C)" not in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGUSR1", "SIGUSR2", "SIGHUP"])
def test_a_repeated_scheduler_signal_does_not_abort_the_final_save(monkeypatch, tmp_path, signum):
    """A scheduler may deliver its SIGTERM twice (to every process of the step, and forwarded by srun): the
    repeat aborted the final save, and the run fell back to its last periodic checkpoint. Now only a second
    Ctrl-C stops at once; the run still saves step 250 and exits 128 + the first signal."""
    import signal

    signal_at(monkeypatch, 250, getattr(signal, signum), getattr(signal, signum))
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", *TINY, "--steps", "100000", "--out", str(out)])
    assert result.exit_code == 128 + getattr(signal, signum), result.output
    assert result.output.splitlines()[-1] == (
        f"interrupted at env step 250; last checkpoint {out / 'checkpoints' / 'step_000000250'}; "
        f"continue with --resume {out}"
    )
    assert read_document(out / "checkpoints" / "last")["counters"]["env_steps"] == 250


def test_a_second_signal_before_any_checkpoint_says_none_was_saved(monkeypatch, tmp_path):
    import signal

    signal_at(monkeypatch, 150, signal.SIGINT, signal.SIGINT)
    result = runner.invoke(app, ["train", *TINY, "--steps", "100000", "--out", str(tmp_path / "run")])
    assert result.exit_code == 130, result.output
    assert result.output.splitlines()[-1:] == ["stopped at once by a second Ctrl-C: no checkpoint was saved"]
    assert "interrupted (Ctrl-C)" not in result.output


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2", "SIGHUP"])
def test_ctrl_c_or_sigterm_saves_last_and_exits_with_a_message(monkeypatch, tmp_path, signum):
    """The first SIGINT (Ctrl-C), SIGTERM (a scheduler's stop), SIGUSR1 or SIGUSR2 (a scheduler's notice
    before its time limit: SLURM's --signal=USR1@300, LSF, submitit) or SIGHUP (a closed terminal) stops the
    loop between two steps, saves a resumable `last`, says so, and exits with the shell's code for the signal
    (128 + its number). SIGUSR1/2 and SIGHUP killed the run at once, losing every step since the last save."""
    import signal

    signal_at(monkeypatch, 150, getattr(signal, signum))
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", *TINY, "--steps", "100000", "--out", str(out)])
    assert result.exit_code == 128 + getattr(signal, signum), result.output  # 130 for Ctrl-C, 143 for SIGTERM
    assert "interrupted at env step 150" in result.output and "--resume" in result.output
    assert "Traceback" not in result.output
    assert read_document(out / "checkpoints" / "last")["counters"]["env_steps"] == 150
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    for other in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
        assert signal.getsignal(other) is signal.SIG_DFL

    monkeypatch.undo()
    result = runner.invoke(app, ["train", "--resume", str(out), "--steps", "200", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert read_document(out / "checkpoints" / "last")["counters"]["env_steps"] == 200


def test_resume_refuses_settings_it_would_ignore_and_takes_where_and_how_it_runs(tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, ["train", *TINY, "--steps", "120", "--out", str(out)]).exit_code == 0

    result = runner.invoke(app, ["train", "--resume", str(out), "--steps", "150", "--hidden", "999", "--no-progress"])
    assert result.exit_code == 1
    assert "--hidden cannot change when resuming" in result.output and "Traceback" not in result.output
    assert "--env" not in result.output  # only the changed setting is named
    assert read_document(out / "checkpoints" / "last")["counters"]["env_steps"] == 120

    # the saved values themselves ("--save-replay cannot change" refused the value the run already had)
    same = ["--env", "Pendulum-v1", "--hidden", "16", "--no-save-replay", "--lam", "0.1", "--solver", "midpoint"]
    result = runner.invoke(app, ["train", "--resume", str(out), "--steps", "130", *same, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert read_document(out / "checkpoints" / "last")["counters"]["env_steps"] == 130

    result = runner.invoke(
        app,
        [
            "train", "--resume", str(out), "--steps", "150", "--device", "cpu", "--threads", "1", "--no-cuda-graphs",
            "--eval-every", "15", "--eval-episodes", "1", "--log-every", "5", "--no-progress",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = read_document(out / "checkpoints" / "last")
    assert document["counters"]["env_steps"] == 150 and document["config"]["device"] == "cpu"
    assert document["config"]["cuda_graphs"] is False and document["config"]["eval_every"] == 15
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "charts/eval_return" in r and r["step"] > 130] == [135, 150]

    result = runner.invoke(app, ["train", "--resume", str(out), "--steps", "160", "--save-every", "10"])
    assert result.exit_code == 1 and "--save-every cannot change when resuming" in result.output


def test_a_resume_without_a_saved_buffer_warns_and_save_replay_may_be_turned_on(tmp_path):
    """A checkpoint saved without --save-replay resumes with an empty buffer: say so once training
    starts; --save-replay may be given with --resume (it only changes what later checkpoints store)."""
    out = tmp_path / "run"
    assert runner.invoke(app, ["train", *TINY, "--steps", "120", "--out", str(out)]).exit_code == 0
    result = runner.invoke(app, ["train", "--resume", str(out), "--steps", "130", "--save-replay", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (
        "warning: the replay buffer was not saved (--save-replay): it restarts empty, and updates wait until it holds "
        "100 transitions"
    ) in " ".join(result.output.split())
    last = out / "checkpoints" / "last"
    assert read_document(last)["config"]["save_replay"] is True and (last / "replay.safetensors").is_file()
    result = runner.invoke(app, ["train", "--resume", str(out), "--steps", "140", "--no-progress"])
    assert result.exit_code == 0 and "warning" not in result.output, result.output  # the buffer was saved
    (out / "checkpoints" / "last" / "replay.safetensors").unlink()  # deleted to save disk: said, not silent
    result = runner.invoke(app, ["train", "--resume", str(out), "--steps", "150", "--no-progress"])
    assert result.exit_code == 0 and "warning: the replay buffer was not saved" in result.output, result.output


def test_resume_takes_another_spelling_of_the_run_folder_and_env_id(tmp_path, monkeypatch):
    """--out as a relative, ./ or absolute path of the folder being resumed (a copy: its own folder,
    not the original's) and --env as gym:<id> repeat the run's own values; another folder is refused."""
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["train", *TINY, "--steps", "120", "--out", "runs/orig"]).exit_code == 0
    shutil.copytree(tmp_path / "runs" / "orig", tmp_path / "runs" / "copy", symlinks=True)
    for steps, out, env in (
        (130, "./runs/copy", "gym:Pendulum-v1"),
        (140, str(tmp_path / "runs" / "copy"), "Pendulum-v1"),
    ):
        args = ["train", "--resume", "runs/copy", "--steps", str(steps), "--out", out, "--env", env, "--no-progress"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert read_document(tmp_path / "runs" / "copy" / "checkpoints" / "last")["counters"]["env_steps"] == steps
    assert json.loads((tmp_path / "runs" / "copy" / "config.json").read_text())["out"] == str(
        (tmp_path / "runs" / "copy").resolve()
    )
    result = runner.invoke(app, ["train", "--resume", "runs/copy", "--steps", "150", "--out", "runs/orig"])
    assert result.exit_code == 1 and "--out cannot change when resuming" in result.output, result.output


def test_resuming_a_finished_run_is_refused_in_one_line_and_changes_no_file(tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, ["train", *TINY, "--steps", "120", "--out", str(out)]).exit_code == 0
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    for steps in ([], ["--steps", "120"]):
        result = runner.invoke(app, ["train", "--resume", str(out), *steps, "--no-progress"])
        assert result.exit_code == 1
        assert result.output == (
            f"error: {out} already finished at 120 env steps (--steps 120); pass a larger --steps to extend it\n"
        )
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()} == files


def test_a_diverged_policy_stops_training_with_one_clear_line(monkeypatch, tmp_path):
    """NaN actions would reach the simulator (dm_control raises PhysicsError); stop with a message instead."""
    import numpy as np

    monkeypatch.setattr(loop.FlowRL, "act", lambda self, obs: np.full(1, np.nan, np.float32))
    result = runner.invoke(app, ["train", *TINY, "--steps", "150", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "NaN/infinite action at env step 100" in result.output and "Traceback" not in result.output


def test_resuming_a_config_without_some_fields_warns_and_names_their_defaults(tmp_path):
    """A checkpoint config without a field (older version, or edited) resumes with the default: say so."""
    out = tmp_path / "run"
    assert runner.invoke(app, ["train", *TINY, "--steps", "120", "--out", str(out)]).exit_code == 0
    document = out / "checkpoints" / "last" / "checkpoint.json"
    saved = json.loads(document.read_text())
    del saved["config"]["lr"], saved["config"]["gamma"], saved["config"]["threads"], saved["config"]["steps"]
    document.write_text(json.dumps(saved))
    args = ["train", "--resume", str(out), "--steps", "130", "--threads", "1", "--no-progress"]
    result = runner.invoke(app, args)  # --steps and --threads given: not defaulted
    assert result.exit_code == 0, result.output
    assert (
        "warning: the checkpoint's config has no gamma, lr (saved by an older version or edited by hand); "
        f"the resumed run uses the defaults: gamma {TrainConfig.gamma}, lr {TrainConfig.lr}"
    ) in " ".join(result.output.split())


def test_a_refused_resume_says_only_why_without_the_defaults_warning_first(tmp_path):
    """The defaulted-fields warning came before an error that train() raises (here: --device cuda on
    a machine without CUDA, refused where the run starts)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA, where --device cuda is refused")
    out = tmp_path / "run"
    assert runner.invoke(app, ["train", *TINY, "--steps", "120", "--out", str(out)]).exit_code == 0
    document = out / "checkpoints" / "last" / "checkpoint.json"
    saved = json.loads(document.read_text())
    del saved["config"]["lr"]
    document.write_text(json.dumps(saved))
    result = runner.invoke(app, ["train", "--resume", str(out), "--steps", "140", "--device", "cuda"])
    assert result.exit_code == 1 and result.output.startswith("error: --device cuda was asked for")
    assert "warning" not in result.output


def test_the_help_says_each_evaluation_runs_its_episodes_twice():
    """An evaluation costs 2 × --eval-episodes episodes (sampled, then from a0 = 0), which nothing said."""
    command = typer.main.get_command(app).commands["train"]
    (option,) = [param for param in command.params if param.name == "eval_episodes"]
    assert "each run twice: with sampled noise (charts/eval_return" in option.help
    assert "from a0 = 0 (charts/eval_return_deterministic)" in option.help


@pytest.mark.parametrize("signum", ["SIGHUP", "SIGINT"])
def test_sighup_or_sigint_ignored_at_start_stays_ignored(monkeypatch, tmp_path, signum):
    """Under `nohup` (SIGHUP ignored) a closed terminal must not stop the run, and `flowrl train … &` in a
    script (whose shell starts background jobs with SIGINT ignored) must not stop on a Ctrl-C meant for the
    script's foreground job, as `flowrl serve` does not: train took over an ignored SIGINT."""
    import signal

    sig = getattr(signal, signum)
    signal_at(monkeypatch, 150, sig)
    previous = signal.signal(sig, signal.SIG_IGN)
    try:
        result = runner.invoke(app, ["train", *TINY, "--steps", "200", "--out", str(tmp_path / "run")])
        assert signal.getsignal(sig) is signal.SIG_IGN
    finally:
        signal.signal(sig, previous)
    assert result.exit_code == 0, result.output
    assert "trained 200 env steps" in result.output


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGUSR1", "SIGUSR2"])
def test_a_scheduler_signal_ignored_at_start_still_stops_the_run_gracefully(monkeypatch, tmp_path, signum):
    """Only SIGHUP keeps an ignore inherited at start (nohup): a scheduler's stop or time-limit notice is taken
    even so, or the run would go on until the scheduler's SIGKILL and lose every step since its last save."""
    import signal

    signal_at(monkeypatch, 150, getattr(signal, signum))
    previous = signal.signal(getattr(signal, signum), signal.SIG_IGN)
    out = tmp_path / "run"
    try:
        result = runner.invoke(app, ["train", *TINY, "--steps", "300", "--out", str(out)])
    finally:
        signal.signal(getattr(signal, signum), previous)
    assert result.exit_code == 128 + getattr(signal, signum), result.output
    assert "interrupted at env step 150" in result.output
    assert read_document(out / "checkpoints" / "last")["counters"]["env_steps"] == 150


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_tensorboard_events_that_cannot_be_written_stop_the_run_in_one_line_naming_the_last_checkpoint(
    monkeypatch, tmp_path, capfd
):
    """An event file that cannot grow (a file-size limit, a quota, storage gone read-only) killed TensorBoard's
    writer thread with a traceback on stderr, and closing the writer raised its error again over the one the
    run stopped with, so the user lost 'training stopped at env step N, and the last checkpoint saved is …'."""
    import errno

    from tensorboard.summary.writer import record_writer

    real_write, written = record_writer.RecordWriter.write, []

    def write_until_the_file_is_too_large(self, data):
        written.append(len(data))
        if sum(written) > 4000:
            raise OSError(errno.EFBIG, "File too large")
        real_write(self, data)

    monkeypatch.setattr(record_writer.RecordWriter, "write", write_until_the_file_is_too_large)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", *TINY, "--log-every", "10", "--steps", "100000", "--out", str(out)])
    captured = capfd.readouterr()
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output + captured.out + captured.err
    (line,) = result.output.splitlines()
    assert re.fullmatch(
        rf"error: cannot write {re.escape(str(out / 'tensorboard'))}: File too large; training stopped at env step "
        rf"\d+, and (the last checkpoint saved is {re.escape(str(out / 'checkpoints'))}/step_\d+; once the run's "
        rf"folder can be written again, continue with --resume {re.escape(str(out))}|no checkpoint was saved)",
        line,
    ), line


def tensorboard_failing_from(monkeypatch, failing: list) -> None:
    """TensorBoard's event file fails (ENOSPC) from the time ``failing`` is not empty: a full disk."""
    import errno

    from tensorboard.summary.writer import record_writer

    for name in ("write", "flush"):
        real = getattr(record_writer.RecordWriter, name)

        def fails_when_full(self, *args, _real=real):
            if failing:
                raise OSError(errno.ENOSPC, "No space left on device")
            return _real(self, *args)

        monkeypatch.setattr(record_writer.RecordWriter, name, fails_when_full)


def test_a_checkpoint_that_cannot_be_written_is_named_over_tensorboard_failing_too(monkeypatch, tmp_path, capfd):
    """A full disk fails the checkpoint, then TensorBoard's last flush at close: the line names the checkpoint
    (the error the run stopped with), not the event file's failure that came after it."""
    from flowrl_deploy.errors import FlowRLError
    from flowrl_deploy.train import retention

    failing: list[int] = []
    real_save = retention.RunCheckpoints.save

    def save(self, step, write, *, best=False):
        if step >= 400:
            failing.append(step)
            raise FlowRLError(f"cannot write {self.dir / retention.step_name(step)}: No space left on device")
        return real_save(self, step, write, best=best)

    monkeypatch.setattr(retention.RunCheckpoints, "save", save)
    tensorboard_failing_from(monkeypatch, failing)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", *TINY, "--steps", "100000", "--out", str(out)])
    captured = capfd.readouterr()
    assert failing and result.exit_code == 1, result.output
    assert "Traceback" not in result.output + captured.out + captured.err
    checkpoints = out / "checkpoints"
    assert result.output.splitlines() == [
        f"error: cannot write {checkpoints / 'step_000000400'}: No space left on device; training stopped at env "
        f"step 400, and the last checkpoint saved is {checkpoints / 'step_000000200'}"
    ]


def test_a_second_ctrl_c_exits_130_over_tensorboard_failing_at_close(monkeypatch, tmp_path, capfd):
    """A second Ctrl-C while TensorBoard's event file cannot be flushed still stops at once with 130 and its
    message: the flush's failure at close does not turn it into exit 1 naming tensorboard."""
    import signal

    failing: list[int] = []
    signal_at(monkeypatch, 250, signal.SIGINT, signal.SIGINT)

    class FailingFrom250(loop.Progress):
        def update(self, steps: int, updates: int, force: bool = False) -> None:
            if steps == 250:
                failing.append(steps)
            super().update(steps, updates, force=force)

    monkeypatch.setattr(loop, "Progress", FailingFrom250)
    tensorboard_failing_from(monkeypatch, failing)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", *TINY, "--steps", "100000", "--out", str(out)])
    captured = capfd.readouterr()
    assert failing and result.exit_code == 130, result.output
    assert "Traceback" not in result.output + captured.out + captured.err
    assert result.output.splitlines() == [
        f"stopped at once by a second Ctrl-C: the last checkpoint saved is {out / 'checkpoints' / 'step_000000200'}; "
        f"continue with --resume {out}",
    ]


def test_resume_if_exists_starts_resumes_and_finishes_with_the_same_command(monkeypatch, tmp_path):
    """A scheduler requeues a job with its first command line: --resume-if-exists starts --out when it holds
    no checkpoint (a first start, or a requeue after a kill before the first checkpoint; a graceful stop, even
    in the warm-up, saves last), resumes it when it holds one, and exits 0 saying so when it is finished (a
    requeue script had to branch on whether checkpoints/last exists, and a finished run's requeue failed
    with status 1)."""
    import signal

    out = tmp_path / "run"
    command = ["train", *TINY, "--steps", "300", "--seed", "3", "--out", str(out), "--resume-if-exists"]
    with monkeypatch.context() as stopping:
        signal_at(stopping, 150, signal.SIGTERM)
        result = runner.invoke(app, command)
    assert result.exit_code == 143, result.output  # a first start
    assert read_document(out / "checkpoints" / "last")["config"]["seed"] == 3

    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output  # resumed: a plain repeat is refused ('already holds a run')
    assert result.output.splitlines()[-1].startswith("trained 300 env steps")
    assert read_document(out / "checkpoints" / "last")["counters"]["env_steps"] == 300

    result = runner.invoke(app, command)
    assert result.exit_code == 0 and result.output == f"{out} already finished at 300 env steps (--steps 300)\n"

    result = runner.invoke(app, [*command, "--lr", "0.01"])  # a setting the run cannot change is still refused
    assert result.exit_code == 1 and "--lr cannot change when resuming" in result.output, result.output
    result = runner.invoke(app, [*command, "--resume", str(out)])
    assert result.exit_code == 1
    assert result.output == "error: --resume-if-exists resumes --out: give it or --resume, not both\n"


@pytest.mark.parametrize(("killed_at", "last"), [(200, "is missing, not"), (400, "points at step_000000200, not")])
def test_resume_if_exists_resumes_a_run_killed_between_saving_and_moving_last(monkeypatch, tmp_path, killed_at, last):
    """A run killed before its first `last` link (or before moving it) holds a complete checkpoint: its requeue
    with --resume-if-exists resumes the newest one, and does not start afresh, which is refused ('holds
    checkpoints') with exit 1."""
    out = tmp_path / "run"
    command = ["train", *TINY, "--steps", "600", "--out", str(out), "--resume-if-exists"]
    with monkeypatch.context() as killing, pytest.raises(Killed):
        kill_when_linking(killing, LAST, killed_at)
        runner.invoke(app, command)
    assert linked(out, LAST) == ("last" if killed_at == 200 else "step_000000200")

    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    newest = f"step_{killed_at:09d}"
    assert (
        f"warning: {out / 'checkpoints' / 'last'} {last} at the newest complete checkpoint {newest} (the run was "
        "killed between saving a checkpoint and moving last?); last now names it"
    ) in result.output.splitlines()
    assert result.output.splitlines()[-1].startswith("trained 600 env steps")
    assert linked(out, LAST) == "step_000000600"


COUNT_OPTIONS = ("steps", "batch_size", "buffer_size", "start_steps", "recent_window", "eval_every", "log_every",
                 "save_every")  # fmt: skip


def test_options_that_count_steps_or_transitions_take_1e6_and_1_000_000(fake_training, tmp_path):
    """RL users write 1e6: it was refused ('unable to parse string as an integer'). A whole number in scientific
    notation or with underscores is that number, on every option counting env steps or transitions."""
    values = dict(steps="2e6", batch_size="2.56e2", buffer_size="1_000_000", start_steps="5E3", recent_window="4096",
                  eval_every="1e4", log_every="1_000", save_every="5e4")  # fmt: skip
    assert tuple(values) == COUNT_OPTIONS
    args = [x for name, value in values.items() for x in (flag(name), value)]
    result = runner.invoke(app, ["train", "--out", str(tmp_path), *args])
    assert result.exit_code == 0, result.output
    cfg = fake_training["cfg"]
    assert {name: getattr(cfg, name) for name in values} == dict(
        steps=2_000_000, batch_size=256, buffer_size=1_000_000, start_steps=5000, recent_window=4096,
        eval_every=10_000, log_every=1000, save_every=50_000,
    )  # fmt: skip
    assert all(type(getattr(cfg, name)) is int for name in values)


@pytest.mark.parametrize("value", ["1.5", "1.5e0", "abc", "nan", "inf", "1e", "0x10"])
def test_a_count_that_is_no_whole_number_is_a_usage_error_saying_how_to_write_one(fake_training, tmp_path, value):
    for name in COUNT_OPTIONS:
        result = runner.invoke(app, ["train", "--out", str(tmp_path), flag(name), value])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert (
            f"Invalid value for '{flag(name)}': {value!r} is not a whole number (write 1000000, 1_000_000 or "
            "1e6)" in " ".join(result.output.split())
        ), result.output
    assert "cfg" not in fake_training


@pytest.mark.parametrize("value", ["1e999999999", "1e19", "10000000000000000000"])
def test_a_count_too_large_to_hold_is_refused_at_once(fake_training, tmp_path, value):
    """--steps 1e999999999 built a billion-digit integer (15 s and 458 MB before it was killed)."""
    result = runner.invoke(app, ["train", "--out", str(tmp_path), "--steps", value])
    assert result.exit_code == 2, result.output
    assert f"{value!r} is too large for a count (at most 18 digits)" in " ".join(result.output.split()), result.output


def test_a_recent_window_as_large_as_the_buffer_is_warned_about(tmp_path):
    """--recent-window 100000000 with --buffer-size 1000000 was taken silently: a window holding the whole buffer
    makes the recent share uniform, as --recent-fraction 0 would."""
    args = ["train", *TINY, "--steps", "200", "--buffer-size", "1000", "--recent-window", "1e8"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert (
        "warning: --recent-window 100000000 >= --buffer-size 1000: the newest window is the whole buffer, so once "
        "the buffer is full the recent share of each batch (--recent-fraction 0.2) is drawn uniformly too, as with "
        "--recent-fraction 0\n"
    ) in result.output
    quiet = runner.invoke(app, [*args[:-2], "--recent-window", "999", "--out", str(tmp_path / "run2")])
    assert quiet.exit_code == 0 and "--recent-window" not in quiet.output, quiet.output
