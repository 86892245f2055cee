"""The server's configuration: one field per ``flowrl serve`` flag, plus a few settings
(watch interval, rows per request, keepalive) that only code sets.

Every value is checked once, when the config is built (:meth:`ServeConfig.__post_init__`): the
library and ``flowrl serve`` refuse the same values with the same :class:`FlowRLError`. A field
is named by its flag (``max_batch`` → ``--max-batch``); those only code sets by their field name.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, fields

import numpy as np

from flowrl_deploy.affinity import check_rt_priority, check_thread_count
from flowrl_deploy.connection import checked_token
from flowrl_deploy.contract import MAX_TIMEOUT_S
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.fieldtypes import wrong_type
from flowrl_deploy.serve.batcher import MAX_WINDOW_US
from flowrl_deploy.spec import flow_steps_problem

MAX_MESSAGE_BYTES = 2**31 - 1
"""gRPC's message size limits are C ints: a larger ``max_message_bytes`` fails the server's start."""
MAX_BATCH = 4096
"""Rows of one micro-batch at most: the server warms the model up at this size, and more only adds latency."""
MIN_WATCH_INTERVAL_S = 0.01
"""Shorter polls only burn a core (0 busy-looped) and call a file settled that is still being written."""
MIN_KEEPALIVE_S = 0.1
"""gRPC takes keepalive times in whole milliseconds; shorter probes only flood the network."""
CODE_ONLY = frozenset({"max_request_batch", "watch_interval_s", "keepalive_s"})
"""Fields without a ``flowrl serve`` flag: errors name them as they are spelled in code."""
SECRETS = frozenset({"token"})
"""Fields never shown: not in the config's ``repr``, and by their type alone in an error."""


def setting_name(field: str) -> str:
    """How errors name a field: by its ``flowrl serve`` flag, or as in code when it has none."""
    return field if field in CODE_ONLY else "--" + field.replace("_", "-")


def check_grace(name: str, grace: object) -> float:
    """A grace period of stop: seconds in [0, MAX_TIMEOUT_S], a day (NaN and infinity are refused:
    an infinite grace made ``stop()`` hang with an OverflowError inside gRPC)."""
    if isinstance(grace, bool) or not isinstance(grace, int | float):
        raise FlowRLError(f"{name} must be a number of seconds, got {grace!r}")
    if not 0 <= grace <= MAX_TIMEOUT_S:
        raise FlowRLError(f"{name} must lie in [0, {MAX_TIMEOUT_S:g}] s, got {grace}")
    return float(grace)


def provider_order_problem(providers: tuple[str, ...]) -> str:
    """Why onnxruntime would not run ``providers`` as listed ('' when it would): one named twice, or one
    after the CPU, which onnxruntime never gives a node (it gives each node to the first provider listed
    that runs it, and the CPU runs them all)."""
    twice = sorted({name for name in providers if providers.count(name) > 1})
    if twice:
        return f"{', '.join(twice)} named twice"
    cpu = "CPUExecutionProvider"
    after_cpu = providers[providers.index(cpu) + 1 :] if cpu in providers else ()
    if after_cpu:
        return (
            f"{', '.join(after_cpu)} after the CPU would never run (the CPU runs every node, and onnxruntime "
            "gives each node to the first provider listed that runs it); list it first, e.g. --providers "
            "cuda,cpu, or leave it out"
        )
    return ""


