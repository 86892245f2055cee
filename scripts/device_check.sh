#!/usr/bin/env bash
# The GPU checks, as one call on a lent GPU machine (the `device` tool of this workplace). Its image has
# CUDA torch, onnx and a CPU-only onnxruntime, but a grpcio and protobuf older than this package needs
# and neither dm_control nor mujoco: those travel as wheels, and onnxruntime-gpu (255 MB) in pieces over
# several calls. Make them here, then send them there:
#
#   scripts/device_check.sh --pieces .gpu     (here, with network: folders .gpu1 .. .gpuN of 44 MiB at
#                                              most, git-ignored; scripts/device_bundle.py packs them)
#   mkdir -p /tmp/gpuparts && cp -r .gpuK/. /tmp/gpuparts/
#                                             (there, one call a folder, K = 1 .. N, carry [".gpuK"])
#   scripts/device_check.sh [PART ...]        (there, at once after the last: timeout_s 540)
#
# or, without onnxruntime-gpu (infer and serving are then SKIPPED), in one call: make the wheels with
# `scripts/device_check.sh --wheels .whl` and run it there with carry [".whl"].
#
# PART is any of cuda-tests, bench, bench-more, train, infer, serving, demo, suite (default: cuda-tests,
# infer, serving, demo, suite, in that order); install alone only installs. bench times training updates
# with CUDA graphs and launched eagerly; bench-more adds bf16, torch.compile and both. train trains a short
# cartpole run on CUDA, then evaluates it on CUDA and on the CPU, exports it and evaluates the ONNX file.
# infer times batch-1 actions on onnxruntime's CPU and CUDA providers (CUDA as served, TF32 off, and with
# TF32) and their largest difference; serving runs bench/infer_latency.py --device cuda and
# bench/serve_latency.py --providers cuda (dog-run). Where this onnxruntime offers no CUDA provider (the
# image's own) both say so and are SKIPPED, no failure; where onnxruntime cannot be imported, or the
# install step installed the bundle's onnxruntime-gpu and no CUDA provider is offered, both fail. demo runs
# flowrl demo. suite runs tests/train and the core tests there; suite-serving (not in the default: a
# session of its own) tests/serve, tests/export and tests/cli.
#
# Where torch sees no CUDA it stops at once: one line, exit 1. Every step runs under `timeout -k 5`
# with its own budget (the cuda-libraries row's check under LIBRARY_CHECK_S), and no step starts past
# DEVICE_CHECK_BUDGET_S (default 500 s) from the start: the worst case is that plus 5 s. The default parts
# took 470 s on an H100 (2026-11-27): one run leaves 6.5 to 7 of a session's 15 minutes of device time
# for the machine's start and the calls that copy the bundle's folders; a second run does not fit, so
# rerun only the parts that failed, or lower DEVICE_CHECK_BUDGET_S. suite-serving (480 s) needs a
# session of its own, the bundle sent again.
# Exit 0 only when every step passed: a step that fails or is killed, a CUDA test skipped, a test skipped
# for a missing extra, or a step left without time fails the run.
# $OUT (default /tmp/device-out) gets summary.txt (each step's status, seconds and result) and at most
# seven more files: install.log, pytest_cuda.log, train_throughput_cuda.json, train.log, infer.json,
# serving.json and pytest.log; suite-serving adds pytest_serving.log (every part in one call would bring
# back 9 files, one over the device tool's 8).
set -uo pipefail

BUDGET_S=${DEVICE_CHECK_BUDGET_S:-500}
MIN_STEP_S=10         # a step is not started with less time than this left
SKIPPED_RC=99         # a step that cannot apply here (no CUDA provider in onnxruntime) and is no failure
LIBRARY_CHECK_S=60    # the cuda-libraries row's check
PARTS="install cuda-tests bench bench-more train infer serving demo suite suite-serving"
RUN=/tmp/device-run   # the cartpole run of the train steps
SITE=/tmp/site        # where the carried wheels are installed (first on PYTHONPATH)
PIECES=${DEVICE_CHECK_PIECES:-/tmp/gpuparts}  # a bundle too large for one call (onnxruntime-gpu), sent in pieces

