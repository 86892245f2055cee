import pytest

from flowrl_deploy.envid import closest_env_id, parse_env_id
from flowrl_deploy.errors import EnvIdError


@pytest.mark.parametrize(
    ("text", "kind", "domain", "task", "name"),
    [
        ("dmc:dog-run", "dmc", "dog", "run", "dmc:dog-run"),
        ("dmc:ball_in_cup-catch", "dmc", "ball_in_cup", "catch", "dmc:ball_in_cup-catch"),
        ("dmc:cartpole-swingup_sparse", "dmc", "cartpole", "swingup_sparse", "dmc:cartpole-swingup_sparse"),
        ("h1-walk-v0", "gym", "", "", "h1-walk-v0"),
        ("gym:Pendulum-v1", "gym", "", "", "Pendulum-v1"),
    ],
)
def test_parses_both_forms(text, kind, domain, task, name):
    env_id = parse_env_id(text)
    assert (env_id.kind, env_id.domain, env_id.task, env_id.name) == (kind, domain, task, name)


@pytest.mark.parametrize("text", ["cheetah-run", "dmc:cheetah", "dmc:-run", "", "dog run"])
def test_bad_ids_say_how_to_name_tasks(text):
    with pytest.raises(EnvIdError, match="dmc:<domain>-<task>"):
        parse_env_id(text)


KNOWN = ("dmc:cartpole-swingup", "dmc:cartpole-swingup_sparse", "dmc:ball_in_cup-catch", "dmc:walker-walk")


@pytest.mark.parametrize(
    ("text", "meant"),
    [
        ("dmc:Cartpole-Swingup", "dmc:cartpole-swingup"),
        ("cartpole-swingup", "dmc:cartpole-swingup"),
        (" dmc:cartpole_swingup ", "dmc:cartpole-swingup"),
        ("dmc:cartpol-swingup", "dmc:cartpole-swingup"),
        ("dmc:cartpole-swingup-sparse", "dmc:cartpole-swingup_sparse"),
        ("ball-in-cup-catch", "dmc:ball_in_cup-catch"),
        ("DMC:WALKER-WALK", "dmc:walker-walk"),
    ],
)
def test_closest_env_id_forgives_case_separators_and_a_missing_prefix(text, meant):
    assert closest_env_id(text, KNOWN) == meant


@pytest.mark.parametrize("text", ["dmc:zebra-gallop", "", "dmc:cartpole-swingup", "h1-walk-v0"])
def test_closest_env_id_is_none_for_a_known_or_unlike_id(text):
    assert closest_env_id(text, KNOWN) is None


@pytest.mark.parametrize(
    ("text", "meant"),
    [
        ("dmc:cartpl-swngup", "dmc:cartpole-swingup"),  # two letters dropped: similarity 0.90
        ("dmc:wlkr-wk", None),  # 0.78 like dmc:walker-walk, under the 0.8 cutoff: no guess
    ],
)
def test_closest_env_id_suggests_a_close_spelling_and_not_a_loose_one(text, meant):
    assert closest_env_id(text, KNOWN) == meant


def test_parse_env_id_given_the_known_ids_suggests_one():
    suggested = r"^cannot parse env id 'cartpole_swingup' \(did you mean dmc:cartpole-swingup\?\): name a task"
    with pytest.raises(EnvIdError, match=suggested):
        parse_env_id("cartpole_swingup", known=KNOWN)
    with pytest.raises(EnvIdError) as refused:
        parse_env_id("cartpole_swingup")
    assert "did you mean" not in str(refused.value)
