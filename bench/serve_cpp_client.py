"""The C++ control session (examples/cpp) against the Python `ControlSession`, on one `flowrl serve`.

Both tick at 200 Hz with a 2.5 ms deadline against the same server (dog-run shapes: obs 223, act 38,
width 512, 10 midpoint steps, a random policy, CPU), in turn, for the same observations; the table
gives each run's fresh ticks and the round trip of its fresh ticks (p50 and p99, the C++ program's own
figures), and the medians over the runs. The difference is what the Python client adds to a tick: the
server's own time is the same for both. Needs cmake and gRPC's C++ library (examples/cpp/README.md);
the program is built under ``--work`` (about a minute, once; `--quick` finishes within one after that).

    .venv/bin/python bench/serve_cpp_client.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_common import dog_run_model, machine

from flowrl_deploy.client import PolicyClient
from flowrl_deploy.serve import ServerProcess

HZ, DEADLINE_MS = 200.0, 2.5
SOURCE = Path(__file__).resolve().parents[1] / "examples" / "cpp"
SUMMARY = re.compile(r"(\d+) ticks at [\d.]+ Hz: (\d+) fresh.*p50 ([\d.]+) ms, p99 ([\d.]+) ms")


def build(work: Path) -> Path:
    """The C++ loop, built (or brought up to date) under ``work``."""
    folder = work / "cpp-build"
    for command in (["cmake", "-S", str(SOURCE), "-B", str(folder)], ["cmake", "--build", str(folder), "-j2"]):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"building examples/cpp failed ({' '.join(command[:2])}): {done.stderr[-2000:]}")
    return folder / "flowrl_cpp_control"


def cpp_run(program: Path, address: str, obs: np.ndarray) -> dict:
    lines = "\n".join(" ".join(f"{v:.9g}" for v in row) for row in obs) + "\n"
    command = [str(program), "--server", address, "--hz", str(HZ), "--deadline-ms", str(DEADLINE_MS)]
    done = subprocess.run(command, input=lines, capture_output=True, text=True, check=True)
    ticks, fresh, p50, p99 = SUMMARY.search(done.stderr).groups()
    return {"ticks": int(ticks), "fresh": int(fresh), "p50_ms": float(p50), "p99_ms": float(p99)}


def python_run(address: str, obs: np.ndarray) -> dict:
    """A fixed-rate loop as flowrl_cpp_control's: act, then sleep until the next tick."""
    period = 1 / HZ
    with PolicyClient(address) as client, client.session(period_s=period, deadline_s=DEADLINE_MS / 1e3) as session:
        next_tick = time.perf_counter()
        for row in obs:
            session.act(row)
            next_tick += period
            time.sleep(max(0.0, next_tick - time.perf_counter()))
        trips = [t.round_trip_us / 1e3 for t in session.timings if t.source == "server"]
    p50, p99 = np.percentile(trips, [50, 99]) if trips else (0.0, 0.0)
    return {"ticks": len(obs), "fresh": len(trips), "p50_ms": float(p50), "p99_ms": float(p99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 runs of 500 ticks each (else 3 of 2,000)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "flowrl-bench")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    program = build(args.work)
    runs, ticks = (2, 500) if args.quick else (3, 2000)
    obs = np.random.default_rng(0).normal(size=(ticks, 223)).astype(np.float32)
    model = dog_run_model(args.work)
    results: dict[str, list[dict]] = {"C++": [], "Python": []}
    with ServerProcess(model, "--providers", "cpu") as server:
        for _ in range(runs):  # in turn, so that other load on the machine falls on both alike
            results["C++"].append(cpp_run(program, server.address, obs))
            results["Python"].append(python_run(server.address, obs))
    print(f"{machine()['cpu']} ({machine()['cores']} cores); {HZ:g} Hz, deadline {DEADLINE_MS} ms, dog-run N=10")
    header = f"{'client':<8}{'run':>4}{'fresh':>12}{'p50 ms':>9}{'p99 ms':>9}"
    print(header, "-" * len(header), sep="\n")
    medians = {}
    for client, rows in results.items():
        for i, row in enumerate(rows, 1):
            fresh = f"{row['fresh']}/{row['ticks']}"
            print(f"{client:<8}{i:>4}{fresh:>12}{row['p50_ms']:>9.3f}{row['p99_ms']:>9.3f}")
        medians[client] = {key: statistics.median(row[key] for row in rows) for key in ("p50_ms", "p99_ms")}
    cpp, python = medians["C++"]["p50_ms"], medians["Python"]["p50_ms"]
    print(f"median p50: C++ {cpp:.3f} ms, Python {python:.3f} ms (Python {python - cpp:+.3f} ms, {python / cpp:.2f}×)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        figures = {"machine": machine(), "hz": HZ, "deadline_ms": DEADLINE_MS, "runs": results, "medians": medians}
        args.json.write_text(json.dumps(figures, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