# The test modules that check the development environment, not the code that runs on a GPU, and
# cannot run on the image: mypy is not there, the tree travels without .git, nothing can be downloaded.
SUITE_IGNORED=(
    tests/train/test_train_cuda.py        # the cuda-tests step
    tests/core/test_public_hints.py       # mypy
    tests/core/test_packaging.py          # builds the wheel, reads git, downloads typer
    tests/core/test_typed_package.py      # builds the wheel
    tests/core/test_versions.py           # git
    tests/core/test_base_install_suite.py # pytest runs of whole folders without the extras (minutes)
    tests/serve/test_serve_proto.py       # regenerates the gRPC modules: grpcio-tools, mypy-protobuf (dev)
)

download() {  # DIR SPEC...: wheels for the image's Python 3.12, no dependencies
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d "$1" "${@:2}"  # manylinux2014 by name: else protobuf's pure-Python wheel, which imports the image's upb
}

fetch_wheels() {  # DIR: every wheel the image lacks, for its Python 3.12, but onnxruntime-gpu
    local dir=$1
    mkdir -p "$dir" /tmp/device-wheels
    download "$dir" mujoco==3.17.0 dm-env dm-tree glfw pyopengl gymnasium farama-notifications "setuptools>=77" \
        "setuptools-scm>=9.2" vcs-versioning packaging || return  # the build's version (pyproject.toml [build-system])
    # the image's grpcio (1.84) and protobuf are older than the generated code needs: the lower bounds of pyproject.toml
    download "$dir" grpcio==1.85.1 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 protobuf==7.35.1 || return
    # the image's typer is of unknown age: pyproject.toml's lower bound, and what typer 0.29 needs beside the image's own
    local pins  # pydantic pins its pydantic-core exactly: the pair of this checkout's .venv
    pins=$(venv_python -c 'from importlib.metadata import version
print(*(f"{name}=={version(name)}" for name in ("pydantic", "pydantic-core")))') || return
    # shellcheck disable=SC2086  # two words
    download "$dir" "typer>=0.29" $pins annotated-types typing-inspection typing-extensions || return
    download /tmp/device-wheels dm_control==1.0.50 || return
    # dm_control's locomotion, manipulation and blender assets (~90 MB) and its own tests' files (~5 MB)
    # are not used by the suite tasks; dropping them keeps the carried tree under the tool's 64 MiB.
    python3 - "$dir" <<'EOF' || return
import glob, sys, zipfile
drop = ("dm_control/locomotion/", "dm_control/manipulation/", "dm_control/blender/", "dm_control/mujoco/testing/",
        "dm_control/mjcf/test_assets/", "dm_control/suite/all_domains.png")
src = glob.glob("/tmp/device-wheels/dm_control-*.whl")[0]
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(f"{sys.argv[1]}/{src.rsplit('/', 1)[1]}", "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if not item.filename.startswith(drop):
            data = zin.read(item.filename)
            if item.filename.endswith("RECORD"):
                data = b"\n".join(x for x in data.split(b"\n") if not x.startswith(tuple(d.encode() for d in drop)))
            zout.writestr(item, data)
EOF
}

make_wheels() {  # DIR: the wheels of fetch_wheels, checked to travel in one call with the tree
    local dir=$1 wheels tree
    fetch_wheels "$dir" || return
    wheels=$(find "$dir" -name '*.whl' -printf '%s\n' | awk '{s += $1} END {print s}')
    tree=$(git ls-files -z | xargs -0 stat -c %s | awk '{s += $1} END {print s}')
    echo "to carry: wheels $((wheels >> 20)) MiB + the tree's tracked files $((tree >> 20)) MiB (the tool's limit: 64 MiB)"
    ((wheels + tree < 64 << 20)) || { echo "over the limit: the device tool will refuse the call"; return 1; }
}

venv_python() {  # ARG...: this checkout's .venv's python (else python3) with ARG...
    local python=python3
    [[ -x .venv/bin/python ]] && python=.venv/bin/python
    "$python" "$@"
}

ort_gpu_version() {  # the onnxruntime-gpu of this checkout's .venv (else of python3), or DEVICE_CHECK_ORT_VERSION
    [[ -n ${DEVICE_CHECK_ORT_VERSION:-} ]] && { echo "$DEVICE_CHECK_ORT_VERSION"; return; }
    venv_python -c 'from importlib.metadata import version; print(version("onnxruntime-gpu"))' 2>/dev/null || {
        echo "device_check: no onnxruntime-gpu in this checkout's .venv (or python3): set DEVICE_CHECK_ORT_VERSION" >&2
        return 1
    }
}

make_pieces() {  # PREFIX: fetch_wheels' wheels and onnxruntime-gpu in folders PREFIX1 .. PREFIXN of 44 MiB
    local prefix=$1 stage version rc
    git check-ignore -q "${prefix}1/"  # as a folder: the advised /.gpu*/ matches folders alone, and none exists yet
    if (($? == 1)); then  # 0: ignored; 128: not in a git tree
        echo "device_check: ${prefix}1 is not git-ignored, so every call would carry it:" \
            "add /$(basename "$prefix")*/ to .git/info/exclude"
        return 1
    fi
    version=$(ort_gpu_version) || return
    stage=$(mktemp -d /tmp/device-bundle.XXXXXX)
    fetch_wheels "$stage" && download "$stage" "onnxruntime-gpu==$version" &&
        python3 "$(dirname "${BASH_SOURCE[0]}")/device_bundle.py" pack "$stage" "$prefix"
    rc=$?
    rm -rf "$stage"
    return "$rc"
}

# ---- helpers shared by the steps (each step runs in a child: `bash $0 --step NAME`) ----

note() {  # TEXT: a result of the running step, for its row of the summary
    printf '%s; ' "$*" >>"$WORK/$STEP.note"
}

flowrl() { python3 -m flowrl_deploy.cli "$@"; }

pytest_verdict() {  # LOG RC ANY|EXTRAS: pytest's status (-rs output), failing on ANY skip or on those
    local log=$1 rc=$2 which=$3 bad  # for a missing extra (the collection's, or an importorskip's) or CUDA device
    note "$(tail -1 "$log")"
    bad=$(grep '^SKIPPED' "$log" | { if [[ $which == ANY ]]; then cat; else grep -e 'pip install -e "' -e 'sees no CUDA' -e "could not import '\(mujoco\|dm_control\|gymnasium\|onnx\|grpc\)"; fi; } |
        sed -E 's/^SKIPPED \[([0-9]+)\].*/\1/' | awk '{n += $1} END {print n + 0}')
    if ((bad > 0)); then
        note "$bad test(s) skipped that must run here (-rs in $(basename "$log"))"
        grep '^SKIPPED' "$log" | head -3
        return 1
    fi
    return "$rc"
}

# ---- the steps: step_NAME, run by run_step NAME BUDGET_S ----

step_install() {
    local wheels=(.whl/*.whl)
    if [[ -d $PIECES && ! -f $PIECES/install.sh ]]; then
        note "the bundle in $PIECES has no install.sh: copy its first folder (.gpu1: the installer and manifest) too"
        return 1
    fi
    if [[ ! -e ${wheels[0]} && ! -f $PIECES/install.sh ]]; then
        note "no wheels in .whl nor a bundle in $PIECES: make them with --pieces .gpu (or --wheels .whl) and send them"
        return 1
    fi
    (
        if [[ -f $PIECES/install.sh ]]; then  # its own check of every piece, naming the folders missing
            env -u WORK -u STEP -u OUT_DIR SITE="$SITE" PARTS="$PIECES" bash "$PIECES/install.sh" || exit
        fi
        if [[ -e ${wheels[0]} ]]; then
            python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
                "${wheels[@]}" || exit
        fi
        python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
    ) >"$OUT_DIR/install.log" 2>&1 || {
        tail -5 "$OUT_DIR/install.log"
        note "$(tail -1 "$OUT_DIR/install.log")"
        return 1
    }
    local sent=("$SITE"/onnxruntime_gpu-*.dist-info)  # what infer and serving then need to find offered
    if [[ -d ${sent[0]} ]]; then
        sent=${sent[0]%.dist-info}
        echo "onnxruntime-gpu ${sent##*/onnxruntime_gpu-}" >"$WORK/onnxruntime-gpu-sent"
    fi
    local check
    check=$(python3 -c 'import grpc, google.protobuf as pb, mujoco, dm_control, flowrl_deploy as f, flowrl_deploy.cli
import google.protobuf.json_format  # loads the protobuf runtime (upb) that the generated modules use
print(f"flowrl-deploy {f.__version__}, grpcio {grpc.__version__}, protobuf {pb.__version__}, mujoco {mujoco.__version__}")' 2>&1)
    local rc=$?
    note "$(tail -1 <<<"$check")"
    return "$rc"  # an install whose packages do not import fails here, not in a later step
}

ort_cuda_offered() {  # 0: this onnxruntime offers its CUDA provider; else a note and 1 where it does not
    local offered sent  # (the image's own: no failure), 2 where it does not import or the install step installed
    offered=$(python3 -c 'import onnxruntime as ort; print(", ".join(ort.get_available_providers()))' 2>&1) || {
        note "onnxruntime cannot be imported: $(tail -1 <<<"$offered")"  # the bundle's onnxruntime-gpu (a failure)
        return 2
    }
    [[ $offered == *CUDAExecutionProvider* ]] && return 0
    if [[ -f $WORK/onnxruntime-gpu-sent ]]; then
        sent=$(<"$WORK/onnxruntime-gpu-sent")
        note "onnxruntime's CUDA provider: not offered by this onnxruntime ($offered), though the install step" \
            "installed $sent into $SITE"
        return 2
    fi
    note "onnxruntime's CUDA provider: not offered by this onnxruntime ($offered)"
    return 1
}

cuda_or_skip() {  # for infer and serving: go on (0) where onnxruntime offers CUDA; else SKIPPED_RC or 1
    ort_cuda_offered
    case $? in
        0) return 0 ;;
        1) return "$SKIPPED_RC" ;;
        *) return 1 ;;
    esac
}

