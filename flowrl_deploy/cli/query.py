"""`flowrl query`: ask a running server for the action of one observation (or a batch)."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from flowrl_deploy.cli._common import Connection, connects, finite, user_errors
from flowrl_deploy.errors import FlowRLError, counted, printable

if TYPE_CHECKING:
    import numpy as np

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"  # np.savez writes a zip archive
MAX_OBS_FILE_BYTES = 16 << 20
"""More than any observation batch a server takes (its messages are 1 MiB by default)."""
STDIN = Path("-")
"""``--obs-file -``: standard input (Windows has no ``/dev/stdin``); a file called - needs its full path."""
NOT_A_LIST = "must be a list [..] or a batch [[..], ..]"
TOO_DEEP = "got lists nested deeper than a batch"


def read_observation(obs: str, obs_file: Path | None) -> np.ndarray:
    """The float32 observation(s) of ``--obs`` (JSON) or ``--obs-file`` (JSON, or one array saved
    with ``np.save``; ``-`` reads standard input). Only real numbers are taken: booleans, strings,
    complex numbers (whose imaginary part a cast would drop), structured records, NaN, infinity and
    numbers beyond float32 are refused, naming the flag and file."""
    if obs_file is None:
        return _finite_float32(_from_json(obs, "--obs"), "--obs")
    if obs_file == STDIN:
        source = "--obs-file - (standard input)"
        data = _read_stdin(source)
    else:
        source = f"--obs-file {obs_file}"
        data = _read_file(obs_file, source)
    if len(data) > MAX_OBS_FILE_BYTES:
        raise FlowRLError(f"{source} holds more than {MAX_OBS_FILE_BYTES >> 20} MiB, far more than observations")
    if data.startswith(NPY_MAGIC):
        values = _from_npy(data, source)
    elif data.startswith(ZIP_MAGIC):
        raise FlowRLError(f"{source} is a zip archive (an .npz?); save one array with np.save (.npy), or write JSON")
    elif obs_file.suffix.lower() == ".npy":
        raise FlowRLError(f"{source} is not a .npy file (no NumPy header); a JSON observation needs another name")
    else:
        values = _from_json(data, source)
    return _finite_float32(values, source)


def _is_terminal(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):  # closed, or not a file
        return False


def _read_stdin(source: str) -> bytes:
    """Standard input's bytes (at most one more than :data:`MAX_OBS_FILE_BYTES`), refused if empty."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # pythonw.exe, a service: sys.stdin is None
        raise FlowRLError("--obs-file -: this process has no standard input; give the observation's file")
    if _is_terminal(sys.stdin):  # typed without a pipe: it waits for the end of input, which a user may not know
        end = "Ctrl-Z, then Enter" if os.name == "nt" else "Ctrl-D"
        print(f"reading the observation from standard input (JSON); end it with {end}", file=sys.stderr, flush=True)
    try:
        data = stream.read(MAX_OBS_FILE_BYTES + 1)  # bounded: a pipe may never end
    except OSError as exc:
        raise FlowRLError(f"cannot read {source}: {exc.strerror or exc}") from None
    if not data.strip():
        raise FlowRLError("--obs-file -: standard input is empty; pipe the observation in (JSON or an .npy array)")
    return data


def _read_file(obs_file: Path, source: str) -> bytes:
    if not obs_file.exists():
        raise FlowRLError(f"{source} does not exist")
    mode = obs_file.stat().st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):  # a pipe (`--obs-file /dev/stdin`) is fine
        raise FlowRLError(f"{source} is not a regular file or a pipe")
    try:
        with open(obs_file, "rb") as f:
            return f.read(MAX_OBS_FILE_BYTES + 1)  # bounded: a pipe may never end
    except OSError as exc:
        raise FlowRLError(f"cannot read {source}: {exc.strerror or exc}") from None


def _from_npy(data: bytes, source: str) -> np.ndarray:
    import numpy as np

    from flowrl_deploy.codec import check_number_dtype

    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # object arrays, a truncated file
        raise FlowRLError(f"{source} is not a readable .npy array ({exc})") from None
    check_number_dtype(array.dtype, name=source)
    if array.ndim == 0:
        raise FlowRLError(f"{source} {NOT_A_LIST}, got a number (an array of shape ())")
    if array.ndim > 2:
        raise FlowRLError(f"{source} {NOT_A_LIST}, {TOO_DEEP} (an array of shape {list(array.shape)})")
    return array


