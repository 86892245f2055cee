"""docs/train.md's "Reading the metrics" snippet plots a real run's metrics.csv: each row holds one kind of
record (a training episode, the losses and rates, or an evaluation) with the other columns empty, so a plot of
a whole column drew nothing (matplotlib breaks a line at each NaN). The snippet keeps the rows that hold the
column; this test runs it as written on a tiny run, so the page cannot drift from the files."""

import csv
import math

import pytest
from doc_pages import python_block
from tiny_training import TINY

from flowrl_deploy.train import TrainConfig, train


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plot")
    train(TrainConfig(steps=400, out=str(folder / "runs" / "quick"), **TINY), progress=False)
    return folder


def test_the_docs_plotting_snippet_draws_every_series_of_a_real_run(quick_run, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(quick_run)
    with open("runs/quick/metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert any(not r["charts/eval_return"] for r in rows), "rows are sparse: a whole column holds gaps"
    namespace: dict = {}
    exec(compile(python_block("docs/train.md", "Reading the metrics"), "docs/train.md", "exec"), namespace)
    assert (quick_run / "runs" / "quick" / "curves.png").stat().st_size > 0
    lines = {line.get_label(): line for ax in namespace["fig"].axes for line in ax.get_lines()}
    assert {"charts/episode_return", "charts/eval_return", "losses/q_pi_loss"} <= set(lines)
    for label, line in lines.items():
        xs, ys = line.get_xdata(), line.get_ydata()
        assert len(xs) >= 2 and all(math.isfinite(y) for y in ys), (label, list(xs), list(ys))
    assert list(lines["charts/eval_return"].get_xdata()) == [200, 400]
    assert list(lines["charts/episode_return"].get_xdata()) == [200, 400]
    namespace["plt"].close("all")
