"""The served model: an :class:`OnnxPolicy` with a version, loaded, checked and warmed up, and the
:class:`ModelSlot` that loads, reloads and exports it."""

from __future__ import annotations

import functools
import hashlib
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flowrl_deploy.affinity import normal_scheduling
from flowrl_deploy.checkpoint import checkpoint_identity
from flowrl_deploy.errors import FlowRLError, printable
from flowrl_deploy.onnxfile import is_onnx_path, read_policy_file
from flowrl_deploy.ort import CUDA, ModelLoadError, onnxruntime_text
from flowrl_deploy.policy import OnnxPolicy
from flowrl_deploy.serve.cuda_graphs import CudaGraphs, bucket_of, buckets_up_to, on_cuda_thread
from flowrl_deploy.serve.errors import ContractMismatch, DeadlineExpired, NotReady
from flowrl_deploy.serve.reload import reload_target

if TYPE_CHECKING:
    from flowrl_deploy.contract import PolicyContract
    from flowrl_deploy.serve.config import ServeConfig
    from flowrl_deploy.serve.metrics import Metrics

log = logging.getLogger("flowrl.serve")

WARMUP_RUNS = 5
GRAPH_ATOL, GRAPH_RTOL = 1e-5, 1e-4
"""How close the CUDA graphs' actions must be to the session's (``flowrl export``'s parity bounds)."""

Run = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]
"""Actions for a batch of observations and its noise (None: a deterministic policy)."""
Exporter = Callable[[Path, Path, int | None], Path]
"""Exports a checkpoint for serving: ``(checkpoint, out, steps)`` writes ``out`` at ``steps`` flow
steps (None: the checkpoint's training flow steps) and returns the file to load. Serve never
imports the exporter (torch) itself: whoever builds the server passes one (``flowrl serve`` does)."""