step_cuda_tests() {
    local files=(tests/train/test_train_cuda.py)
    ort_cuda_offered
    (($? != 1)) && files+=(  # they fail where they ought to have run
        tests/export/test_cuda_provider_on_a_gpu.py tests/serve/test_serve_cuda_graphs_on_a_gpu.py
    )
    python3 -m pytest -q -p no:cacheprovider -rs --timeout 60 "${files[@]}" >"$OUT_DIR/pytest_cuda.log" 2>&1
    pytest_verdict "$OUT_DIR/pytest_cuda.log" $? ANY
}

bench() {  # VARIANT [FLAG ...]: training updates/s on the GPU at batch 256, width 512
    local variant=$1 shapes=(cheetah-run dog-run)
    shift
    [[ $* == *--compile* ]] && shapes=(dog-run)  # compiling takes long: one shape
    python3 bench/train_throughput.py --device cuda --threads 1 --shapes "${shapes[@]}" "$@" \
        --json "$WORK/bench_$variant.json" >"$WORK/bench_$variant.log" 2>&1 || {
        note "$(tail -1 "$WORK/bench_$variant.log")"
        tail -5 "$WORK/bench_$variant.log"
        return 1
    }
    note "$(python3 -c 'import json, sys
rows = json.load(open(sys.argv[1]))["results"]
print(", ".join("{} {:.0f}/s".format(r["shape"], r["median_updates_per_s"]) for r in rows))' \
        "$WORK/bench_$variant.json")"
}
step_bench_graphs() { bench graphs; }
step_bench_eager() { bench eager --no-cuda-graphs; }
step_bench_bf16() { bench bf16 --bf16; }
step_bench_compile() { bench compile --compile; }
step_bench_bf16_compile() { bench bf16_compile --bf16 --compile; }

