import errno
import json
import os
import re
import resource

import numpy as np
import pytest
from intact_checkpoint import intact_checkpoint

from flowrl_deploy import atomic, versions
from flowrl_deploy import checkpoint as ckpt
from flowrl_deploy.errors import CheckpointError
from flowrl_deploy.spec import PolicySpec

SPEC = PolicySpec(obs_dim=3, act_dim=2, action_low=(-1.0, -1.0), action_high=(1.0, 1.0), hidden=4, env_id="dmc:x-y")


def actor_tensors(value: float = 1.0) -> dict[str, np.ndarray]:
    return {"velocity.net.0.weight": np.full((4, 6), value, np.float32), "velocity.net.0.bias": np.zeros(4, np.float32)}


def save(path, value=1.0, **kwargs):
    return ckpt.save_checkpoint(path, spec=SPEC, actor=actor_tensors(value), counters={"step": 7}, **kwargs)


class TestRoundTrip:
    def test_actor_spec_and_counters_come_back(self, tmp_path):
        path = save(tmp_path / "step_1", config={"lr": 3e-4})
        loaded = ckpt.load_checkpoint(path)
        assert loaded.spec == SPEC
        assert loaded.counters == {"step": 7}
        assert loaded.config == {"lr": 3e-4}
        np.testing.assert_array_equal(loaded.actor["velocity.net.0.weight"], actor_tensors()["velocity.net.0.weight"])
        assert loaded.document["versions"]["flowrl-deploy"] == versions.release()  # names the commit that wrote it

    def test_two_saves_of_the_same_state_write_the_same_bytes(self, tmp_path):
        """safetensors (0.8.0 and before, safetensors#584) writes ``__metadata__``'s keys in a random
        order per save, so identical runs' model.safetensors (and their exports' source_sha256)
        differed about half the time; the header is rewritten in sorted order."""
        files = [(save(tmp_path / f"c{i}") / ckpt.MODEL_FILE).read_bytes() for i in range(12)]
        assert all(data == files[0] for data in files)
        length = int.from_bytes(files[0][:8], "little")
        header = files[0][8 : 8 + length]
        assert (8 + length) % 8 == 0 and header == header.rstrip() + b" " * (length - len(header.rstrip()))
        parsed = json.loads(header)
        assert list(parsed["__metadata__"]) == sorted(parsed["__metadata__"]) == ["format", "spec"]
        assert header.rstrip() == json.dumps(parsed, separators=(",", ":"), sort_keys=True).encode()
        assert ckpt.load_checkpoint(tmp_path / "c0").spec == SPEC

    def test_training_state_and_replay_are_optional_extras(self, tmp_path):
        path = save(
            tmp_path / "c",
            training_tensors={"critic.w": np.ones(3, np.float32)},
            training_json={"rng": [1, 2]},
            replay={"obs": np.arange(6, dtype=np.float32).reshape(2, 3)},
        )
        assert ckpt.load_checkpoint(path).training_tensors == {}
        full = ckpt.load_checkpoint(path, training_state=True)
        assert full.training_json == {"rng": [1, 2]}
        np.testing.assert_array_equal(full.replay["obs"][1], [3, 4, 5])

    def test_overwrite_replaces_whole_checkpoint(self, tmp_path):
        state = {"critic.w": np.ones(3, np.float32)}
        save(tmp_path / "c", value=1.0, training_tensors=state, replay={"obs": np.zeros(2, np.float32)})
        save(tmp_path / "c", value=2.0, training_tensors=state)
        loaded = ckpt.load_checkpoint(tmp_path / "c", training_state=True)
        assert loaded.actor["velocity.net.0.weight"][0, 0] == 2.0
        assert loaded.replay == {}
        assert [p.name for p in tmp_path.iterdir()] == ["c"]

    def test_a_file_at_the_checkpoint_path_is_replaced_and_leaves_no_leftover(self, tmp_path):
        (tmp_path / "c").write_text("a stray file")
        save(tmp_path / "c")
        assert ckpt.load_checkpoint(tmp_path / "c").counters == {"step": 7}
        assert [p.name for p in tmp_path.iterdir()] == ["c"]

    @pytest.mark.parametrize("umask", [0o022, 0o077])
    def test_files_get_the_permissions_of_the_umask(self, tmp_path, umask):
        old = os.umask(umask)
        try:
            path = save(tmp_path / "c", training_tensors={"critic.w": np.ones(3, np.float32)}, training_json={"a": 1})
        finally:
            os.umask(old)
        assert path.stat().st_mode & 0o777 == 0o777 & ~umask
        assert {p.name: p.stat().st_mode & 0o777 for p in path.iterdir()} == {
            name: 0o666 & ~umask
            for name in (ckpt.DOCUMENT_FILE, ckpt.MODEL_FILE, ckpt.TRAINING_TENSORS_FILE, ckpt.TRAINING_JSON_FILE)
        }

    @pytest.mark.parametrize(
        "name", ["DOCUMENT_FILE", "MODEL_FILE", "TRAINING_TENSORS_FILE", "TRAINING_JSON_FILE", "REPLAY_FILE"]
    )
    def test_a_checkpoint_file_that_is_no_regular_file_is_refused_by_name_not_taken_as_absent(self, tmp_path, name):
        """A directory here; a pipe is refused the same way, before anything opens it (its read would block)."""
        path = save(
            tmp_path / "c",
            training_tensors={"critic.w": np.ones(3, np.float32)},
            training_json={"a": 1},
            replay={"obs": np.zeros(2, np.float32)},
        )
        target = path / getattr(ckpt, name)
        target.unlink()
        target.mkdir()
        with pytest.raises(ckpt.CheckpointError, match=f"^{target} is not a regular file"):
            ckpt.load_checkpoint(path, training_state=True)

    def test_run_dir_resolves_to_last_link(self, tmp_path):
        checkpoints = tmp_path / "run" / ckpt.CHECKPOINTS_DIR
        first, second = save(checkpoints / "step_1", 1.0), save(checkpoints / "step_2", 2.0)
        ckpt.link_checkpoint(checkpoints, ckpt.LAST, first)
        ckpt.link_checkpoint(checkpoints, ckpt.LAST, second)
        assert ckpt.resolve_checkpoint(tmp_path / "run") == second.resolve()
        assert ckpt.read_spec(checkpoints / "step_2" / ckpt.MODEL_FILE) == SPEC


