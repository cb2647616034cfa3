"""Generate Python code for the contracts in proto/ into sdk/hearth/api/.

Run with `make proto`. With --check, generate into a temporary folder and fail
when the committed code differs (the staleness test calls this).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
API_DIR = ROOT / "sdk" / "hearth" / "api"
API_INIT = '"""Code generated from proto/ by `make proto`. Do not edit."""\n'


def generate(out_root: Path) -> Path:
    """Generate into out_root/hearth/api and return that folder."""
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    # protoc finds the mypy plugins on PATH: the ones installed beside this Python.
    bindir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    api = out_root / "hearth" / "api"
    for folder in [api, *(p for p in api.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").write_text(API_INIT)
    (out_root / "hearth" / "api" / "py.typed").write_text("")
    return api


def differences(left: Path, right: Path) -> list[str]:
    """Paths (relative) whose content differs between two trees."""
    out: list[str] = []
    cmp = filecmp.dircmp(left, right, ignore=["__pycache__"])
    out += [f"only in committed: {n}" for n in cmp.left_only]
    out += [f"missing from committed: {n}" for n in cmp.right_only]
    for name in cmp.common_files:
        if (left / name).read_bytes() != (right / name).read_bytes():
            out.append(str((left / name).relative_to(API_DIR)))
    for name in cmp.common_dirs:
        out += differences(left / name, right / name)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when sdk/hearth/api is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        if args.check:
            diff = differences(API_DIR, fresh)
            if diff:
                print("generated code is stale; run `make proto`:", *diff, sep="\n  ", file=sys.stderr)
                return 1
            return 0
        shutil.rmtree(API_DIR, ignore_errors=True)
        shutil.copytree(fresh, API_DIR, ignore=shutil.ignore_patterns("__pycache__"))
    print(f"generated {API_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
