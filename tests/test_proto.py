"""The committed stubs match protos/: `make proto` leaves nothing to commit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ["tasker_pb2.py", "tasker_pb2.pyi", "tasker_pb2_grpc.py", "tasker_pb2_grpc.pyi"]


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'protos'}",
            f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
            f"--mypy_out={tmp_path}", f"--mypy_grpc_out={tmp_path}",
            str(ROOT / "protos/tasker/v1/tasker.proto"),
        ],
        check=True, env=env, capture_output=True,
    )  # fmt: skip
    for name in GENERATED:
        fresh = (tmp_path / "tasker/v1" / name).read_text()
        committed = (ROOT / "protos/tasker/v1" / name).read_text()
        assert fresh == committed, f"protos/tasker/v1/{name} is stale: run `make proto`"
