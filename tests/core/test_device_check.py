"""scripts/device_check.sh, the one call a lent GPU machine runs, tried where there is no GPU: it stops
at once in one line where torch sees no CUDA, and with the CUDA check and its steps stubbed (sourcing
the script, as on a machine with one) each step gets a row of status and seconds in summary.txt, a step
past its budget is killed and reported, and skipped CUDA tests fail the run instead of passing it. The
bundle of wheels sent in pieces (scripts/device_bundle.py) is packed from small fake wheels into folders
under a small cap and installed from them byte for byte, and a folder not sent is named."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from extras_needed import needs_extras

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "device_check.sh"
BUNDLE = ROOT / "scripts" / "device_bundle.py"
STEPS = [
    "install", "cuda-tests", "bench-graphs", "bench-eager", "train", "eval-cuda", "eval-cpu", "export", "eval-onnx",
    "infer", "serving", "demo", "suite",
]  # fmt: skip
EVERY_PART = "main cuda-tests bench train infer serving demo suite"
"""The body running every part but bench-more (the default leaves bench and train out)."""

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or shutil.which("bash") is None or shutil.which("timeout") is None,
    reason="needs bash and GNU timeout",
)


def run(
    tmp_path: Path,
    stubs: str = "",
    body: str = 'main "$@"',
    budget: int = 450,
    real: tuple[str, ...] = (),
    cwd: Path = ROOT,
) -> tuple[int, str, list[str]]:
    """The script sourced with a pretend GPU and every step but the ``real`` ones stubbed (``note 'stub
    NAME'``), then ``stubs`` (bash redefining some), then ``body``: its status, stdout and summary.txt's rows."""
    wrapper = tmp_path / "wrapper.sh"
    steps = " ".join(step.replace("-", "_") for step in STEPS if step not in real)
    wrapper.write_text(
        f"source {SCRIPT}\n"
        "MIN_STEP_S=1\n"
        'cuda_check() { echo "torch 9 on a pretend GPU"; }\n'
        f"{'' if 'nvidia-libraries' in real else 'nvidia_libraries() { :; }'}\n"
        f"for s in {steps}; do eval \"step_$s() {{ note 'stub $s'; }}\"; done\n"
        f"{stubs}\n"
        'if [[ ${1:-} == --step ]]; then main "$@"; fi\n'  # run_step's children
        f"{body}\n"
    )
    env = {**os.environ, "OUT": str(tmp_path / "out"), "DEVICE_CHECK_WORK": str(tmp_path / "work")}
    env["DEVICE_CHECK_BUDGET_S"] = str(budget)
    env["DEVICE_CHECK_PIECES"] = str(tmp_path / "no-pieces")  # not a bundle this machine may hold in /tmp
    done = subprocess.run(["bash", str(wrapper)], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    summary = tmp_path / "out" / "summary.txt"
    return done.returncode, done.stdout, summary.read_text().splitlines() if summary.exists() else []


def rows(summary: list[str]) -> dict[str, list[str]]:
    """summary.txt's step rows: step → [status, seconds, note]. The seconds are bash's SECONDS, whole
    wall-clock seconds: a step of a few milliseconds that crosses a second's boundary reads 1, so a
    test compares them only to a budget, never to 0."""
    matches = (re.fullmatch(r"(\S+) +(\S+(?: RUN)?) +(\d+) s  (.*)", line) for line in summary)
    return {m[1]: [m[2], m[3], m[4]] for m in matches if m}


def test_the_script_parses_and_passes_shellcheck():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True).stderr == ""
    if shutil.which("shellcheck"):
        checked = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout


def test_without_cuda_it_stops_at_once_in_one_line(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": ""}
    env |= {"OUT": str(tmp_path / "out"), "DEVICE_CHECK_WORK": str(tmp_path / "work")}
    start = time.monotonic()
    done = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - start < 60  # the time to import torch, no step
    assert done.returncode == 1
    assert done.stdout.splitlines() == [done.stdout.strip()]
    assert done.stdout.startswith("device_check: stopped, no CUDA here: torch ")  # sees no CUDA, cannot be imported
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["summary.txt"]
    assert not (tmp_path / "work").exists()


def test_every_step_gets_a_row_and_a_run_of_passing_steps_passes(tmp_path):
    status, _, summary = run(tmp_path, body=EVERY_PART)
    assert status == 0
    found = rows(summary)
    assert list(found) == ["cuda", *STEPS]
    assert all(row[0] == "ok" for row in found.values())
    assert found["train"][2] == "stub train"
    assert summary[-1].startswith("result: PASS in ")
    assert len(list((tmp_path / "out").rglob("*"))) <= 8  # the device tool brings back 8 files at most


def test_the_default_parts_are_the_checks_of_serving_on_a_gpu(tmp_path):
    status, _, summary = run(tmp_path)
    assert status == 0
    assert list(rows(summary)) == ["cuda", "install", "cuda-tests", "infer", "serving", "demo", "suite"]


def test_the_json_of_several_steps_comes_back_as_one_file_of_named_entries(tmp_path):
    stubs = """step_serving() {
        echo '{"rows": 1}' >"$WORK/serving_infer.json"
        echo '{"rows": 2}' >"$WORK/serving_x.json"
    }"""
    status, _, _ = run(tmp_path, stubs)
    assert status == 0
    merged = json.loads((tmp_path / "out" / "serving.json").read_text())
    assert merged == [{"variant": "infer", "rows": 1}, {"variant": "x", "rows": 2}]


def test_a_step_past_its_budget_is_killed_with_its_children_and_reported(tmp_path):
    stubs = 'step_sleepy() { note "started"; sleep 60 & echo $! >"$WORK/sleep.pid"; wait; }'
    body = 'export OUT_DIR=$OUT WORK=$DEVICE_CHECK_WORK; mkdir -p "$OUT_DIR" "$WORK"; run_step sleepy 1; exit "$failed"'
    start = time.monotonic()
    status, _, summary = run(tmp_path, stubs, body)
    assert time.monotonic() - start < 8  # 1 s, and 5 s more at most for a child ignoring TERM
    assert status == 1
    assert rows(summary)["sleepy"][0] == "TIMEOUT"
    assert rows(summary)["sleepy"][2] == "killed after its 1 s; started"
    pid = int((tmp_path / "work" / "sleep.pid").read_text())
    state = Path(f"/proc/{pid}/stat")
    assert not state.exists() or state.read_text().split(") ")[1].startswith("Z")  # gone (or only a zombie)


def test_steps_left_without_time_are_reported_not_run_and_fail_the_run(tmp_path):
    status, _, summary = run(tmp_path, budget=0)
    assert status == 1
    assert {row[0] for step, row in rows(summary).items() if step != "cuda"} == {"NOT RUN"}
    assert summary[-1].startswith("result: FAIL")


@pytest.mark.parametrize(
    ("step", "which", "skip_line", "fails"),
    [
        ("cuda_tests", "ANY", "SKIPPED [2] tests/train/test_train_cuda.py:43: torch sees no CUDA device", True),
        ("suite", "EXTRAS", "SKIPPED [7] tests/train/test_x.py:62: HumanoidBench is not installed", False),
        (
            "suite",
            "EXTRAS",
            'SKIPPED [1] /t/tests/train: needs the [train] extra (mujoco not installed): pip install -e ".[train]"',
            True,
        ),
        ("suite", "EXTRAS", "SKIPPED [1] tests/core/test_x.py:9: torch sees no CUDA device", True),
        (
            "suite",
            "EXTRAS",
            "SKIPPED [3] tests/train/test_e.py:5: could not import 'mujoco': libGL.so.1: cannot open shared object",
            True,
        ),
    ],
    ids=[
        "a CUDA test skipped",
        "an optional install skipped",
        "a missing extra",
        "no CUDA in the suite",
        "an extra that does not import",
    ],
)
def test_skipped_tests_that_must_run_there_fail_the_run(tmp_path, step, which, skip_line, fails):
    stubs = (
        f"step_{step}() {{ printf '%s\\n' {shlex.quote(skip_line)} '3 passed, 2 skipped in 0.1s' >\"$WORK/p.log\"; "
        f'pytest_verdict "$WORK/p.log" 0 {which}; }}'
    )
    status, _, summary = run(tmp_path, stubs)
    row = rows(summary)[step.replace("_", "-")]
    assert (status, row[0]) == ((1, "FAIL(1)") if fails else (0, "ok"))
    assert row[2].startswith("3 passed, 2 skipped in 0.1s")
    assert ("must run here" in row[2]) is fails


def test_a_failing_step_fails_the_run_and_the_steps_after_it_still_run(tmp_path):
    status, _, summary = run(tmp_path, 'step_bench_graphs() { note "no GPU after all"; return 3; }', EVERY_PART)
    assert status == 1
    assert rows(summary)["bench-graphs"][::2] == ["FAIL(3)", "no GPU after all"]  # not its seconds: see rows
    assert rows(summary)["suite"][0] == "ok"


@pytest.mark.parametrize("step", ["infer", "serving"])
def test_onnxruntime_on_cuda_is_skipped_not_failed_where_onnxruntime_has_no_cuda_provider(tmp_path, step):
    stubs = 'python3() { echo "AzureExecutionProvider, CPUExecutionProvider"; }'  # the image's onnxruntime
    status, _, summary = run(tmp_path, stubs, real=(step,))
    assert status == 0
    assert rows(summary)[step][::2] == [
        "SKIPPED",
        "onnxruntime's CUDA provider: not offered by this onnxruntime (AzureExecutionProvider, CPUExecutionProvider)",
    ]


@pytest.mark.parametrize("step", ["infer", "serving"])
def test_an_onnxruntime_that_cannot_be_imported_fails_infer_and_serving_saying_why(tmp_path, step):
    """At d526dd0 this failed; then "cannot be imported" and "offers no CUDA provider" both read SKIPPED."""
    stubs = """python3() {
    echo "Traceback (most recent call last):" >&2
    echo "ModuleNotFoundError: No module named 'onnxruntime'" >&2
    return 1
}"""
    status, _, summary = run(tmp_path, stubs, real=(step,))
    assert status == 1
    assert rows(summary)[step][::2] == [
        "FAIL(1)",
        "onnxruntime cannot be imported: ModuleNotFoundError: No module named 'onnxruntime'",
    ]


def test_a_bundle_whose_onnxruntime_gpu_offers_no_cuda_provider_fails_infer_and_serving(tmp_path):
    """The install step installed the bundle's onnxruntime-gpu, yet the onnxruntime imported offers no CUDA
    provider: that is no run without onnxruntime-gpu, and SKIPPED would let it pass."""
    pieces = tmp_path / "no-pieces"  # the folder run() names in DEVICE_CHECK_PIECES
    pieces.mkdir()
    (pieces / "install.sh").write_text('mkdir -p "$SITE/onnxruntime_gpu-1.31.1.dist-info"\n')
    stubs = f"""SITE={tmp_path}/site
python3() {{ echo "AzureExecutionProvider, CPUExecutionProvider"; }}"""
    status, _, summary = run(tmp_path, stubs, real=("install", "infer", "serving"), cwd=tmp_path)
    assert status == 1
    found = rows(summary)
    assert found["install"][0] == "ok"
    for step in ("infer", "serving"):
        assert found[step][::2] == [
            "FAIL(1)",
            "onnxruntime's CUDA provider: not offered by this onnxruntime (AzureExecutionProvider, "
            f"CPUExecutionProvider), though the install step installed onnxruntime-gpu 1.31.1 into {tmp_path}/site",
        ]


def test_the_suite_leaves_out_the_modules_of_the_development_environment_and_each_exists(tmp_path):
    """suite-serving ran tests/serve/test_serve_proto.py, which regenerates the gRPC modules with grpcio-tools
    and mypy-protobuf: neither is on the GPU image nor in the bundle."""
    listed = subprocess.run(
        ["bash", "-c", f'source {SCRIPT}; printf "%s\\n" "${{SUITE_IGNORED[@]}}"'],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert "tests/serve/test_serve_proto.py" in listed
    assert [path for path in listed if not (ROOT / path).is_file()] == []
    stubs = """python3() { echo "$*" >"$WORK/pytest.args"; echo "1 passed in 0.1s"; }"""
    status, _, summary = run(tmp_path, stubs, "main suite-serving")
    assert (status, rows(summary)["suite-serving"][0]) == (0, "ok")
    args = (tmp_path / "work" / "pytest.args").read_text().split()
    assert args[:3] == ["-m", "pytest", "-q"]
    assert {args[i + 1] for i, arg in enumerate(args) if arg == "--ignore"} == set(listed)


def test_the_header_and_the_docs_name_every_file_that_comes_back():
    """The header's list of the files in $OUT left out pytest_serving.log."""
    text = SCRIPT.read_text()
    header = text.split("set -uo pipefail")[0]
    names = set(re.findall(r"\$OUT_DIR/([\w.]+\.(?:log|json|txt))", text))
    names |= set(re.findall(r"^\s*(?:wants \S+ && )?merged \w+ ([\w.]+)", text, re.M))
    names |= set(re.findall(r"^step_suite\w*\(\) \{ suite ([\w.]+)", text, re.M))
    assert {"summary.txt", "install.log", "pytest.log", "pytest_serving.log", "serving.json"} <= names
    docs = (ROOT / "docs" / "development.md").read_text().split("## The GPU checks")[1].split("\n## ")[0]
    assert [name for name in sorted(names) if name not in header] == []
    assert [name for name in sorted(names) if name not in docs] == []


@needs_extras("export")  # the bench script imports torch and onnx
def test_infer_latency_refuses_gap_on_cuda_in_one_line():
    """--gap times one CPU thread: with --device cuda it ran on the CPU and said nothing."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "infer_latency.py"), "--gap", "--device", "cuda"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].endswith("--gap times onnxruntime on one CPU thread: leave out --device cuda")


def test_a_misspelt_part_is_refused_before_the_cuda_check(tmp_path):
    status, stdout, summary = run(tmp_path, 'cuda_check() { echo "checked"; sleep 60; }', "main train trian")
    assert status == 2
    parts = "install cuda-tests bench bench-more train infer serving demo suite suite-serving"
    assert stdout == f"device_check: no part 'trian' (parts: {parts})\n"
    assert summary == []


def test_a_step_killed_before_its_budget_is_not_called_a_timeout(tmp_path):
    """A step the OOM killer ends (SIGKILL, status 137) was reported 'TIMEOUT killed after its N s' at 0 s."""
    stubs = """step_bench_graphs() { note "started"; sh -c 'kill -KILL $$'; }"""
    status, _, summary = run(tmp_path, stubs, EVERY_PART)
    assert status == 1
    status_of, _, note_of = rows(summary)["bench-graphs"]
    assert status_of == "KILLED(137)"
    assert re.fullmatch(r"ended after \d+ s of its \d+ s; started", note_of)


def test_a_cuda_provider_library_that_does_not_load_fails_the_run_and_the_steps_get_the_nvidia_folders(tmp_path):
    """onnxruntime's preload_dlls did not find the CUDA libraries that torch's nvidia packages hold: the
    run says so and fails, and its later steps still measure with those folders on LD_LIBRARY_PATH."""
    stubs = """python3() { echo "missing /n/cublas/lib:/n/cu13/lib libcublasLt.so.13: cannot open shared object file"; }
step_suite() { note "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; }"""
    status, _, summary = run(tmp_path, stubs, real=("nvidia-libraries",))
    assert status == 1
    found = rows(summary)
    assert found["cuda-libraries"][0] == "FAIL"
    assert found["cuda-libraries"][2].startswith("preload_dlls left it unloadable (libcublasLt.so.13: cannot open")
    assert found["suite"][2].startswith("LD_LIBRARY_PATH=/n/cublas/lib:/n/cu13/lib")


def test_no_nvidia_library_folder_found_leaves_ld_library_path_and_the_error_whole(tmp_path):
    """The check prints "missing - ERROR" where no nvidia folder holds a library; `read` took the error's first
    word for the folders."""
    stubs = """python3() { echo "missing - libcublasLt.so.13: cannot open shared object file"; }
step_suite() { note "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-unset}"; }"""
    env_before = os.environ.pop("LD_LIBRARY_PATH", None)
    try:
        status, _, summary = run(tmp_path, stubs, real=("nvidia-libraries",))
    finally:
        if env_before is not None:
            os.environ["LD_LIBRARY_PATH"] = env_before
    assert status == 1
    found = rows(summary)
    assert found["cuda-libraries"][::2] == [
        "FAIL",
        "preload_dlls left it unloadable (libcublasLt.so.13: cannot open shared object file), and no nvidia "
        "package folder holds a lib*.so* to add to LD_LIBRARY_PATH",
    ]
    assert found["suite"][2] == "LD_LIBRARY_PATH=unset"


def test_the_cuda_library_check_that_hangs_is_ended_and_fails_the_run(tmp_path):
    """The check ran outside any timeout; its timeout must not bypass the stubs (timeout execs a binary)."""
    stubs = "LIBRARY_CHECK_S=1\npython3() { sleep 30; }"
    start = time.monotonic()
    status, _, summary = run(tmp_path, stubs, real=("nvidia-libraries",))
    assert time.monotonic() - start < 15
    assert status == 1
    assert rows(summary)["cuda-libraries"][::2] == ["FAIL", "the check failed: no answer in 1 s"]


def test_an_install_whose_packages_do_not_import_fails(tmp_path):
    """pip succeeded, the import check failed, and the install step said ok."""
    (tmp_path / ".whl").mkdir()
    (tmp_path / ".whl" / "x-1-py3-none-any.whl").write_bytes(b"")
    stubs = """python3() {
    if [[ $1 == -m ]]; then return 0; fi
    echo "ModuleNotFoundError: No module named 'mujoco'"; return 1
}"""
    status, _, summary = run(tmp_path, stubs, real=("install",), cwd=tmp_path)
    assert status == 1
    assert rows(summary)["install"][::2] == ["FAIL(1)", "ModuleNotFoundError: No module named 'mujoco'"]


def test_a_bundle_sent_in_pieces_is_installed_without_a_whl_folder(tmp_path):
    """onnxruntime-gpu is too large for one call: its pieces arrive over several calls into the bundle
    folder, whose install.sh the install step runs before the package's own editable install."""
    pieces = tmp_path / "no-pieces"  # the folder run() names in DEVICE_CHECK_PIECES
    pieces.mkdir()
    (pieces / "install.sh").write_text('echo "bundle into $SITE from $PARTS" >"$PARTS/installed"\n')
    stubs = 'python3() { echo "python3 $*" >>"$DEVICE_CHECK_PIECES/installed"; }'
    status, _, summary = run(tmp_path, stubs, real=("install",), cwd=tmp_path)
    assert rows(summary)["install"][0] == "ok"
    assert status == 0
    lines = (pieces / "installed").read_text().splitlines()
    assert lines[0] == f"bundle into /tmp/site from {pieces}"
    assert lines[1].startswith("python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .")


CUDA_SO = "onnxruntime/capi/libonnxruntime_providers_cuda.so"
CAP = 200_000
"""The folder size the bundle tests pack to: the fake CUDA provider library (300 KB) takes more than one."""


def fake_wheel(path: Path, files: dict[str, bytes]) -> Path:
    """A wheel at path (NAME-VERSION-py3-none-any.whl) holding files, with its METADATA, WHEEL and RECORD."""
    name, version = path.name.split("-")[:2]
    info = f"{name}-{version}.dist-info"
    files = {
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in [*files, f"{info}/RECORD"]).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for member, data in files.items():
            z.writestr(member, data)
    return path


def fake_wheels(folder: Path, library_bytes: int = 300_000) -> dict[str, bytes]:
    """An onnxruntime-gpu wheel with a CUDA provider library of library_bytes and a small wheel, in folder:
    their files, by path as installed."""
    folder.mkdir()
    ort = {
        "onnxruntime/__init__.py": b"__version__ = '1.31.1'\n",
        CUDA_SO: random.Random(0).randbytes(library_bytes),  # as incompressible as a real one, nearly
    }
    small = {"small.py": b"answer = 42\n" * 500}
    fake_wheel(folder / "onnxruntime_gpu-1.31.1-py3-none-any.whl", ort)
    fake_wheel(folder / "small-1.0-py3-none-any.whl", small)
    return ort | small


def du(path: Path) -> int:
    """`du -sb`."""
    return sum(p.lstat().st_size for p in [path, *path.rglob("*")])


def packed(tmp_path: Path, cap: int = CAP, library_bytes: int = 300_000) -> tuple[dict[str, bytes], list[Path]]:
    files = fake_wheels(tmp_path / "wheels", library_bytes)
    env = {**os.environ, "DEVICE_CHECK_FOLDER_BYTES": str(cap)}
    done = subprocess.run(
        [sys.executable, str(BUNDLE), "pack", str(tmp_path / "wheels"), str(tmp_path / ".gpu")],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    folders = sorted(tmp_path.glob(".gpu*"))
    assert done.stdout.startswith(f"{len(folders)} folders of at most {cap / (1 << 20):.1f} MiB: .gpu1 ")
    assert "mkdir -p /tmp/gpuparts && cp -r .gpuK/. /tmp/gpuparts/" in done.stdout
    return files, folders


def sent(folders: list[Path], parts: Path) -> Path:
    """Each folder copied into parts, as each call does (cp -r .gpuK/. /tmp/gpuparts/)."""
    for folder in folders:
        shutil.copytree(folder, parts, dirs_exist_ok=True)
    return parts


def test_the_bundle_is_packed_into_folders_under_the_cap_and_installed_byte_for_byte(tmp_path):
    files, folders = packed(tmp_path)
    assert [f.name for f in folders] == [f".gpu{k}" for k in range(1, len(folders) + 1)]
    assert len(folders) >= 2
    assert all(du(folder) <= CAP for folder in folders), [du(folder) for folder in folders]
    first = {p.name for p in folders[0].iterdir()}
    assert {"install.sh", "device_bundle.py", "MANIFEST.json"} <= first
    manifest = json.loads((folders[0] / "MANIFEST.json").read_text())
    assert {f["name"] for f in manifest["files"]} >= {"libonnxruntime_providers_cuda.so.xz"}
    assert all(len(p["sha256"]) == 64 for f in manifest["files"] for p in f["pieces"])

    parts, site = sent(folders, tmp_path / "parts"), tmp_path / "site"
    env = {**os.environ, "SITE": str(site), "PARTS": str(parts), "PY": sys.executable}
    done = subprocess.run(["bash", str(parts / "install.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    for path, data in files.items():
        assert hashlib.sha256((site / path).read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest(), path
    assert os.access(site / CUDA_SO, os.X_OK)
    assert {p.name for p in site.glob("*.dist-info")} == {"onnxruntime_gpu-1.31.1.dist-info", "small-1.0.dist-info"}


def installed(parts: Path, site: Path, python: str = sys.executable) -> subprocess.CompletedProcess:
    """parts/install.sh run as the install step runs it."""
    env = {**os.environ, "SITE": str(site), "PARTS": str(parts), "PY": python}
    return subprocess.run(["bash", str(parts / "install.sh")], env=env, capture_output=True, text=True, timeout=120)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """The installer's or packer's failure: a status of 1 and one line, no traceback."""
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr.splitlines()[-1]


def test_a_file_larger_than_a_folder_is_cut_across_folders_that_it_fills_and_restored_byte_for_byte(tmp_path):
    """A library of 4 MB under a cap of 1.5 MiB: pieces over SPLIT_MIN (1 MiB), each folder but the last
    filled to within SPLIT_MIN of the cap, as the real library's 284 MB fill 44 MiB folders."""
    cap = 3 << 19
    files, folders = packed(tmp_path, cap=cap, library_bytes=4_000_000)
    assert len(folders) >= 3
    assert all(cap - (1 << 20) <= du(folder) <= cap for folder in folders[:-1]), [du(f) for f in folders]
    manifest = json.loads((folders[0] / "MANIFEST.json").read_text())
    library = next(f for f in manifest["files"] if f.get("to") == CUDA_SO)
    assert len({p["folder"] for p in library["pieces"]}) >= 3
    assert max(p["bytes"] for p in library["pieces"]) > 1 << 20

    site = tmp_path / "site"
    done = installed(sent(folders, tmp_path / "parts"), site)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (site / CUDA_SO).read_bytes() == files[CUDA_SO]


@pytest.mark.parametrize("damage", ["a byte flipped", "truncated"])
def test_a_damaged_piece_is_refused_naming_it_and_its_folder(tmp_path, damage):
    """The sha256 of each piece is checked before anything is restored or installed."""
    _, folders = packed(tmp_path)
    parts = sent(folders, tmp_path / "parts")
    manifest = json.loads((parts / "MANIFEST.json").read_text())
    piece = next(p for f in manifest["files"] if f.get("to") == CUDA_SO for p in f["pieces"])
    data = bytearray((parts / piece["path"]).read_bytes())
    if damage == "truncated":
        del data[-1000:]
    else:
        data[len(data) // 2] ^= 0x01
    (parts / piece["path"]).write_bytes(bytes(data))
    done = installed(parts, tmp_path / "site")
    assert one_line_error(done) == f"device_bundle: {piece['path']} of {piece['folder']} differs from the piece packed"
    assert not (tmp_path / "site").exists()


def test_the_installer_fails_in_one_line_without_pip_or_a_good_manifest(tmp_path):
    _, folders = packed(tmp_path)
    parts, site = sent(folders, tmp_path / "parts"), tmp_path / "site"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "nopip")], check=True)
    done = installed(parts, site, str(tmp_path / "nopip" / "bin" / "python"))
    assert one_line_error(done).startswith(f"device_bundle: {tmp_path}/nopip/bin/python has no pip (")
    assert not site.exists()

    manifest = (parts / "MANIFEST.json").read_text()
    (parts / "MANIFEST.json").write_text(manifest[: len(manifest) // 2])
    assert one_line_error(installed(parts, site)) == (
        f"device_bundle: {parts}/MANIFEST.json is not the manifest packed (JSONDecodeError): copy the first folder "
        "(.gpu1) again"
    )
    (parts / "MANIFEST.json").unlink()
    assert one_line_error(installed(parts, site)) == (
        f"device_bundle: no MANIFEST.json in {parts}: copy the first folder (.gpu1: the installer and manifest) too"
    )


def test_packing_an_empty_wheels_folder_fails_in_one_line(tmp_path):
    (tmp_path / "wheels").mkdir()
    done = subprocess.run(
        [sys.executable, str(BUNDLE), "pack", str(tmp_path / "wheels"), str(tmp_path / ".gpu")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert one_line_error(done) == f"device_bundle: no *.whl in {tmp_path / 'wheels'}"
    assert list(tmp_path.glob(".gpu*")) == []


def test_a_folder_not_sent_fails_the_install_step_naming_it(tmp_path):
    _, folders = packed(tmp_path)
    parts = sent([folders[0], *folders[2:]], tmp_path / "no-pieces")  # the folder run() names in DEVICE_CHECK_PIECES
    done = subprocess.run(
        ["bash", str(parts / "install.sh")], env={**os.environ, "SITE": str(tmp_path / "site"), "PY": sys.executable},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.splitlines()[-1].startswith(f"device_bundle: missing folder(s) .gpu2 of {len(folders)}: copy ")
    assert not (tmp_path / "site").exists()

    status, _, summary = run(tmp_path, real=("install",), cwd=tmp_path)
    assert status == 1
    assert rows(summary)["install"][0] == "FAIL(1)"
    assert rows(summary)["install"][2].startswith("device_bundle: missing folder(s) .gpu2 of ")


def test_a_bundle_without_its_first_folder_fails_the_install_step_naming_it(tmp_path):
    _, folders = packed(tmp_path)
    sent(folders[1:], tmp_path / "no-pieces")
    status, _, summary = run(tmp_path, real=("install",), cwd=tmp_path)
    assert status == 1
    assert rows(summary)["install"][::2] == [
        "FAIL(1)",
        f"the bundle in {tmp_path / 'no-pieces'} has no install.sh: copy its first folder (.gpu1: the installer and "
        "manifest) too",
    ]


def test_pieces_makes_the_bundle_with_the_onnxruntime_gpu_of_the_checkouts_venv(tmp_path, monkeypatch):
    """--pieces fetches what --wheels fetches (stubbed here) and the onnxruntime-gpu of .venv, and packs them."""
    fake_wheels(tmp_path / "fake")
    venv_python = tmp_path / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text("#!/bin/sh\necho 1.31.1\n")
    venv_python.chmod(0o755)
    stubs = f"""fetch_wheels() {{ cp {tmp_path}/fake/small-*.whl "$1"; }}
download() {{ echo "$*" >{tmp_path}/download.log; cp {tmp_path}/fake/onnxruntime_gpu-*.whl "$1"; }}"""
    monkeypatch.setenv("DEVICE_CHECK_FOLDER_BYTES", str(CAP))
    monkeypatch.delenv("DEVICE_CHECK_ORT_VERSION", raising=False)
    status, stdout, _ = run(tmp_path, stubs, 'main --pieces "$PWD/.gpu"', cwd=tmp_path)
    assert status == 0, stdout
    assert (tmp_path / "download.log").read_text().split()[1:] == ["onnxruntime-gpu==1.31.1"]
    assert re.match(r"(\d+) folders of at most", stdout)
    assert len(list(tmp_path.glob(".gpu*"))) == int(stdout.split()[0]) >= 2

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)  # a checkout that does not ignore them
    status, stdout, _ = run(tmp_path, stubs, 'main --pieces "$PWD/.gpu"', cwd=tmp_path)
    assert status == 1
    assert stdout.startswith(f"device_check: {tmp_path}/.gpu1 is not git-ignored, so every call would carry it")

    for folder in tmp_path.glob(".gpu*"):  # the advice taken in a fresh checkout, before any folder exists
        shutil.rmtree(folder)
    (tmp_path / ".git" / "info" / "exclude").write_text(stdout.split("add ")[1].split()[0] + "\n")
    status, stdout, _ = run(tmp_path, stubs, 'main --pieces "$PWD/.gpu"', cwd=tmp_path)
    assert status == 0, stdout
