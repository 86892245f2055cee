#!/usr/bin/env bash
# The GPU checks, as one call on a lent GPU machine (the `device` tool of this workplace), whose
# image has CUDA torch, onnx and onnxruntime but neither dm_control nor mujoco. Make the wheels here:
#
#   scripts/device_check.sh --wheels .whl     (on this machine; .whl is git-ignored)
#   scripts/device_check.sh [PART ...]        (on the GPU machine, with .whl carried)
#
# PART is any of install (only that), cuda-tests, bench, bench-compile, train, suite (default: all but bench-compile, in
# that order; bench-compile adds the torch.compile variants to bench).
# It installs the wheels and this package, runs the CUDA tests first, then times training updates
# on the GPU (CUDA graphs or eager launches, fp32 or bf16, torch.compile), trains → evaluates → exports a short cartpole run on CUDA,
# and last runs the train, export and core tests there. Logs and JSON go to $OUT.
set -uo pipefail

if [[ ${1:-} == --wheels ]]; then
    dir=${2:?usage: device_check.sh --wheels DIR}
    mkdir -p "$dir" /tmp/device-wheels
    get() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d "$1" "${@:2}"; }
    get "$dir" mujoco==3.17.0 dm-env dm-tree glfw pyopengl gymnasium farama-notifications "setuptools>=77" \
        "setuptools-scm>=9.2" vcs-versioning packaging  # the build's version (pyproject.toml [build-system])
    get /tmp/device-wheels dm_control==1.0.50
    # dm_control's locomotion, manipulation and blender assets (~90 MB) are not used by the suite
    # tasks; dropping them keeps the carried tree under the tool's 64 MiB.
    python3 - "$dir" <<'EOF'
import glob, sys, zipfile
drop = ("dm_control/locomotion/", "dm_control/manipulation/", "dm_control/blender/")
src = glob.glob("/tmp/device-wheels/dm_control-*.whl")[0]
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(f"{sys.argv[1]}/{src.rsplit('/', 1)[1]}", "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if not item.filename.startswith(drop):
            data = zin.read(item.filename)
            if item.filename.endswith("RECORD"):
                data = b"\n".join(x for x in data.split(b"\n") if not x.startswith(tuple(d.encode() for d in drop)))
            zout.writestr(item, data)
EOF
    du -sh "$dir"
    exit 0
fi

out=${OUT:-/tmp/device-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 || { tail "$out/install.log"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, onnxruntime as ort; print('torch', torch.__version__, torch.cuda.get_device_name(), '| onnxruntime', ort.__version__, ort.get_available_providers())"

parts=${*:-cuda-tests bench train suite}
wants() { [[ " $parts " == *" $1 "* ]]; }
step() { echo "== $1"; }
flowrl() { python3 -m flowrl_deploy.cli "$@"; }

status=0
if wants cuda-tests; then
    step "CUDA tests"
    python3 -m pytest -q -p no:cacheprovider -rs tests/train/test_train_cuda.py 2>&1 | tee "$out/pytest_cuda.log" | tail -8
    status=$((status | PIPESTATUS[0]))
fi

if wants bench; then
    step "training updates/s on the GPU (batch 256, width 512)"
    variants=("--no-cuda-graphs" "" "--bf16")
    wants bench-compile && variants+=("--compile" "--bf16 --compile")
    for variant in "${variants[@]}"; do
        name=$(echo "fp32 $variant" | tr -d '-' | tr ' ' '_')
        shapes=$([[ $variant == *compile* ]] && echo dog-run || echo cheetah-run dog-run)
        # shellcheck disable=SC2086
        timeout 150 python3 bench/train_throughput.py --device cuda --threads 1 --shapes $shapes $variant \
            --json "$out/train_throughput_cuda_$name.json" 2>&1 | tail -4
    done
fi

if wants train; then
    step "train → eval → export on CUDA (cartpole-swingup, 4k steps)"
    start=$(date +%s)
    flowrl train --env dmc:cartpole-swingup --steps 4000 --start-steps 1000 --eval-every 2000 --eval-episodes 2 \
        --hidden 128 --device cuda --seed 0 --out /tmp/run >"$out/train.log" 2>&1 || status=1
    echo "train in $(($(date +%s) - start)) s"; tail -3 "$out/train.log"
    for device in cuda cpu; do flowrl eval /tmp/run --episodes 3 --device $device 2>&1 | tail -1; done
    flowrl export /tmp/run --steps 10 --out /tmp/run/policy.onnx 2>&1 | tail -4
    flowrl eval /tmp/run/policy.onnx --episodes 3 2>&1 | tail -1
fi

if wants suite; then
    # The image's grpcio (1.84 when this was written) is older than the generated code needs, so a
    # test that imports the client fails there; the serving stack is checked on CPU machines.
    step "train, export and core tests on the GPU machine"
    timeout 240 python3 -m pytest -q -p no:cacheprovider tests/train tests/export tests/core 2>&1 | tee "$out/pytest.log" | tail -6
    status=$((status | PIPESTATUS[0]))
fi
exit $status
