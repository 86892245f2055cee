"""The policy contract: what a controller must agree on with an exported policy.

Robot users most often get these wrong: joint order, units, a dropped normalizer, an action
scale applied twice. The exporter writes the contract into the ONNX file's ``metadata_props``;
``flowrl inspect`` prints it; the server refuses clients that pinned a different hash.

The hash covers only what a client depends on (tensor names, shapes, layout, bounds, whether
the output is rescaled, normalization, control period, noise input): a model exported with
another number of flow steps or another solver keeps the hash, so it can be hot-swapped.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from flowrl_deploy.errors import FlowRLError, SpecError, printable
from flowrl_deploy.spec import policy_from_json, policy_problem
from flowrl_deploy.versions import version_problem

CONTRACT_KEY = "flowrl.contract"
CONTRACT_HASH_KEY = "flowrl.contract_hash"
PROVENANCE_KEY = "flowrl.provenance"
CONTRACT_VERSION_KEY = "flowrl.contract_version"
CONTRACT_VERSION = 1
"""The contract's version, written as ``flowrl.contract_version`` (a file without it is version 1). Bump it
when a field enters the hash (``_HASHED``) or a hashed field changes meaning: an older reader then says the
file is newer than it reads instead of finding the hash unmatched. A new unhashed field needs no bump
(older readers ignore it: :meth:`PolicyContract.from_dict`)."""
OBS_NORMALIZATIONS = ("none", "inside")
"""The ``obs_normalization`` values a contract may state: the caller sends raw observations."""
OBS_INPUT = "obs"
NOISE_INPUT = "noise"
ACTION_OUTPUT = "action"
# The control periods a contract may state besides 0 (none): 10 kHz to 0.1 Hz. Beyond either, a
# control loop at the policy's rate (`flowrl control` by default) would spin or seem to hang.
MIN_CONTROL_PERIOD_S = 1e-4
MAX_CONTROL_PERIOD_S = 10.0
MIN_HZ, MAX_HZ = 1 / MAX_CONTROL_PERIOD_S, 1 / MIN_CONTROL_PERIOD_S  # the rates a control loop may run at
MAX_TIMEOUT_S = 86_400
"""The longest call deadline or wait a client accepts (a day): gRPC takes one centuries away as already past."""
MAX_SESSION_ID = 256
"""Characters a session id may have: the server keeps each open session's id (for --session-idle-s
after a Reset), so ids of a megabyte each could take gigabytes; a client refuses a longer one when its
session is made."""

CONTRACT_HASH_FORM = re.compile(r"[0-9a-fA-F]{16}")
"""A contract hash as ``flowrl inspect`` and GetSpec give it: 16 hex digits (pinned in any case)."""


def checked_contract_hash(contract_hash: object, name: str = "contract_hash") -> str:
    """``contract_hash`` in lower case, or '' (no pin: '' or None); anything but 16 hex digits is refused
    naming ``name`` and showing what was given (printably, cut at 40 characters): the client checks a pin
    before it calls, the server each pin sent (it would otherwise only say that it does not serve it)."""
    if contract_hash is None or contract_hash == "":  # None: e.g. os.environ.get("FLOWRL_PIN") unset
        return ""
    if not (isinstance(contract_hash, str) and CONTRACT_HASH_FORM.fullmatch(contract_hash)):
        shown = printable(repr(contract_hash if not isinstance(contract_hash, str) else contract_hash[:100]), 40)
        raise FlowRLError(f"{name} must be 16 hex digits (the contract hash `flowrl inspect` prints), got {shown}")
    return contract_hash.lower()


# Fields a client depends on; changing any of them changes the hash.
_HASHED = (
    "obs_dim",
    "act_dim",
    "obs_layout",
    "action_names",
    "action_low",
    "action_high",
    "action_rescaled",
    "obs_normalization",
    "control_period_s",
    "deterministic",
    "input_names",
    "output_name",
)


@dataclass(frozen=True)
class PolicyContract:
    """The interface and sampling convention of one exported policy graph."""

    obs_dim: int
    act_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    obs_layout: tuple[tuple[str, int], ...] = ()
    action_names: tuple[str, ...] = ()
    action_rescaled: bool = True
    """True: the graph's output is already in [action_low, action_high]; apply it as is."""
    obs_normalization: str = "none"
    """'none', or 'inside' when the graph normalizes raw observations itself."""
    control_period_s: float = 0.0
    flow_steps: int = 1
    solver: str = "midpoint"
    t_schedule: str = "uniform"
    """t_k = k/N for k = 0..N-1; the midpoint solver also evaluates at t_k + 1/(2N)."""
    noise_convention: str = "a0 = clamp(noise, -1, 1) at t = 0; noise ~ N(0, I)"
    deterministic: bool = False
    """True: the graph has no noise input and starts from a0 = 0."""
    env_id: str = ""
    input_names: tuple[str, ...] = (OBS_INPUT, NOISE_INPUT)
    output_name: str = ACTION_OUTPUT

    def __post_init__(self) -> None:
        """Refuse a contract no exported graph can have (a hand-edited or corrupt file); each
        message names the field and starts with "policy contract"."""
        problem = policy_problem(self) or self._unhonoured()  # control_period_s's range included
        if problem is not None:
            raise SpecError(f"policy contract field {problem}")

    def _unhonoured(self) -> str | None:
        """A client-facing value this version's server and client cannot act on (a graph from another
        exporter, or a later version's): they send raw observations and apply the output as is."""
        if self.action_rescaled is not True:
            return (
                f"action_rescaled is {self.action_rescaled!r}: this flowrl-deploy serves and applies only graphs "
                "whose output is the action rescaled to its bounds"
            )
        if self.obs_normalization not in OBS_NORMALIZATIONS:
            return (
                f"obs_normalization is {self.obs_normalization!r}: this flowrl-deploy sends raw observations, so "
                f"it takes only {' or '.join(map(repr, OBS_NORMALIZATIONS))} (the graph normalizes them itself)"
            )
        return None

    def hash(self) -> str:
        """sha256 (hex, first 16 chars) of the client-facing fields, in canonical JSON."""
        data = self.to_dict()
        canonical = json.dumps({k: data[k] for k in _HASHED}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def differences(self, other: PolicyContract) -> list[str]:
        """Names and values of the client-facing fields that differ from ``other``."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{k}: {mine[k]!r} != {theirs[k]!r}" for k in _HASHED if mine[k] != theirs[k]]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["obs_layout"] = [list(x) for x in self.obs_layout]
        data["action_low"] = list(self.action_low)
        data["action_high"] = list(self.action_high)
        data["action_names"] = list(self.action_names)
        data["input_names"] = list(self.input_names)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> PolicyContract:
        """Build a contract from JSON data (an ONNX file's metadata, or a client's contract_json),
        with a clear error for a missing or impossible field.

        Fields this version does not know are ignored, unlike in a checkpoint's spec (our own file,
        where one is a misspelling): a contract may come from a newer flowrl-deploy (the exporter,
        the server or the client of another version), and a robot with an older client must still
        read a newer export's contract. Ignoring one cannot mislead a client: a new client-facing
        field would enter the hash, which :func:`contract_from_metadata` then finds unmatched."""
        return policy_from_json(cls, data, "policy contract", ignore_unknown=True)


def contract_to_metadata(contract: PolicyContract, provenance: dict[str, Any]) -> dict[str, str]:
    """The ONNX ``metadata_props`` entries that carry a contract and its provenance, in the order an
    export writes them: the provenance record last (:func:`contract_from_metadata` reads a file
    without it as cut off), as every release has written it."""
    return {
        CONTRACT_KEY: json.dumps(contract.to_dict(), sort_keys=True),
        CONTRACT_HASH_KEY: contract.hash(),
        CONTRACT_VERSION_KEY: str(CONTRACT_VERSION),
        PROVENANCE_KEY: json.dumps(provenance, sort_keys=True),
    }


def contract_from_metadata(metadata: dict[str, str]) -> tuple[PolicyContract, dict[str, Any]]:
    """Read back what :func:`contract_to_metadata` wrote; raise :class:`SpecError` if absent or altered."""
    if CONTRACT_KEY not in metadata:
        raise SpecError("the model carries no flowrl policy contract: was it exported by `flowrl export`?")
    version = metadata.get(CONTRACT_VERSION_KEY, str(CONTRACT_VERSION))  # a string, as all metadata
    number = int(version) if version.isascii() and version.isdigit() else version  # not '²', ' 1' or '-1'
    if problem := version_problem(number, CONTRACT_VERSION_KEY, CONTRACT_VERSION):
        raise SpecError(f"the model's {problem}")
    records = {}
    for key, what in ((CONTRACT_KEY, "policy contract"), (PROVENANCE_KEY, "provenance record")):
        try:
            records[key] = json.loads(metadata.get(key, "{}"))
        except json.JSONDecodeError as exc:
            raise SpecError(f"the model's {what} is not valid JSON: {exc}") from exc
    try:
        contract = PolicyContract.from_dict(records[CONTRACT_KEY])
    except SpecError as exc:  # its message starts with "policy contract"
        raise SpecError(f"the model file's {exc}") from exc
    provenance = records[PROVENANCE_KEY]
    if not isinstance(provenance, dict):
        raise SpecError("the model's provenance record is not a JSON object")
    stored = metadata.get(CONTRACT_HASH_KEY)
    if stored != contract.hash():
        unknown = sorted(set(records[CONTRACT_KEY]) - {f.name for f in fields(PolicyContract)})
        newer = (
            f"; it holds fields this version does not know ({', '.join(unknown)[:200]}): exported by a newer "
            "flowrl-deploy? upgrade flowrl-deploy"
            if unknown
            else ""
        )
        if stored is None:
            raise SpecError(f"the model has no contract hash ({CONTRACT_HASH_KEY} missing from its metadata){newer}")
        raise SpecError(f"the model's contract hash {stored!r} does not match its contract ({contract.hash()}){newer}")
    if PROVENANCE_KEY not in metadata:  # the graph and the contract come first in the file: such a cut still parses
        raise SpecError(
            f"the model has no provenance record ({PROVENANCE_KEY}), which `flowrl export` writes last in the "
            "file: a cut-off copy (one still being written)?"
        )
    return contract, provenance
