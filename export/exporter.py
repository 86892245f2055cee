"""`export_checkpoint`: checkpoint → verified, self-describing policy.onnx.

The file is written (atomically) only after verification passes, so a path that exists holds a
graph that matched the torch sampler.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowrl_deploy.atomic import write_atomic
from flowrl_deploy.checkpoint import (
    CHECKPOINTS_DIR,
    MODEL_FILE,
    RUN_CONFIG_FILE,
    RUN_OUTPUTS,
    check_output_path,
    file_sha256,
    load_checkpoint,
    read_spec,
    resolve_checkpoint,
)
from flowrl_deploy.contract import NOISE_INPUT, OBS_INPUT, PolicyContract, contract_to_metadata
from flowrl_deploy.errors import FlowRLError, counted, printable
from flowrl_deploy.export.config import ExportConfig
from flowrl_deploy.extras import install_command, missing_modules, naming_the_extra
from flowrl_deploy.spec import PolicySpec
from flowrl_deploy.versions import library_versions

if TYPE_CHECKING:  # onnx and torch load only when exporting, not for `flowrl inspect`
    from flowrl_deploy.export.verify import ParityReport


@dataclass(frozen=True)
class ExportReport:
    """What `export_checkpoint` wrote and how well it matched the torch sampler."""

    path: Path
    contract: PolicyContract
    contract_hash: str
    sha256: str
    """sha256 of the written ONNX file."""
    provenance: dict[str, Any]
    parity: ParityReport | None
    """None when verification was switched off."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "contract_hash": self.contract_hash,
            "sha256": self.sha256,
            "contract": self.contract.to_dict(),
            "provenance": self.provenance,
            "parity": self.parity.to_dict() if self.parity else None,
        }

    def summary(self) -> str:
        c = self.contract
        b = "B" if self.provenance["export_config"]["batch"] == "dynamic" else self.provenance["export_config"]["batch"]
        inputs = f"{OBS_INPUT}[{b},{c.obs_dim}]" + ("" if c.deterministic else f", {NOISE_INPUT}[{b},{c.act_dim}]")
        lines = [
            f"wrote {self.path} ({self.provenance['dtype']}, {c.solver} × {counted(c.flow_steps, 'step')}, "
            f"{'optimized' if self.provenance['export_config']['optimize'] else 'plain'} graph)",
            f"  inputs {inputs} -> {c.output_name}[{b},{c.act_dim}] (rescaled to the action bounds)",
            f"  contract hash {self.contract_hash}, file sha256 {self.sha256[:16]}…",
            "  " + (self.parity.summary() if self.parity else "verification SKIPPED (--no-verify)"),
        ]
        return "\n".join(lines)


def export_for_serving(checkpoint: Path, out: Path, steps: int | None) -> Path:
    """A server's exporter (:data:`flowrl_deploy.serve.model.Exporter`, which ``flowrl serve``
    passes; serve never imports torch itself): ``checkpoint`` to ``out`` at ``steps`` flow steps
    (None: its training flow steps). Without the export extra, a one-line :class:`FlowRLError`
    says what to install."""
    if missing := missing_modules("export"):
        raise FlowRLError(
            f"{checkpoint} is not an .onnx file; serving a checkpoint exports it first, which needs "
            f"{' and '.join(missing)}, not installed here: {install_command('export')}, "
            "or serve the .onnx file that `flowrl export` writes"
        )
    export_checkpoint(checkpoint, out, ExportConfig(steps=steps))
    return out


OUT_ARG = "out_path"
"""How the Python API's refusals name its output (the CLI's name it --out)."""
EXPORT_RULE = "an export may replace an earlier export, never another file"


def output_file(flag: str, path: str | os.PathLike[str], example: str) -> Path:
    """``path`` as the path of a file to write. One that ends in a slash names a folder, though
    ``Path`` drops the slash (``j/`` becomes the file ``j``): it is refused, also where the folder
    does not exist yet."""
    text = os.fspath(path)
    if text.endswith(tuple(filter(None, (os.sep, os.altsep)))):
        raise FlowRLError(
            f"{flag} {text} ends in a slash, so it names a folder; give a file path such as {text}{example}"
        )
    return Path(text)


