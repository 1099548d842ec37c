"""The main job: build models, the demo corpus and its index, start every service, query, stop."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

DEMO_QUERIES = (
    ("run a shell command and capture its output", "hybrid", 20),
    ("parse a JSON document into Python objects", "dense", 0),
    ("copy a directory tree recursively", "lexical", 0),
    ("how do I get the current date and time", "hybrid", 20),
)


def _start_server(models: Path, index_dir: Path, port: int) -> tuple[subprocess.Popen[bytes], int]:
    port_file = Path(tempfile.mkstemp(prefix="neuralir-port-")[1])
    port_file.unlink()
    command = [
        sys.executable, "-m", "neuralir.cli", "serve", "all",
        "--port", str(port), "--port-file", str(port_file),
        "--encoder-model", str(models / "bi-encoder" / "int8"),
        "--rerank-model", f"default={models / 'cross-encoder' / 'int8'}",
        "--index-dir", str(index_dir), "--log-format", "text",
    ]  # fmt: skip
    process = subprocess.Popen(command)
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the server did not start; see its log above")
        time.sleep(0.05)
    bound = int(port_file.read_text())
    port_file.unlink()
    return process, bound


def run_demo(models: Path, work: Path, port: int = 0) -> int:
    from neuralir.client import NeuralIRClient
    from neuralir.client.render import render_search
    from neuralir.index.demo_corpus import build_demo_corpus
    from neuralir.index.reuse import ensure_index
    from neuralir.models.build import build_all
    from neuralir.models.sources import (
        default_bi_encoder_source,
        default_cross_encoder_source,
        default_small_cross_encoder_source,
    )

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    build_all(
        models,
        default_bi_encoder_source(),
        default_cross_encoder_source(),
        small_cross_encoder_source=default_small_cross_encoder_source(),
    )
    corpus = work / "data" / "pydocs" / "corpus.jsonl"
    if not corpus.is_file():
        build_demo_corpus(corpus.parent)
    index_dir = work / "indexes" / "demo"
    ensure_index(corpus, index_dir, models / "bi-encoder" / "int8", progress=True)

    process, bound = _start_server(models, index_dir, port)
    try:
        with NeuralIRClient(target=f"127.0.0.1:{bound}") as client:
            client.wait_ready(timeout_s=120)
            for query, mode, depth in DEMO_QUERIES:
                result = client.search(query, k=5, mode=mode, rerank_depth=depth, snippet_chars=160)
                label = f"mode={mode}" + (f", rerank top {depth}" if depth else "")
                print(f"\n[{label}]\n{render_search(query, result)}", flush=True)
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    print(f"\nserver stopped (exit code {code})")
    return 0 if code == 0 else 1
