"""The exported graph's solver schedule refuses a solver it does not know, as ``train.ode.integrate``
does, instead of unrolling it as Euler."""

from __future__ import annotations

import pytest

from flowrl_deploy.export.graph import schedule
from flowrl_deploy.spec import SOLVERS


@pytest.mark.parametrize("solver", ["rk4", "", "Midpoint"])
def test_schedule_refuses_an_unknown_solver(solver):
    with pytest.raises(ValueError, match=f"unknown solver {solver!r}; choose 'midpoint' or 'euler'"):
        schedule(2, solver)


@pytest.mark.parametrize("solver", SOLVERS)
def test_schedule_takes_every_solver_of_the_spec(solver):
    assert len(schedule(3, solver)) == 3 * (2 if solver == "midpoint" else 1)
