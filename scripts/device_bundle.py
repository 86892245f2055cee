"""The wheels a lent GPU machine lacks, onnxruntime-gpu among them, packed into folders small enough for
one device call each, and installed there once every folder has been copied into one place.

    python3 scripts/device_bundle.py pack WHEELS PREFIX [--cap BYTES]   (scripts/device_check.sh --pieces)
    bash PARTS/install.sh          (SITE=/tmp/site PARTS=its folder PY=python3; device_check.sh's install step)

pack writes PREFIX1 .. PREFIXN, each at most --cap bytes as `du -sb` counts them (default 44 MiB, or
DEVICE_CHECK_FOLDER_BYTES). onnxruntime-gpu's CUDA provider library (284 MB in 1.31.1) is taken out of
its wheel and xz-compressed; every wheel is re-zipped without compression and xz'd where that is smaller
than the wheel; the files are then cut into pieces that fill the folders in turn. The first folder also
holds this script, install.sh and MANIFEST.json: each file's pieces and folders and the sha256 of every
piece, file and restored file. install checks them all, names the folders missing, restores the
wheels, installs them with pip into SITE and puts the CUDA provider library back into SITE's onnxruntime.
Standard library only: it runs on the GPU machine's Python.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

CUDA_SO = "onnxruntime/capi/libonnxruntime_providers_cuda.so"
CAP = int(os.environ.get("DEVICE_CHECK_FOLDER_BYTES", 44 << 20))  # 64 MiB a call less the tree's 14 MB and some
SPLIT_MIN = 1 << 20  # a file smaller than this goes whole into the next folder rather than be cut
DIR_BYTES = 4096  # what `du -sb` counts for a folder
CHUNK = 1 << 20


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def du(path: Path) -> int:
    """`du -sb`: the bytes of every file and folder under path, itself included."""
    return sum(p.lstat().st_size for p in [path, *path.rglob("*")])


def xz(src: Path, dst: Path) -> None:
    compressor = lzma.LZMACompressor(preset=9)
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        for block in iter(lambda: fi.read(CHUNK), b""):
            fo.write(compressor.compress(block))
        fo.write(compressor.flush())


def stored_copy(src: Path, dst: Path, drop: str = "") -> None:
    """The wheel src re-zipped without compression (xz then does better than on deflated members), less
    the member drop and its RECORD line."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            if item.filename == drop:
                continue
            data = zin.read(item)
            if drop and item.filename.endswith(".dist-info/RECORD"):
                data = b"".join(line for line in data.splitlines(True) if not line.startswith(drop.encode() + b","))
            item.compress_type = zipfile.ZIP_STORED
            zout.writestr(item, data)


def stage(wheels: Path, work: Path) -> list[dict]:
    """The files to carry, in work: each wheel, or its stored copy xz'd where that is smaller, and
    onnxruntime-gpu's CUDA provider library xz'd, apart from the rest of its wheel."""
    files = []
    for wheel in sorted(wheels.glob("*.whl")):
        drop = CUDA_SO if wheel.name.startswith("onnxruntime_gpu-") else ""
        if drop:
            lib = work / Path(CUDA_SO).name
            with zipfile.ZipFile(wheel) as z, open(lib, "wb") as out:
                shutil.copyfileobj(z.open(CUDA_SO), out, CHUNK)
            xz(lib, work / (lib.name + ".xz"))
            files.append({"name": lib.name + ".xz", "restored": sha256(lib), "to": CUDA_SO})
            lib.unlink()
        stored = work / ("stored-" + wheel.name)
        stored_copy(wheel, stored, drop)
        xz(stored, work / (wheel.name + ".xz"))
        if drop or (work / (wheel.name + ".xz")).stat().st_size < wheel.stat().st_size:
            files.append({"name": wheel.name + ".xz", "restored": sha256(stored)})
        else:  # the wheel as it is
            (work / (wheel.name + ".xz")).unlink()
            shutil.copyfile(wheel, work / wheel.name)
            files.append({"name": wheel.name})
        stored.unlink()
    for f in files:
        f["bytes"], f["sha256"] = (work / f["name"]).stat().st_size, sha256(work / f["name"])
    return sorted(files, key=lambda f: f["bytes"])  # the small ones first, whole; the large ones fill the gaps