def record_syncs(monkeypatch) -> list[tuple]:
    """Log, in order, each ``os.fsync`` (the synced path and its size then) and ``os.replace`` (source, target)."""
    events: list[tuple] = []
    fsync, replace = os.fsync, os.replace

    def logged_fsync(fd):
        synced = os.readlink(f"/proc/self/fd/{fd}")
        events.append(("fsync", synced, os.fstat(fd).st_size))
        fsync(fd)

    def logged_replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        replace(src, dst)

    monkeypatch.setattr(ckpt.os, "fsync", logged_fsync)
    monkeypatch.setattr(ckpt.os, "replace", logged_replace)
    return events


class TestAtomicity:
    def test_an_atomic_write_reaches_the_disk_before_its_name_does(self, tmp_path, monkeypatch):
        """A power cut after the rename must not leave an empty or partial file (config.json, an .onnx)."""
        events = record_syncs(monkeypatch)
        atomic.write_atomic(tmp_path / "config.json", b"{}" * 100)
        assert [e[0] for e in events] == ["fsync", "replace"]
        (_, synced, size), (_, source, target) = events
        assert (source, target) == (synced, str(tmp_path / "config.json"))
        assert synced.startswith(str(tmp_path / ".config.json.tmp-")) and size == 200  # all of it

    def test_a_checkpoint_is_synced_file_by_file_before_it_is_renamed_into_place(self, tmp_path, monkeypatch):
        events = record_syncs(monkeypatch)
        path = save(tmp_path / "c", training_tensors={"critic.w": np.ones(3, np.float32)}, training_json={"a": 1})
        renames = [e for e in events if e[0] == "replace"]
        assert len(renames) == 1 and renames[0][2] == str(path)
        written = renames[0][1]
        before = {e[1]: e[2] for e in events[: events.index(renames[0])]}
        for child in path.iterdir():
            assert before.get(os.path.join(written, child.name)) == child.stat().st_size, child.name
        assert written in before  # the directory's entries too
        assert events[-1][:2] == ("fsync", str(tmp_path))  # and then the rename itself

    def test_failed_write_leaves_previous_checkpoint_intact(self, tmp_path, monkeypatch):
        save(tmp_path / "last", value=1.0)

        def crash(*args, **kwargs):
            raise OSError("disk full")

        monkeypatch.setattr(ckpt, "_write_json", crash)
        with pytest.raises(CheckpointError, match=f"cannot write the checkpoint {tmp_path / 'last'}: disk full"):
            save(tmp_path / "last", value=2.0)
        monkeypatch.undo()
        assert ckpt.load_checkpoint(tmp_path / "last").actor["velocity.net.0.weight"][0, 0] == 1.0
        assert [p.name for p in tmp_path.iterdir()] == ["last"]

    def test_a_failed_rename_into_place_puts_the_previous_checkpoint_back(self, tmp_path, monkeypatch):
        """The old checkpoint is moved aside before the new one is renamed in; if that rename fails,
        the old one must return to its name, not stay hidden under a temporary one."""
        save(tmp_path / "last", value=1.0)
        replace = os.replace

        def failing_rename_of_the_new_one(src, dst):
            if os.path.basename(src).startswith(".last.tmp-"):
                raise OSError(28, "No space left on device", str(dst))
            replace(src, dst)

        monkeypatch.setattr(ckpt.os, "replace", failing_rename_of_the_new_one)
        with pytest.raises(CheckpointError, match="No space left on device"):
            save(tmp_path / "last", value=2.0)
        monkeypatch.undo()
        assert ckpt.load_checkpoint(tmp_path / "last").actor["velocity.net.0.weight"][0, 0] == 1.0
        assert [p.name for p in tmp_path.iterdir()] == ["last"]

    def test_a_file_size_limit_is_a_checkpoint_error_that_leaves_nothing_behind(self, tmp_path):
        """`ulimit -f` (or a full disk): safetensors raises its own SafetensorError, not an OSError."""
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
        try:
            with pytest.raises(CheckpointError) as refused:
                save(tmp_path / "c", replay={"obs": np.zeros(10_000, np.float32)})
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        # the system's words, not safetensors' Rust wording naming its temporary file (gone)
        assert str(refused.value) == f"cannot write the checkpoint {tmp_path / 'c'}: File too large"
        assert list(tmp_path.iterdir()) == []

    def test_a_file_where_the_folder_should_be_is_a_checkpoint_error(self, tmp_path):
        (tmp_path / "checkpoints").write_text("not a folder")
        with pytest.raises(CheckpointError, match=r"cannot write the checkpoint .*checkpoints/step_1: File exists"):
            save(tmp_path / "checkpoints" / "step_1")
        assert (tmp_path / "checkpoints").read_text() == "not a folder"

    def test_a_link_that_cannot_be_made_is_a_checkpoint_error(self, tmp_path):
        path = save(tmp_path / "c")
        (tmp_path / ckpt.LAST).mkdir()  # os.replace cannot put a link over a directory
        with pytest.raises(CheckpointError, match=f"cannot point {tmp_path / ckpt.LAST} at c"):
            ckpt.link_checkpoint(tmp_path, ckpt.LAST, path)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["c", ckpt.LAST]


