"""The training API a researcher imports, as docs/train.md's "Training from Python" shows it."""

import ast
import importlib

from doc_pages import python_block

import flowrl_deploy.train


def training_snippet() -> str:
    return python_block("docs/train.md", "Training from Python")


def test_the_training_snippet_compiles_and_every_name_it_imports_exists():
    tree = ast.parse(compile(training_snippet(), "docs/train.md", "exec", ast.PyCF_ONLY_AST))
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert {node.module for node in imports} == {"flowrl_deploy.train", "flowrl_deploy.train.evaluate"}
    for node in imports:
        module = importlib.import_module(node.module)
        for alias in node.names:
            assert callable(getattr(module, alias.name)), f"{node.module}.{alias.name}"


def test_the_package_exports_the_api_by_name_and_the_evaluate_module_stays_a_module():
    from flowrl_deploy.train import (
        EvalResult,
        TrainConfig,
        TrainResult,
        checkpoint_act_fn,
        load_actor,
        resume_config,
        train,
    )
    from flowrl_deploy.train.actor import load_actor as load_actor_from_actor
    from flowrl_deploy.train.loop import TrainResult as from_loop
    from flowrl_deploy.train.loop import train as from_loop_train
    from flowrl_deploy.train.resume import resume_config as from_resume

    assert (train, TrainResult, resume_config) == (from_loop_train, from_loop, from_resume)
    assert load_actor is load_actor_from_actor
    assert TrainConfig().steps > 0 and EvalResult.__name__ == "EvalResult" and callable(checkpoint_act_fn)
    for name in flowrl_deploy.train.__all__:  # each lazy export loads (a stale table entry raises here)
        assert getattr(flowrl_deploy.train, name) is not None, name
    import flowrl_deploy.train.evaluate as evaluate_module

    assert callable(evaluate_module.evaluate)  # the module, not shadowed by a function of its name
