#!/usr/bin/env bash
# Make a virtual environment with flowrl-deploy and HumanoidBench, whose old pins (mujoco 3.1.6,
# dm_control 1.0.20, gymnasium 0.29.1, numpy<2, jax 0.4.30) cannot share the main environment.
#
#   [PYTHON=python3.12] scripts/setup_humanoidbench.sh VENV [SOURCE]
#
# SOURCE is a humanoid-bench checkout or a .tar.gz of one; without it the script clones
# https://github.com/carlosferrazza/humanoid-bench. HumanoidBench must be installed editable:
# a plain install misses modules and assets.
set -euo pipefail
venv=${1:?usage: setup_humanoidbench.sh VENV [SOURCE]}
source=${2:-}
repo_root=$(cd "$(dirname "$0")/.." && pwd)

python=${PYTHON:-python3}
if ! command -v "$python" > /dev/null; then
    echo "error: no $python found; name a Python 3.10-3.12: PYTHON=python3.12 $0 $*" >&2
    exit 2
fi
if ! "$python" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))'; then
    echo "error: HumanoidBench's pins need Python 3.10-3.12; $python is $("$python" -V 2>&1)." \
        "Name another: PYTHON=python3.12 $0 $*" >&2
    exit 2
fi
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q -e "$repo_root[train,export,dev,humanoidbench]"

src_dir="$venv/src"
mkdir -p "$src_dir"
if [ -z "$source" ]; then
    git clone --depth 1 https://github.com/carlosferrazza/humanoid-bench "$src_dir/humanoid-bench"
    hb="$src_dir/humanoid-bench"
elif [ -d "$source" ]; then
    hb=$source
else
    tar -xzf "$source" -C "$src_dir"
    hb=$(find "$src_dir" -maxdepth 2 -name setup.py -printf '%h\n' | head -n 1)
fi
"$venv/bin/pip" install -q --no-deps -e "$hb"
"$venv/bin/python" -c "import gymnasium as gym, humanoid_bench; gym.make('h1-walk-v0', render_mode=None)"
echo "HumanoidBench ready in $venv"
