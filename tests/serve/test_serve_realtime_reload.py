"""flowrl serve --rt-priority: a hot reload's export and load run under the default scheduler, so
that seconds of CPU do not hold a core ahead of the real-time threads serving calls."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from realtime import needs_scheduler, skip_unless_realtime_permitted

SCRIPT = """
import os, sys
from pathlib import Path
sys.path[:0] = sys.argv[2:]
from tiny_policy import write_policy
from flowrl_deploy.affinity import set_realtime
from flowrl_deploy.serve import PolicyServer, ServeConfig

exports = []

def export(source, out, steps):
    exports.append(os.sched_getscheduler(0))
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_policy(out, scale=len(exports) + 1.0)

run = Path(sys.argv[1])
set_realtime(7)
with PolicyServer(ServeConfig(str(run), port=0, grace_s=0), export_checkpoint=export).start() as server:
    server.servicer.slot.load()  # a Reload of the served checkpoint, as --watch makes
    after = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
print(exports == [os.SCHED_OTHER] * 2, after == (os.SCHED_FIFO, 7))
"""


@needs_scheduler
def test_a_reload_exports_and_loads_under_the_default_scheduler_and_the_thread_is_real_time_again(tmp_path):
    skip_unless_realtime_permitted()
    run = tmp_path / "run"
    run.mkdir()
    helpers = str(Path(__file__).resolve().parents[1] / "helpers")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(run), helpers], capture_output=True, text=True, timeout=120
    )
    assert result.stdout.split() == ["True", "True"], result.stdout + result.stderr[-2000:]
