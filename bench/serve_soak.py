"""A memory and resource soak of `flowrl serve`: RSS, threads and file descriptors under a deployment's mix.

One server (a random dog-run-shaped policy, 10 flow steps, ``--providers cpu``) is driven for
``--minutes`` by a few client threads at once, the calls a real deployment sees:
  control     a ControlSession streaming at ``--hz`` (200 Hz) for the whole run
  unary       Act at 100 calls/s, batches of 1, 2, 4 and 8; GetSpec and GetStats now and then; and
              every 25th call a wrong-shape observation, which must be refused (INVALID_ARGUMENT)
  churn       about 4 sessions a second, in turn: a seeded ControlSession (5 ticks, then close()); a
              raw StreamAct stream of 3 ticks and a wrong-shape one (refused in its reply) cancelled
              without closing its requests; the same with its channel closed abruptly under it
  reset       Reset at 100 calls/s, each for a new session id: past ``--max-sessions`` (512 here, the
              server's default 4096) the server evicts the least recently used Reset session
Every few seconds the SERVER process is sampled from /proc/<pid>/status and /proc/<pid>/fd (VmRSS,
VmHWM, Threads, open descriptors) with GetStats' request count and open sessions.

The summary sets RSS at the end of warm-up against RSS at the end, and gives the growth in KiB per
10,000 requests (a least-squares slope over the samples after warm-up, and over their last half alone).
Warm-up is the first 20 % of the run, and longer until the server's bounded stores are full: its
session table (``--max-sessions``) and the percentile windows of StreamAct, Act and Reset (GetStats'
``percentile_window``, 10,000 latencies each, ~0.3 MiB: Act's fills after ~100 s of this mix); filling,
they grow RSS as a leak would. A run that ends first (``--quick`` always does) gives its figures and no
verdict on RSS. A figure, not a test: it "looks like a leak" when both slopes exceed
:data:`LEAK_KIB_PER_10K` (growth that persists, where a store still filling or the allocator settling
flattens out), or threads or descriptors end more than :data:`THREAD_MARGIN` / :data:`FD_MARGIN` above
warm-up. Errors other than the refusals it asks for are counted, client and server side (replies refused
as late, DEADLINE_EXCEEDED, apart: the 200 Hz stream's 2.5 ms deadline is missed at times on a shared
2-core host). Linux only (/proc): elsewhere it says so and exits 0.

    .venv/bin/python bench/serve_soak.py [--quick] [--minutes 10] [--json bench/results/serve_soak.json]
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_common import DOG_RUN, cpu_seconds, dog_run_model, machine

from flowrl_deploy.client import PolicyClient, ServiceError
from flowrl_deploy.codec import encode
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.proto.flowrl.v1 import policy_pb2_grpc as pb_grpc
from flowrl_deploy.serve.process import ServerProcess

WARMUP_FRACTION = 0.2
"""The share of the run (its start) left out of the growth figures."""
LEAK_KIB_PER_10K = 100.0
"""RSS growth per 10,000 requests above which the run looks like a leak (about 10 bytes a request). Any
Python object kept per request costs more (a float 24 bytes, a small dict or a protobuf message hundreds),
and so does 4 KiB kept per connection at this mix's 1 connection per ~200 requests; at 1,000 requests/s
(five 200 Hz robots) it would be ~0.8 GiB a day. Below it lies the allocator's noise over a short run."""
THREAD_MARGIN = 2
"""Threads the server may end with above its count at warm-up before that looks like growth."""
FD_MARGIN = 4
"""Open descriptors likewise (the churn's connections come and go: a few are open at any sample)."""
UNARY_HZ, RESET_HZ, CHURN_HZ = 100.0, 100.0, 4.0
BAD_EVERY = 25
"""Every this many unary calls, a wrong-shape observation instead."""
BATCHES = (1, 2, 4, 8)
SERVER_MAX_SESSIONS = 512
EXPECTED_CODES = {"OK", "INVALID_ARGUMENT", "CANCELLED"}
"""Server-side codes this mix asks for: its wrong-shape requests, its cancelled streams."""
LATE_CODES = {"DEADLINE_EXCEEDED"}
"""Requests answered past their deadline are refused, as asked (on a loaded 2-core host, some are):
counted apart, not as errors."""
BUSY_METHODS = ("StreamAct", "Act", "Reset")
"""The methods whose percentile windows (GetStats ``percentile_window`` latencies each, about 32 bytes a
call) must be full before warm-up ends: filling, they grow RSS by ~0.3 MiB each, bounded."""


