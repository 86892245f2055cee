"""Shared by the serve benchmarks: a dog-run-shaped policy file, the echo floor, latency figures; and by
every benchmark: the machine."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DOG_RUN = {"obs_dim": 223, "act_dim": 38, "hidden": 512}


def random_policy(out: Path, obs_dim: int, act_dim: int, hidden: int, env_id: str, steps: int = 10) -> Path:
    """Export a random (untrained) FlowActor of these shapes with ``steps`` flow steps to ``out``; cached."""
    if out.exists():
        return out
    import torch

    from flowrl_deploy.checkpoint import save_checkpoint
    from flowrl_deploy.export import ExportConfig, export_checkpoint
    from flowrl_deploy.spec import PolicySpec
    from flowrl_deploy.train.actor import FlowActor

    torch.set_num_threads(1)
    torch.manual_seed(0)
    bounds = (-1.0,) * act_dim, (1.0,) * act_dim
    spec = PolicySpec(obs_dim, act_dim, *bounds, hidden=hidden, env_id=env_id)
    actor = {k: v.detach().numpy() for k, v in FlowActor(spec).state_dict().items()}
    checkpoint = save_checkpoint(out.with_suffix(".ckpt"), spec=spec, actor=actor)
    export_checkpoint(checkpoint, out, ExportConfig(steps=steps, samples=8))
    return out


def dog_run_model(out_dir: Path, steps: int = 10) -> Path:
    """A random dog-run-shaped policy (obs 223, act 38, width 512)."""
    return random_policy(out_dir / f"dog_run_random_{steps}steps.onnx", env_id="dmc:dog-run", steps=steps, **DOG_RUN)


def add_pin_option(parser: argparse.ArgumentParser) -> None:
    """``--pin SERVER_CPU CLIENT_CPU``: see :func:`pinned`."""
    parser.add_argument(
        "--pin",
        nargs=2,
        type=int,
        metavar=("SERVER_CPU", "CLIENT_CPU"),
        help="pin the servers (flowrl serve --cpus, and any echo) to one core and this client to another",
    )


def pinned(pin: list[int] | None) -> list[str]:
    """Pin this process to the client core of ``--pin``; return the ``flowrl serve`` flags for the server core."""
    from flowrl_deploy.affinity import pin_to_cpus

    pin_to_cpus(() if pin is None else (pin[1],))
    return [] if pin is None else ["--cpus", str(pin[0])]


def serve_echo(reply_for: Callable[[bytes], bytes]) -> None:
    """Serve /bench.Echo/{Unary,Stream} (raw bytes, no policy), answering each request with
    ``reply_for(request)``, until killed; prints its address first. The transport floor."""
    import grpc

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(lambda request, context: reply_for(request)),
        "Stream": grpc.stream_stream_rpc_method_handler(lambda requests, context: map(reply_for, requests)),
    }
    server = grpc.server(futures.ThreadPoolExecutor(128), options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"serving echo on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


def serve_echo_aio(reply_for: Callable[[bytes], bytes]) -> None:
    """:func:`serve_echo` on a ``grpc.aio`` server (one event loop instead of a thread per call):
    the floor an asyncio port of ``flowrl serve`` would start from."""
    import asyncio

    import grpc

    async def unary(request, context):
        return reply_for(request)

    async def stream(requests, context):
        async for request in requests:
            yield reply_for(request)

    async def run() -> None:
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.stream_stream_rpc_method_handler(stream),
        }
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"serving echo on 127.0.0.1:{port}", flush=True)
        await server.wait_for_termination()

    asyncio.run(run())


@dataclass(frozen=True)
class EchoServer:
    address: str
    pid: int


@contextmanager
def echo_process(script: str, *args: str) -> Iterator[EchoServer]:
    """Run ``script --echo-server *args`` (which calls :func:`serve_echo`) in a child; yield its address and pid."""
    child = subprocess.Popen([sys.executable, script, "--echo-server", *args], stdout=subprocess.PIPE, text=True)
    try:
        yield EchoServer(child.stdout.readline().split(" on ")[1].strip(), child.pid)
    finally:
        child.terminate()
        child.wait(10)


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of process ``pid`` (Linux /proc; 10 ms resolution), or of this process."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def figures(samples_us: list[float]) -> dict[str, float]:
    """p50, p99, p99.9 and mean of latencies in µs."""
    a = np.asarray(samples_us, dtype=np.float64)
    p50, p99, p999 = np.percentile(a, [50, 99, 99.9])
    return {"p50_us": float(p50), "p99_us": float(p99), "p999_us": float(p999), "mean_us": float(a.mean()), "n": len(a)}


def machine() -> dict[str, str]:
    """The CPU model (from /proc/cpuinfo where there is one), the logical core count and Python's version."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version()}
