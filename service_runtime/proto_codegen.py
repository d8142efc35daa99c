"""Generates the Python stubs from protos/ and checks that the committed ones are not stale.

    python -m service_runtime.proto_codegen          # regenerate in place
    python -m service_runtime.proto_codegen --check  # exit 1 if the committed stubs differ
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent.parent / "protos"

# grpcio-tools stamps its own version into every *_pb2_grpc.py; a patch release of the tools changes
# nothing else, so the check compares the stubs with that stamp masked (the runtime check it feeds
# only needs grpcio >= the stamp, which the committed, older stamp satisfies).
_VERSION_STAMP = re.compile(r"^GRPC_GENERATED_VERSION = '[^']*'$", re.MULTILINE)


def _same_stub(generated: Path, committed: Path) -> bool:
    if not committed.exists():
        return False
    mask = "GRPC_GENERATED_VERSION = '*'"
    return _VERSION_STAMP.sub(mask, generated.read_text()) == _VERSION_STAMP.sub(mask, committed.read_text())


def _proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.glob("credits/**/*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Runs protoc (from grpcio-tools) on every .proto file; returns the files written."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = [str(p.relative_to(PROTO_ROOT)) for p in _proto_files()]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = sorted(p for p in out_dir.rglob("*") if p.suffix in {".py", ".pyi"})
    return written


def _ensure_packages(root: Path) -> None:
    for proto in _proto_files():
        pkg = proto.parent
        while pkg != PROTO_ROOT:
            init = root / pkg.relative_to(PROTO_ROOT) / "__init__.py"
            init.parent.mkdir(parents=True, exist_ok=True)
            if not init.exists():
                init.write_text("")
            pkg = pkg.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed stubs are stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        _ensure_packages(out)
        written = generate(out)
        stale: list[str] = []
        for path in written:
            rel = path.relative_to(out)
            target = PROTO_ROOT / rel
            if args.check:
                if not _same_stub(path, target):
                    stale.append(str(rel))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
        if not args.check:
            _ensure_packages(PROTO_ROOT)
    if stale:
        print("stale generated stubs (run python -m service_runtime.proto_codegen):", *stale, sep="\n  ")
        return 1
    print("proto stubs up to date" if args.check else f"generated {len(written)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