def check_export_output(flag: str, path: Path, checkpoint_dir: Path, rename: str = OUT_ARG) -> None:
    """Refuse, before any work, an ONNX output that would destroy something (docs/export.md, "Output
    files, and what is refused"): a directory, a path that is not a regular file or lies inside a
    checkpoint, a file of the run being exported, or an existing file that is not a flowrl policy.
    ``flag`` names the path in the message, ``rename`` the argument to change (``--out`` in the CLI,
    ``out_path`` from Python)."""
    if path.is_dir():
        raise FlowRLError(f"{flag} {path} is a directory; give a file path such as {path / 'policy.onnx'}")
    check_output_path(flag, path)
    check_run_output(flag, path, checkpoint_dir)
    check_other_run_output(flag, path)
    check_replaceable(flag, path, rename)


def sweep_file_flag(flag: str, out: Path, path: Path) -> str:
    """How a refusal names the file ``path`` of a sweep written next to ``out`` (given as ``flag``)."""
    return flag if path == out else f"the sweep's file (from {flag} {printable(out)})"


def check_replaceable(flag: str, path: Path, rename: str = OUT_ARG) -> None:
    """Refuse an existing regular file at ``path`` that is not a policy ``flowrl export`` wrote (an
    ONNX model carrying a flowrl contract: :func:`~flowrl_deploy.onnxfile.unlike_a_flowrl_policy`),
    such as an observation's JSON, notes, an .npy or another project's model. An empty file holds
    nothing to lose, and a link is replaced, never written through."""
    from flowrl_deploy.onnxfile import unlike_a_flowrl_policy

    if path.is_symlink() or not path.is_file() or path.stat().st_size == 0:
        return
    if why := unlike_a_flowrl_policy(path):
        raise FlowRLError(
            f"{flag} {printable(path)} exists and {why}: {EXPORT_RULE}; give {rename} another name, or delete the "
            "file first if it may go"
        )


def export_checkpoint(
    checkpoint_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    config: ExportConfig | None = None,
) -> ExportReport:
    """Unroll the checkpoint's sampler into ``out_path``, verify it, and return the report.

    Raises :class:`FlowRLError` (a ``CheckpointError`` for unreadable checkpoints, a
    ``VerificationError`` for a graph that fails its checks); nothing is written then. An
    ``out_path`` that would destroy something (:func:`check_export_output`: such as an existing file
    that is not an earlier export) is refused before any work.
    """
    config = config or ExportConfig()
    # a base install says what to install, before any work
    with naming_the_extra("export", "flowrl_deploy.export.export_checkpoint"):
        from flowrl_deploy.export.graph import VelocityWeights, build_policy_graph
        from flowrl_deploy.export.verify import check_structure, verify_parity

        if config.verify:
            import torch  # noqa: F401  (verify_parity compares the graph with the torch sampler)

    out = output_file(OUT_ARG, out_path, "policy.onnx")
    checkpoint_dir = resolve_checkpoint(checkpoint_path)
    read_spec(checkpoint_dir)  # a broken checkpoint is named first, as it was before the outputs were checked
    check_export_output(OUT_ARG, out, checkpoint_dir)
    checkpoint = load_checkpoint(checkpoint_dir)
    spec = checkpoint.spec
    config = replace(config, steps=config.steps or spec.flow_steps, solver=config.solver or spec.solver)
    weights = VelocityWeights.from_actor(checkpoint.actor, spec, checkpoint.path)
    check_export_opset(config, no_verify="verify=False")
    model = build_policy_graph(
        weights,
        spec,
        steps=config.steps,
        solver=config.solver,
        deterministic=config.deterministic,
        optimize=config.optimize,
        batch=config.batch_dim,
        opset=config.opset,
        dtype=config.dtype,
    )
    contract = policy_contract(spec, config)
    provenance = {
        "source_checkpoint": str(checkpoint.path),
        "source_sha256": file_sha256(checkpoint.path / MODEL_FILE),
        "source_counters": checkpoint.counters,
        "versions": library_versions(),
        "opset": config.opset,
        "dtype": config.dtype,
        "export_config": config.to_dict(),
    }
    parity = None
    if config.verify:
        check_structure(model)
        parity = verify_parity(
            model,
            checkpoint.actor,
            spec,
            steps=config.steps,
            solver=config.solver,
            deterministic=config.deterministic,
            batch=config.batch_dim,
            dtype=config.dtype,
            samples=config.samples,
            seed=config.seed,
        )
        provenance["verification"] = parity.to_dict()
    model.producer_name = "flowrl-deploy"
    model.producer_version = provenance["versions"]["flowrl-deploy"]
    io = "obs -> action (deterministic: a0 = 0)" if config.deterministic else "obs, noise -> action"
    model.doc_string = f"FlowRL policy for {spec.env_id or 'an unnamed env'}: {io}"
    del model.metadata_props[:]
    for key, value in contract_to_metadata(contract, provenance).items():
        model.metadata_props.add(key=key, value=value)
    write_atomic(out, model.SerializeToString())
    return ExportReport(out, contract, contract.hash(), file_sha256(out), provenance, parity)


