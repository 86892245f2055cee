"""Batch-1 round trip of `flowrl serve` against its floors, dog-run shapes (obs 223, act 38, width 512).

All in one run on one machine, each server in its own process:
  echo unary / echo stream   a gRPC echo of the same message sizes (the transport floor)
  echo stream + inference    the same echo stream, its handler running the graph before it replies:
                             transport and inference with none of the service's own work
  aio echo ...               the same three echo rows on a grpc.aio (asyncio) server: what an
                             asyncio port of the service would start from
  onnxruntime in-process     the same graph, no network
  serve unary (Act)          PolicyClient.act_reply
  serve stream (StreamAct)   ControlSession.act, the control-loop path

Targets: StreamAct p50 <= echo-stream p50 + in-process p50 + 150 µs; StreamAct p99 < 2 x its p50.
``--pin 1 0`` runs the servers on core 1 and this client (and the in-process row) on core 0.
``--providers cuda`` runs the graph on onnxruntime's CUDA provider: in the server, in the echo
handler and in process alike, each replayed from CUDA graphs as ``flowrl serve`` replays them
(``--no-cuda-graphs``: each node launched as a kernel of its own, in all three).

    .venv/bin/python bench/serve_latency.py [--quick] [--json bench/results/serve_latency.json]
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_common import (
    DOG_RUN,
    add_pin_option,
    dog_run_model,
    echo_process,
    figures,
    machine,
    pinned,
    serve_echo,
    serve_echo_aio,
)

from flowrl_deploy.affinity import pin_to_cpus
from flowrl_deploy.client import PolicyClient
from flowrl_deploy.codec import encode
from flowrl_deploy.ort import CUDA
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.serve.process import ServerProcess


def message_sizes() -> tuple[int, int]:
    """Serialized sizes of a dog-run StreamAct request and reply."""
    request = pb.StreamActRequest(
        session_id="control-0123456789ab", seq=1000, obs=encode(np.zeros(DOG_RUN["obs_dim"])), timeout_us=10_000
    )
    request.client_send_unix_ns = time.time_ns()
    reply = pb.StreamActReply(seq=1000, action=encode(np.zeros(DOG_RUN["act_dim"])), model_version="v1-0123456789")
    reply.inference_us, reply.client_send_unix_ns = 1000, time.time_ns()
    reply.server_recv_unix_ns = reply.server_send_unix_ns = time.time_ns()
    return len(request.SerializeToString()), len(reply.SerializeToString())


def time_calls(call, n: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e6)
    return samples


def bench_echo(address: str, request_size: int, n: int, warmup: int, *, unary: bool = True) -> dict:
    """Round trips of the echo service: unary (if ``unary``) and over one stream."""
    channel = grpc.insecure_channel(address)
    payload = b"\2" * request_size
    rows = {}
    if unary:
        call_unary = channel.unary_unary("/bench.Echo/Unary")
        rows["echo unary"] = figures(time_calls(lambda: call_unary(payload, timeout=5), n, warmup))
    # the same stream pattern as ControlSession: a request queue and a reader thread
    requests: queue.SimpleQueue = queue.SimpleQueue()
    replies: queue.SimpleQueue = queue.SimpleQueue()
    call = channel.stream_stream("/bench.Echo/Stream")(iter(requests.get, None))

    def read() -> None:
        try:
            for reply in call:
                replies.put(reply)
        except grpc.RpcError:  # the channel closes at the end
            pass

    threading.Thread(target=read, daemon=True).start()

    def exchange() -> None:
        requests.put(payload)
        replies.get(timeout=5)

    rows["echo stream"] = figures(time_calls(exchange, n, warmup))
    requests.put(None)
    channel.close()
    return rows


PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": [CUDA]}
"""``--providers``: the onnxruntime providers each row's graph runs on."""


def inference_call(model: Path, providers: str, cuda_graphs: bool):
    """call(obs, noise) -> action on ``providers``, replayed from CUDA graphs as the server does when
    ``cuda_graphs`` (CUDA only): what the server's own inference costs, so that the floors compare like with like."""
    from flowrl_deploy.policy import OnnxPolicy

    policy = OnnxPolicy(model, providers=PROVIDERS[providers])
    if not (cuda_graphs and providers == "cuda"):
        return policy.act
    from flowrl_deploy.serve.cuda_graphs import CudaGraphs

    return CudaGraphs.for_policy(model.read_bytes(), policy, threads=1, name=str(model)).run


def inference_reply(model: Path, reply_size: int, providers: str, cuda_graphs: bool):
    """An echo handler that runs ``model`` at batch 1 before it replies (the service minus its own work)."""
    run = inference_call(model, providers, cuda_graphs)
    obs = np.zeros((1, DOG_RUN["obs_dim"]), np.float32)
    noise = np.zeros((1, DOG_RUN["act_dim"]), np.float32)
    payload = b"\1" * reply_size

    def reply(request: bytes) -> bytes:
        run(obs, noise)
        return payload

    return reply


def bench_serve(address: str, n: int, warmup: int) -> dict:
    obs = np.random.default_rng(0).standard_normal(DOG_RUN["obs_dim"]).astype(np.float32)
    with PolicyClient(address, timeout_s=5) as client:
        unary = time_calls(lambda: client.act_reply(obs), n, warmup)
        with client.session(period_s=1.0, deadline_s=1.0, seed=0) as control:
            stream = time_calls(lambda: control.act(obs), n, warmup)
            timed = list(control.timings)[warmup:]
            server_us = [t.server_us for t in timed]
            inference_us = [t.inference_us for t in timed]
            misses = control.health.misses
    return {
        "serve unary (Act)": figures(unary),
        "serve stream (StreamAct)": figures(stream),
        "StreamAct server time": figures(server_us),
        "StreamAct inference (server)": figures(inference_us),
        "stream_misses": misses,
    }


