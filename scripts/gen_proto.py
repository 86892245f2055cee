"""Regenerate the Python modules of ``flowrl_deploy/proto/flowrl/v1/policy.proto``.

    python scripts/gen_proto.py            # rewrite the committed modules in place
    python scripts/gen_proto.py --out DIR  # write them under DIR (the staleness test compares)

grpcio-tools writes the messages and their stub (``--pyi_out``) and the gRPC module; mypy-protobuf's
plugin (the dev extra) writes the gRPC module's stub, which grpcio-tools has none of. protoc names
imports after the proto path (``from flowrl.v1 import ...``); they are rewritten to the installed
package (``from flowrl_deploy.proto.flowrl.v1 import ...``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent.parent / "flowrl_deploy" / "proto"
PROTO_FILE = "flowrl/v1/policy.proto"
PACKAGE = "flowrl_deploy.proto"
GENERATED = ("policy_pb2.py", "policy_pb2.pyi", "policy_pb2_grpc.py", "policy_pb2_grpc.pyi")
GRPC_STUB_PLUGIN = "protoc-gen-mypy_grpc"


def grpc_stub_plugin() -> str:
    """mypy-protobuf's protoc plugin, installed next to this interpreter (or else on PATH)."""
    path = shutil.which(
        GRPC_STUB_PLUGIN, path=f"{sysconfig.get_path('scripts')}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    if path is None:
        raise SystemExit(f"{GRPC_STUB_PLUGIN} not found: install mypy-protobuf (pip install -e '.[dev]')")
    return path


def generate(out_dir: Path) -> list[Path]:
    """Write the generated modules for :data:`PROTO_FILE` into ``out_dir``; return their paths."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as raw:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={raw}",
            f"--pyi_out={raw}",
            f"--grpc_python_out={raw}",
            f"--plugin={GRPC_STUB_PLUGIN}={grpc_stub_plugin()}",
            f"--mypy_grpc_out={raw}",
            PROTO_FILE,
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {PROTO_FILE}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            text = (Path(raw) / "flowrl" / "v1" / name).read_text()
            text = re.sub(r"^from flowrl\.v1 import", f"from {PACKAGE}.flowrl.v1 import", text, flags=re.M)
            target = out_dir / name
            target.write_text(text)
            written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_ROOT / "flowrl" / "v1")
    for path in generate(parser.parse_args().out):
        print(path, file=sys.stderr)


if __name__ == "__main__":
    main()