def check_export_opset(config: ExportConfig, no_verify: str) -> None:
    """Refuse an opset the export cannot write (:func:`~flowrl_deploy.export.graph.check_opset`), before
    any work. One that onnx knows but the installed onnxruntime does not run is refused naming
    ``no_verify`` (``--no-verify`` in the CLI), which writes it for a newer onnxruntime on the robot."""
    from flowrl_deploy.export.graph import check_opset

    try:
        check_opset(config.opset, runtime=config.verify)
    except FlowRLError as exc:
        if not config.verify:
            raise
        try:
            check_opset(config.opset, runtime=False)
        except FlowRLError:
            raise exc from None
        import onnx

        newest = onnx.defs.onnx_opset_version()
        raise FlowRLError(f"{exc}, or {no_verify} for up to {newest}, when the robot's onnxruntime runs it") from None


def check_run_output(flag: str, path: Path, checkpoint_dir: Path) -> None:
    """Refuse an output that is an existing file the training run being exported wrote (its
    config.json, metrics, TensorBoard events, checkpoints), links followed. The run is the
    directory holding checkpoints/ and config.json; a checkpoint outside one is its own run.
    Other files in a run directory, and an earlier export anywhere in it, may be overwritten."""
    checkpoint_dir = checkpoint_dir.resolve()
    folder = checkpoint_dir.parent
    in_run = folder.name == CHECKPOINTS_DIR and (folder.parent / RUN_CONFIG_FILE).is_file()
    run = folder.parent if in_run else checkpoint_dir
    target = path.resolve()
    if not (target.is_file() and target.is_relative_to(run)):
        return
    if (not in_run or target.relative_to(run).parts[0] in RUN_OUTPUTS) and not _is_an_export(target):
        raise FlowRLError(
            f"{flag} {path} is {target.relative_to(run)} of the run {run} being exported; write it elsewhere"
        )


def _is_an_export(path: Path) -> bool:
    """Whether ``path`` holds a policy ``flowrl export`` wrote: never a file a training run writes, so
    an earlier export inside a run's folders (or a project laid out like one) may be replaced."""
    from flowrl_deploy.onnxfile import unlike_a_flowrl_policy

    return not unlike_a_flowrl_policy(path)


def check_other_run_output(flag: str, path: Path) -> None:
    """Refuse an existing file that any training run wrote (its config.json, metrics, TensorBoard
    events, checkpoints), links followed, also where it is empty: a short run's empty metrics.jsonl
    replaced by a policy would take a resumed run's JSON lines. A run is a folder holding config.json
    and checkpoints/."""
    target = path.resolve()
    if not target.is_file():
        return
    for folder in target.parents:
        if (folder / RUN_CONFIG_FILE).is_file() and (folder / CHECKPOINTS_DIR).is_dir():
            if target.relative_to(folder).parts[0] in RUN_OUTPUTS and not _is_an_export(target):
                raise FlowRLError(
                    f"{flag} {path} is {target.relative_to(folder)} of the training run {folder}; write it elsewhere"
                )
            return


def policy_contract(spec: PolicySpec, config: ExportConfig) -> PolicyContract:
    """The contract of a graph exported from ``spec`` with ``config``, its steps and solver resolved
    (:func:`export_checkpoint` fills them in from the checkpoint)."""
    clip = f"{spec.noise_clip:g}"
    if config.deterministic:
        noise_convention = "no noise input: a0 = 0 at t = 0"
    else:
        noise_convention = f"a0 = clamp(noise, -{clip}, {clip}) at t = 0; noise ~ N(0, I)"
    return PolicyContract(
        obs_dim=spec.obs_dim,
        act_dim=spec.act_dim,
        action_low=spec.action_low,
        action_high=spec.action_high,
        obs_layout=spec.obs_layout,
        action_names=spec.action_names,
        action_rescaled=True,
        obs_normalization="none",
        control_period_s=spec.control_period_s,
        flow_steps=config.steps,
        solver=config.solver,
        t_schedule="uniform",
        noise_convention=noise_convention,
        deterministic=config.deterministic,
        env_id=spec.env_id,
        input_names=(OBS_INPUT,) if config.deterministic else (OBS_INPUT, NOISE_INPUT),
    )
