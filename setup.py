"""Build hook: generate the gRPC code from proto/ before packaging, so it is never committed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent


def generate_grpc_code() -> None:
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-Iproto",
        "--python_out=proto",
        "--grpc_python_out=proto",
        "--mypy_out=proto",
        "--mypy_grpc_out=proto",
        *protos,
    ]
    # protoc finds its mypy plugins on PATH: put this interpreter's scripts first.
    scripts = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": scripts + os.pathsep + os.environ.get("PATH", "")}
    subprocess.run(cmd, cwd=ROOT, check=True, env=env)


class BuildPyWithProto(build_py):
    def run(self) -> None:
        generate_grpc_code()
        super().run()


setup(cmdclass={"build_py": BuildPyWithProto})
