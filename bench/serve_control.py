"""A 200 Hz `flowrl control` run against `flowrl serve`: deadline misses, round trip and jitter.

A random (untrained) cartpole policy, width 256, 10 flow steps, exported and served in a child
process; 10 episodes of dmc:cartpole-swingup = 10,000 control ticks. Target: < 0.1% misses.
``--pin 1 0`` runs the server on core 1 and the control loop on core 0. ``--rt-priority 50`` runs
both under SCHED_FIFO (``flowrl serve --rt-priority``, and ``flowrl_deploy.affinity.set_realtime``
in this process once the server is up, as ``flowrl control --rt-priority`` does), so that other
work on those cores does not delay them; it needs the right to (root, CAP_SYS_NICE).

    .venv/bin/python bench/serve_control.py [--quick] [--pin 1 0] [--rt-priority 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_common import add_pin_option, machine, pinned, random_policy

from flowrl_deploy.affinity import check_realtime, set_realtime
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.serve import ServerProcess
from flowrl_deploy.train.control import run_control


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 episodes (2,000 ticks)")
    parser.add_argument("--json", type=Path, help="write the report here (raw round trips included)")
    parser.add_argument("--hz", type=float, default=200.0)
    add_pin_option(parser)
    parser.add_argument(
        "--rt-priority", type=int, metavar="PRIORITY", help="run client and server under SCHED_FIFO at this priority"
    )
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "flowrl-bench")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rt = () if args.rt_priority is None else ("--rt-priority", str(args.rt_priority))
    if rt:  # a priority this process may not use: one line before anything starts
        try:
            check_realtime(args.rt_priority)
        except FlowRLError as exc:
            parser.error(str(exc))
    model = random_policy(args.work / "cartpole_random.onnx", 5, 1, 256, "dmc:cartpole-swingup")
    with ServerProcess(model, "--providers", "cpu", *pinned(args.pin), *rt) as server:
        if rt:  # the control loop's threads, gRPC's started later included
            set_realtime(args.rt_priority)
        report = run_control(server.address, None, hz=args.hz, episodes=2 if args.quick else 10, seed=0)
    where = f"pinned (server, client): {args.pin}; SCHED_FIFO priority: {args.rt_priority}"
    print(f"{machine()['cpu']} ({machine()['cores']} cores); {where}")
    print(report.summary())
    if note := report.seeded_note():
        print(note, file=sys.stderr)
    print(f"target < 0.1% misses: {'OK' if report.miss_rate < 0.001 else 'MISSED'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        figures = {"machine": machine(), "pin": args.pin, "rt_priority": args.rt_priority, **report.to_dict()}
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
