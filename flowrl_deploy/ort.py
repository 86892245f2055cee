"""onnxruntime for every part of flowrl-deploy: its import (with its telemetry off and its logger quieted),
the execution providers (CUDA when a GPU and its libraries are there, CPU always), its errors in one line,
and :func:`make_session`, the session every policy graph runs in, made without onnxruntime printing.

onnxruntime itself is imported on first use (:func:`import_onnxruntime`), never when this module is.
Session settings favour batch-1 latency on a control computer: one intra-op thread, sequential
execution, no spinning threads.
"""

from __future__ import annotations

import ctypes
import logging
import numbers
import os
import re
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, TypeVar

from flowrl_deploy.affinity import check_thread_count
from flowrl_deploy.errors import FlowRLError

# The logger's name from when this lived in flowrl_deploy.runtime: logging configured by that name still applies.
log = logging.getLogger("flowrl.runtime")

if TYPE_CHECKING:  # for the hints only: onnxruntime is imported where it is used, by import_onnxruntime
    import onnxruntime as ort

# onnxruntime (1.31) reads this when imported: its telemetry writes a device id under $HOME/.cache,
# looks up a Microsoft host, and with a read-only $HOME (a container's) prints a coloured warning in a
# log format of its own. Off for the server, the session's local model, export checks and every
# `flowrl` command alike, unless the user set it (imported before this module, onnxruntime keeps its
# own setting). The one place it is set: every module of the package imports onnxruntime through
# import_onnxruntime (a test checks).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def import_onnxruntime() -> ModuleType:
    """onnxruntime, imported (on first use: it takes a while) with its telemetry off unless the
    user set ``ORT_DISABLE_TELEMETRY``; the package's modules import it only through here. Its own
    logger prints only what :func:`onnxruntime_severity` lets through: its lines come coloured even
    through a pipe, and split over two, and what they say our one-line errors say too."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(onnxruntime_severity())
    return onnxruntime


def onnxruntime_severity() -> int:
    """onnxruntime's logger severity for flowrl's log level (logger ``flowrl``): its errors only (3),
    and its warnings too (2) while flowrl logs DEBUG."""
    return 2 if logging.getLogger("flowrl").isEnabledFor(logging.DEBUG) else 3


def run_options() -> ort.RunOptions:
    """The options of :class:`~flowrl_deploy.policy.OnnxPolicy`'s runs: onnxruntime prints nothing of a
    run that fails (its fatal lines only, 4), unless flowrl logs DEBUG (then :func:`onnxruntime_severity`'s warnings):
    the exception raised says what its coloured ERROR line said, and a server whose model failed each
    call printed that line per call. What a session's load logs is left as it was."""
    options = import_onnxruntime().RunOptions()
    severity = onnxruntime_severity()
    options.log_severity_level = severity if severity < 3 else 4
    return options


CUDA_DRIVER = "nvcuda.dll" if os.name == "nt" else "libcuda.so.1"
"""The NVIDIA driver's library, as each system names it."""


def cuda_device_present() -> bool:
    """Whether the NVIDIA driver loads and reports at least one GPU.

    onnxruntime-gpu lists its CUDA provider on every machine, GPU or not, and logs an error at
    each session start where it cannot load; asking the driver first keeps CPU machines quiet.
    """
    try:
        driver = ctypes.CDLL(CUDA_DRIVER)
    except OSError:
        return False
    count = ctypes.c_int(0)
    return driver.cuInit(0) == 0 and driver.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


CUDA = "CUDAExecutionProvider"


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build offers it and a GPU is present, CPU always."""
    ort = import_onnxruntime()

    wanted = [CUDA] if cuda_device_present() else []
    return [p for p in ort.get_available_providers() if p in wanted] + ["CPUExecutionProvider"]


def _provider_library(kind: str) -> Path:
    """onnxruntime's provider library ``kind`` ('cuda', 'shared'), where its wheel puts it."""
    name = f"onnxruntime_providers_{kind}.dll" if os.name == "nt" else f"libonnxruntime_providers_{kind}.so"
    return Path(import_onnxruntime().__file__ or ".").parent / "capi" / name


def cuda_library_error() -> str:
    """Why onnxruntime's CUDA provider library cannot load here, in the system loader's words (the first
    library it misses: 'libcublasLt.so.13: cannot open shared object file: …'); '' when it loads.
    onnxruntime says it only in a coloured line of its own log, and then runs on the CPU."""
    cuda = _provider_library("cuda")
    if not cuda.exists():
        return f"this onnxruntime build has no {cuda.name}"
    try:
        ctypes.CDLL(str(_provider_library("shared")), mode=getattr(ctypes, "RTLD_GLOBAL", 0))
        ctypes.CDLL(str(cuda))
    except OSError as exc:
        return " ".join(str(exc).split())
    return ""


def cuda_libraries_hint() -> str:
    """What to do about :func:`cuda_library_error`, in a clause."""
    major = str(getattr(import_onnxruntime(), "cuda_version", "") or "").split(".")[0]
    return (
        f"install onnxruntime-gpu's CUDA {major + ' ' if major else ''}libraries "
        '(pip install "onnxruntime-gpu[cuda,cudnn]", and cuBLAS: see docs/install.md) or pass --providers cpu'
    )


_cuda_libraries_preloaded = False
_PRELOAD = threading.Lock()


def preload_cuda_libraries() -> None:
    """Have onnxruntime load the CUDA and cuDNN libraries that pip installed (the nvidia packages of
    onnxruntime-gpu's ``cuda`` and ``cudnn`` extras, where the system's loader does not look), once a
    process, before a session asks for CUDA. What onnxruntime prints meanwhile (a line per library it
    misses, on stdout) is logged at DEBUG; a missing library is said by the session's refusal or warning."""
    global _cuda_libraries_preloaded
    with _PRELOAD:
        if _cuda_libraries_preloaded:
            return
        _cuda_libraries_preloaded = True
        preload = getattr(import_onnxruntime(), "preload_dlls", None)  # onnxruntime >= 1.21
        if preload is None:
            return
        try:
            _printed_quietly(preload)
        except Exception as exc:  # a helper of onnxruntime's: whatever it raises, the session says the rest
            log.debug("onnxruntime.preload_dlls failed: %s", exc)


Provider = str | tuple[str, dict[str, str]]
"""An onnxruntime execution provider as :func:`make_session` takes it: its name, or its name and options."""

CUDA_OPTIONS = {"use_tf32": "0"}
"""What :func:`make_session` gives onnxruntime's CUDA provider unless the caller sets it: float MatMul and
Gemm in fp32. The provider computes them in TF32 by default (Ampere and newer GPUs: about 3 decimal
digits), and the served actions would not be the export's, which ``flowrl export`` verifies to 1e-5."""


def provider_name(provider: Provider) -> str:
    """The name of ``provider``, given as a name or as (name, options)."""
    return provider if isinstance(provider, str) else provider[0]


def with_options(providers: Sequence[Provider]) -> list[Provider]:
    """``providers`` as onnxruntime is given them: CUDA as (name, options), :data:`CUDA_OPTIONS` added
    to the caller's own; the others as they are."""
    given: list[Provider] = []
    for provider in providers:
        name = provider_name(provider)
        if name == CUDA:
            own = {} if isinstance(provider, str) else dict(provider[1])
            given.append((name, {**CUDA_OPTIONS, **own}))
        else:
            given.append(provider)
    return given


class ModelLoadError(FlowRLError):
    """onnxruntime could not build a session of the model, or (the server's warm-up) run it: a GPU
    provider's errors first show in a run. A provider that would not start is a plain :class:`FlowRLError`."""


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
_ORT_WHERE = re.compile(r"^/\S+\.(?:cc|cpp|h|hpp):\d+ (?:[\w:<>]+ )?[\w:~]+::[\w~]+\([^()]*\) ")
"""onnxruntime's source file and line, then the signature of its C++ function (``void
onnxruntime::model_load_utils::ValidateOpsetForDomain(const std::unordered_map<…>&, …) ``)."""
_IR_TOO_NEW = re.compile(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)")
_OPSET_TOO_NEW = re.compile(
    r"Opset (\d+) is under development.*Current official support for domain (\S+) is till opset (\d+)"
)


def onnxruntime_text(error: BaseException | str) -> str:
    """What onnxruntime's ``error`` says, on one line, without its status prefix, source location
    or C++ signature."""
    text = " ".join(str(error).split())
    return _ORT_WHERE.sub("", _ORT_PREFIX.sub("", text)).removeprefix("Fatal error: ")


def onnxruntime_reason(exc: BaseException) -> str:
    """Why onnxruntime could not load a model (its error ``exc``), in one line: a model for a newer
    runtime (its IR version or opset) in plain words, else :func:`onnxruntime_text` and its version."""
    version = getattr(import_onnxruntime(), "__version__", "?")
    text = onnxruntime_text(exc)
    if match := _IR_TOO_NEW.search(text):
        return (
            f"its IR version {match[1]} is newer than this onnxruntime ({version}) reads (at most {match[2]}); "
            "upgrade onnxruntime, or save the model at a lower IR version (`flowrl export` writes the lowest "
            "its opsets allow)"
        )
    if match := _OPSET_TOO_NEW.search(text):
        return (
            f"its {match[2].rstrip('.')} opset {match[1]} is newer than this onnxruntime ({version}) supports "
            f"(up to {match[3].rstrip('.')}); upgrade onnxruntime, or export at a lower opset"
        )
    if "is not a registered function/op" in text:
        return f"onnxruntime {version} cannot run it: {text}"
    return f"onnxruntime {version}: {text}"


class _ThreadOutput:
    """``sys.stdout`` while a session is made (:func:`_made_quietly`): what the thread making it
    prints is kept (onnxruntime's Python code prints an ``EP Error`` block when a provider fails to
    start, and then retries on the CPU); what any other thread prints goes where it went."""

    def __init__(self, original: object, thread: threading.Thread) -> None:
        self._original = original
        self._thread = thread
        self.kept: list[str] = []

    def write(self, text: str) -> int:
        if threading.current_thread() is self._thread:
            self.kept.append(text)
            return len(text)
        return self._original.write(text)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._original, name)


