"""The export stage's one config, saved in the ONNX file's provenance so a policy file says how it
was made. Every field but ``samples`` (the verification's size, set from Python only) is a
`flowrl export` flag."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.fieldtypes import is_int, wrong_type
from flowrl_deploy.noise import run_seed_problem
from flowrl_deploy.spec import SOLVERS, PolicySpec, flow_steps_problem

DTYPES = ("fp32", "int8", "fp16")
MIN_OPSET = 13
"""The oldest opset exported (TensorRT 8.5 parses 13; below 17, which brought LayerNormalization,
the graph spells it out in basic ops)."""
LAYER_NORM_OPSET = 17
"""The oldest opset with LayerNormalization."""
MAX_BATCH = 65536
"""A fixed batch larger than this is verified with that many rows per call: gigabytes for nothing."""


@dataclass(frozen=True)
class ExportConfig:
    """How to unroll and verify the sampler."""

    steps: int | None = None
    """Flow steps N unrolled into the graph; None takes the checkpoint's training N. Any N ≥ 1
    integrates the velocity field (continuous in t), but a policy acts best at the N it was trained with."""
    solver: str | None = None
    """'midpoint' or 'euler'; None takes the checkpoint's solver."""
    opset: int = 18
    """ONNX opset of the main domain (>= MIN_OPSET; below LAYER_NORM_OPSET LayerNormalization is spelled
    out in basic ops, for older runtimes)."""
    batch: int | str = "dynamic"
    """'dynamic' for a free batch axis, or a fixed batch size from 1 to MAX_BATCH."""
    deterministic: bool = False
    """Export a graph without the noise input that starts from a0 = 0."""
    dtype: str = "fp32"
    """'fp32', 'int8' (the wide hidden layer as 8-bit blocks in one MatMulNBits node; looser parity) or
    'fp16' (the sampler in float16 behind a float32 interface, for GPU providers; looser parity)."""
    optimize: bool = True
    """Structural optimizations (observation share of layer 1 computed once, t folded into constants)."""
    verify: bool = True
    """Check the file (onnx.checker, shape inference) and its actions against the torch sampler."""
    samples: int = 100
    """At least this many random (obs, noise) pairs per verified batch size, in whole batches (100
    verifies 100, 100, 105 and 128 pairs at batch sizes 1, 2, 7 and 64)."""
    seed: int = 0
    """Seed of the verification inputs."""

    def __post_init__(self) -> None:
        if self.batch != "dynamic" and not (is_int(self.batch) and 1 <= self.batch <= MAX_BATCH):
            raise FlowRLError(f"--batch must be 'dynamic' or an integer from 1 to {MAX_BATCH}, got {self.batch!r}")
        wrong = wrong_type(self)
        if wrong is not None:
            name, expected = wrong
            raise FlowRLError(f"ExportConfig.{name} must be {expected}, got {getattr(self, name)!r}")
        problem = None if self.steps is None else flow_steps_problem("--steps", self.steps)
        if problem is not None:
            raise FlowRLError(problem)
        if self.solver is not None and self.solver not in SOLVERS:
            raise FlowRLError(f"unknown solver {self.solver!r}; choose one of {', '.join(SOLVERS)}")
        if self.opset < MIN_OPSET:
            raise FlowRLError(f"--opset must be >= {MIN_OPSET}, got {self.opset}")
        if self.dtype not in DTYPES:
            raise FlowRLError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.dtype == "fp16" and self.opset < LAYER_NORM_OPSET:
            raise FlowRLError(
                f"--dtype fp16 needs --opset {LAYER_NORM_OPSET} or newer, got {self.opset}: below it "
                "LayerNormalization is spelled out in basic ops, whose squares overflow float16 (docs/export.md, "
                "--dtype fp16)"
            )
        if self.samples < 1:
            raise FlowRLError(f"samples must be >= 1, got {self.samples}")
        problem = run_seed_problem("--seed", self.seed)
        if problem is not None:
            raise FlowRLError(problem)

    @property
    def batch_dim(self) -> int | None:
        """The fixed batch size, or None for a dynamic batch axis."""
        return None if self.batch == "dynamic" else int(self.batch)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def steps_note(trained: int, steps: int) -> str | None:
    """The one line `flowrl export` prints on stderr when it unrolls ``steps`` flow steps of a policy
    trained with ``trained`` (None when they are equal): another N samples a different policy, whose
    return may be far lower (docs/export.md, "Choosing N"), so it names the sweep that compares both."""
    if steps == trained:
        return None
    both = ",".join(str(n) for n in sorted((trained, steps)))
    return (
        f"note: this checkpoint was trained with N={trained} flow steps; --steps {steps} samples a different "
        f"policy, whose return may be lower: compare them with --steps {both} --report --episodes 5 "
        "(docs/export.md, Choosing N)"
    )


def sampler_notes(spec: PolicySpec, steps: list[int], solver: str | None) -> list[str]:
    """The notes `flowrl export` prints on stderr when it samples another policy than the one trained
    (``spec``'s): ``steps`` (the N exported) that leave out the training N, or another ``solver``
    (None: the checkpoint's). Each is one line naming what to compare (docs/export.md, Choosing N)."""
    notes = []
    if len(steps) == 1:
        notes.append(steps_note(spec.flow_steps, steps[0]))
    elif spec.flow_steps not in steps:
        listed = ",".join(str(n) for n in steps)
        notes.append(
            f"note: this checkpoint was trained with N={spec.flow_steps} flow steps, which --steps {listed} leaves "
            f"out: each row samples a different policy, whose return may be lower; add {spec.flow_steps} to the "
            "list to compare (docs/export.md, Choosing N)"
        )
    if solver is not None and solver != spec.solver:
        notes.append(
            f"note: this checkpoint was trained with the {spec.solver} solver; --solver {solver} samples a "
            "different policy, whose return may be lower: compare --report --episodes 5 with and without "
            "--solver (docs/export.md, Choosing N)"
        )
    return [note for note in notes if note is not None]