def _json_kind(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return "a number"
    return "a string" if isinstance(value, str) else "an object {..}"


def _is_number(word: str) -> bool:
    """Whether ``word`` is one JSON number."""
    try:
        value = json.loads(word)
    except ValueError:
        return False
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _not_json(text: str | bytes, source: str, exc: ValueError) -> str:
    """Why ``text`` is not the JSON of an observation, in the user's terms: values without brackets
    (``0,0,0``), numbers separated by spaces (``0.1 0.2``), a number with more digits than Python
    converts (its own advice is not the user's)."""
    if "integer string conversion" in str(exc):
        return f"{source} holds an integer of more than {sys.get_int_max_str_digits()} digits, no observation's value"
    shown = text if isinstance(text, str) else text.decode("utf-8", "replace")
    if str(exc).startswith("Extra data") and not shown.lstrip().startswith("["):
        if "," in shown:
            return f"{source} is not JSON: wrap the values in brackets: [{printable(shown.strip(), 80)}]"
        if all(_is_number(word) for word in shown.split()):
            return f"{source} is not JSON: write the values as a list: [{printable(', '.join(shown.split()), 80)}]"
    return f"cannot read the observation: {source} is not JSON ({exc})"


def _wrong_size(details: str, array: np.ndarray, source: str) -> str | None:
    """The server's refusal of an observation of the wrong size ('obs: shape [4] does not match [5] or
    [B, 5]'; servers before c129d1f wrote [1, 4] for a 1-D [4]), counted in values as given; None for
    another refusal."""
    match = re.search(r"does not match \[(\d+)\] or \[B, \1\]", details)
    if match is None or array.ndim not in (1, 2):
        return None
    values = array.shape[-1]
    given = counted(values, "value") if array.ndim == 1 else f"rows of {counted(values, 'value')}"
    return f"{source} gives {given}, the served policy takes {match[1]} (its obs_dim)"


def _from_json(text: str | bytes, source: str) -> np.ndarray:
    import numpy as np

    try:
        values = json.loads(text)
    except RecursionError:
        raise FlowRLError(f"cannot read the observation: {source} nests its lists too deeply") from None
    except ValueError as exc:  # a JSONDecodeError or a UnicodeDecodeError
        raise FlowRLError(_not_json(text, source, exc)) from None
    if not isinstance(values, list):  # the server would answer only "obs: missing shape"
        raise FlowRLError(f"{source} {NOT_A_LIST}, got {_json_kind(values)}")
    # Refused before numpy sees it: NumPy 2 nests up to 64 dimensions and then fails past 32 in `.flat`.
    if any(isinstance(row, list) and any(isinstance(leaf, list) for leaf in row) for row in values):
        raise FlowRLError(f"{source} {NOT_A_LIST}, {TOO_DEEP}")
    leaves = np.asarray(values, dtype=object)  # at most 2-D; rows of different lengths stay lists
    for leaf in leaves.flat:
        if isinstance(leaf, list):
            raise FlowRLError(f"{source} has rows of different lengths; a batch is [[..], [..]] of equal rows")
        if isinstance(leaf, bool) or not isinstance(leaf, (int, float)):
            raise FlowRLError(f"{source} holds {json.dumps(leaf)[:40]}, not a number")
    return leaves


def _finite_float32(values: np.ndarray, source: str) -> np.ndarray:
    import numpy as np

    try:
        with np.errstate(over="ignore"):
            array = values.astype(np.float32)
        finite = bool(np.isfinite(array).all())
    except OverflowError:  # a JSON integer too large for any float
        finite = False
    if not finite:
        raise FlowRLError(f"{source} holds NaN, infinite or beyond-float32 values")
    return array


@user_errors
@connects
def query(
    *,
    obs: Annotated[str, typer.Option(help="Observation as JSON: [..] or a batch [[..], ..].")] = "",
    obs_file: Annotated[
        Path | None,
        typer.Option(help="A JSON file holding the observation(s), or a .npy array (np.save); - reads stdin."),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="Seed of the policy noise, 0 to 2**64-1; default: unseeded (each call draws anew)."),
    ] = None,
    contract_hash: Annotated[str, typer.Option(help="Pin the policy contract (hash from `flowrl inspect`).")] = "",
    connection: Connection,
    timeout: Annotated[float, typer.Option(parser=finite, help="Seconds to wait.")] = 5.0,
) -> None:
    """Print the served policy's action(s) for an observation, as JSON."""
    import grpc

    from flowrl_deploy.client import (
        ContractMismatchError,
        ServiceError,
        checked_contract_hash,
        checked_seed,
        pin_mismatch,
    )
    from flowrl_deploy.codec import decode

    if bool(obs) == (obs_file is not None):
        raise FlowRLError("pass exactly one of --obs or --obs-file")
    array = read_observation(obs, obs_file)
    checked_seed(seed, "--seed")
    contract_hash = checked_contract_hash(contract_hash, "--contract-hash")
    with connection.client(timeout) as client:
        # checked here first, so that a refusal says what a command line can do (the server's own words
        # suggest pinning the whole contract, which only the Python client can)
        if contract_hash and (why := pin_mismatch(client.spec(), contract_hash, target=connection.server)):
            raise ContractMismatchError(why)
        try:
            reply = client.act_reply(array, seed=seed, contract_hash=contract_hash)
        except ServiceError as exc:
            source = "--obs" if obs_file is None else f"--obs-file {printable(obs_file)}"
            if exc.code == grpc.StatusCode.INVALID_ARGUMENT and (why := _wrong_size(exc.details, array, source)):
                raise FlowRLError(why) from None
            raise
    action = decode(reply.action, name="action")
    typer.echo(
        json.dumps(
            {"action": action.tolist(), "model_version": reply.model_version, "inference_us": reply.inference_us}
        )
    )