class TestCorruptOrForeign:
    @pytest.mark.parametrize("dtype", [np.int32, np.bool_])
    def test_integer_or_bool_weights_are_refused_by_name(self, tmp_path, dtype):
        """The sweep's case: every weight cast to int32 (or bool) exported and evaluated without a word."""
        path = save(tmp_path / "c")
        model = path / ckpt.MODEL_FILE
        ckpt.save_file({k: v.astype(dtype) for k, v in ckpt.load_file(str(model)).items()}, str(model))
        with pytest.raises(CheckpointError, match=r"actor tensor \S+ has dtype (int32|bool); weights must be floating"):
            ckpt.load_checkpoint(path)

    def test_missing_path(self, tmp_path):
        with pytest.raises(CheckpointError, match="checkpoint not found"):
            ckpt.load_checkpoint(tmp_path / "nope")

    def test_foreign_directory(self, tmp_path):
        (tmp_path / "notes.txt").write_text("hello")
        with pytest.raises(CheckpointError, match="holds no flowrl-deploy checkpoint"):
            ckpt.load_checkpoint(tmp_path)

    def test_a_run_before_its_first_checkpoint_is_named_a_run(self, tmp_path):
        """`flowrl serve/export/eval runs/quick` while it trained towards its first checkpoint said only
        'holds no flowrl-deploy checkpoint' (newcomer review 7)."""
        (tmp_path / ckpt.RUN_CONFIG_FILE).write_text("{}")
        (tmp_path / ckpt.CHECKPOINTS_DIR).mkdir()
        for path in (tmp_path, tmp_path / ckpt.CHECKPOINTS_DIR):
            with pytest.raises(CheckpointError, match=r"is a training run with no checkpoint yet: .*--eval-every"):
                ckpt.load_checkpoint(path)

    def test_a_run_whose_last_link_is_lost_names_its_checkpoints(self, tmp_path):
        """A run whose `last` link is gone (a copy without links) was told it had no checkpoint yet."""
        (tmp_path / ckpt.RUN_CONFIG_FILE).write_text("{}")
        for step in (5, 50):
            save(tmp_path / ckpt.CHECKPOINTS_DIR / ckpt.step_name(step))
        newest = tmp_path / ckpt.CHECKPOINTS_DIR / ckpt.step_name(50)
        with pytest.raises(CheckpointError, match=rf"has checkpoints but no last link: pass one, e.g. {newest} "):
            ckpt.load_checkpoint(tmp_path)

    @pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
    def test_the_identity_of_a_checkpoint_holding_a_pipe_is_refused_not_read(self, tmp_path):
        """A served checkpoint's identity (serve/model.py, to skip re-exporting it) read a FIFO in it and
        hung the server's start-up."""
        directory = save(tmp_path / "c")
        (directory / ckpt.DOCUMENT_FILE).unlink()
        os.mkfifo(directory / ckpt.DOCUMENT_FILE)
        with pytest.raises(CheckpointError, match="is not a regular file"):
            ckpt.checkpoint_identity(directory)

    def test_dangling_last_link_is_named(self, tmp_path):
        (tmp_path / ckpt.CHECKPOINTS_DIR).mkdir()
        os.symlink("step_999", tmp_path / ckpt.CHECKPOINTS_DIR / ckpt.LAST)
        with pytest.raises(CheckpointError, match="points at step_999, which is missing"):
            ckpt.load_checkpoint(tmp_path)

    def test_foreign_file(self, tmp_path):
        (tmp_path / "model.pt").write_bytes(b"\x80\x04pickle")
        with pytest.raises(CheckpointError, match="not a flowrl-deploy checkpoint"):
            ckpt.load_checkpoint(tmp_path / "model.pt")

    def test_truncated_tensors(self, tmp_path):
        path = save(tmp_path / "c")
        model = path / ckpt.MODEL_FILE
        model.write_bytes(model.read_bytes()[:40])
        with pytest.raises(CheckpointError, match="corrupt or not a safetensors file"):
            ckpt.load_checkpoint(path)

    def test_garbled_document(self, tmp_path):
        path = save(tmp_path / "c")
        (path / ckpt.DOCUMENT_FILE).write_text("{not json")
        with pytest.raises(CheckpointError, match="corrupt"):
            ckpt.read_spec(path)

    def test_other_format_tag(self, tmp_path):
        path = save(tmp_path / "c")
        (path / ckpt.DOCUMENT_FILE).write_text(json.dumps({"format": "something-else"}))
        with pytest.raises(CheckpointError, match="not a flowrl-deploy checkpoint"):
            ckpt.load_checkpoint(path)

    @pytest.mark.parametrize(
        ("field", "value", "message"),
        [
            ("format_version", "x", "format_version must be a positive integer, got 'x'"),
            ("format_version", None, "format_version must be a positive integer, got None"),
            ("counters", "x", "counters must be a JSON object of non-negative integers, got 'x'"),
            (
                "counters",
                {"env_steps": "x"},
                "counters must be a JSON object of non-negative integers, got {'env_steps': 'x'}",
            ),
            ("counters", {"env_steps": 1.5}, "counters must be a JSON object of non-negative integers"),
            ("counters", {"env_steps": -5}, "counters must be a JSON object of non-negative integers"),
        ],
    )
    def test_a_hand_edited_document_field_is_named_with_the_file(self, tmp_path, field, value, message):
        path = save(tmp_path / "c")
        document = json.loads((path / ckpt.DOCUMENT_FILE).read_text())
        (path / ckpt.DOCUMENT_FILE).write_text(json.dumps(document | {field: value}))
        with pytest.raises(CheckpointError, match=f"^{re.escape(f'{path.resolve() / ckpt.DOCUMENT_FILE}: {message}')}"):
            ckpt.load_checkpoint(path)

    def test_a_hand_edited_spec_is_named_with_the_checkpoint(self, tmp_path):
        path = save(tmp_path / "c")
        document = json.loads((path / ckpt.DOCUMENT_FILE).read_text())
        document["spec"]["hidden"] = 4.0
        (path / ckpt.DOCUMENT_FILE).write_text(json.dumps(document))
        with pytest.raises(CheckpointError, match=f"^{path.resolve()}: hidden must be an integer, got 4.0$"):
            ckpt.read_spec(path)

    def test_policy_only_checkpoint_cannot_resume(self, tmp_path):
        path = save(tmp_path / "c")
        with pytest.raises(CheckpointError, match="not resumed"):
            ckpt.load_checkpoint(path, training_state=True)

    def test_a_checkpoint_without_its_document_is_called_incomplete(self, tmp_path):
        """Weights without checkpoint.json are a checkpoint whose save did not finish, not a foreign folder."""
        path = save(tmp_path / "c")
        os.remove(path / ckpt.DOCUMENT_FILE)
        with pytest.raises(CheckpointError, match=f"{re.escape(str(path))} lacks checkpoint.json: it is incomplete"):
            ckpt.load_checkpoint(path)

    def test_missing_model_file(self, tmp_path):
        path = save(tmp_path / "c")
        os.remove(path / ckpt.MODEL_FILE)
        with pytest.raises(CheckpointError, match="is missing"):
            ckpt.load_checkpoint(path)


