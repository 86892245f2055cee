"""Inference latency of the exported sampler against eager torch and a matmul-only floor.

For the shapes of dog-run (obs 223, act 38, width 512) and cheetah-run (obs 17, act 6, width 512),
at N = 1, 5, 10, 20 midpoint steps, one thread, the serving session settings
(``flowrl_deploy.runtime.make_session``):

  (a) torch      the FlowActor sampler in eager mode (torch.inference_mode, 1 thread)
  (b) plain      the unrolled graph without structural optimizations (``--no-optimize``)
  (c) optimized  the default export
  (d) floor      a graph of only the matmuls (c) cannot avoid per velocity evaluation:
                 the action part of layer 1, the hidden×hidden layer, the output layer
  (e) int8       the optimized graph with the hidden×hidden layer quantized (``--dtype int8``)

It prints batch-1 p50/p99 latency, batch 64/256 throughput, the max action error against torch,
and the issue's ratios. Each variant is timed in interleaved rounds (medians over rounds), since
the machine may be shared.

    .venv/bin/python bench/infer_latency.py --json bench/results/infer_latency.json
    .venv/bin/python bench/infer_latency.py --quick
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from flowrl_deploy.export.graph import VelocityWeights, build_policy_graph, schedule
from flowrl_deploy.export.timing import time_calls
from flowrl_deploy.runtime import make_session
from flowrl_deploy.spec import PolicySpec
from flowrl_deploy.train.actor import FlowActor
from flowrl_deploy.versions import library_versions

SHAPES = {"dog-run": (223, 38, 512), "cheetah-run": (17, 6, 512)}
ONNX_VARIANTS = ("plain", "optimized", "floor", "int8")
VARIANTS = ("torch", *ONNX_VARIANTS)
THROUGHPUT_BATCHES = (64, 256)


def floor_graph(weights: VelocityWeights, spec: PolicySpec, steps: int, solver: str) -> onnx.ModelProto:
    """a → a·W_aᵀ → ·W2ᵀ → ·W_outᵀ → a, once per velocity evaluation: nothing but the unavoidable matmuls."""
    o, a = spec.obs_dim, spec.act_dim
    initializers = [
        numpy_helper.from_array(np.ascontiguousarray(weights.w1[:, o : o + a].T), "w_a"),
        numpy_helper.from_array(np.ascontiguousarray(weights.w2.T), "w2"),
        numpy_helper.from_array(np.ascontiguousarray(weights.w_out.T), "w_out"),
    ]
    nodes, x = [], "noise"
    for i in range(len(schedule(steps, solver))):
        for j, w in enumerate(("w_a", "w2", "w_out")):
            nodes.append(helper.make_node("MatMul", [x, w], [f"x{i}_{j}"]))
            x = f"x{i}_{j}"
    nodes.append(helper.make_node("Identity", [x], ["action"]))
    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", a]) for name in ("noise", "action")]
    graph = helper.make_graph(nodes, "floor", io[:1], io[1:], initializers)
    opsets = [helper.make_opsetid("", 18)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


def runners(actor: FlowActor, spec: PolicySpec, steps: int, solver: str) -> dict:
    """name → (call(obs, noise) -> action): every variant behind the same numpy-in, numpy-out call."""
    weights = VelocityWeights.from_actor({k: v.numpy() for k, v in actor.state_dict().items()}, spec)
    graphs = {
        "plain": build_policy_graph(weights, spec, steps=steps, solver=solver, optimize=False),
        "optimized": build_policy_graph(weights, spec, steps=steps, solver=solver),
        "floor": floor_graph(weights, spec, steps, solver),
        "int8": build_policy_graph(weights, spec, steps=steps, solver=solver, dtype="int8"),
    }

    def onnx_call(model: onnx.ModelProto, floor: bool):
        session = make_session(model.SerializeToString(), providers=["CPUExecutionProvider"], threads=1)
        if floor:
            return lambda obs, noise: session.run(None, {"noise": noise})[0]
        return lambda obs, noise: session.run(None, {"obs": obs, "noise": noise})[0]

    def torch_call(obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return actor(torch.from_numpy(obs), torch.from_numpy(noise), steps, solver).numpy()

    calls = {"torch": torch_call}
    calls.update({name: onnx_call(graphs[name], name == "floor") for name in ONNX_VARIANTS})
    return calls


def measure(calls: dict, spec: PolicySpec, budget_s: float, rounds: int, rng: np.random.Generator) -> dict:
    """Median over interleaved rounds of batch-1 p50/p99 and batch-64/256 throughput, plus action error."""
    feeds = {}
    for batch in (1, *THROUGHPUT_BATCHES):
        obs = rng.normal(size=(batch, spec.obs_dim)).astype(np.float32)
        feeds[batch] = (obs, rng.normal(size=(batch, spec.act_dim)).astype(np.float32))
    samples = {name: {"p50": [], "p99": [], **{b: [] for b in THROUGHPUT_BATCHES}} for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            timing = time_calls(lambda call=call: call(*feeds[1]), budget_s=budget_s)
            samples[name]["p50"].append(timing.p50_ms)
            samples[name]["p99"].append(timing.p99_ms)
            for b in THROUGHPUT_BATCHES:
                big = time_calls(lambda call=call, b=b: call(*feeds[b]), budget_s=budget_s, min_calls=3, warmup=1)
                samples[name][b].append(big.throughput(b))
    reference = calls["torch"](*feeds[64])
    errors = {n: float(np.abs(calls[n](*feeds[64]) - reference).max()) for n in ("plain", "optimized", "int8")}
    results = {}
    for name, s in samples.items():
        results[name] = {
            "p50_ms": statistics.median(s["p50"]),
            "p99_ms": statistics.median(s["p99"]),
            **{f"throughput_b{b}": statistics.median(s[b]) for b in THROUGHPUT_BATCHES},
            "max_abs_error_vs_torch": errors.get(name),
        }
    return results


def ratios(r: dict) -> dict:
    """The issue's targets, as measured (batch-1 p50)."""
    opt = r["optimized"]["p50_ms"]
    return {
        "optimized_vs_plain_speedup": r["plain"]["p50_ms"] / opt,
        "optimized_vs_torch_speedup": r["torch"]["p50_ms"] / opt,
        "optimized_over_floor": opt / r["floor"]["p50_ms"],
        "int8_vs_plain_speedup": r["plain"]["p50_ms"] / r["int8"]["p50_ms"],
    }