logged() {  # COMMAND...: run it with its output added to train.log, its last line the step's result
    local rc
    echo "== $STEP: $*" >>"$OUT_DIR/train.log"
    "$@" >"$WORK/$STEP.log" 2>&1
    rc=$?
    cat "$WORK/$STEP.log" >>"$OUT_DIR/train.log"
    note "$(tail -1 "$WORK/$STEP.log")"
    ((rc == 0)) || tail -3 "$WORK/$STEP.log"
    return "$rc"
}

needs_run() {  # the train step's run
    [[ -d $RUN/checkpoints ]] || { note "no run in $RUN (the train step failed)"; return 1; }
}

step_train() {
    rm -rf "$RUN"
    logged flowrl train --env dmc:cartpole-swingup --steps 4000 --start-steps 1000 --eval-every 2000 \
        --eval-episodes 2 --hidden 128 --device cuda --seed 0 --out "$RUN"
}
step_eval_cuda() { needs_run && logged flowrl eval "$RUN" --episodes 3 --device cuda; }
step_eval_cpu() { needs_run && logged flowrl eval "$RUN" --episodes 3 --device cpu; }
step_export() { needs_run && logged flowrl export "$RUN" --out "$RUN/policy.onnx"; }
step_eval_onnx() {
    [[ -f $RUN/policy.onnx ]] || { note "no $RUN/policy.onnx (the export step failed)"; return 1; }
    logged flowrl eval "$RUN/policy.onnx" --episodes 3
}

