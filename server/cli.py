"""The `neuralir` command: serve, build models and indexes, search, evaluate, benchmark, demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from neuralir.server.settings import SERVICES, add_server_arguments

log = logging.getLogger("neuralir")

DEFAULT_MODELS_DIR = Path("artifacts/models")


def _write_port_file(path: Path, port: int) -> None:
    """Written atomically: a watcher never reads a half-written port."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.replace(path)


def _serve(args: argparse.Namespace) -> int:
    from neuralir.models.manifest import ManifestError
    from neuralir.server.app import build_server
    from neuralir.server.index_store import IndexLoadError
    from neuralir.server.logs import configure_logging
    from neuralir.server.settings import settings_from_args

    services = SERVICES if args.stage == "all" else (args.stage,)
    settings = settings_from_args(args, services)
    configure_logging(settings.log_format)
    log.info("settings", extra={"fields": {"settings": settings.describe()}})

    async def run() -> None:
        server, port = build_server(settings)
        if args.port_file:
            _write_port_file(Path(args.port_file), port)
        await server.serve_until_signal()

    try:
        asyncio.run(run())
    except (IndexLoadError, ManifestError) as exc:
        # A model or index that cannot be served is a setup error: say why, no traceback.
        log.error("cannot start %s: %s", args.stage, exc)
        return 1
    return 0


def _models_build(args: argparse.Namespace) -> int:
    if args.offline:  # the default sources are local; never wait on a hub here
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from neuralir.models.build import build_all
    from neuralir.models.sources import (
        default_bi_encoder_source,
        default_cross_encoder_source,
        default_small_cross_encoder_source,
    )

    built = build_all(
        args.out,
        args.bi_encoder or default_bi_encoder_source(),
        args.cross_encoder or default_cross_encoder_source(),
        force=args.force,
        small_cross_encoder_source=None
        if args.no_small_cross_encoder
        else args.small_cross_encoder or default_small_cross_encoder_source(),
    )
    for role, manifest in built.items():
        print(f"{role:20s} {manifest.model_id:40s} {json.dumps(manifest.verify)}")
    return 0


def _index_build(args: argparse.Namespace) -> int:
    from neuralir.models.encoder import Encoder
    from neuralir.models.session import RuntimeSettings
    from neuralir.server.index_build import IndexBuildSettings, build_index

    encoder = Encoder(args.encoder_model, RuntimeSettings(intra_op_threads=args.threads))
    settings = IndexBuildSettings(
        dtype=args.dtype,
        connectivity=args.connectivity,
        expansion_add=args.expansion_add,
        expansion_search=args.expansion_search,
        stemmer="" if args.no_stem else "english",
        threads=args.threads,
        max_docs=args.max_docs,
        batch_size=args.batch_size,
    )
    if args.shards > 1:
        from neuralir.server.shard_build import build_sharded_index

        shard_map = build_sharded_index(args.corpus, args.out, encoder, args.shards, settings)
        sizes = "/".join(str(n) for n in shard_map.documents)
        print(f"index {args.out}: {args.shards} shards of {sizes} documents")
        return 0
    info = build_index(args.corpus, args.out, encoder, settings)
    print(f"index {args.out}: {info.size} documents, dim {info.dimension}, {info.dtype}")
    return 0


def _data_demo(args: argparse.Namespace) -> int:
    from neuralir.server.demo_corpus import build_demo_corpus

    path = build_demo_corpus(args.out)
    print(path)
    return 0


def _data_download(args: argparse.Namespace) -> int:
    from neuralir.client.datasets import DownloadError, download_beir

    try:
        print(download_beir(args.name, args.out))
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _search(args: argparse.Namespace) -> int:
    import grpc

    from neuralir.client import ClientSettings, NeuralIRClient
    from neuralir.client.render import render_search

    settings = ClientSettings(target=args.target, timeout_s=args.timeout, token=args.token or "")
    with NeuralIRClient(settings) as client:
        try:
            result = client.search(
                args.query, k=args.k, mode=args.mode, rerank_depth=args.rerank, snippet_chars=160
            )
        except grpc.RpcError as exc:  # a user-facing command: the status, not a traceback
            print(f"error: {exc.code().name} from {args.target}: {exc.details()}", file=sys.stderr)
            return 1
    print(render_search(args.query, result))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from neuralir.server.demo import run_demo

    return run_demo(args.models, args.work, args.port)