class ServedModel:
    """One loaded model, not changed once served (its warm-up settles it; a CUDA graph's replay that fails
    later drops the graphs): a reload builds a new one and swaps the reference."""

    def __init__(
        self,
        path: Path,
        policy: OnnxPolicy,
        generation: int,
        sha256: str,
        graphs: CudaGraphs | None = None,
        *,
        on_the_cuda_thread: bool = False,
    ) -> None:
        self.path = path
        self.policy = policy
        self.sha256 = sha256
        """Of the file's bytes: a reload of the very bytes served swaps nothing."""
        self.version = f"v{generation}-{sha256[:10]}"
        self.contract = policy.contract
        self.act_dim = policy.contract.act_dim
        self.obs_dim = policy.contract.obs_dim
        self.graphs: CudaGraphs | None = None
        """The CUDA graphs that run the calls; None: the policy's session runs them."""
        self._graphs_to_try = graphs
        """CUDA graphs that :meth:`warm_up` captures, then keeps only where they give the session's actions, faster."""
        on_the_cuda_thread = on_the_cuda_thread or graphs is not None
        self._session_run = functools.partial(on_cuda_thread, policy.run) if on_the_cuda_thread else policy.run
        """The session's run: on the CUDA thread in a server that captures CUDA graphs, whether this
        model has any or not (:mod:`~flowrl_deploy.serve.cuda_graphs`: a capture fails while another
        thread makes a CUDA call)."""
        self._dropping = threading.Lock()

    def run(self, obs: np.ndarray, noise: np.ndarray | None) -> tuple[np.ndarray, int]:
        """Actions for a batch and the onnxruntime time in microseconds."""
        start = time.perf_counter_ns()
        graphs = self.graphs
        if graphs is None:
            action = self._session_run(obs, noise)  # checked when decoded (obs) and drawn (noise)
        else:
            try:
                action = graphs.run(obs, noise)
            except Exception as exc:  # onnxruntime's own untyped errors
                self._drop_graphs(graphs, exc)
                action = self._session_run(obs, noise)  # a CUDA error that sticks fails here too: raised
        return action, (time.perf_counter_ns() - start) // 1000

    def _drop_graphs(self, graphs: CudaGraphs, exc: Exception) -> None:
        """Serve from the session from now on: a replay failed after the warm-up kept the graphs. The
        session's run is right there, and a robot's call must get an action whenever one can be computed."""
        with self._dropping:
            if self.graphs is not graphs:  # another call's failure dropped them first, and said so
                return
            self.graphs = None
        log.warning(
            "%s: a CUDA graph's replay failed (%s): serving %s without CUDA graphs from now on",
            printable(str(self.path)),
            onnxruntime_text(exc),
            self.version,
        )

    def warm_up(self, batches: tuple[int, ...], graph_rows: int = 1) -> str:
        """Run every batch size once or more so that the first client call is not the slow one; return
        how fast a batch-1 run was, for the load's log line (how the providers compare for one robot: a
        GPU's call at batch 1 can be slower than the CPU's). CUDA graphs to try are captured for every
        bucket up to the largest of ``batches`` and ``graph_rows`` (the most rows one call can have: no
        call captures one later), and kept only where the capture works, their actions are the
        session's and they are faster; otherwise a warning says why they are not used.

        A run that fails is where a GPU provider's errors first show (no kernel for the device, out of
        memory, an old driver): it raises :class:`ModelLoadError` naming the file and the providers."""
        candidate = self._graphs_to_try or self.graphs  # a second warm-up checks the graphs kept again
        self.graphs = self._graphs_to_try = None
        try:
            plain_us = self._fastest_batch_1(self._session_run, sorted({1, *batches}))
        except Exception as exc:  # onnxruntime's own untyped errors
            providers = self.policy.session.get_providers()
            hint = "; serve it on the CPU with --providers cpu" if providers != ["CPUExecutionProvider"] else ""
            raise ModelLoadError(
                f"cannot run {self.path} on {', '.join(providers)}: {onnxruntime_text(exc)}{hint}"
            ) from exc
        plain = f"a batch-1 call in {plain_us} µs at warm-up"
        if candidate is None:
            return plain
        buckets = buckets_up_to(max(*batches, graph_rows))
        try:
            graphed_us = self._fastest_batch_1(candidate.run, buckets, runs=1)  # a first run captures its graph
            problem = self._graphs_differ(candidate, buckets)
        except Exception as exc:  # onnxruntime's own untyped errors
            problem = f"onnxruntime could not capture them ({onnxruntime_text(exc)})"
        else:
            if not problem and graphed_us >= plain_us:
                problem = f"they are no faster ({graphed_us} µs a batch-1 call, {plain_us} µs without)"
        if problem:
            log.warning("%s: serving without CUDA graphs: %s", printable(str(self.path)), problem)
            return plain
        self.graphs = candidate
        return f"CUDA graphs; a batch-1 call in {graphed_us} µs at warm-up, {plain_us} µs without graphs"

    def _fastest_batch_1(self, run: Run, batches: Iterable[int], runs: int = WARMUP_RUNS) -> int:
        """``run`` ``runs`` times at each of ``batches`` (zeros), :data:`WARMUP_RUNS` times at batch 1;
        the fastest batch-1 run in µs (its errors raised: no fallback at warm-up). Fewer runs of the larger
        batches keep a reload's warm-up short on a GPU, where live calls queue behind it on the CUDA thread."""
        batch_1_us = []
        for batch in batches:
            for _ in range(WARMUP_RUNS if batch == 1 else runs):
                noise = np.zeros((batch, self.act_dim), np.float32) if self.policy.takes_noise else None
                start = time.perf_counter_ns()
                run(np.zeros((batch, self.obs_dim), np.float32), noise)
                if batch == 1:
                    batch_1_us.append((time.perf_counter_ns() - start) // 1000)
        return min(batch_1_us)

    def _graphs_differ(self, graphs: CudaGraphs, buckets: tuple[int, ...]) -> str:
        """Why the graphs' actions are not the session's, at the largest batch of each bucket and one row
        fewer ('' when they are, to :data:`GRAPH_ATOL`/:data:`GRAPH_RTOL`): a replay must never serve
        actions that the export's verification did not vouch for. The session runs the bucket's padded
        rows too, so that both pick the same kernels (float16 graphs round differently at other sizes)."""
        rng = np.random.default_rng(0)
        for rows in sorted({1, *buckets, *(b - 1 for b in buckets if b > 2)}):
            size = bucket_of(rows)
            obs = rng.standard_normal((size, self.obs_dim)).astype(np.float32)
            noise = rng.standard_normal((size, self.act_dim)).astype(np.float32) if self.policy.takes_noise else None
            obs[rows:] = 0
            if noise is not None:
                noise[rows:] = 0
            graphed = graphs.run(obs[:rows], None if noise is None else noise[:rows])
            plain = self._session_run(obs, noise)[:rows]
            if not np.allclose(graphed, plain, atol=GRAPH_ATOL, rtol=GRAPH_RTOL):
                error = float(np.max(np.abs(graphed - plain)))
                return f"their actions differ from the session's by up to {error:.3g} at a batch of {rows}"
        return ""


def resolve_onnx(model: str, workdir: Path, steps: int | None, export_checkpoint: Exporter | None) -> Path:
    """``model`` itself if it is an ONNX file; a checkpoint is exported into ``workdir`` first with
    ``export_checkpoint``, at ``steps`` flow steps (None: the checkpoint's training flow steps)."""
    path = Path(model)
    if not path.exists():
        raise FlowRLError(f"model not found: {model}")
    if is_onnx_path(path):
        return path
    if export_checkpoint is None:
        raise FlowRLError(
            f"{model} is not an .onnx file; serving a checkpoint exports it first, and this server was built "
            "without an exporter (PolicyServer(config, export_checkpoint=...), as `flowrl serve` does): "
            "serve the .onnx file that `flowrl export` writes"
        )
    return export_checkpoint(path, workdir / "policy.onnx", steps)


def read_model_file(path: Path) -> tuple[bytes, str]:
    """The bytes of ``path`` and their sha256, read before any onnxruntime session is built so
    that a reload of the very bytes served costs a hash, not a model load."""
    data = read_policy_file(path)  # a pipe or device is refused, never read: reading one blocks
    return data, hashlib.sha256(data).hexdigest()


def load_model(
    path: Path,
    data: bytes,
    sha256: str,
    generation: int,
    *,
    providers: list[str] | None,
    threads: int,
    cuda_graphs: bool = False,
) -> ServedModel:
    """Load the bytes ``data`` read from ``path``; the version is ``v<generation>-<sha256 prefix>``.
    With ``cuda_graphs``, a model that runs on the CUDA provider with a dynamic batch axis gets
    :class:`CudaGraphs` too, which :meth:`ServedModel.warm_up` keeps or drops, and every model on the
    CUDA provider runs on the CUDA thread, graphs or not."""
    policy = OnnxPolicy(data, providers=providers, threads=threads, name=str(path))
    graphs = None
    on_cuda = cuda_graphs and policy.session.get_providers()[0] == CUDA
    if on_cuda and policy.fixed_batch is None:
        try:
            graphs = CudaGraphs.for_policy(data, policy, threads=threads, name=str(path))
        except FlowRLError as exc:  # ModelLoadError's "cannot load ONNX model": but it is served, without graphs
            reason = str(exc).split(": ", 1)[-1] if isinstance(exc, ModelLoadError) else str(exc)
            log.warning("%s: serving without CUDA graphs: onnxruntime refused them (%s)", printable(str(path)), reason)
    return ServedModel(path, policy, generation, sha256, graphs, on_the_cuda_thread=on_cuda)


def _export_note(provenance: dict[str, object], source: str) -> str:
    """', int8' for a file exported with a reduced ``--dtype`` ('' for fp32), for the load line; a file
    exported with ``--no-verify`` is warned of, as its actions were never checked."""
    export_config = provenance.get("export_config")
    if isinstance(export_config, dict) and export_config.get("verify") is False:
        log.warning(
            "%s was exported with --no-verify: its actions were never checked against the torch sampler",
            printable(source),
        )
    dtype = provenance.get("dtype")
    return f", {printable(dtype, 16)}" if isinstance(dtype, str) and dtype != "fp32" else ""


def check_compatible(current: ServedModel, new: ServedModel) -> None:
    """Refuse a replacement whose client-facing contract differs from the served one."""
    if new.contract.hash() != current.contract.hash():
        diff = "; ".join(current.contract.differences(new.contract))
        raise ContractMismatch(f"{new.path} does not match the served policy contract ({diff})")


class ModelSlot:
    """The served model's lifecycle: :meth:`load` loads, checks, warms up and swaps in a model (one
    reload at a time; calls in flight keep the model they hold), exporting a checkpoint on the fly with
    the :data:`Exporter` into a work folder of its own, which :meth:`close` removes.

    ``check_first`` checks the first model's contract before it is served (the servicer refuses a
    ``--max-message-bytes`` too small for its requests); a reload keeps that contract."""

    def __init__(
        self,
        config: ServeConfig,
        metrics: Metrics,
        export_checkpoint: Exporter | None = None,
        check_first: Callable[[PolicyContract], None] | None = None,
    ) -> None:
        self.config = config
        self._metrics = metrics
        self._check_first = check_first
        self._exporter = None if export_checkpoint is None else functools.partial(self._export, export_checkpoint)
        self.work_folder: Path | None = None
        """Where checkpoints are exported (made by the first export, removed by :meth:`close`), or None."""
        self._work_removed = False
        self._providers = list(config.providers) or None
        self.model: ServedModel | None = None
        """The model served now (None until the first load); swapped as a whole, never changed in place."""
        self._generation = 0
        self._steps = config.steps
        """The N checkpoints are exported at: ``--steps``, else the N of the model served now."""
        self.load_lock = threading.Lock()
        """Held by a :meth:`load` from its start to its swap: one load at a time."""
        self._exported_from: tuple[str, str, str] | None = None
        """The checkpoint the served model was exported from (:func:`checkpoint_identity`), None for
        an ONNX file: a reload of the same checkpoint swaps nothing, exporting nothing."""

    def load(
        self,
        requested: str = "",
        still_wanted: Callable[[], bool] | None = None,
        wait_s: float | None = None,
        by: str = "--watch",
    ) -> tuple[str, str]:
        """Load, check, warm up and swap in a model; return (new version, previous version).

        ``requested`` is the path a Reload caller sent, confined by
        :func:`~flowrl_deploy.serve.reload.reload_target` ('': the served path, as when the server
        starts and for ``--watch``). ``still_wanted`` (a Reload's caller still waiting for the
        answer) is asked once the new model is ready: if it says no,
        the reload is abandoned (:class:`DeadlineExpired`) and the old model keeps serving, so that
        a caller told DEADLINE_EXCEEDED was not silently obeyed. A reload (a model is served
        already) that fails is counted (``flowrl_reload_failures_total``); one of the very bytes
        served now changes nothing and answers the served version twice. ``requested`` is checked
        before waiting for a reload in progress: a forbidden path is refused at once (PERMISSION_DENIED),
        not after that reload, or with DEADLINE_EXCEEDED when the caller's deadline passed meanwhile.
        A reload in progress is waited for at most ``wait_s`` (None: as long as it takes), so that
        callers who gave up do not pile up, each holding a handler thread, behind a slow one.
        ``by`` names who asked, for the log of a reload: ``Reload from <the caller's address>``, or
        ``--watch``, whose watcher calls this without arguments.
        """
        try:
            source = str(reload_target(self.config.model, requested)) if requested else self.config.model
            timeout = -1 if wait_s is None else min(max(wait_s, 0.0), threading.TIMEOUT_MAX)  # gRPC's "none" is huge
            if not self.load_lock.acquire(timeout=timeout):
                raise DeadlineExpired(
                    f"reload abandoned, still serving {self.current().version}: another reload was still in "
                    "progress when the caller's deadline passed"
                )
            try:
                with normal_scheduling():  # under --rt-priority, a reload must not hold a core the calls need
                    return self._swap(source, self.model, still_wanted, by)
            finally:
                self.load_lock.release()
        except Exception:
            if self.model is not None:  # a reload, not the first load
                self._metrics.record_reload_failure()
            raise

    def _swap(
        self, source: str, previous: ServedModel | None, still_wanted: Callable[[], bool] | None, by: str
    ) -> tuple[str, str]:
        """:meth:`load` of ``source``, under its lock."""
        exported_from = self._checkpoint_of(source)
        if previous is not None and exported_from is not None and exported_from == self._exported_from:
            return self._unchanged(source, previous, by)  # the checkpoint served now: no export needed
        path = resolve_onnx(source, Path(f"gen{self._generation + 1}"), self._steps, self._exporter)
        if exported_from is not None and self._checkpoint_of(source) != exported_from:
            exported_from = None  # another checkpoint landed during the export: which one it read is unknown
        data, sha256 = read_model_file(path)
        self._drop_export(path)
        if previous is not None and sha256 == previous.sha256:  # e.g. `touch`: nothing to swap
            self._exported_from = exported_from
            return self._unchanged(source, previous, by)
        generation = self._generation + 1
        # named by its source, not its export: a refusal names the checkpoint the caller knows
        new = load_model(
            Path(source),
            data,
            sha256,
            generation,
            providers=self._providers,
            threads=self.config.threads,
            cuda_graphs=self.config.cuda_graphs,
        )
        if previous is not None:
            check_compatible(previous, new)
        elif self._check_first is not None:  # a reload keeps the contract, and with it the requests
            self._check_first(new.contract)
        warm_up = new.warm_up((1, self.config.max_batch), graph_rows=self.config.max_request_batch)
        if previous is not None and still_wanted is not None and not still_wanted():
            raise DeadlineExpired(
                f"reload abandoned, still serving {previous.version}: the caller stopped waiting (its "
                f"deadline passed, or it cancelled) before {source} was loaded and warmed up"
            )
        self._generation += 1
        self.model = new  # atomic reference swap: calls in flight keep the model they hold
        self._exported_from = exported_from
        if self.config.steps is None:  # checkpoints exported by later reloads keep the served N
            self._steps = new.contract.flow_steps
        providers = f"{', '.join(new.policy.session.get_providers())}; {warm_up}"
        steps = f"N={new.contract.flow_steps} flow steps{_export_note(new.policy.provenance, source)}"
        if previous is not None:
            self._metrics.record_reload()
            shown = printable(source)
            log.info("reloaded %s by %s: %s -> %s (%s, %s)", shown, by, previous.version, new.version, steps, providers)
        else:
            log.info("loaded %s as %s (%s, %s)", printable(source), new.version, steps, providers)
        return new.version, previous.version if previous else ""

    def _checkpoint_of(self, source: str) -> tuple[str, str, str] | None:
        """:func:`checkpoint_identity` of a checkpoint ``source`` (exported at the served N: a reload
        keeps it), None for an ONNX file or one that cannot be read (its export says why)."""
        if self._exporter is None or is_onnx_path(Path(source)):
            return None
        try:
            return checkpoint_identity(source)
        except (FlowRLError, OSError):
            return None

    def _unchanged(self, source: str, previous: ServedModel, by: str) -> tuple[str, str]:
        """A reload of the model served now: nothing swapped, said at most once a minute (a client calling
        Reload in a loop wrote a line each time)."""
        if (more := self._metrics.held_back_note("nothing to reload")) is not None:
            held = (printable(source), previous.version, by, more)
            log.info("%s holds the model served now (%s): nothing to reload (by %s)%s", *held)
        return previous.version, previous.version

    def _drop_export(self, path: Path) -> None:
        """Remove a checkpoint's export once its bytes are read (the model loads from them): each
        reload's stayed until the stop, so a --watch server of a training run filled its TMPDIR."""
        if self.work_folder is not None and path.is_relative_to(self.work_folder):
            shutil.rmtree(path.parent, ignore_errors=True)

    def _export(self, export_checkpoint: Exporter, checkpoint: Path, out: Path, steps: int | None) -> Path:
        """``export_checkpoint``, writing ``out`` (relative) into :attr:`work_folder`, made now if need be: an
        .onnx file is served without one, so a read-only file system with no writable TMPDIR serves it."""
        if self._work_removed:  # a --watch reload after the stop removed the folder
            raise FlowRLError(f"the server has stopped: {checkpoint} is not exported")
        if self.work_folder is None:
            try:
                self.work_folder = Path(tempfile.mkdtemp(prefix="flowrl-serve-"))
            except OSError as exc:
                raise FlowRLError(
                    f"serving a checkpoint exports it to a temporary directory, and none is writable "
                    f"({exc.strerror or exc}): set TMPDIR to a writable folder (in a container, mount one, "
                    "e.g. an emptyDir, at /tmp), or serve the .onnx file `flowrl export` writes"
                ) from None
        try:
            exported = export_checkpoint(checkpoint, self.work_folder / out, steps)
        finally:
            # a --watch reload's export may outlive the stop, which removed the folder it writes into
            stopped = self._work_removed
            if stopped:
                self.close()
        if stopped:
            raise FlowRLError(f"the server stopped while {checkpoint} was exported: it is not loaded")
        return exported

    def close(self) -> None:
        """Remove the work folder, if a checkpoint was exported (the models loaded from it stay in memory),
        and what an export running now writes into it once done."""
        self._work_removed = True  # before the removal: an export that ends meanwhile removes it again
        if self.work_folder is not None:
            shutil.rmtree(self.work_folder, ignore_errors=True)

    def current(self) -> ServedModel:
        """The model served now; refused (UNAVAILABLE) while the first one loads."""
        model = self.model
        if model is None:
            raise NotReady("the model is still loading; retry when health reports SERVING")
        return model
