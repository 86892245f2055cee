import pytest

from flowrl_deploy.envid import parse_env_id
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
