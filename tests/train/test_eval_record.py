"""A checkpoint's `eval` record has one home, `EvalRecord`: what a save writes, what a resume restores (strict)
and what ranking `best` reads (lenient) are one definition."""

import math

import pytest

from flowrl_deploy.errors import CheckpointError
from flowrl_deploy.train.checkpointing import EvalRecord, finite_or_none, own_eval_return


def test_a_record_reads_back_what_it_writes():
    record = EvalRecord(best_return=5.0, last_return=1.0, last_step=400)
    assert record.to_dict() == {"best_return": 5.0, "last_return": 1.0, "last_step": 400}
    assert EvalRecord.from_document({"eval": record.to_dict()}, strict=True) == record
    assert EvalRecord.from_document({}, strict=True) == EvalRecord(step_recorded=False)  # saved before any eval key
    assert EvalRecord(finite_or_none(-math.inf)).to_dict()["best_return"] is None


@pytest.mark.parametrize(
    "evaluation",
    ["x", None, {"best_return": "x"}, {"last_return": math.inf}, {"last_return": True}, {"last_step": -1},
     {"last_step": 1.5}, {"last_unstable": 1}, {"last_unstable": None}],
)  # fmt: skip
def test_a_malformed_record_is_refused_by_a_resume_and_no_candidate_for_best(evaluation):
    document = {"counters": {"env_steps": 200}, "eval": evaluation}
    with pytest.raises(CheckpointError, match=r"^run/checkpoint\.json: eval must be a JSON object of finite numbers"):
        EvalRecord.from_document(document, strict=True, source="run/checkpoint.json")
    assert EvalRecord.from_document(document) is None
    assert own_eval_return(document, named_best=True) is None


def test_the_own_return_is_the_last_one_only_at_its_own_step():
    def own(evaluation, named_best=False):
        return own_eval_return({"counters": {"env_steps": 200}, "eval": evaluation}, named_best=named_best)

    assert own({"last_return": 3, "last_step": 200}) == 3.0
    assert own({"last_return": 3.0, "last_step": 100}) is None  # saved between evaluations: the previous one's
    assert own({"last_return": 3.0, "last_step": None}) is None
    assert own({"last_return": 3.0}) is None  # saved before last_step was recorded: only best's counts
    assert own({"last_return": 3.0}, named_best=True) == 3.0
    assert own({"best_return": 3.0, "last_step": 200}) is None


def test_an_evaluation_an_unstable_simulation_cut_short_ranks_no_checkpoint_best():
    record = EvalRecord(best_return=5.0, last_return=9.0, last_step=200, last_unstable=True)
    assert record.to_dict() == {"best_return": 5.0, "last_return": 9.0, "last_step": 200, "last_unstable": True}
    assert EvalRecord.from_document({"eval": record.to_dict()}, strict=True) == record
    document = {"counters": {"env_steps": 200}, "eval": record.to_dict()}
    assert own_eval_return(document) is None and own_eval_return(document, named_best=True) is None
    stable = {"counters": {"env_steps": 200}, "eval": {"last_return": 9.0, "last_step": 200, "last_unstable": False}}
    assert own_eval_return(stable) == 9.0
