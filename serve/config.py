"""The server's configuration: one field per ``flowrl serve`` flag, plus a few settings
(grace period, watch interval, rows per request) that only code sets."""

from __future__ import annotations

from dataclasses import dataclass

MAX_MESSAGE_BYTES = 2**31 - 1
"""gRPC's message size limits are C ints: a larger ``max_message_bytes`` fails the server's start."""


@dataclass(frozen=True)
class ServeConfig:
    """How to serve one policy file."""

    model: str
    """An exported ONNX file, or a checkpoint (exported on the fly; needs the export extra)."""
    host: str = "127.0.0.1"
    port: int = 50051
    """0 picks a free port; :attr:`PolicyServer.port` tells which."""
    providers: tuple[str, ...] = ()
    """onnxruntime execution providers; empty: CUDA when present, else CPU."""
    threads: int = 1
    """onnxruntime intra-op threads per inference call."""
    max_batch: int = 1
    """Most observations one onnxruntime call runs; 1 disables micro-batching."""
    batch_window_us: int = 0
    """How long the batcher waits for more requests after the first; 0: take what is queued."""
    batch_workers: int = 2
    """Batches formed and run concurrently (about one per core)."""
    workers: int = 128
    """gRPC handler threads; each open StreamAct holds one, and calls beyond get RESOURCE_EXHAUSTED."""
    max_sessions: int = 4096
    session_idle_s: float = 600.0
    """A session opened by Reset (no stream owns it) is dropped after this long unused."""
    max_message_bytes: int = 1 << 20
    """Larger requests are refused with RESOURCE_EXHAUSTED."""
    max_request_batch: int = 1024
    """Most observations one Act request may carry."""
    token: str = ""
    """Shared secret: every call must send ``authorization: Bearer <token>``."""
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
    cpus: tuple[int, ...] = ()
    """Cores to pin the server process to (Linux); empty: any. Applied by :func:`serve_forever`."""
    grace_s: float = 5.0
    """On stop, how long requests in flight may take to finish."""
