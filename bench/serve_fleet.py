"""How many 50 Hz robots one `flowrl serve` process can serve: with and without micro-batching.

K simulated robots each hold their own StreamAct stream and send a dog-run observation every
20 ms (open loop, random phases), with the period as the server-side deadline. A fleet size
passes when the round-trip p99 stays under 10 ms and no request misses its deadline. The
search doubles K until a failure, then bisects. Once with `--max-batch 1`, once batched.

    .venv/bin/python bench/serve_fleet.py [--quick] [--json bench/results/serve_fleet.json]

Target: micro-batching serves >= 2x as many robots as --max-batch 1.

A third search runs the same robots against an echo service (same messages, no policy, no
inference): the fleet size the transport and the machine allow before any inference at all.
Each trial also reports the CPU time per action of the server process and of this client (which
shares the machine), and the server's inference time per reply, so that the cost of the transport,
of inference and of batching can be read off directly. The end of the run sets them side by side:
onnxruntime's time per row at batch 1, 4 and 16 (in this process, the server's session settings)
and the echo floor's CPU per action (server and client: what every action costs before inference).
Batching can only shrink the inference share, so (inference at batch 1 + echo floor) / (inference
per row at batch 16 + echo floor) bounds the ratio from above, before any hand-off or queueing:
where the transport costs about as much as inference, as with this fast export on a small CPU,
the bound itself lies near or under 2x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_common import DOG_RUN, cpu_seconds, dog_run_model, echo_process, figures, machine, serve_echo

from flowrl_deploy.codec import encode
from flowrl_deploy.contract import NOISE_INPUT, OBS_INPUT
from flowrl_deploy.ort import make_session
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.proto.flowrl.v1 import policy_pb2_grpc as pb_grpc
from flowrl_deploy.serve.process import ServerProcess

HZ = 50.0
INFERENCE_BATCHES = (1, 4, 16, 64)
P99_LIMIT_US = 10_000.0


async def robot(
    open_stream, index: int, duration_s: float, warmup_s: float, rtts: list[float], counts: dict, inference: list[int]
) -> None:
    """One robot: a stream, a request every period, replies matched by seq (``inference``: each
    measured reply's ``inference_us``, the server's time in onnxruntime for the reply's batch)."""
    period = 1.0 / HZ
    obs = encode(np.random.default_rng(index).standard_normal(DOG_RUN["obs_dim"]).astype(np.float32))
    sent: dict[int, float] = {}
    queue: asyncio.Queue = asyncio.Queue()

    async def requests():
        while True:
            item = await queue.get()
            if item is None:
                return
            yield item

    call = open_stream(requests())

    async def read() -> None:
        async for reply in call:
            start = sent.pop(reply.seq, None)
            if start is None:
                continue
            measured = start >= warmup_at
            rtt = (time.perf_counter() - start) * 1e6
            if reply.status.code != 0 or rtt > period * 1e6:
                counts["misses"] += measured
                counts["errors"] += measured and reply.status.code != 0
            elif measured:
                rtts.append(rtt)
                inference.append(reply.inference_us)

    begin = time.perf_counter() + random.random() * period
    warmup_at = begin + warmup_s
    reader = asyncio.create_task(read())
    seq = 0
    while True:
        now = time.perf_counter()
        at = begin + seq * period
        if at > warmup_at + duration_s:
            break
        if at > now:
            await asyncio.sleep(at - now)
        seq += 1
        sent[seq] = time.perf_counter()
        counts["sent"] += sent[seq] >= warmup_at
        counts["all_sent"] += 1
        await queue.put(
            pb.StreamActRequest(session_id=f"robot-{index}", seq=seq, obs=obs, timeout_us=int(period * 1e6))
        )
    await asyncio.sleep(period)
    counts["misses"] += sum(1 for start in sent.values() if start >= warmup_at)  # never answered
    await queue.put(None)
    try:
        await asyncio.wait_for(reader, timeout=2)
    except (asyncio.TimeoutError, grpc.aio.AioRpcError):
        reader.cancel()


def echo_reply(request: bytes) -> bytes:
    """The echo floor's answer: a dog-run-sized StreamActReply with the request's seq, no inference."""
    seq = pb.StreamActRequest.FromString(request).seq
    return pb.StreamActReply(seq=seq, action=ECHO_ACTION, model_version="echo").SerializeToString()


ECHO_ACTION = encode(np.zeros(DOG_RUN["act_dim"], np.float32))


async def fleet(address: str, server_pid: int, k: int, duration_s: float, warmup_s: float, echo: bool = False) -> dict:
    rtts: list[float] = []
    inference: list[int] = []
    counts = {"sent": 0, "all_sent": 0, "misses": 0, "errors": 0}
    cpu_start = cpu_seconds(server_pid), cpu_seconds()
    async with grpc.aio.insecure_channel(address) as channel:
        if echo:
            open_stream = channel.stream_stream(
                "/bench.Echo/Stream",
                request_serializer=pb.StreamActRequest.SerializeToString,
                response_deserializer=pb.StreamActReply.FromString,
            )
        else:
            stub = pb_grpc.PolicyServiceStub(channel)
            open_stream = stub.StreamAct
            before = await stub.GetStats(pb.GetStatsRequest())
        await asyncio.gather(*(robot(open_stream, i, duration_s, warmup_s, rtts, counts, inference) for i in range(k)))
        server_cpu, client_cpu = cpu_seconds(server_pid) - cpu_start[0], cpu_seconds() - cpu_start[1]
        mean_batch = 0.0
        if not echo:
            after = await stub.GetStats(pb.GetStatsRequest())
            rows = after.batches * after.mean_batch_size - before.batches * before.mean_batch_size
            mean_batch = rows / max(1, after.batches - before.batches)
    row = figures(rtts) if rtts else {"p50_us": float("inf"), "p99_us": float("inf")}
    per_action = 1e6 / max(1, counts.pop("all_sent"))
    row.update(k=k, actions_per_s=len(rtts) / duration_s, mean_batch=mean_batch, **counts)
    row["inference_us_per_reply"] = float(np.mean(inference)) if inference and not echo else 0.0
    row.update(server_cpu_us_per_action=server_cpu * per_action, client_cpu_us_per_action=client_cpu * per_action)
    row["ok"] = row["p99_us"] < P99_LIMIT_US and counts["misses"] == 0
    return row


def search(
    address: str, server_pid: int, duration_s: float, warmup_s: float, k_max: int, echo: bool = False
) -> tuple[int, list[dict]]:
    """Largest passing K (a failure is retried once): double until a failure, then bisect."""
    trials: list[dict] = []

    def trial(k: int, retry: bool = True) -> bool:
        row = asyncio.run(fleet(address, server_pid, k, duration_s, warmup_s, echo))
        trials.append(row)
        print(
            f"  K={k:4d}  p50 {row['p50_us']:8.0f} µs  p99 {row['p99_us']:8.0f} µs  misses {row['misses']:5d}"
            f" (errors {row['errors']})  mean batch {row['mean_batch']:4.1f}"
            f"  {row['actions_per_s']:7.0f} actions/s  CPU µs/action server {row['server_cpu_us_per_action']:5.0f}"
            f" client {row['client_cpu_us_per_action']:4.0f}  {'ok' if row['ok'] else 'FAIL'}",
            flush=True,
        )
        if not row["ok"] and retry:  # one retry, so that a single hiccup of a shared machine does not end the search
            return trial(k, retry=False)
        return row["ok"]

    good, bad, k = 0, None, 1
    while k <= k_max:
        if not trial(k):
            bad = k
            break
        good, k = k, k * 2
    while bad is not None and bad - good > max(1, good // 8):
        mid = (good + bad) // 2
        if trial(mid):
            good = mid
        else:
            bad = mid
    return good, trials


def summarize(k: int, trials: list[dict]) -> dict:
    """The search's result: the largest passing K and the figures of its trial (zeros if none passed)."""
    best = next((t for t in trials if t["k"] == k and t["ok"]), None)
    figures_of_best = {
        key: best[key] if best else 0.0
        for key in ("actions_per_s", "server_cpu_us_per_action", "client_cpu_us_per_action", "inference_us_per_reply")
    }
    return {"k": k, **figures_of_best, "trials": trials}


def inference_per_row(model: Path, batches: tuple[int, ...] = INFERENCE_BATCHES) -> dict[int, float]:
    """onnxruntime's median time per row (µs) at each batch size, one thread, the server's session settings."""
    session = make_session(str(model), providers=["CPUExecutionProvider"], threads=1)
    rng = np.random.default_rng(0)
    per_row = {}
    for batch in batches:
        feeds = {
            OBS_INPUT: rng.standard_normal((batch, DOG_RUN["obs_dim"])).astype(np.float32),
            NOISE_INPUT: rng.standard_normal((batch, DOG_RUN["act_dim"])).astype(np.float32),
        }
        times = []
        for _ in range(max(20, 400 // batch)):
            start = time.perf_counter()
            session.run(None, feeds)
            times.append(time.perf_counter() - start)
        per_row[batch] = float(np.median(times)) * 1e6 / batch
    return per_row


def ratio_ceiling(results: dict, per_row: dict[int, float]) -> float | None:
    """(inference per reply at --max-batch 1 + echo floor) / (least inference per row + echo floor): the
    robots ratio batching could reach if it cost nothing but its inference (see the module doc); None
    without an echo floor or a passing --max-batch 1 fleet."""
    base, echo = results["max-batch 1"], results.get("echo floor")
    if echo is None or not echo["k"] or not base["k"]:
        return None
    floor = echo["server_cpu_us_per_action"] + echo["client_cpu_us_per_action"]
    return (base["inference_us_per_reply"] + floor) / (min(per_row.values()) + floor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short trials (finishes within about a minute)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--max-batch", type=int, default=64, help="micro-batch size of the batched server")
    parser.add_argument("--batch-window-us", type=int, default=0, help="its batching window")
    parser.add_argument("--batch-workers", type=int, default=2, help="its batches run concurrently")
    parser.add_argument("--k-max", type=int, default=512)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "flowrl-bench")
    parser.add_argument("--no-echo", action="store_true", help="skip the echo-floor fleet")
    parser.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        serve_echo(echo_reply)
        return
    duration_s, warmup_s = (1.5, 0.3) if args.quick else (5.0, 1.0)
    args.work.mkdir(parents=True, exist_ok=True)
    model = dog_run_model(args.work)
    configs = {
        "max-batch 1": ["--max-batch", "1"],
        f"max-batch {args.max_batch}": [
            "--max-batch",
            str(args.max_batch),
            "--batch-window-us",
            str(args.batch_window_us),
            "--batch-workers",
            str(args.batch_workers),
        ],
    }
    results = {}
    for name, flags in configs.items():
        print(f"{name}:", flush=True)
        with ServerProcess(model, "--providers", "cpu", *flags) as served:
            k, trials = search(served.address, served.process.pid, duration_s, warmup_s, args.k_max)
        results[name] = summarize(k, trials)
    if not args.no_echo:
        print("echo floor (no inference):", flush=True)
        with echo_process(__file__) as echo:
            k, trials = search(echo.address, echo.pid, duration_s, warmup_s, args.k_max, echo=True)
        results["echo floor"] = summarize(k, trials)
    per_row = inference_per_row(model)
    ceiling = ratio_ceiling(results, per_row)
    base, batched = results["max-batch 1"], results[f"max-batch {args.max_batch}"]
    ratio = batched["k"] / base["k"] if base["k"] else 0.0  # no fleet at all passed: no ratio to claim
    print(f"\n{machine()['cpu']} ({machine()['cores']} cores), dog-run shapes, 10 flow steps, {HZ:g} Hz per robot")
    print(
        f"{'server':16s} {'robots K':>9s} {'actions/s':>10s} {'server CPU µs/action':>21s} {'client':>7s}"
        f" {'inference µs/reply':>19s}"
    )
    for name, row in results.items():
        print(
            f"{name:16s} {row['k']:9d} {row['actions_per_s']:10.0f}"
            f" {row['server_cpu_us_per_action']:21.0f} {row['client_cpu_us_per_action']:7.0f}"
            f" {row['inference_us_per_reply']:19.0f}"
        )
    print(
        "onnxruntime µs per row (this process, 1 thread): "
        + ", ".join(f"batch {b} {t:.0f}" for b, t in per_row.items())
    )
    if ceiling is not None:
        print(f"ratio ceiling if batching cost nothing but its inference (module doc): {ceiling:.2f}x")
    print(
        f"micro-batching serves {ratio:.2f}x the robots of --max-batch 1 (target >= 2x): "
        f"{'OK' if ratio >= 2 else 'MISSED'}" + ("" if base["k"] else " (no fleet passed with --max-batch 1)")
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "hz": HZ,
                    "p99_limit_us": P99_LIMIT_US,
                    "batched_server_flags": configs[f"max-batch {args.max_batch}"],
                    "results": results,
                    "ratio": ratio,
                    "inference_us_per_row": per_row,
                    "ratio_ceiling": ceiling,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
