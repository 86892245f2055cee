"""ModelSlot, the served model's lifecycle, on its own (no servicer, no gRPC): the first load, a reload
that swaps, one of the same bytes that swaps nothing, the first contract's check, a checkpoint exported
into a work folder that close() removes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fake_checkpoints import FakeExporter, save_step
from tiny_policy import write_policy

from flowrl_deploy.checkpoint import CHECKPOINTS_DIR, DOCUMENT_FILE, LAST, link_checkpoint
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.serve import ServeConfig
from flowrl_deploy.serve.errors import NotReady
from flowrl_deploy.serve.metrics import Metrics
from flowrl_deploy.serve.model import ModelSlot


def _slot(model: Path, **kwargs: object) -> ModelSlot:
    return ModelSlot(ServeConfig(str(model), port=0), Metrics(lambda: 0, lambda: ""), **kwargs)


def test_a_slot_serves_nothing_until_loaded_then_swaps_on_reload(tmp_path):
    path = write_policy(tmp_path / "policy.onnx")
    slot = _slot(path)
    with pytest.raises(NotReady):
        slot.current()
    first, previous = slot.load()
    assert previous == "" and first.startswith("v1-") and slot.current().version == first
    served = slot.current()
    assert slot.load() == (first, first) and slot.current() is served  # the same bytes: nothing swapped
    write_policy(tmp_path / "policy.onnx", scale=2.0)
    second, previous = slot.load()
    assert (previous, second[:3]) == (first, "v2-") and slot.current().version == second
    assert served.version == first  # a call in flight keeps the model it holds


def test_the_first_models_contract_is_checked_before_it_is_served(tmp_path):
    checked = []

    def refuse(contract: object) -> None:
        checked.append(contract)
        raise FlowRLError("refused")

    slot = _slot(write_policy(tmp_path / "policy.onnx"), check_first=refuse)
    with pytest.raises(FlowRLError, match="refused"):
        slot.load()
    assert len(checked) == 1 and slot.model is None


def test_a_checkpoint_is_exported_into_a_work_folder_that_close_removes(tmp_path):
    onnx = write_policy(tmp_path / "policy.onnx")
    checkpoint = tmp_path / "run"
    checkpoint.mkdir()
    exports: list[tuple[Path, int | None]] = []

    def export(source: Path, out: Path, steps: int | None) -> Path:
        exports.append((out, steps))
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(onnx, out))

    slot = _slot(checkpoint, export_checkpoint=export)
    assert slot.work_folder is None
    version, _ = slot.load()
    folder = slot.work_folder
    assert version.startswith("v1-") and folder is not None and folder.is_dir()
    assert exports[0][0] == folder / "gen1" / "policy.onnx" and not exports[0][0].exists()  # dropped once read
    slot.close()
    assert not folder.exists()
    with pytest.raises(FlowRLError, match="the server has stopped"):
        slot.load()


def test_a_reload_of_the_checkpoint_served_now_is_not_exported_again(tmp_path):
    """A Reload (or `touch`) of a served run re-exported its checkpoint (seconds of CPU on the serving
    machine) only to find the same bytes; the same checkpoint at the same N now costs a hash."""
    run = tmp_path / "run"
    save_step(run, 1)
    exporter = FakeExporter()
    slot = _slot(run, export_checkpoint=exporter)
    first, _ = slot.load()
    assert slot.load() == (first, first) and len(exporter.calls) == 1
    (run / CHECKPOINTS_DIR / "step_000000001" / DOCUMENT_FILE).touch()
    assert slot.load() == (first, first) and len(exporter.calls) == 1
    save_step(run, 2)  # another checkpoint: exported and swapped in
    second, previous = slot.load()
    assert (previous, second[:3], len(exporter.calls)) == (first, "v2-", 2)
    save_step(run, 1)  # back to step 1's checkpoint, rewritten with the same bytes: exported again
    assert slot.load()[0].startswith("v3-") and len(exporter.calls) == 3
    slot.close()


def test_a_checkpoint_that_changes_during_its_export_is_not_taken_for_the_one_served(tmp_path):
    """The slot fingerprinted `last` before exporting it: a checkpoint landing in between was exported
    and served under the earlier one's fingerprint, so a later reload of that earlier checkpoint (a roll
    back of `last`) swapped nothing and the newer model went on serving (diff review 2)."""
    run = tmp_path / "run"
    save_step(run, 1)
    exporter = FakeExporter()
    lands: list[int] = []

    def export(checkpoint: Path, out: Path, steps: int | None) -> Path:
        if lands:  # step 3 lands after the slot fingerprinted `last` (step 2), before the export reads it
            save_step(run, lands.pop())
        return exporter(checkpoint, out, steps)

    slot = _slot(run, export_checkpoint=export)
    slot.load()
    save_step(run, 2)
    lands.append(3)
    served, _ = slot.load()  # step 3's model
    link_checkpoint(run / CHECKPOINTS_DIR, LAST, run / CHECKPOINTS_DIR / "step_000000002")  # roll back
    version, previous = slot.load()
    assert previous == served and version != served and exporter.calls[-1][0].name == "step_000000002"
    slot.close()