TARGETS = {  # name: (threshold, True if the ratio must be at least the threshold)
    "optimized_vs_plain_speedup": (1.6, True),
    "optimized_vs_torch_speedup": (5.0, True),
    "optimized_over_floor": (1.25, False),
    "int8_vs_plain_speedup": (2.5, True),
}


def device() -> dict:
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
        logical = sum(1 for line in cpuinfo.read_text().splitlines() if line.startswith("processor"))
    else:
        logical = None
    return {"cpu": cpu, "logical_cpus": logical, "threads": 1, "versions": library_versions()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 1 and 10 only, short timings (under a minute)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    parser.add_argument("--solver", choices=("midpoint", "euler"), default="midpoint")
    parser.add_argument("--budget", type=float, default=0.5, help="seconds per timing, per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.budget, args.rounds = [1, 10], 0.1, 2
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows = []
    header = f"{'shape':<12}{'N':>3}  {'variant':<10}{'p50 ms':>8}{'p99 ms':>8}{'b64 /s':>10}{'b256 /s':>10}  max|Δa|"
    print(header, "-" * len(header), sep="\n")
    for shape in args.shapes:
        obs_dim, act_dim, hidden = SHAPES[shape]
        spec = PolicySpec(obs_dim, act_dim, (-1.0,) * act_dim, (1.0,) * act_dim, hidden=hidden, solver=args.solver)
        torch.manual_seed(0)
        actor = FlowActor(spec).eval()
        for steps in args.steps:
            results = measure(runners(actor, spec, steps, args.solver), spec, args.budget, args.rounds, rng)
            for name in VARIANTS:
                r = results[name]
                err = "-" if r["max_abs_error_vs_torch"] is None else f"{r['max_abs_error_vs_torch']:.1e}"
                print(
                    f"{shape:<12}{steps:>3}  {name:<10}{r['p50_ms']:>8.3f}{r['p99_ms']:>8.3f}"
                    f"{r['throughput_b64']:>10.0f}{r['throughput_b256']:>10.0f}  {err}"
                )
            rows.append({"shape": shape, "steps": steps, "solver": args.solver, "results": results,
                         "ratios": ratios(results)})  # fmt: skip
    print("\nratios (batch-1 p50), target in brackets:")
    for row in rows:
        marks = []
        for key, value in row["ratios"].items():
            threshold, at_least = TARGETS[key]
            met = value >= threshold if at_least else value <= threshold
            marks.append(f"{key} {value:.2f} [{'≥' if at_least else '≤'}{threshold}{'' if met else ' MISSED'}]")
        print(f"  {row['shape']:<12} N={row['steps']:<3} " + ", ".join(marks))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": device(), "quick": args.quick, "rows": rows}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
