"""Robot code written before the control session moved to flowrl_deploy.session imports it from the
client still (a DeprecationWarning at run time): its names keep their types."""

from __future__ import annotations

import numpy as np

from flowrl_deploy.client import FALLBACKS, CallTiming, ControlSession, PolicyClient, WatchdogError


def run(client: PolicyClient) -> list[CallTiming]:
    session: ControlSession = client.session(period_s=0.01, fallback=FALLBACKS[0], max_consecutive_misses=3)
    try:
        session.act(np.zeros(5, np.float32))
    except WatchdogError as exc:
        print(exc.args)
    return list(session.timings)
