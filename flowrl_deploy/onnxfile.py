"""An ONNX file read with the protobuf runtime alone (a robot may lack the onnx package, and a file for
a newer runtime, a higher IR version or an op it lacks, is still readable): the few messages of
onnx.proto that ``flowrl inspect`` and the server's refusals of a foreign file need, and
:func:`unlike_a_flowrl_policy`, which tells a policy ``flowrl export`` wrote from any other file by reading
the wire format field by field (``flowrl export`` replaces only such a file).

Also a policy file's path and bytes before any parser sees them: :func:`is_onnx_path` (a graph, not a
checkpoint), :func:`read_policy_file` (never blocking on a pipe, refusing one over 2 GiB unread), and
:func:`unlike_a_policy`, what is wrong with a file onnxruntime refused.
"""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

from flowrl_deploy.contract import CONTRACT_KEY, contract_from_metadata
from flowrl_deploy.errors import FlowRLError, SpecError

ONNX_MESSAGES: dict[str, list[tuple[str, int, str, str]]] = {
    # message: (field, number, label, type) as in onnx.proto; unlisted fields are skipped when parsing
    "ModelProto": [
        ("ir_version", 1, "optional", "int64"),
        ("graph", 7, "optional", "GraphProto"),
        ("opset_import", 8, "repeated", "OperatorSetIdProto"),
        ("metadata_props", 14, "repeated", "StringStringEntryProto"),
    ],
    "OperatorSetIdProto": [("domain", 1, "optional", "string"), ("version", 2, "optional", "int64")],
    "StringStringEntryProto": [("key", 1, "optional", "string"), ("value", 2, "optional", "string")],
    "GraphProto": [
        ("node", 1, "repeated", "NodeProto"),
        ("input", 11, "repeated", "ValueInfoProto"),
        ("output", 12, "repeated", "ValueInfoProto"),
    ],
    "NodeProto": [("op_type", 4, "optional", "string"), ("domain", 7, "optional", "string")],
    "ValueInfoProto": [
        ("name", 1, "optional", "string"),
        ("type", 2, "optional", "TypeProto"),
        ("doc_string", 3, "optional", "string"),
    ],
    "TypeProto": [("tensor_type", 1, "optional", "TensorTypeProto")],
    "TensorTypeProto": [("elem_type", 1, "optional", "int32"), ("shape", 2, "optional", "TensorShapeProto")],
    "TensorShapeProto": [("dim", 1, "repeated", "DimensionProto")],
    "DimensionProto": [("dim_value", 1, "optional", "int64"), ("dim_param", 2, "optional", "string")],
}