step_infer() {
    local model=$RUN/policy.onnx
    cuda_or_skip || return
    if [[ ! -f $model ]]; then  # the train steps did not run or failed: a tiny policy of the tests
        model=$WORK/tiny_policy.onnx
        python3 -c 'import sys; sys.path.insert(0, "tests/helpers")
from pathlib import Path; from tiny_policy import write_policy; write_policy(Path(sys.argv[1]))' "$model" || return 1
    fi
    python3 - "$model" "$OUT_DIR/infer.json" >"$WORK/infer.log" 2>&1 <<'EOF'
"""Batch-1 latency on onnxruntime's CPU and CUDA providers (CUDA as flowrl serves it, use_tf32=0, and with
TF32 on, onnxruntime's own default), the first call's time, and the largest difference of the CUDA actions
from the CPU's."""
import json, sys, time

import numpy as np
import onnxruntime as ort

from flowrl_deploy.runtime import OnnxPolicy

CALLS, WARMUP, SEED = 500, 50, 0
model, out = sys.argv[1:3]
cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
report = {"model": model, "onnxruntime": ort.__version__, "offered": ort.get_available_providers(),
          "calls": CALLS, "warmup": WARMUP, "seed": SEED, "providers": {}}
policies = {}
tf32 = [("CUDAExecutionProvider", {"use_tf32": "1"}), "CPUExecutionProvider"]  # an option given wins over flowrl's
for name, providers in (("cpu", ["CPUExecutionProvider"]), ("cuda", cuda), ("cuda_tf32", tf32)):
    try:
        policy = OnnxPolicy(model, providers=providers)  # the server's session settings (cuda: use_tf32=0)
        running = policy.session.get_providers()[0]
        wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
        policies[name] = policy if running == wanted else f"onnxruntime runs it on {running}, not {wanted}"
    except Exception as exc:  # a provider that cannot start: said in the report, and the step fails
        policies[name] = f"{type(exc).__name__}: {exc}"
rng = np.random.default_rng(SEED)
some = next((p for p in policies.values() if not isinstance(p, str)), None)
if some is not None:
    c = some.contract
    obs = (rng.standard_normal((CALLS, c.obs_dim)) * 2).astype(np.float32)
    noise = rng.standard_normal((CALLS, c.act_dim)).astype(np.float32) if some.takes_noise else None
actions = {}
for name, policy in policies.items():
    if isinstance(policy, str):
        report["providers"][name] = {"refused": policy}
        continue
    row = lambda i: (obs[i : i + 1], None if noise is None else noise[i : i + 1])
    start = time.perf_counter()
    policy.run(*row(0))
    first_ms = (time.perf_counter() - start) * 1e3
    for _ in range(WARMUP):
        policy.run(*row(0))
    times, out_rows = np.empty(CALLS), []
    for i in range(CALLS):
        start = time.perf_counter()
        out_rows.append(policy.run(*row(i)))
        times[i] = time.perf_counter() - start
    actions[name] = np.concatenate(out_rows)
    report["providers"][name] = {
        "session_providers": policy.session.get_providers(),
        "provider_options": policy.session.get_provider_options().get(policy.session.get_providers()[0], {}),
        "first_call_ms": round(first_ms, 3),
        "p50_us": round(float(np.percentile(times, 50)) * 1e6, 1),
        "p99_us": round(float(np.percentile(times, 99)) * 1e6, 1),
        "all_finite": bool(np.isfinite(actions[name]).all()),
    }
for name in actions:
    if name != "cpu" and "cpu" in actions:
        report["providers"][name]["max_abs_diff_vs_cpu"] = float(np.abs(actions[name] - actions["cpu"]).max())
with open(out, "w") as f:
    json.dump(report, f, indent=2)
parts = []
for name, r in report["providers"].items():
    if "refused" in r:
        parts.append(f"{name} refused")
    else:
        diff = f" max|d| {r['max_abs_diff_vs_cpu']:.1e}" if "max_abs_diff_vs_cpu" in r else ""
        parts.append(f"{name} p50 {r['p50_us']:.0f} us p99 {r['p99_us']:.0f} us{diff}")
print("; ".join(parts))
ok = all("refused" not in r and r["all_finite"] for r in report["providers"].values())
sys.exit(0 if ok else 1)
EOF
    local rc=$?
    note "$(tail -1 "$WORK/infer.log")"
    ((rc == 0)) || tail -5 "$WORK/infer.log"
    return "$rc"
}