def bench_in_process(model: Path, n: int, warmup: int, providers: str, cuda_graphs: bool) -> dict:
    run = inference_call(model, providers, cuda_graphs)
    obs = np.random.default_rng(0).standard_normal((1, DOG_RUN["obs_dim"])).astype(np.float32)
    noise = np.zeros((1, DOG_RUN["act_dim"]), np.float32)
    return {"onnxruntime in-process": figures(time_calls(lambda: run(obs, noise), n, warmup))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (finishes within a minute)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--steps", type=int, default=10, help="flow steps of the exported graph")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "flowrl-bench")
    add_pin_option(parser)
    parser.add_argument("--providers", choices=sorted(PROVIDERS), default="cpu", help="where the graph runs")
    parser.add_argument(
        "--no-cuda-graphs",
        dest="cuda_graphs",
        action="store_false",
        help="with --providers cuda: run each call's nodes as kernels of their own (flowrl serve --no-cuda-graphs)",
    )
    parser.add_argument("--echo-server", type=int, metavar="REPLY_BYTES", help=argparse.SUPPRESS)
    parser.add_argument("--echo-model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--echo-aio", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    server_cpus = () if args.pin is None else (args.pin[0],)
    if args.echo_server is not None:
        pin_to_cpus(server_cpus)
        payload = b"\1" * args.echo_server
        reply = (
            inference_reply(args.echo_model, args.echo_server, args.providers, args.cuda_graphs)
            if args.echo_model
            else lambda request: payload
        )
        (serve_echo_aio if args.echo_aio else serve_echo)(reply)
        return
    cpus_flag = pinned(args.pin)
    n, warmup = (1500, 200) if args.quick else (10_000, 500)
    args.work.mkdir(parents=True, exist_ok=True)
    model = dog_run_model(args.work, args.steps)
    request_size, reply_size = message_sizes()

    pin_flags = [] if args.pin is None else ["--pin", *map(str, args.pin)]
    with echo_process(__file__, str(reply_size), *pin_flags) as echo:
        rows = bench_echo(echo.address, request_size, n, warmup)
    graphs_flag = [] if args.cuda_graphs else ["--no-cuda-graphs"]
    model_flags = ["--echo-model", str(model), "--providers", args.providers, *graphs_flag]
    with echo_process(__file__, str(reply_size), *model_flags, *pin_flags) as echo:
        inferring = bench_echo(echo.address, request_size, n, warmup, unary=False)
    rows["echo stream + inference"] = inferring["echo stream"]
    with echo_process(__file__, str(reply_size), "--echo-aio", *pin_flags) as echo:
        rows.update({f"aio {name}": row for name, row in bench_echo(echo.address, request_size, n, warmup).items()})
    with echo_process(__file__, str(reply_size), "--echo-aio", *model_flags, *pin_flags) as echo:
        aio_inferring = bench_echo(echo.address, request_size, n, warmup, unary=False)
    rows["aio echo stream + inference"] = aio_inferring["echo stream"]
    rows.update(bench_in_process(model, n, warmup, args.providers, args.cuda_graphs))
    with ServerProcess(model, "--providers", args.providers, *graphs_flag, *cpus_flag) as served:
        rows.update(bench_serve(served.address, n, warmup))
    misses = rows.pop("stream_misses")

    graphs = args.cuda_graphs and args.providers == "cuda"
    floor = rows["echo stream"]["p50_us"] + rows["onnxruntime in-process"]["p50_us"] + 150
    stream = rows["serve stream (StreamAct)"]
    targets = {
        "stream_p50_us": stream["p50_us"],
        "stream_p50_limit_us": floor,
        "stream_p50_ok": stream["p50_us"] <= floor,
        "stream_p99_over_p50": stream["p99_us"] / stream["p50_us"],
        "stream_p99_ok": stream["p99_us"] < 2 * stream["p50_us"],
        "stream_misses": misses,
    }
    print(
        f"batch 1, dog-run shapes {DOG_RUN}, {args.steps} flow steps, {n} calls each; {machine()['cpu']}; "
        f"onnxruntime providers: {args.providers}{', CUDA graphs' if graphs else ''}"
    )
    print(f"messages: request {request_size} B, reply {reply_size} B; pinned (server, client): {args.pin}")
    print(f"{'path':32s} {'p50 µs':>9s} {'p99 µs':>9s} {'p99.9 µs':>9s} {'mean µs':>9s}")
    for name, row in rows.items():
        print(f"{name:32s} {row['p50_us']:9.0f} {row['p99_us']:9.0f} {row['p999_us']:9.0f} {row['mean_us']:9.0f}")
    print(
        f"StreamAct p50 {stream['p50_us']:.0f} µs vs limit (echo stream + in-process + 150) {floor:.0f} µs: "
        f"{'OK' if targets['stream_p50_ok'] else 'MISSED'}; p99/p50 = {targets['stream_p99_over_p50']:.2f} "
        f"({'OK' if targets['stream_p99_ok'] else 'MISSED'})"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "machine": machine(),
            "shapes": DOG_RUN,
            "steps": args.steps,
            "calls": n,
            "pin": args.pin,
            "providers": args.providers,
            "cuda_graphs": graphs,
            "rows": rows,
            "targets": targets,
        }
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