def _delegate(module: str, argv: list[str]) -> int:
    """Subcommands owned by other packages parse their own arguments."""
    import importlib

    return int(importlib.import_module(module).main(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuralir", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run services (all in one process, or one stage)")
    serve.add_argument("stage", choices=("all", *SERVICES))
    serve.add_argument("--port-file", help="write the bound port here (useful with --port 0)")
    add_server_arguments(serve)
    serve.set_defaults(func=_serve)

    models = commands.add_parser("models", help="build the ONNX models").add_subparsers(
        dest="action", required=True
    )
    build = models.add_parser("build", help="export, quantize, verify; skips what is current")
    build.add_argument("--out", type=Path, default=DEFAULT_MODELS_DIR)
    build.add_argument("--bi-encoder", help="local HF directory or hub id (default: MiniLM-L6)")
    build.add_argument("--cross-encoder", help="local HF directory or hub id (default: shipped)")
    build.add_argument(
        "--small-cross-encoder",
        help="a second, faster reranker, served as 'small' (default: the shipped distilled one)",
    )
    build.add_argument(
        "--no-small-cross-encoder", action="store_true", help="build no small reranker"
    )
    build.add_argument("--force", action="store_true", help="rebuild even when current")
    build.add_argument("--offline", action=argparse.BooleanOptionalAction, default=True)
    build.set_defaults(func=_models_build)

    index = commands.add_parser("index", help="build an index").add_subparsers(
        dest="action", required=True
    )
    ibuild = index.add_parser("build", help="embed a BEIR corpus; HNSW + BM25 + document store")
    ibuild.add_argument("--corpus", type=Path, required=True)
    ibuild.add_argument("--out", type=Path, required=True)
    ibuild.add_argument(
        "--encoder-model", type=Path, default=DEFAULT_MODELS_DIR / "bi-encoder" / "int8"
    )
    ibuild.add_argument(
        "--dtype", choices=("f32", "f16", "bf16", "i8"), default="f32", help="vector storage"
    )
    ibuild.add_argument("--connectivity", type=int, default=16)
    ibuild.add_argument("--expansion-add", type=int, default=128)
    ibuild.add_argument("--expansion-search", type=int, default=64)
    ibuild.add_argument("--no-stem", action="store_true", help="BM25 without stemming")
    ibuild.add_argument("--threads", type=int, default=2)
    ibuild.add_argument("--max-docs", type=int, default=0, help="0 = all")
    ibuild.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="passages per encoder call; 1 makes each embedding independent of its batch-mates "
        "(int8 activations are scaled per batch), e.g. to compare sharded and unsharded builds",
    )
    ibuild.add_argument(
        "--shards",
        type=int,
        default=1,
        help="split by sha1(doc id) into N indexes OUT/shard-<i> plus OUT/shards.json; "
        "serve each with its own `serve index` (1 = one unsharded index)",
    )
    ibuild.set_defaults(func=_index_build)

    data = commands.add_parser("data", help="test collections").add_subparsers(
        dest="action", required=True
    )
    demo_data = data.add_parser("demo", help="build the demo corpus from Python's own docs")
    demo_data.add_argument("--out", type=Path, default=Path("artifacts/data/pydocs"))
    demo_data.set_defaults(func=_data_demo)
    download = data.add_parser("download", help="fetch a BEIR dataset (needs internet)")
    download.add_argument("name")
    download.add_argument("--out", type=Path, default=Path("artifacts/data"))
    download.set_defaults(func=_data_download)

    search = commands.add_parser("search", help="search through running services")
    search.add_argument("query")
    search.add_argument("--k", type=int, default=10)
    search.add_argument("--mode", choices=("dense", "lexical", "hybrid"), default="hybrid")
    search.add_argument("--rerank", type=int, default=0, metavar="DEPTH")
    search.add_argument("--target", default=os.environ.get("NEURALIR_TARGET", "127.0.0.1:50051"))
    search.add_argument("--timeout", type=float, default=10.0)
    search.add_argument("--token", default=os.environ.get("NEURALIR_TOKEN"))
    search.set_defaults(func=_search)

    demo = commands.add_parser("demo", help="build everything and run example queries")
    demo.add_argument("--models", type=Path, default=DEFAULT_MODELS_DIR)
    demo.add_argument("--work", type=Path, default=Path("artifacts"))
    demo.add_argument("--port", type=int, default=0)
    demo.set_defaults(func=_demo)

    for name, module, text in (
        ("eval", "neuralir.client.evaluate", "ranking quality of pipelines (nDCG, MRR, recall)"),
        ("bench", "neuralir.benchmarks.runner", "latency and throughput benchmarks"),
    ):
        delegated = commands.add_parser(name, help=text, add_help=False)
        delegated.add_argument("rest", nargs=argparse.REMAINDER)
        delegated.set_defaults(func=lambda args, module=module: _delegate(module, args.rest))
    return parser


# Subcommands whose own parser reads everything after the name: argparse.REMAINDER alone
# rejects a first argument that starts with "--" (e.g. `neuralir eval --dataset ...`).
_DELEGATED = {"eval": "neuralir.client.evaluate", "bench": "neuralir.benchmarks.runner"}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _DELEGATED:
        return _delegate(_DELEGATED[argv[0]], argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
