"""A `--json` report (flowrl export, flowrl control) replaces only a report flowrl wrote, told by its
shape (an export's list of files with their contract hashes, a control run's figures): it replaced
any JSON document, a user's settings.json or an observation file among them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowrl_deploy.cli._common import check_report, check_writable, is_flowrl_report, write_report
from flowrl_deploy.errors import FlowRLError

EXPORT_REPORT = [{"path": "p.onnx", "contract_hash": "ab12", "sha256": "cd34", "contract": {}, "parity": None}]
CONTROL_REPORT = {
    "server": "localhost:50051", "env_id": "dmc:cartpole-swingup", "hz": 50.0, "seed": 0, "deadline_ms": 20.0,
    "returns": [1.0], "steps": 5, "fresh_replies": 5, "deadline_misses": 0,
}  # fmt: skip
NEW = {"return": 2.5}
NOT_OURS = (
    r"exists and is not a flowrl report \(an export's, a control run's or an eval's --json\): a report may replace an"
)


@pytest.mark.parametrize(
    "old",
    ['{"my": "settings"}\n', "[0, 0, 0, 0, 0]", "[]", "{}", '"text"', "[" * 100_000 + "]" * 100_000,
     json.dumps([{"path": "x"}]), json.dumps({"server": "a", "hz": 1}),
     json.dumps([EXPORT_REPORT[0], {"my": "entry"}]), json.dumps([EXPORT_REPORT[0], 1])],
    ids=["settings", "observation", "empty-list", "empty-object", "string", "deep", "path-only", "some-keys",
         "one-export-entry-among-others", "one-export-entry-and-a-number"],
)  # fmt: skip
def test_json_that_is_not_a_flowrl_report_is_kept(tmp_path, old):
    path = tmp_path / "settings.json"
    path.write_text(old)
    with pytest.raises(FlowRLError, match=r"--json .*settings\.json " + NOT_OURS + r".*give the report another name"):
        check_report("--json", path)
    with pytest.raises(FlowRLError, match=NOT_OURS + r".*the report was not written"):
        write_report("--json", path, NEW)
    assert path.read_text() == old


@pytest.mark.parametrize("old", [EXPORT_REPORT, EXPORT_REPORT * 3, CONTROL_REPORT], ids=["export", "sweep", "control"])
def test_a_flowrl_report_is_replaced(tmp_path, old):
    path = tmp_path / "rep.json"
    path.write_text(json.dumps(old, indent=2) + "\n")
    assert is_flowrl_report(old)
    check_report("--json", path)
    write_report("--json", path, NEW)
    assert json.loads(path.read_text()) == NEW


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="Linux's /proc (macOS's /dev/fd is fdescfs)")
@pytest.mark.parametrize("via", ["link", "dev-fd", "link-climbing-through-a-linked-folder"])
def test_a_report_path_that_leads_to_a_stream_of_the_process_is_refused_and_the_link_kept(tmp_path, via):
    """`--json /dev/stdout` with stdout on a file (a SLURM log): the link's target is a regular file, and the
    atomic rename replaced the link itself by the report, as root the system's /dev/stdout."""
    log = tmp_path / "job.log"
    with open(log, "w") as stdout:
        fd = stdout.fileno()
        if via == "link":
            path = tmp_path / "my-stdout"
            path.symlink_to(f"/proc/self/fd/{fd}")  # as /dev/stdout → /proc/self/fd/1
        elif via == "dev-fd":
            path = Path(f"/dev/fd/{fd}")
        else:  # the relative target read from the linked folder's real place, not from the path's
            (tmp_path / "real").mkdir()
            (tmp_path / "real" / "out").symlink_to("../" * len(tmp_path.parts) + f"proc/self/fd/{fd}")
            (tmp_path / "deep" / "er").mkdir(parents=True)
            (tmp_path / "deep" / "er" / "linked").symlink_to(tmp_path / "real")
            path = tmp_path / "deep" / "er" / "linked" / "out"
        assert path.is_file()  # what the check for a regular file saw
        for command_step in (check_writable, check_report, lambda flag, p: write_report(flag, p, NEW)):
            with pytest.raises(FlowRLError, match=rf"--json {path} leads to /proc/\d+/fd/{fd}, a stream of the pro"):
                command_step("--json", path)
        if via != "dev-fd":
            assert path.is_symlink()
    assert log.read_text() == ""


def test_a_report_path_through_a_symlink_loop_is_one_line(tmp_path):
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(FlowRLError, match=r"--json .*loop/r\.json: its folder cannot be followed"):
        check_writable("--json", tmp_path / "loop" / "r.json")