_OUTPUT_SWAP = threading.Lock()
"""One swap of ``sys.stdout`` at a time: two threads making sessions at once would each restore the other's."""


Result = TypeVar("Result")


def _printed_quietly(call: Callable[[], Result]) -> tuple[Result, str]:
    """``call()``, with what its thread prints kept off stdout (where scripts read the ``serving … on``
    line) and logged at DEBUG; returns its result and what it printed."""
    with _OUTPUT_SWAP:
        kept = _ThreadOutput(sys.stdout, threading.current_thread())
        sys.stdout = kept  # type: ignore[assignment]
        try:
            result = call()
        finally:
            if sys.stdout is kept:
                sys.stdout = kept._original  # type: ignore[assignment]
            if "".join(kept.kept).strip():
                log.debug("onnxruntime printed: %s", "".join(kept.kept).strip())
    return result, "".join(kept.kept)


def _made_quietly(make: Callable[[], ort.InferenceSession]) -> tuple[ort.InferenceSession, str]:
    """``make()`` as :func:`_printed_quietly` makes it; returns its result and what onnxruntime's
    ``EP Error`` line said ('' when none), a provider's reason for not starting."""
    result, printed = _printed_quietly(make)
    error = re.search(r"^EP Error (.*?)(?:\s+when using \[|$)", printed, re.M | re.S)
    return result, "" if error is None else onnxruntime_text(error[1]).rstrip(".")