def fake_run(root, *steps: int):
    """A run's checkpoints folder holding a (document-only, tiny tensors) checkpoint per step; ``last`` at the
    newest."""
    folder = root / ckpt.CHECKPOINTS_DIR
    for step in steps:
        intact_checkpoint(folder / f"step_{step:09d}")
    if steps:
        ckpt.link_checkpoint(folder, ckpt.LAST, folder / f"step_{max(steps):09d}")
    return folder


class TestStepNames:
    @pytest.mark.parametrize(
        ("name", "step"),
        [("step_000000200", 200), ("step_000000000", 0), ("step_1234567890", 1234567890), ("step_000000200.bak", None),
         ("step_²", None), ("step_٢٠٠", None), ("step_200", None), ("step_0000000200", None), ("step_", None),
         ("step_-00000001", None), ("step_+00000001", None), ("step_ 00000001", None), ("last", None),
         ("step_" + "9" * 40, None)],
    )  # fmt: skip
    def test_only_the_names_saves_give_are_checkpoint_steps(self, name, step):
        assert ckpt.step_of(name) == step
        if step is not None:
            assert ckpt.step_name(step) == name

    @pytest.mark.parametrize("name", ["step_²", "step_000000300.bak", "step_0000000400"])
    def test_a_folder_not_named_as_a_save_is_no_checkpoint_to_resume(self, tmp_path, name):
        """`step_²` passed str.isdigit and int() raised a traceback; a copy `step_…bak` could be resumed."""
        folder = fake_run(tmp_path, 200)
        intact_checkpoint(folder / name)
        assert ckpt.resume_point(tmp_path) == ((folder / "step_000000200").resolve(), None)

    def test_the_newest_is_the_largest_step_not_the_last_name(self, tmp_path):
        folder = fake_run(tmp_path, 999_999_999, 1_000_000_000)
        assert ckpt.resume_point(tmp_path) == ((folder / "step_1000000000").resolve(), None)