@functools.cache
def model_class() -> type:
    """ModelProto of :data:`ONNX_MESSAGES`, in a pool of its own (never clashing with onnx's)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    file = descriptor_pb2.FileDescriptorProto(name="flowrl_inspect_onnx.proto", package="flowrl_inspect")
    for message, fields in ONNX_MESSAGES.items():
        proto = file.message_type.add(name=message)
        for name, number, label, kind in fields:
            field = proto.field.add(name=name, number=number)
            field.label = getattr(descriptor_pb2.FieldDescriptorProto, f"LABEL_{label.upper()}")
            if kind in ONNX_MESSAGES:
                field.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
                field.type_name = f".flowrl_inspect.{kind}"
            else:
                field.type = getattr(descriptor_pb2.FieldDescriptorProto, f"TYPE_{kind.upper()}")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("flowrl_inspect.ModelProto"))


def parse_model(data: bytes, path: Path) -> Any:
    """``data``, the file ``path``'s bytes, as a ModelProto (the fields of :data:`ONNX_MESSAGES`); a
    file that is no ONNX model is refused (:func:`not_onnx`)."""
    from google.protobuf.message import DecodeError

    model = model_class()()
    try:
        model.ParseFromString(data)
    except DecodeError as exc:  # protobuf's words name this module's message type: kept as the cause only
        raise not_onnx(path, data, "its bytes do not parse as one: another kind of file, or a cut-off copy") from exc
    if model.ir_version < 1 or not model.HasField("graph"):
        raise not_onnx(path, data, "no IR version or graph")
    return model


def is_safetensors(data: bytes) -> bool:
    """Whether ``data`` begins as a safetensors file does: an 8-byte little-endian header length, then
    that many bytes of a JSON object."""
    size = int.from_bytes(data[:8], "little")
    return len(data) > 8 and data[8:9] == b"{" and 2 <= size <= len(data) - 8


def text_kind(data: bytes) -> str | None:
    """'JSON text' or 'text' when ``data`` begins as a text file does (UTF-8, printable but for
    whitespace and a byte-order mark), else None: an ONNX file begins with a control byte (its IR
    version's field tag, 0x08)."""
    head = data[:4096]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3 or exc.reason != "unexpected end of data":  # not a character cut at 4096
            return None
        text = head[: exc.start].decode("utf-8")
    if not text.strip() or not all(char.isprintable() or char in "\t\r\n\f\v\ufeff" for char in text):
        return None
    return "JSON text" if text.lstrip("\ufeff \t\r\n")[:1] in ("{", "[") else "text"


AN_EXPORT = "give the .onnx policy that `flowrl export` writes"


def not_onnx(path: Path, data: bytes, why: str) -> FlowRLError:
    """The refusal of ``path`` (its bytes ``data``), which is no ONNX model (``why``), saying what the file
    holds instead where that is plain (a checkpoint's weights, text, nothing) and what to give."""
    if is_safetensors(data):  # `flowrl inspect run/checkpoints/last/model.safetensors`
        return FlowRLError(
            f"{path} is a checkpoint's weights (safetensors), not an ONNX policy: `flowrl export {path.parent}` "
            "writes one"
        )
    if not data:
        return FlowRLError(f"cannot load ONNX model {path}: not an ONNX file (it is empty): {AN_EXPORT}")
    kind = text_kind(data)
    if kind is None:
        return FlowRLError(f"cannot load ONNX model {path}: not an ONNX file ({why})")
    # the names the checkpoint format gives a run's and a checkpoint's text files (imported on this error path only)
    from flowrl_deploy.checkpoint import CHECKPOINTS_DIR, MODEL_FILE, RUN_TEXT_FILES

    folder = path.parent
    if path.name in RUN_TEXT_FILES and (folder / CHECKPOINTS_DIR).is_dir():  # `flowrl serve run/config.json`
        hint = f"that is a training run's file: `flowrl export {folder}` writes the run's ONNX policy"
    elif path.name in RUN_TEXT_FILES and (folder / MODEL_FILE).is_file():
        hint = f"that is a checkpoint's file: `flowrl export {folder}` writes its ONNX policy"
    else:
        hint = AN_EXPORT
    return FlowRLError(f"cannot load ONNX model {path}: not an ONNX file (it holds {kind}): {hint}")


MAX_TOP_FIELDS = 4096
"""A ModelProto has a few top-level fields (the IR version, the graph, opsets, metadata): a file that
reads as more is not one (random bytes can parse as many tiny fields)."""
_METADATA_PROPS = 14
MAX_METADATA_BYTES = 64 << 20
"""More metadata than any export writes (its contract and provenance take kilobytes)."""
_IR_VERSION, _GRAPH = 1, 7


def _varint(file: BinaryIO) -> int | None:
    """The next base-128 varint of ``file``; None at its end or past 10 bytes (not protobuf)."""
    value = 0
    for shift in range(0, 70, 7):
        byte = file.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
    return None


def unlike_a_flowrl_policy(path: str | os.PathLike[str]) -> str:
    """'' when the regular file ``path`` holds a policy ``flowrl export`` wrote (an ONNX model whose
    metadata carries a flowrl contract), else what it is instead, completing "FILE …": 'is not an ONNX
    file', 'is an ONNX model without a flowrl contract', 'cannot be read (…)'. Protobuf's wire format is
    read field by field and the graph skipped, so a large file given by mistake is not loaded."""
    from google.protobuf.message import DecodeError

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    with os.fdopen(fd, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        seen, metadata = set(), bytearray()
        try:
            for _ in range(MAX_TOP_FIELDS):
                start = file.tell()
                if start == size:
                    break
                key = _varint(file)
                if key is None or key >> 3 == 0:
                    return "is not an ONNX file"
                number, wire = key >> 3, key & 7
                if wire == 0:
                    if _varint(file) is None:
                        return "is not an ONNX file"
                elif wire in (1, 5):  # fixed 64 or 32 bits
                    file.seek(8 if wire == 1 else 4, os.SEEK_CUR)
                elif wire == 2:
                    length = _varint(file)
                    if length is None or file.tell() + length > size:
                        return "is not an ONNX file"
                    if number != _METADATA_PROPS:
                        file.seek(length, os.SEEK_CUR)
                    elif len(metadata) + length > MAX_METADATA_BYTES:
                        return "is not an ONNX file"
                    else:  # the whole field (key, length, entry), parsed below as a ModelProto of entries
                        header = file.tell() - start
                        file.seek(start)
                        metadata += file.read(header + length)
                else:  # groups (3, 4) and the unused wire types: not what onnx writes
                    return "is not an ONNX file"
                if file.tell() > size:  # a fixed-size field cut short
                    return "is not an ONNX file"
                seen.add((number, wire))
            else:
                return "is not an ONNX file"
        except OSError as exc:
            return f"cannot be read ({exc.strerror or exc})"
    if not {(_IR_VERSION, 0), (_GRAPH, 2)} <= seen:
        return "is not an ONNX file"
    model = model_class()()
    try:
        model.ParseFromString(bytes(metadata))
    except DecodeError:
        return "is not an ONNX file"
    if CONTRACT_KEY not in {p.key for p in model.metadata_props}:
        return "is an ONNX model without a flowrl contract"
    return ""


def is_onnx_path(path: str | Path) -> bool:
    """Whether ``path`` is read as an exported graph rather than a checkpoint. A checkpoint is a
    directory (or its checkpoint.json or model.safetensors), so any other existing file is a graph,
    whatever its suffix (policy.ONNX, policy.bin); a missing path is neither."""
    from flowrl_deploy.checkpoint import DOCUMENT_FILE, MODEL_FILE  # numpy and safetensors, loaded on use only

    path = Path(path)
    if not path.exists() or path.is_dir() or path.name in (DOCUMENT_FILE, MODEL_FILE):
        return False
    return not _names_a_checkpoint(path)


def _names_a_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a run's ``last`` or ``best`` pointer file, what a run holds where no
    symlink can be made (Windows): it names a checkpoint, whether or not that still exists. A
    symlink is no pointer file: what it leads to decides, as for any other path."""
    from flowrl_deploy.checkpoint import BEST, LAST, read_checkpoint_link

    if path.name not in (LAST, BEST) or path.is_symlink():
        return False
    try:
        return read_checkpoint_link(path) is not None
    except FlowRLError:  # a file that merely is called 'best': a graph, as any other file
        return False


MAX_POLICY_BYTES = 2**31 - 1
"""The largest ONNX file protobuf can parse (2 GiB): a larger one is refused before it is read."""


def read_policy_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of the ONNX file ``path``, refused as :func:`check_policy_file` says; the file is
    checked once opened (without blocking), so a pipe swapped in after the check is never read from,
    and one over :data:`MAX_POLICY_BYTES` is refused unread."""
    check_policy_file(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise FlowRLError(f"cannot read {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _not_a_regular_file(path)
        if info.st_size > MAX_POLICY_BYTES:
            raise FlowRLError(f"{path} holds {info.st_size} bytes, more than an ONNX file can (2 GiB)")
        return file.read()


def check_policy_file(path: str | os.PathLike[str]) -> None:
    """Refuse a ``path`` that is no file to read as an ONNX policy, saying what it is instead; a pipe
    or device is never opened (reading one could block)."""
    path = Path(path)
    if path.is_dir():
        raise FlowRLError(f"{path} is a directory, not an ONNX file (a checkpoint? `flowrl export {path}` makes one)")
    if not path.exists():
        raise FlowRLError(f"ONNX model not found: {path}")
    if not path.is_file():
        raise _not_a_regular_file(path)


def _not_a_regular_file(path: str | os.PathLike[str]) -> FlowRLError:
    return FlowRLError(f"{path} is not a regular file (a device, pipe or socket), so not an ONNX model")


def unlike_a_policy(data: bytes, name: str) -> FlowRLError | None:
    """What ``flowrl inspect`` says is wrong with the ONNX file ``data`` (named ``name``), read with
    its parser (:func:`parse_model`, protobuf alone): not an ONNX file (or a
    checkpoint's weights), or no or a broken flowrl contract; None when it reads as a flowrl policy.
    Asked once onnxruntime has refused a file, so that another project's model is named as one
    whatever onnxruntime says of it (a newer IR version, an op it lacks)."""
    try:
        model = parse_model(data, Path(name))
    except FlowRLError as exc:
        return exc
    try:
        contract_from_metadata({p.key: p.value for p in model.metadata_props})
    except SpecError as exc:
        return FlowRLError(f"{name}: {exc}")
    return None