@dataclass(frozen=True)
class ServeConfig:
    """How to serve one policy file. A value the server could not run with (a count below 1, a
    port beyond 65535, a NaN or infinite time, a float or bool where an integer goes) raises
    :class:`FlowRLError` here, naming the setting. NumPy scalars are taken as their Python values,
    paths as strings and lists as tuples. The hints give what a field holds once built (a field is
    both the argument and the attribute read back): typed code passes ``str(path)``, tuples and Python
    numbers."""

    model: str
    """An exported ONNX file, or a checkpoint: exported on the fly by the exporter the server is given
    (``PolicyServer(config, export_checkpoint=flowrl_deploy.export.export_for_serving)``, as
    ``flowrl serve`` does; it needs the export extra), and refused without one."""
    host: str = "127.0.0.1"
    port: int = 50051
    """0 picks a free port; :attr:`PolicyServer.port` tells which."""
    providers: tuple[str, ...] = ()
    """onnxruntime execution providers; empty: CUDA when present, else CPU."""
    threads: int = 1
    """onnxruntime intra-op threads per inference call."""
    max_batch: int = 1
    """Concurrent requests are combined into one onnxruntime call up to this many observations;
    1 disables micro-batching. A request is never split: one with more rows (up to
    ``max_request_batch``) runs alone, as one call."""
    batch_window_us: int = 0
    """How long the batcher waits for more requests after the first; 0: take what is queued."""
    batch_workers: int = 2
    """Batches formed and run concurrently (about one per core)."""
    workers: int = 128
    """gRPC handler threads of the policy service's StreamAct and Act calls; each open StreamAct
    holds one, and calls beyond get RESOURCE_EXHAUSTED. GetSpec, GetStats, Reset and Reload (answered
    while the workers are busy), health checks and reflection have a few more threads of their own."""
    max_sessions: int = 4096
    max_connections: int = 512
    """Client connections at once; more are closed as soon as they are accepted. Each costs a file
    descriptor (keep it below ``ulimit -n``) and about 15 KB, with or without a token."""
    session_idle_s: float = 600.0
    """A session opened by Reset (no stream owns it) is dropped after this long unused."""
    max_message_bytes: int = 1 << 20
    """Larger requests are refused with RESOURCE_EXHAUSTED; the server's replies are not held to it.
    One below the policy's largest request of one observation
    (:func:`~flowrl_deploy.serve.servicer.request_floor`, about 1 KB) is refused as the model loads."""
    max_request_batch: int = 1024
    """Most observations one Act request may carry."""
    token: str = dataclasses.field(default="", repr=False)
    """Shared secret: every call must send ``authorization: Bearer <token>`` (printable ASCII
    without whitespace at either end, as a header value must be). Not in the config's ``repr``."""
    tls_cert: str = ""
    tls_key: str = ""
    client_ca: str = ""
    """With TLS: require client certificates signed by this CA (mTLS)."""
    metrics_port: int | None = None
    """Serve Prometheus metrics on this port (0: a free one); None: off."""
    steps: int | None = None
    """Flow steps N of a checkpoint exported on the fly (and re-exported by Reload and ``watch``);
    None: the checkpoint's training flow steps. An ONNX file's N is fixed: setting it is an error."""
    watch: bool = False
    """Reload the model when what it serves changes: an ONNX file, or the checkpoint (and its
    ``checkpoint.json``) that a run or checkpoint directory resolves to."""
    watch_interval_s: float = 1.0
    reload: bool = True
    """Take ``Reload`` calls, which let any caller with the token swap the served model for another
    beside it; False refuses them (PERMISSION_DENIED), leaving ``watch`` (whoever may write the file)
    as the only way to change the model."""
    cpus: tuple[int, ...] = ()
    """Cores to pin the server process to (Linux); empty: any. Applied by :func:`serve_forever`."""
    rt_priority: int | None = None
    """Run the server's threads under SCHED_FIFO at this priority, 1-99 (Linux; root, CAP_SYS_NICE or
    an rtprio limit): other work on their cores then no longer delays a call. :func:`serve_forever`
    checks the right before loading the model and applies it once the model is warm; None: the
    normal scheduler."""
    grace_s: float = 5.0
    """On stop, how long requests in flight may take to finish; :meth:`PolicyServer.stop` returns
    within about a second more."""
    keepalive_s: float = 10.0
    """The server pings each connection this often and closes one whose ping goes unanswered this
    long, ending its calls: a frozen or cut-off client's stream and session go within about twice
    this, not after gRPC's default of 2 h."""
    metrics_host: str | None = None
    """Where Prometheus metrics listen (with ``metrics_port``); None: ``host``. Metrics need no token:
    e.g. ``0.0.0.0`` lets Prometheus scrape them while gRPC stays on 127.0.0.1, or ``127.0.0.1`` keeps
    them local while gRPC serves the network."""
    cuda_graphs: bool = True
    """On onnxruntime's CUDA provider, replay each batch size's calls from a CUDA graph (one kernel launch
    instead of one per node), where the warm-up shows them as exact and faster; no effect on the CPU."""

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, np.generic):  # np.int64(50051) from a config array: the Python value
                object.__setattr__(self, field.name, value.item())
            elif isinstance(value, os.PathLike) and field.type == "str":  # a file given as a Path
                object.__setattr__(self, field.name, os.fspath(value))
            elif isinstance(value, list) and field.type.startswith("tuple["):
                object.__setattr__(self, field.name, tuple(value))
        if wrong := wrong_type(self):
            name, kind = wrong
            value = getattr(self, name)
            given = type(value).__name__ if name in SECRETS else repr(value)
            raise FlowRLError(f"{setting_name(name)} must be {kind}, got {given}")
        if not self.host.strip("[]"):  # gRPC refuses it with a C-core log line after the checks passed
            raise FlowRLError(
                f"--host must name an interface, got {self.host!r}: 0.0.0.0 for every one, 127.0.0.1 for this machine"
            )
        if self.metrics_host is not None:
            if self.metrics_port is None:  # a flag without effect would leave metrics off unnoticed
                raise FlowRLError("--metrics-host needs --metrics-port (metrics are off without it)")
            if not self.metrics_host.strip("[]"):
                raise FlowRLError(
                    f"--metrics-host must name an interface, got {self.metrics_host!r}: 0.0.0.0 for every one, "
                    "127.0.0.1 for this machine, or leave it out for --host's"
                )
        if self.token:
            checked_token(self.token, "--token")
        if problem := provider_order_problem(self.providers):
            raise FlowRLError(f"--providers {','.join(self.providers)}: {problem}")
        for field in ("port", "metrics_port"):
            port = getattr(self, field)
            if port is not None and not 0 <= port <= 65535:
                raise FlowRLError(f"{setting_name(field)} must lie in [0, 65535] (0: a free port), got {port}")
        if self.metrics_port == self.port != 0:  # failed only once the model had loaded, with "address in use"
            raise FlowRLError(f"--metrics-port must differ from --port, got {self.port} for both")
        for field in (
            "max_batch",
            "threads",
            "workers",
            "batch_workers",
            "max_sessions",
            "max_connections",
            "max_request_batch",
        ):
            if getattr(self, field) < 1:
                raise FlowRLError(f"{setting_name(field)} must be >= 1, got {getattr(self, field)}")
        if self.max_batch > MAX_BATCH:
            raise FlowRLError(
                f"--max-batch must be at most {MAX_BATCH} (the server warms up at it), got {self.max_batch}"
            )
        if not 0 <= self.batch_window_us <= MAX_WINDOW_US:
            raise FlowRLError(
                f"--batch-window-us must lie in [0, {MAX_WINDOW_US}] µs (a request alone in its batch waits "
                f"the whole window), got {self.batch_window_us}"
            )
        check_thread_count("--threads", self.threads)
        if self.rt_priority is not None:
            check_rt_priority("--rt-priority", self.rt_priority)
        check_thread_count("--batch-workers", self.batch_workers, per_core=4)
        if not 1 <= self.max_message_bytes <= MAX_MESSAGE_BYTES:
            raise FlowRLError(
                f"--max-message-bytes must lie in [1, {MAX_MESSAGE_BYTES}] (gRPC's limit), got {self.max_message_bytes}"
            )
        if not (self.session_idle_s > 0 and math.isfinite(self.session_idle_s)):
            raise FlowRLError(f"--session-idle-s must be > 0 and finite, got {self.session_idle_s}")
        problem = None if self.steps is None else flow_steps_problem("--steps", self.steps)
        if problem is not None:
            raise FlowRLError(problem)
        if not MIN_WATCH_INTERVAL_S <= self.watch_interval_s <= MAX_TIMEOUT_S:
            raise FlowRLError(
                f"watch_interval_s must lie in [{MIN_WATCH_INTERVAL_S}, {MAX_TIMEOUT_S:g}] s, "
                f"got {self.watch_interval_s}"
            )
        check_grace(setting_name("grace_s"), self.grace_s)
        if not MIN_KEEPALIVE_S <= self.keepalive_s <= MAX_TIMEOUT_S:
            raise FlowRLError(
                f"keepalive_s must lie in [{MIN_KEEPALIVE_S}, {MAX_TIMEOUT_S:g}] s, got {self.keepalive_s}"
            )