class TestConfinedToTheRun:
    """A link in run A's checkpoints folder made `--resume A` lock run B, train on from B's checkpoint and write
    into B: a run's checkpoints are taken only from its own checkpoints folder."""

    def test_a_step_link_leading_out_of_the_run_is_refused_by_name(self, tmp_path):
        fake_run(tmp_path / "A", 200)
        other = fake_run(tmp_path / "B", 200) / "step_000000200"
        link = tmp_path / "A" / ckpt.CHECKPOINTS_DIR / "step_000099999"
        link.symlink_to(other)
        message = (
            f"{link} leads out of {link.parent} (to {other}): a run's checkpoints lie in its own folder; remove it"
        )
        with pytest.raises(ckpt.CheckpointError, match=f"^{re.escape(message)}$"):
            ckpt.resume_point(tmp_path / "A")
        with pytest.raises(ckpt.CheckpointError, match=f"^{re.escape(message)}$"):
            ckpt.resume_point(link)  # named: the same

    def test_a_last_link_leading_out_of_the_run_is_refused_by_name(self, tmp_path):
        (tmp_path / "A" / ckpt.CHECKPOINTS_DIR).mkdir(parents=True)
        other = fake_run(tmp_path / "B", 200) / "step_000000200"
        last = tmp_path / "A" / ckpt.CHECKPOINTS_DIR / ckpt.LAST
        last.symlink_to(os.path.relpath(other, last.parent))
        message = f"{last} leads out of {last.parent} (to ../../B/checkpoints/step_000000200)"
        for path in (tmp_path / "A", last, last.parent):
            with pytest.raises(ckpt.CheckpointError, match=f"^{re.escape(message)}"):
                ckpt.resume_point(path)
        assert ckpt.read_checkpoint_link(last) == "../../B/checkpoints/step_000000200"  # reading it is no resume

    def test_a_relative_path_from_inside_the_folder_is_confined_too(self, tmp_path, monkeypatch):
        """`cd A/checkpoints && flowrl train --resume step_…`: the entry's folder was '' there, so not checked."""
        folder = fake_run(tmp_path / "A", 200)
        other = fake_run(tmp_path / "B", 200) / "step_000000200"
        (folder / "step_000099999").symlink_to(other)
        monkeypatch.chdir(folder)
        for path in ("step_000099999", "step_000099999/checkpoint.json", "."):
            with pytest.raises(ckpt.CheckpointError, match="step_000099999 leads out of "):
                ckpt.resume_point(path)

    @pytest.mark.parametrize("given", ["run", "last", "checkpoint.json"])
    def test_a_checkpoint_reached_through_a_pointer_file_or_its_files_is_confined(self, tmp_path, given):
        """The link checks looked at the entry named: a pointer file `last` (a regular file) naming `evil`, a link
        to run B's checkpoint, or `A/checkpoints/evil/checkpoint.json`, led the resume into run B."""
        folder = tmp_path / "A" / ckpt.CHECKPOINTS_DIR
        folder.mkdir(parents=True)
        other = fake_run(tmp_path / "B", 200) / "step_000000200"
        (folder / "evil").symlink_to(other)
        (folder / ckpt.LAST).write_text("evil\n")
        path = {"run": tmp_path / "A", "last": folder / ckpt.LAST, "checkpoint.json": folder / "evil" / given}[given]
        with pytest.raises(ckpt.CheckpointError, match=f"leads out of {re.escape(str(folder))} "):
            ckpt.resume_point(path)

    def test_links_inside_the_folder_still_resolve(self, tmp_path):
        folder = fake_run(tmp_path, 200)
        ckpt.link_checkpoint(folder, ckpt.BEST, folder / "step_000000200")
        assert ckpt.read_checkpoint_link(folder / ckpt.BEST) == "step_000000200"
        assert ckpt.resolve_checkpoint(folder / ckpt.BEST) == (folder / "step_000000200").resolve()

    def test_a_checkpoints_folder_that_is_a_link_resumes_under_the_run(self, tmp_path):
        """A run's checkpoints/ linked to scratch storage: the checkpoint came back as the scratch path, which
        lies in no run (no config.json beside), so `flowrl train --resume` of the run was refused."""
        run = tmp_path / "runs" / "y"
        moved = fake_run(tmp_path / "scratch", 100, 200).rename(tmp_path / "scratch" / "y_ckpts")
        run.mkdir(parents=True)
        (run / ckpt.CHECKPOINTS_DIR).symlink_to(os.path.relpath(moved, run))
        newest = run / ckpt.CHECKPOINTS_DIR / "step_000000200"
        for path in (run, run / ckpt.CHECKPOINTS_DIR, newest, run / ckpt.CHECKPOINTS_DIR / ckpt.LAST):
            assert ckpt.resume_point(path) == (newest, None)
        older = newest.with_name("step_000000100")
        assert ckpt.resume_point(older) == (older, None)