step_serving() {  # dog-run shapes, 10 steps: batch-1 inference and the served round trip (CUDA graphs, then without)
    cuda_or_skip || return
    python3 bench/infer_latency.py --device cuda --quick --shapes dog-run --json "$WORK/serving_infer_latency.json" \
        >"$WORK/serving.log" 2>&1 &&
        python3 bench/serve_latency.py --providers cuda --quick --work "$WORK/serve-bench" \
            --json "$WORK/serving_serve_latency.json" >>"$WORK/serving.log" 2>&1 &&
        python3 bench/serve_latency.py --providers cuda --no-cuda-graphs --quick --work "$WORK/serve-bench" \
            --json "$WORK/serving_serve_latency_no_graphs.json" >>"$WORK/serving.log" 2>&1
    local rc=$?
    ((rc == 0)) || { tail -5 "$WORK/serving.log"; note "$(tail -1 "$WORK/serving.log")"; return "$rc"; }
    note "$(python3 -c 'import json, sys
infer = {r["steps"]: r["results"] for r in json.load(open(sys.argv[1]))["rows"]}[10]
graphs, plain = (json.load(open(path))["rows"] for path in sys.argv[2:4])
print("batch-1 p50 at N=10: torch {:.0f} us, optimized ONNX {:.0f} us; StreamAct {:.0f} us with CUDA graphs (in-process {:.0f}), {:.0f} us without (in-process {:.0f})".format(
    infer["torch"]["p50_ms"] * 1e3, infer["optimized"]["p50_ms"] * 1e3,
    graphs["serve stream (StreamAct)"]["p50_us"], graphs["onnxruntime in-process"]["p50_us"],
    plain["serve stream (StreamAct)"]["p50_us"], plain["onnxruntime in-process"]["p50_us"]))' \
        "$WORK/serving_infer_latency.json" "$WORK/serving_serve_latency.json" "$WORK/serving_serve_latency_no_graphs.json")"
}