class Tally:
    """What the client threads did, and the errors they did not expect (by kind, with a first message)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.first_error: dict[str, str] = {}

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n

    def error(self, kind: str, exc: BaseException) -> None:
        with self.lock:
            self.errors[kind] += 1
            self.first_error.setdefault(kind, f"{type(exc).__name__}: {exc}"[:300])


def paced(stop: threading.Event, hz: float, step: Callable[[int], None]) -> None:
    """Call ``step(i)`` at ``hz`` (absolute schedule; a late call does not bunch the next ones) until ``stop``."""
    period, i = 1.0 / hz, 0
    next_at = time.perf_counter()
    while not stop.is_set():
        step(i)
        i += 1
        next_at += period
        wait = next_at - time.perf_counter()
        if wait > 0:
            stop.wait(wait)
        elif wait < -1.0:  # over a second behind (a stall of the shared machine): restart the schedule
            next_at = time.perf_counter()


def guarded(tally: Tally, kind: str, step: Callable[[int], None]) -> Callable[[int], None]:
    """``step`` with an unexpected exception counted (as ``kind``) instead of ending the thread."""

    def run(i: int) -> None:
        try:
            step(i)
        except Exception as exc:
            tally.error(f"{kind} {getattr(exc, 'code', '')}".strip(), exc)
            time.sleep(0.05)

    return run


def control(address: str, hz: float, stop: threading.Event, tally: Tally, result: dict) -> None:
    """One ControlSession streaming at ``hz`` for the whole run."""
    obs = np.random.default_rng(1).standard_normal(DOG_RUN["obs_dim"]).astype(np.float32)
    with PolicyClient(address, timeout_s=5) as client, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the served policy's control period is not 1/hz: warned once
        with client.session(period_s=1.0 / hz, seed=1, max_timings=1000) as session:
            paced(stop, hz, guarded(tally, "control", lambda i: (session.act(obs), tally.add("control ticks"))))
            result.update(misses=session.health.misses, fallbacks=dict(session.health.fallbacks))


def unary(address: str, stop: threading.Event, tally: Tally) -> None:
    """Act with small batches; GetSpec every 20th call, GetStats every 50th; a wrong shape every 25th."""
    rng = np.random.default_rng(2)
    obs = {b: rng.standard_normal((b, DOG_RUN["obs_dim"])).astype(np.float32) for b in BATCHES}
    wrong = (
        rng.standard_normal(DOG_RUN["obs_dim"] + 3).astype(np.float32),
        rng.standard_normal((2, 5)).astype(np.float32),
    )
    with PolicyClient(address, timeout_s=5) as client:

        def step(i: int) -> None:
            if i % BAD_EVERY == BAD_EVERY - 1:
                tally.add("bad requests")
                try:
                    client.act(wrong[i % 2])
                except ServiceError as exc:
                    if exc.code != grpc.StatusCode.INVALID_ARGUMENT:
                        raise
                    tally.add("bad requests refused")
                    return
                raise AssertionError("a wrong-shape Act was served")
            action = client.act(obs[BATCHES[i % len(BATCHES)]])
            assert action.shape == (BATCHES[i % len(BATCHES)], DOG_RUN["act_dim"]), action.shape
            tally.add("act calls")
            if i % 20 == 0:
                client.spec()
                tally.add("spec calls")
            if i % 50 == 0:
                client.stats()
                tally.add("stats calls")

        paced(stop, UNARY_HZ, guarded(tally, "unary", step))


def raw_stream_then_drop(address: str, n: int, obs: np.ndarray, close_channel: bool) -> bool:
    """A StreamAct stream of 3 ticks and a wrong shape, then cancelled (``close_channel``: its channel
    closed under it) with its request stream left open; whether the wrong shape was refused."""
    channel = grpc.insecure_channel(address)
    requests: queue.SimpleQueue = queue.SimpleQueue()
    try:
        call = pb_grpc.PolicyServiceStub(channel).StreamAct(iter(requests.get, None), timeout=10)
        for seq in range(1, 4):
            requests.put(pb.StreamActRequest(session_id=f"drop-{n}", seq=seq, obs=encode(obs), seed=n))
            reply = next(call)
            if reply.status.code != 0:
                raise RuntimeError(f"StreamAct tick {seq} refused: {reply.status.message}")
        requests.put(pb.StreamActRequest(session_id=f"drop-{n}", seq=4, obs=encode(obs[:5])))
        refused = next(call).status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        if not close_channel:
            call.cancel()
        return refused
    finally:
        channel.close()
        requests.put(None)  # ends gRPC's own thread reading the requests


def churn(address: str, stop: threading.Event, tally: Tally) -> None:
    """Sessions opened and closed, and dropped: see the module doc."""
    obs = np.random.default_rng(3).standard_normal(DOG_RUN["obs_dim"]).astype(np.float32)
    with PolicyClient(address, timeout_s=5) as client:
        period = client.spec().control_period_s or 0.02

        def step(i: int) -> None:
            kind = i % 3
            if kind == 0:
                with client.session(period_s=period, deadline_s=period, seed=i, max_timings=16) as session:
                    for _ in range(5):
                        session.act(obs)
                    tally.add("churn misses", session.health.misses)
                tally.add("sessions closed")
                return
            tally.add("bad stream requests")
            if raw_stream_then_drop(address, i, obs, close_channel=kind == 2):
                tally.add("bad stream requests refused")
            tally.add("streams cancelled" if kind == 1 else "channels closed under a stream")

        paced(stop, CHURN_HZ, guarded(tally, "churn", step))


def resets(address: str, stop: threading.Event, tally: Tally) -> None:
    """Reset for a new session id each call."""
    with PolicyClient(address, timeout_s=5) as client:

        def step(i: int) -> None:
            client.reset(f"soak-reset-{i}", seed=i)
            tally.add("resets")

        paced(stop, RESET_HZ, guarded(tally, "reset", step))


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (KiB), Threads and open descriptors of ``pid``, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            fields[key] = int(value.split()[0])
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    return {"rss_kib": fields["VmRSS"], "hwm_kib": fields["VmHWM"], "threads": fields["Threads"], "fds": fds}


def sample(pid: int, stats_client: PolicyClient, start: float, max_sessions: int) -> dict:
    """The server's figures now; ``windows``: how full the fullest-to-be stores are, the percentile
    windows of :data:`BUSY_METHODS` (the least full of them), and ``stores_full``: those and the
    session table full."""
    stats = stats_client.stats()
    timed = {m.method: m.timed_calls for m in stats.methods}
    window = stats.percentile_window or 1
    windows = min(timed.get(method, 0) for method in BUSY_METHODS) / window
    return {
        "t_s": round(time.perf_counter() - start, 2),
        "requests": sum(m.requests for m in stats.methods),
        **proc_status(pid),
        "sessions": stats.sessions,
        "cpu_s": round(cpu_seconds(pid), 2),
        "windows": round(windows, 3),
        "stores_full": windows >= 1 and stats.sessions >= max_sessions,
    }


def slope_kib_per_10k(samples: list[dict]) -> float:
    """Least-squares RSS growth per 10,000 requests over ``samples`` (nan with fewer than 3)."""
    if len(samples) < 3:
        return float("nan")
    requests = np.array([s["requests"] for s in samples], np.float64)
    rss = np.array([s["rss_kib"] for s in samples], np.float64)
    return float(np.polyfit(requests, rss, 1)[0] * 10_000)


def summarize(samples: list[dict], duration_s: float) -> dict:
    """Warm-up ends at the first sample past :data:`WARMUP_FRACTION` of the run whose bounded stores are
    full (``stores_full``); a run that ends before they fill gets the figures after the fraction, and
    no verdict (``inconclusive``): its growth includes their filling."""
    late = [s for s in samples if s["t_s"] >= WARMUP_FRACTION * duration_s] or samples[-1:]
    full = next((i for i, s in enumerate(late) if s["stores_full"]), None)
    after = late if full is None else late[full:]
    warm, end = after[0], samples[-1]
    half = [s for s in after if s["t_s"] >= after[0]["t_s"] + (end["t_s"] - after[0]["t_s"]) / 2]
    slope, slope_half = slope_kib_per_10k(after), slope_kib_per_10k(half)
    requests = end["requests"] - warm["requests"]
    inconclusive = full is None or len(after) < 3
    why = []
    if slope > LEAK_KIB_PER_10K and slope_half > LEAK_KIB_PER_10K and not inconclusive:
        why.append(f"RSS grows {slope:.0f} KiB per 10k requests ({slope_half:.0f} over the last half)")
    if end["threads"] > warm["threads"] + THREAD_MARGIN:
        why.append(f"threads {warm['threads']} -> {end['threads']}")
    if end["fds"] > warm["fds"] + FD_MARGIN:
        why.append(f"descriptors {warm['fds']} -> {end['fds']}")
    return {
        "warmup_s": warm["t_s"],
        "inconclusive": inconclusive,
        "rss_start_mib": samples[0]["rss_kib"] / 1024,
        "rss_warm_mib": warm["rss_kib"] / 1024,
        "rss_end_mib": end["rss_kib"] / 1024,
        "hwm_end_mib": end["hwm_kib"] / 1024,
        "requests_after_warmup": requests,
        "requests_per_s": requests / max(1e-9, end["t_s"] - warm["t_s"]),
        "slope_kib_per_10k": slope,
        "slope_last_half_kib_per_10k": slope_half,
        "threads_warm": warm["threads"],
        "threads_max": max(s["threads"] for s in after),
        "threads_end": end["threads"],
        "fds_warm": warm["fds"],
        "fds_max": max(s["fds"] for s in after),
        "fds_end": end["fds"],
        "sessions_max": max(s["sessions"] for s in samples),
        "server_cpu_us_per_request": 1e6 * (end["cpu_s"] - warm["cpu_s"]) / max(1, requests),
        "windows_end": end["windows"],
        "looks_like_leak": bool(why),
        "why": why,
    }


def server_codes(stats: pb.GetStatsReply) -> dict[str, dict[str, int]]:
    return {m.method: dict(m.codes) for m in stats.methods}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 45 s run (finishes within a minute)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to drive the server")
    parser.add_argument("--every", type=float, help="seconds between samples (default: the run / 60, 2-10 s)")
    parser.add_argument("--hz", type=float, default=200.0, help="the long ControlSession's rate")
    parser.add_argument("--max-sessions", type=int, default=SERVER_MAX_SESSIONS, help="the server's --max-sessions")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "flowrl-bench")
    args = parser.parse_args()
    if sys.platform != "linux" or not Path("/proc/self/status").exists():
        print("bench/serve_soak.py samples the server from /proc: Linux only; nothing measured here")
        return
    duration_s = 45.0 if args.quick else args.minutes * 60
    every_s = args.every or min(10.0, max(2.0, duration_s / 60))
    args.work.mkdir(parents=True, exist_ok=True)
    model = dog_run_model(args.work)
    log = args.work / "serve_soak_server.log"
    tally, control_result = Tally(), {}
    flags = ("--providers", "cpu", "--max-sessions", str(args.max_sessions))
    with ServerProcess(model, *flags, log=log) as served, PolicyClient(served.address, timeout_s=5) as stats:
        pid = served.process.pid
        stop = threading.Event()
        workers = [
            threading.Thread(target=control, args=(served.address, args.hz, stop, tally, control_result)),
            threading.Thread(target=unary, args=(served.address, stop, tally)),
            threading.Thread(target=churn, args=(served.address, stop, tally)),
            threading.Thread(target=resets, args=(served.address, stop, tally)),
        ]
        start = time.perf_counter()
        samples = [sample(pid, stats, start, args.max_sessions)]
        for worker in workers:
            worker.start()
        print(
            f"{'t s':>7s} {'requests':>10s} {'RSS MiB':>8s} {'HWM MiB':>8s} {'threads':>8s} {'fds':>5s}"
            f" {'sessions':>9s} {'windows %':>10s}"
        )
        try:
            while True:
                now = time.perf_counter() - start
                if now >= duration_s:
                    break
                time.sleep(min(every_s, duration_s - now))
                samples.append(sample(pid, stats, start, args.max_sessions))
                s = samples[-1]
                print(
                    f"{s['t_s']:7.1f} {s['requests']:10d} {s['rss_kib'] / 1024:8.1f} {s['hwm_kib'] / 1024:8.1f}"
                    f" {s['threads']:8d} {s['fds']:5d} {s['sessions']:9d} {100 * s['windows']:10.0f}",
                    flush=True,
                )
        finally:
            stop.set()
            for worker in workers:
                worker.join(30)
        codes = server_codes(stats.stats())
    exit_code = served.process.returncode
    summary = summarize(samples, duration_s)
    unexpected_server = {
        f"{method} {code}": n
        for method, by_code in codes.items()
        for code, n in by_code.items()
        if code not in EXPECTED_CODES | LATE_CODES
    }
    late = sum(n for by_code in codes.values() for code, n in by_code.items() if code in LATE_CODES)
    counts = dict(tally.counts)
    refusals_missing = (counts.get("bad requests", 0) - counts.get("bad requests refused", 0)) + (
        counts.get("bad stream requests", 0) - counts.get("bad stream requests refused", 0)
    )
    print(
        f"\n{machine()['cpu']} ({machine()['cores']} cores); {duration_s:.0f} s, a sample every {every_s:g} s;"
        f" server --max-sessions {args.max_sessions}; its log: {log}"
    )
    print("client calls: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(
        f"control stream at {args.hz:g} Hz: misses {control_result.get('misses')},"
        f" fallbacks {control_result.get('fallbacks')}"
    )
    print(
        f"RSS {summary['rss_start_mib']:.1f} MiB at start, {summary['rss_warm_mib']:.1f} after warm-up"
        f" ({summary['warmup_s']:.0f} s), {summary['rss_end_mib']:.1f} at the end"
        f" (high water {summary['hwm_end_mib']:.1f});"
        f" {summary['requests_after_warmup']} requests after warm-up ({summary['requests_per_s']:.0f}/s,"
        f" server CPU {summary['server_cpu_us_per_request']:.0f} µs each)"
    )
    print(
        f"growth: {summary['slope_kib_per_10k']:.1f} KiB per 10k requests after warm-up,"
        f" {summary['slope_last_half_kib_per_10k']:.1f} over the last half (leak-like above {LEAK_KIB_PER_10K:g})"
    )
    print(
        f"threads {summary['threads_warm']} at warm-up, max {summary['threads_max']}, end {summary['threads_end']};"
        f" fds {summary['fds_warm']}, max {summary['fds_max']}, end {summary['fds_end']};"
        f" sessions at most {summary['sessions_max']}"
    )
    print(
        f"errors: client {dict(tally.errors) or 'none'}; server codes other than {sorted(EXPECTED_CODES)}:"
        f" {unexpected_server or 'none'}; wrong shapes served: {refusals_missing}; server exit status {exit_code};"
        f" late requests refused (DEADLINE_EXCEEDED, not errors) {late}"
    )
    for kind, message in tally.first_error.items():
        print(f"  first {kind}: {message}")
    if summary["looks_like_leak"]:
        verdict = "LOOKS LIKE A LEAK: " + "; ".join(summary["why"])
    elif summary["inconclusive"]:
        verdict = (
            f"no verdict on RSS: the run ended before the server's bounded stores filled (percentile windows"
            f" of {', '.join(BUSY_METHODS)} {100 * summary['windows_end']:.0f} % full, sessions at most"
            f" {summary['sessions_max']} of {args.max_sessions}): its growth includes their filling; threads"
            " and descriptors steady"
        )
    else:
        verdict = "no sign of a leak"
    print(f"verdict: {verdict}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "machine": machine(),
            "shapes": DOG_RUN,
            "duration_s": duration_s,
            "every_s": every_s,
            "server_flags": list(flags),
            "verdict": verdict,
            "rates_hz": {"control": args.hz, "unary": UNARY_HZ, "reset": RESET_HZ, "churn": CHURN_HZ},
            "thresholds": {
                "leak_kib_per_10k": LEAK_KIB_PER_10K,
                "thread_margin": THREAD_MARGIN,
                "fd_margin": FD_MARGIN,
            },
            "summary": summary,
            "client_counts": counts,
            "control": control_result,
            "client_errors": dict(tally.errors),
            "client_first_errors": tally.first_error,
            "server_codes": codes,
            "unexpected_server_codes": unexpected_server,
            "late_refused": late,
            "wrong_shapes_served": refusals_missing,
            "server_exit_status": exit_code,
            "samples": samples,
        }
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