class TestLinksOutsideARun:
    """A user's own links to a run's checkpoints (`deploy/best -> ../runs/x/checkpoints/best`) were refused by
    every reader (export, eval, serve, --watch) when the run's links were confined to its folder: only a resume,
    which writes into the run, is confined."""

    def test_every_reader_follows_them(self, tmp_path):
        folder = fake_run(tmp_path / "runs" / "x", 100)
        ckpt.link_checkpoint(folder, ckpt.BEST, folder / "step_000000100")
        deploy = tmp_path / "deploy"
        deploy.mkdir()
        (deploy / ckpt.BEST).symlink_to("../runs/x/checkpoints/best")
        (deploy / ckpt.LAST).symlink_to("../runs/x/checkpoints/step_000000100")
        assert ckpt.read_checkpoint_link(deploy / ckpt.BEST) == "../runs/x/checkpoints/best"
        for path in (deploy, deploy / ckpt.LAST, deploy / ckpt.BEST):
            assert ckpt.resolve_checkpoint(path) == (folder / "step_000000100").resolve()


class TestLinkLoops:
    """`Path.resolve` raised RuntimeError ('Symlink loop') in the link checks: a traceback from export, serve,
    resume and a running job's next save, where there was one line."""

    def test_a_looping_last_is_named(self, tmp_path):
        folder = tmp_path / ckpt.CHECKPOINTS_DIR
        folder.mkdir()
        (folder / ckpt.LAST).symlink_to(ckpt.LAST)
        for read in (ckpt.resolve_checkpoint, ckpt.resume_point):
            with pytest.raises(CheckpointError, match=f"^{re.escape(str(folder / ckpt.LAST))} points at last, "):
                read(tmp_path)

    def test_a_looping_step_is_named(self, tmp_path):
        folder = fake_run(tmp_path, 200)
        (folder / "step_000000300").symlink_to("step_000000300")
        loop = folder / "step_000000300"
        with pytest.raises(CheckpointError, match=f"^{re.escape(str(loop))} is a symbolic link loop; remove it$"):
            ckpt.resume_point(tmp_path)


