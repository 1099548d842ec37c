"""`neuralir index build` and `neuralir data demo`: the index layer's subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from neuralir.index.corpus import DEFAULT_MAX_DOC_CHARS
from neuralir.models.cli import DEFAULT_MODELS_DIR

# The exit code of a build that failed on its input or settings (argparse's, for bad usage).
EXIT_BAD_INPUT = 2


def register(commands: Any) -> None:
    """Adds `index build` to the `neuralir` command's subparsers."""
    index = commands.add_parser("index", help="build an index").add_subparsers(
        dest="action", required=True
    )
    build = index.add_parser("build", help="embed a BEIR corpus; HNSW + BM25 + document store")
    build.add_argument("--corpus", type=Path, required=True)
    build.add_argument("--out", type=Path, required=True)
    build.add_argument(
        "--encoder-model", type=Path, default=DEFAULT_MODELS_DIR / "bi-encoder" / "int8"
    )
    build.add_argument(
        "--dtype", choices=("f32", "f16", "bf16", "i8"), default="f32", help="vector storage"
    )
    build.add_argument("--connectivity", type=int, default=16)
    build.add_argument("--expansion-add", type=int, default=128)
    build.add_argument("--expansion-search", type=int, default=64)
    build.add_argument("--no-stem", action="store_true", help="BM25 without stemming")
    build.add_argument("--threads", type=int, default=2)
    build.add_argument("--max-docs", type=int, default=0, help="0 = all")
    build.add_argument(
        "--max-doc-chars",
        type=int,
        default=DEFAULT_MAX_DOC_CHARS,
        help="characters of title + text one document may have; a longer one fails the build "
        f"naming its line (default {DEFAULT_MAX_DOC_CHARS:,})",
    )
    build.add_argument(
        "--truncate-long-docs",
        action="store_true",
        help="cut a document over --max-doc-chars to it, with a warning naming its line, "
        "instead of failing",
    )
    build.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="passages per encoder call; 1 makes each embedding independent of its batch-mates "
        "(int8 activations are scaled per batch), e.g. to compare sharded and unsharded builds",
    )
    build.add_argument(
        "--shards",
        type=int,
        default=1,
        help="split by sha1(doc id) into N indexes OUT/shard-<i> plus OUT/shards.json; "
        "serve each with its own `serve index` (1 = one unsharded index)",
    )
    build.set_defaults(func=build_command)


def register_data(actions: Any) -> None:
    """Adds `data demo` to the `neuralir data` group."""
    demo = actions.add_parser("demo", help="build the demo corpus from Python's own docs")
    demo.add_argument("--out", type=Path, default=Path("artifacts/data/pydocs"))
    demo.set_defaults(func=demo_corpus_command)


def build_command(args: argparse.Namespace) -> int:
    """Runs a build; a failure on its input or settings is one `error:` line, exit code 2."""
    from neuralir.index.build import IndexBuildError
    from neuralir.index.corpus import CorpusError
    from neuralir.models.manifest import ManifestError

    try:
        return _build(args)
    except (CorpusError, IndexBuildError, ManifestError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    except OSError as exc:  # unreadable corpus or model, full disk, read-only output, ...
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return EXIT_BAD_INPUT


def _build(args: argparse.Namespace) -> int:
    from neuralir.index.build import (
        IndexBuildError,
        IndexBuildSettings,
        build_index,
        check_corpus_path,
    )
    from neuralir.models.encoder import Encoder
    from neuralir.models.session import RuntimeSettings

    settings = IndexBuildSettings(
        dtype=args.dtype,
        connectivity=args.connectivity,
        expansion_add=args.expansion_add,
        expansion_search=args.expansion_search,
        stemmer="" if args.no_stem else "english",
        threads=args.threads,
        max_docs=args.max_docs,
        batch_size=args.batch_size,
        max_doc_chars=args.max_doc_chars,
        truncate_long_docs=args.truncate_long_docs,
    )
    # Settings and the corpus path are checked before the encoder loads.
    settings.validate()
    if args.shards < 1:
        raise IndexBuildError("--shards must be at least 1 (1 = one unsharded index)")
    check_corpus_path(args.corpus)
    encoder = Encoder(args.encoder_model, RuntimeSettings(intra_op_threads=args.threads))
    if args.shards > 1:
        from neuralir.index.shard_build import build_sharded_index

        shard_map = build_sharded_index(args.corpus, args.out, encoder, args.shards, settings)
        sizes = "/".join(str(n) for n in shard_map.documents)
        print(f"index {args.out}: {args.shards} shards of {sizes} documents")
        return 0
    info = build_index(args.corpus, args.out, encoder, settings)
    print(f"index {args.out}: {info.size} documents, dim {info.dimension}, {info.dtype}")
    return 0


def demo_corpus_command(args: argparse.Namespace) -> int:
    from neuralir.index.demo_corpus import build_demo_corpus

    print(build_demo_corpus(args.out))
    return 0
