"""Gradient updates per second of FlowRL at batch 256, width 512, for cheetah-run and dog-run shapes.

Runs the real ``FlowRL.update`` on random batches (no simulator), after a warm-up, and reports the
median rate over several timed windows. The issue's target: at least the reference implementation's
6.5–7.4 updates/s on 2 CPU threads at cheetah-run shapes.

    .venv/bin/python bench/train_throughput.py --threads 2 --json bench/results/train_throughput.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.spec import PolicySpec
from flowrl_deploy.train.algorithm import FlowRL, resolve_device
from flowrl_deploy.train.config import TrainConfig
from flowrl_deploy.train.replay import Batch

SHAPES = {"cheetah-run": (17, 6), "dog-run": (223, 38)}
REFERENCE_CHEETAH = (6.5, 7.4)  # updates/s of the reference code, 2 CPU threads, measured for the issue


def random_batch(rng: np.random.Generator, batch: int, obs_dim: int, act_dim: int) -> Batch:
    return Batch(
        obs=rng.standard_normal((batch, obs_dim), dtype=np.float32),
        action=rng.uniform(-1, 1, (batch, act_dim)).astype(np.float32),
        reward=rng.standard_normal(batch, dtype=np.float32),
        next_obs=rng.standard_normal((batch, obs_dim), dtype=np.float32),
        mask=np.ones(batch, dtype=np.float32),
    )


def measure(obs_dim: int, act_dim: int, cfg: TrainConfig, warmup: int, windows: int, per_window: int) -> list[float]:
    """Updates/s of each timed window of ``per_window`` updates."""
    spec = PolicySpec(obs_dim, act_dim, (-1.0,) * act_dim, (1.0,) * act_dim, hidden=cfg.hidden)
    agent = FlowRL(spec, cfg, resolve_device(cfg.device))
    rng = np.random.default_rng(0)
    batches = [random_batch(rng, cfg.batch_size, obs_dim, act_dim) for _ in range(8)]
    sync = torch.cuda.synchronize if agent.device.type == "cuda" else (lambda: None)
    for i in range(warmup):
        agent.update(batches[i % len(batches)])
    rates = []
    for _ in range(windows):
        sync()
        start = time.perf_counter()
        for i in range(per_window):
            agent.update(batches[i % len(batches)])
        sync()
        rates.append(per_window / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument(
        "--no-cuda-graphs", dest="cuda_graphs", action="store_false", help="on a GPU, launch every kernel eagerly"
    )
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--quick", action="store_true", help="short windows (finishes within a minute)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    try:  # a setting refused (--device cuda without CUDA) is one line, as `flowrl train` says it
        cfg = TrainConfig(
            hidden=args.hidden,
            batch_size=args.batch_size,
            device=args.device,
            bf16=args.bf16,
            compile=args.compile,
            cuda_graphs=args.cuda_graphs,
        )
        resolve_device(cfg.device)
    except FlowRLError as exc:
        raise SystemExit(f"error: {exc}") from None
    warmup, windows, per_window = (8, 3, 6) if args.quick else (20, 5, 30)  # warm-up covers graph capture
    if args.compile:
        warmup = max(warmup, 10)
    rows = []
    for shape in args.shapes:
        obs_dim, act_dim = SHAPES[shape]
        rates = measure(obs_dim, act_dim, cfg, warmup, windows, per_window)
        rows.append(
            {
                "shape": shape,
                "obs_dim": obs_dim,
                "act_dim": act_dim,
                "median_updates_per_s": statistics.median(rates),
                "window_rates": rates,
            }
        )

    on_gpu = resolve_device(args.device).type == "cuda"
    device = torch.cuda.get_device_name() if on_gpu else platform.processor()
    graphs = on_gpu and args.cuda_graphs and not args.compile
    print(
        f"FlowRL updates/s · batch {args.batch_size} · width {args.hidden} · {args.threads} threads · "
        f"device {args.device} ({device or platform.machine()}) · bf16 {args.bf16} · compile {args.compile} · "
        f"CUDA graphs {graphs}"
    )
    print(f"{'shape':<12} {'obs':>4} {'act':>4} {'updates/s':>10} {'vs reference':>13}")
    for row in rows:
        ratio = (
            row["median_updates_per_s"] / statistics.mean(REFERENCE_CHEETAH) if row["shape"] == "cheetah-run" else None
        )
        row["ratio_vs_reference_mid"] = ratio
        print(
            f"{row['shape']:<12} {row['obs_dim']:>4} {row['act_dim']:>4} {row['median_updates_per_s']:>10.2f} "
            f"{f'{ratio:.2f}x' if ratio else '':>13}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "threads": args.threads,
                    "batch_size": args.batch_size,
                    "hidden": args.hidden,
                    "device": args.device,
                    "device_name": device,
                    "bf16": args.bf16,
                    "compile": args.compile,
                    "cuda_graphs": graphs,
                    "torch": torch.__version__,
                    "reference_cheetah_updates_per_s": REFERENCE_CHEETAH,
                    "results": rows,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