class TestUnprintableText:
    """A link's target and a pointer file's text are chosen by whoever can write the folder: printed raw, a newline
    forged a line of the refusal and an escape sequence drove the terminal."""

    def test_a_link_target_is_escaped(self, tmp_path):
        (tmp_path / "A" / ckpt.CHECKPOINTS_DIR).mkdir(parents=True)
        fake_run(tmp_path / "B", 200)
        (tmp_path / "B" / ckpt.CHECKPOINTS_DIR / "\x1b[31m\nFORGED").mkdir()
        (tmp_path / "B" / ckpt.CHECKPOINTS_DIR / "\x1b[31m\nFORGED" / ckpt.DOCUMENT_FILE).write_text("{}")
        (tmp_path / "A" / ckpt.CHECKPOINTS_DIR / ckpt.LAST).symlink_to("../../B/checkpoints/\x1b[31m\nFORGED")
        with pytest.raises(CheckpointError, match="leads out of") as info:
            ckpt.resume_point(tmp_path / "A")
        assert "(to ../../B/checkpoints/\\x1b[31m\\nFORGED)" in str(info.value) and str(info.value).isprintable()

    def test_a_pointer_file_with_unprintable_text_is_refused_escaped(self, tmp_path):
        folder = fake_run(tmp_path, 200)
        (folder / ckpt.LAST).unlink()
        (folder / ckpt.LAST).write_bytes(b"step_1\r\x1b[2Kall good")
        with pytest.raises(CheckpointError, match="is no checkpoint link") as info:
            ckpt.resolve_checkpoint(tmp_path)
        assert str(info.value).isprintable()

    def test_a_missing_name_is_escaped(self, tmp_path):
        (tmp_path / ckpt.CHECKPOINTS_DIR).mkdir()
        (tmp_path / ckpt.CHECKPOINTS_DIR / ckpt.LAST).symlink_to("step_9\x1b[2K")
        with pytest.raises(CheckpointError, match=re.escape("points at step_9\\x1b[2K, which is missing")):
            ckpt.resolve_checkpoint(tmp_path)


