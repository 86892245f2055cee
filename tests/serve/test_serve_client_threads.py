"""One PolicyClient shared by threads: each thread's unary calls and its own ControlSession get their own answers."""

from __future__ import annotations

import threading

import numpy as np
from tiny_policy import ACT_DIM

from flowrl_deploy.noise import draw_noise, session_noise

OBS = np.array([0.3, -0.2, 0.1], np.float32)


def test_threads_sharing_a_client_each_get_the_actions_of_their_own_seed(client, local):
    """As docs/client.md says: a PolicyClient may be shared between threads, a ControlSession is one loop's."""
    seeds, got, errors = range(4), {}, []

    def loop(seed: int) -> None:
        try:
            unary = [client.act(OBS, seed=seed, timeout_s=30) for _ in range(5)]
            with client.session(period_s=0.5, deadline_s=0.5, seed=seed, reset_timeout_s=30) as control:
                got[seed] = unary, [control.act(OBS) for _ in range(5)], [t.source for t in control.timings]
        except Exception as exc:  # reported by the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(seed,)) for seed in seeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == [] and sorted(got) == list(seeds)
    for seed, (unary, streamed, sources) in got.items():
        first = local.act(OBS[None], draw_noise(session_noise(seed), 1, ACT_DIM))[0]
        np.testing.assert_allclose(unary, [first] * 5, atol=1e-6)  # a seeded Act draws the seed's first noise
        generator = session_noise(seed)
        expected = [local.act(OBS[None], draw_noise(generator, 1, ACT_DIM))[0].copy() for _ in range(5)]
        fresh = [i for i, source in enumerate(sources) if source == "server"]  # a loaded machine may miss one
        assert fresh  # (a missed tick still takes its draw on the server: tick i acts on the i-th)
        np.testing.assert_allclose([streamed[i] for i in fresh], [expected[i] for i in fresh], atol=1e-6)