def make_session(
    model: str | os.PathLike[str] | bytes,
    *,
    providers: Sequence[Provider] | None = None,
    threads: int = 1,
    optimized_model_path: str | None = None,
    name: str | None = None,
) -> ort.InferenceSession:
    """An ``onnxruntime.InferenceSession`` tuned for low-latency, small-batch inference; ``name``
    is what errors call the model (default: its path). ``threads``: a whole number from 1 to the
    number of cores (onnxruntime reads 0 as "one per core" and starts as many as it is told).
    ``providers``: names, or (name, options) pairs; None: :func:`default_providers`. CUDA is asked
    for with :data:`CUDA_OPTIONS` (fp32 matmuls) unless the caller's options set them."""
    ort = import_onnxruntime()

    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1:
        raise FlowRLError(f"threads must be a whole number >= 1, got {threads!r}")
    check_thread_count("threads", int(threads))

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    # Exports never keep tensors in other files; a model that does ("external data") could make
    # onnxruntime read any file near the server's working directory into its weights, and its
    # actions would show the bytes: look for them where there are none.
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", os.devnull)
    if optimized_model_path:
        options.optimized_model_filepath = optimized_model_path
    source = model if isinstance(model, bytes) else str(model)
    absent = [provider_name(p) for p in providers or () if provider_name(p) not in ort.get_available_providers()]
    if absent:  # refused before onnxruntime warns of them in two lines of its own, then runs without them
        raise _not_offered(absent)
    asked = list(providers) if providers else default_providers()
    wants_cuda = any(provider_name(p) == CUDA for p in asked)
    if wants_cuda:
        preload_cuda_libraries()
    if providers or wants_cuda:  # one that cannot start is refused or warned of below, in one line:
        ort.set_default_logger_severity(4)  # not also in onnxruntime's two coloured ones
    try:
        session, reason = _made_quietly(
            lambda: ort.InferenceSession(source, sess_options=options, providers=with_options(asked))
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable models
        name = name or ("<bytes>" if isinstance(model, bytes) else str(model))
        log.debug("onnxruntime could not load %s: %s", name, str(exc).strip())
        raise ModelLoadError(f"cannot load ONNX model {name}: {onnxruntime_reason(exc)}") from exc
    finally:
        ort.set_default_logger_severity(onnxruntime_severity())
    missing = [provider_name(p) for p in providers or () if provider_name(p) not in session.get_providers()]
    if missing:  # onnxruntime falls back to the CPU quietly; a provider asked for by name must run
        raise _not_started(missing, reason)
    if wants_cuda and not providers and CUDA not in session.get_providers():
        if error := cuda_library_error():
            log.warning(
                "a GPU is present but onnxruntime's CUDA provider cannot load (%s): running on the CPU; %s",
                error,
                cuda_libraries_hint(),
            )
        else:
            log.warning(
                "a GPU is present but onnxruntime did not start its CUDA provider (%s): running on the CPU; "
                "pass --providers cpu to run there without this warning",
                reason or "it did not say why",
            )
    # A provider failing a run later (a TensorRT engine rebuild, a CUDA error) is raised: onnxruntime's
    # own fallback printed two lines on stdout and re-made the session on the CPU under the threads running it.
    session.disable_fallback()
    return session


def _not_offered(absent: list[str]) -> FlowRLError:
    """The refusal of providers asked for by name that this onnxruntime build does not have at all."""
    ort = import_onnxruntime()
    gpu = " (the CPU-only onnxruntime package: install onnxruntime-gpu in its place)" if CUDA in absent else ""
    return FlowRLError(
        f"onnxruntime could not start {', '.join(absent)} here: this onnxruntime build ({ort.__version__}) does not "
        f"offer it{gpu}; it offers {', '.join(ort.get_available_providers())}: leave the providers at their default "
        "or ask for one of those"
    )


def _not_started(missing: list[str], reason: str) -> FlowRLError:
    """The refusal of providers asked for by name that onnxruntime did not start (it said ``reason``)."""
    ort = import_onnxruntime()
    here = f"onnxruntime could not start {', '.join(missing)} here"
    if CUDA in missing and not cuda_device_present():
        return FlowRLError(
            f"{here} (no GPU: the NVIDIA driver is missing or reports none); leave the providers at their default "
            "or ask for CPUExecutionProvider"
        )
    if CUDA in missing and (error := cuda_library_error()):
        return FlowRLError(
            f"{here}: a GPU is present but the CUDA provider's library cannot load ({error}); {cuda_libraries_hint()}"
        )
    said = f"onnxruntime: {reason}; " if reason else ""
    return FlowRLError(
        f"{here} ({said}this build offers {', '.join(ort.get_available_providers())}; a GPU provider also "
        "needs its CUDA libraries and a GPU); leave the providers at their default or ask for CPUExecutionProvider"
    )