class TestPointerFileEncodings:
    """A `last` rolled back by hand on Windows: Notepad writes a byte-order mark, PowerShell 5's `echo … > last`
    UTF-16; the JSON files are read in either, the pointer file was refused."""

    @pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-8"])
    def test_a_hand_written_pointer_file_is_read(self, tmp_path, encoding):
        folder = fake_run(tmp_path, 100, 200)
        (folder / ckpt.LAST).unlink()
        (folder / ckpt.LAST).write_bytes("step_000000100\r\n".encode(encoding))
        assert ckpt.read_checkpoint_link(folder / ckpt.LAST) == "step_000000100"
        assert ckpt.resolve_checkpoint(tmp_path) == (folder / "step_000000100").resolve()


class TestPointerFileNames:
    """A pointer file names a checkpoint beside it, nothing else: on Windows, where pointer files are the norm,
    `folder / "C:step_x"` is drive-relative and leaves the run folder."""

    @pytest.mark.parametrize("name", ["C:step_000000100", ".", "..", "../step_000000100", "step_000000100\\x"])
    def test_a_pointer_file_naming_no_entry_of_its_folder_is_refused(self, tmp_path, name):
        folder = fake_run(tmp_path, 100)
        (folder / ckpt.LAST).unlink()
        (folder / ckpt.LAST).write_text(name)
        with pytest.raises(CheckpointError, match="is no checkpoint link"):
            ckpt.resolve_checkpoint(tmp_path)


@pytest.mark.parametrize(("error", "refused"), [(errno.EPERM, True), (errno.EOPNOTSUPP, True), (errno.EROFS, False)])
def test_only_a_file_system_refusing_symlinks_is_taken_for_one(tmp_path, monkeypatch, error, refused):
    """A read-only or forbidden folder is the save's to report, by its own error: taken for a file system
    without symlinks, the run said its folder "cannot hold symbolic links"."""

    def symlink(*args, **kwargs):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, "symlink", symlink)
    assert ckpt.symlinks_refused(tmp_path) is refused