step_demo() {  # the README's main job on a GPU host: training on CUDA, serving from onnxruntime's CUDA provider
    rm -rf "$WORK/demo"
    logged flowrl demo --out "$WORK/demo" || return
    cp "$WORK"/demo/*/summary.json "$WORK/serving_demo.json"
}

suite() {  # LOG PATH...: pytest on PATH... without SUITE_IGNORED, into $OUT_DIR/LOG; a skipped extra fails it
    local log=$1 ignores=()
    shift
    for path in "${SUITE_IGNORED[@]}"; do ignores+=(--ignore "$path"); done
    python3 -m pytest -q -p no:cacheprovider -rs --timeout 60 "$@" "${ignores[@]}" >"$OUT_DIR/$log" 2>&1
    pytest_verdict "$OUT_DIR/$log" $? EXTRAS
}
step_suite() { suite pytest.log tests/train tests/core tests/cli/test_serve_cli.py; }
step_suite_serving() { suite pytest_serving.log tests/serve tests/export tests/cli; }

# ---- the run: the CUDA check, the steps under timeout, the summary ----

row() {  # STEP STATUS SECONDS NOTE: one line of summary.txt
    printf '%-18s %-9s %5s s  %s\n' "$1" "$2" "$3" "$4" | tee -a "$OUT_DIR/summary.txt"
}

failed=0
run_step() {  # NAME BUDGET_S: step_NAME (dashes as underscores) in a child under timeout, then its row
    local name=$1 budget=$2 left limit rc start status note_text
    left=$((BUDGET_S - SECONDS))
    limit=$((budget < left ? budget : left))
    if ((limit < MIN_STEP_S)); then
        row "$name" "NOT RUN" 0 "no time left of the ${BUDGET_S} s budget"
        failed=1
        return
    fi
    echo "== $name (at most $limit s)"
    rm -f "$WORK/$name.note"
    start=$SECONDS
    timeout -k 5 "$limit" bash "$0" --step "$name" </dev/null
    rc=$?
    note_text=$(cat "$WORK/$name.note" 2>/dev/null)
    case $rc in
        0) status=ok ;;
        "$SKIPPED_RC") status=SKIPPED ;;
        124 | 137)  # timeout's own codes; a step killed sooner (the OOM killer's SIGKILL) is no timeout
            if ((SECONDS - start >= limit)); then
                status=TIMEOUT note_text="killed after its $limit s; $note_text"
            else
                status="KILLED($rc)" note_text="ended after $((SECONDS - start)) s of its $limit s; $note_text"
            fi
            ;;
        *) status="FAIL($rc)" ;;
    esac
    [[ $status == ok || $status == SKIPPED ]] || failed=1
    row "$name" "$status" $((SECONDS - start)) "${note_text%; }"
}

cuda_check() {  # one line: the torch and GPU found, or why not
    timeout -k 5 60 python3 -c '
import sys
try:
    import torch
except Exception as exc:
    print(f"torch cannot be imported ({type(exc).__name__}: {exc})"); sys.exit(1)
if not torch.cuda.is_available():
    print(f"torch {torch.__version__} sees no CUDA device"); sys.exit(1)
print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")' 2>/dev/null
}

step_cuda_libraries() {  # one line: loads, not offered, or missing DIRS ERROR (DIRS: pip's nvidia folders, or -)
    python3 -c 'import glob, os
from flowrl_deploy import ort
if ort.CUDA not in ort.import_onnxruntime().get_available_providers():
    print("not offered"); raise SystemExit
ort.preload_cuda_libraries()
error = ort.cuda_library_error()
if error:
    try:
        import nvidia
        roots = nvidia.__path__
    except ImportError:
        roots = []
    dirs = sorted({os.path.dirname(p) for d in roots for p in glob.glob(d + "/**/lib*.so*", recursive=True)})
    print("missing", ":".join(dirs) or "-", error)
else:
    print("loads")' 2>&1
}