def pack(wheels: Path, prefix: str, cap: int = CAP) -> list[Path]:
    """PREFIX1 .. PREFIXN from the wheels in wheels, each at most cap bytes as `du -sb` counts them."""
    first_extra = 64 << 10  # the first folder's install.sh, this script and MANIFEST.json
    per_piece = 512  # its entry in MANIFEST.json and in its folder
    if cap < first_extra + 4 * DIR_BYTES + (64 << 10):
        sys.exit(f"device_bundle: a cap of {cap} bytes leaves no room for pieces")
    if not any(wheels.glob("*.whl")):
        sys.exit(f"device_bundle: no *.whl in {wheels}")
    base = Path(prefix)
    with tempfile.TemporaryDirectory(prefix="device-bundle.") as tmp:
        work = Path(tmp)
        files = stage(wheels, work)
        folders, room = 1, cap - 2 * DIR_BYTES - first_extra
        for f in files:  # cut each file into pieces that fill the folders in turn
            f["pieces"], offset = [], 0
            while offset < f["bytes"]:
                left = f["bytes"] - offset
                if room - per_piece < min(left, SPLIT_MIN):
                    folders, room = folders + 1, cap - 2 * DIR_BYTES
                n = min(left, room - per_piece)
                path = f"parts/{f['name']}.{len(f['pieces']):03d}"
                f["pieces"].append({"path": path, "folder": f"{base.name}{folders}", "offset": offset, "bytes": n})
                room -= n + per_piece
                offset += n
        for old in base.parent.glob(base.name + "*"):
            if old.name[len(base.name) :].isdigit():
                shutil.rmtree(old)
        for f in files:
            with open(work / f["name"], "rb") as src:
                for piece in f["pieces"]:
                    out = base.parent / piece["folder"] / piece["path"]
                    out.parent.mkdir(parents=True, exist_ok=True)
                    src.seek(piece.pop("offset"))
                    out.write_bytes(src.read(piece["bytes"]))
                    piece["sha256"] = sha256(out)
    first = base.parent / f"{base.name}1"
    manifest = {"folders": [f"{base.name}{k}" for k in range(1, folders + 1)], "files": files}
    (first / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.copyfile(__file__, first / "device_bundle.py")
    (first / "install.sh").write_text(INSTALL_SH)
    made = [base.parent / name for name in manifest["folders"]]
    over = [f"{p.name} {du(p)} bytes" for p in made if du(p) > cap]
    if over:
        sys.exit(f"device_bundle: over the cap of {cap} bytes: {', '.join(over)}")
    return made


INSTALL_SH = """#!/usr/bin/env bash
# Installs the bundle that scripts/device_check.sh --pieces made, once all its folders were copied here.
# Env: SITE (default /tmp/site), PARTS (default this folder), PY (default python3).
here=$(cd "$(dirname "$0")" && pwd)
exec "${PY:-python3}" "$here/device_bundle.py" install "${PARTS:-$here}" "${SITE:-/tmp/site}"
"""


def read_manifest(parts: Path) -> dict:
    """parts/MANIFEST.json, or one line saying what to copy again."""
    path = parts / "MANIFEST.json"
    if not path.is_file():
        sys.exit(
            f"device_bundle: no MANIFEST.json in {parts}: copy the first folder (.gpu1: the installer and manifest) too"
        )
    try:
        manifest = json.loads(path.read_text())
        pieces = [p for f in manifest["files"] for p in f["pieces"]]
        if not all(p["folder"] in manifest["folders"] and p["path"] and p["sha256"] for p in pieces):
            raise ValueError("a piece names no folder, path or sha256")
    except (ValueError, KeyError, TypeError) as exc:
        name = type(exc).__name__
        sys.exit(f"device_bundle: {path} is not the manifest packed ({name}): copy the first folder (.gpu1) again")
    return manifest


def install(parts: Path, site: Path) -> None:
    """Check every piece, restore each file (its sha256 before and after xz), pip-install the wheels into
    site, and put the CUDA provider library back into site's onnxruntime."""
    manifest = read_manifest(parts)
    if importlib.util.find_spec("pip") is None:
        sys.exit(f"device_bundle: {sys.executable} has no pip (No module named pip): set PY to a python3 with pip")
    missing = sorted(
        {p["folder"] for f in manifest["files"] for p in f["pieces"] if not (parts / p["path"]).is_file()},
        key=manifest["folders"].index,
    )
    if missing:
        sys.exit(
            f"device_bundle: missing folder(s) {' '.join(missing)} of {len(manifest['folders'])}: copy each into "
            f"{parts} (mkdir -p {parts} && cp -r FOLDER/. {parts}/, one call each) before installing"
        )
    with tempfile.TemporaryDirectory(prefix="device-bundle.") as tmp:
        work, libraries = Path(tmp), []
        for f in manifest["files"]:
            packed, restored = hashlib.sha256(), hashlib.sha256()
            out = work / (f["name"].removesuffix(".xz") if "to" not in f else "lib")
            unxz = lzma.LZMADecompressor() if f["name"].endswith(".xz") else None
            with open(out, "wb") as fo:
                for piece in f["pieces"]:
                    data = (parts / piece["path"]).read_bytes()
                    if hashlib.sha256(data).hexdigest() != piece["sha256"]:
                        sys.exit(f"device_bundle: {piece['path']} of {piece['folder']} differs from the piece packed")
                    packed.update(data)
                    data = unxz.decompress(data) if unxz else data
                    restored.update(data)
                    fo.write(data)
            if packed.hexdigest() != f["sha256"] or restored.hexdigest() != f.get("restored", f["sha256"]):
                sys.exit(f"device_bundle: {f['name']} restored is not the file packed")
            if "to" in f:
                libraries.append((out.rename(work / Path(f["to"]).name), f["to"]))
        wheels = sorted(str(p) for p in work.glob("*.whl"))
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        rc = subprocess.run([*pip, "--no-cache-dir", "--upgrade", "--target", str(site), *wheels]).returncode
        if rc:
            sys.exit(f"device_bundle: pip install of {len(wheels)} wheels into {site} failed (exit {rc}): see above")
        for lib, to in libraries:  # after pip, which replaces the package's folder
            lib.chmod(0o755)
            (site / to).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(lib, site / to)
    print(f"device_bundle: installed {len(wheels)} wheels into {site}:", *(Path(w).name for w in wheels), sep="\n  ")
    for _, to in libraries:
        print(f"device_bundle: restored {site / to} (sha256 checked)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="pack the wheels of WHEELS into folders PREFIX1 .. PREFIXN")
    p.add_argument("wheels", type=Path)
    p.add_argument("prefix")
    p.add_argument("--cap", type=int, default=CAP, help="bytes a folder may hold (du -sb; default %(default)s)")
    i = sub.add_parser("install", help="install a bundle whose folders were all copied into PARTS")
    i.add_argument("parts", type=Path)
    i.add_argument("site", type=Path)
    args = parser.parse_args()
    if args.command == "install":
        install(args.parts, args.site)
        return
    made = pack(args.wheels, args.prefix, args.cap)
    sizes = ", ".join(f"{p.name} {du(p) / (1 << 20):.1f} MiB" for p in made)
    print(f"{len(made)} folders of at most {args.cap / (1 << 20):.1f} MiB: {sizes}")
    name = Path(args.prefix).name
    print(f'send each in its own call (K = 1..{len(made)}), carry ["{name}K"]:')
    print(f"  mkdir -p /tmp/gpuparts && cp -r {name}K/. /tmp/gpuparts/")
    print("then, at once (a machine stays warm 30 s after a call), the run: scripts/device_check.sh [PART ...]")


if __name__ == "__main__":
    main()