nvidia_libraries() {  # onnxruntime's CUDA provider library loads, or pip's nvidia folders go on LD_LIBRARY_PATH
    local found rc dirs error  # a child of this script, as the steps are: timeout runs a program, not a function
    found=$(timeout -k 5 "$LIBRARY_CHECK_S" bash "$0" --step cuda-libraries </dev/null)
    rc=$?
    found=$(tail -1 <<<"$found")
    ((rc == 124 || rc == 137)) && found="no answer in $LIBRARY_CHECK_S s"
    case $found in
        loads | "not offered") row cuda-libraries ok 0 "onnxruntime's CUDA provider library: $found" ;;
        missing\ -\ *)
            error="preload_dlls left it unloadable (${found#missing - }), and no nvidia package folder holds a"
            row cuda-libraries FAIL 0 "$error lib*.so* to add to LD_LIBRARY_PATH"
            failed=1
            ;;
        missing\ *)
            read -r _ dirs error <<<"$found"
            export LD_LIBRARY_PATH=$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
            row cuda-libraries FAIL 0 "preload_dlls left it unloadable ($error): the later steps run with pip's nvidia folders on LD_LIBRARY_PATH"
            failed=1
            ;;
        *) row cuda-libraries FAIL 0 "the check failed: $found"; failed=1 ;;
    esac
}

merged() {  # PREFIX FILE: the JSON files $WORK/PREFIX_*.json as one list in $OUT_DIR/FILE, each entry
    compgen -G "$WORK/$1_*.json" >/dev/null || return 0  # named by its file name's rest (variant)
    python3 - "$1" "$OUT_DIR/$2" "$WORK/$1"_*.json <<'EOF'
import json, pathlib, sys
prefix, out, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
entries = [dict(variant=pathlib.Path(p).stem.removeprefix(prefix + "_"), **json.load(open(p))) for p in paths]
pathlib.Path(out).write_text(json.dumps(entries, indent=2) + "\n")
EOF
}

main() {
    case ${1:-} in
        --wheels) make_wheels "${2:?usage: device_check.sh --wheels DIR}"; exit ;;
        --pieces) make_pieces "${2:?usage: device_check.sh --pieces PREFIX}"; exit ;;
    esac
    export OUT_DIR=${OUT:-/tmp/device-out} WORK=${DEVICE_CHECK_WORK:-/tmp/device-check}
    export PYTHONUNBUFFERED=1 PYTHONPATH=$SITE
    mkdir -p "$OUT_DIR"
    if [[ ${1:-} == --step ]]; then  # a child of run_step
        mkdir -p "$WORK"
        export STEP=$2
        rm -f "$WORK/$STEP.note"
        "step_${2//-/_}"
        exit
    fi

    local found part parts=" ${*:-cuda-tests infer serving demo suite} "
    for part in $parts; do  # a misspelt part costs no device time
        [[ " $PARTS " == *" $part "* ]] || { echo "device_check: no part '$part' (parts: $PARTS)"; exit 2; }
    done
    found=$(cuda_check) || {
        echo "device_check: stopped, no CUDA here: ${found:-the CUDA check failed}" | tee "$OUT_DIR/summary.txt"
        exit 1
    }
    rm -rf "$WORK" "$OUT_DIR/summary.txt"
    mkdir -p "$WORK"
    {
        echo "device_check $(date -u +%FT%TZ), budget ${BUDGET_S} s: $found"
        timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    } | tee "$OUT_DIR/summary.txt"
    row cuda ok "$SECONDS" "$found"

    wants() { [[ $parts == *" $1 "* ]]; }
    run_step install 90
    nvidia_libraries
    wants cuda-tests && run_step cuda-tests 150
    if wants bench; then
        run_step bench-graphs 45
        run_step bench-eager 45
    fi
    if wants bench-more; then
        run_step bench-bf16 45
        run_step bench-compile 90
        run_step bench-bf16-compile 90
    fi
    merged bench train_throughput_cuda.json
    if wants train; then
        run_step train 90
        run_step eval-cuda 40
        run_step eval-cpu 40
        run_step export 60
        run_step eval-onnx 30
    fi
    wants infer && run_step infer 60
    wants serving && run_step serving 180
    wants demo && run_step demo 240
    merged serving serving.json
    wants suite && run_step suite 240  # the last step: what is left of the budget
    wants suite-serving && run_step suite-serving 480  # not in the default: a call of its own
    local verdict=PASS
    ((failed)) && verdict=FAIL
    echo "result: $verdict in $SECONDS s (files in $OUT_DIR: $(find "$OUT_DIR" -type f | wc -l))" |
        tee -a "$OUT_DIR/summary.txt"
    exit "$failed"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then  # not when a test sources it
    main "$@"
fi
