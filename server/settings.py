"""One typed, frozen settings object for a server process, from flags and environment variables."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from neuralir.models.ranking import NORMALIZATIONS, Normalization
from neuralir.models.session import ARENA_MODES, ArenaMode
from neuralir.server.batching import BatchingSettings
from neuralir.server.pipeline.search import FUSIONS, FusionDefaults, FusionMethod

SERVICES = ("encoder", "index", "rerank", "search")
LOCAL_STAGE_TRANSPORTS = ("inprocess", "grpc")
DEFAULT_MODELS_DIR = Path("artifacts/models")
DEFAULT_INDEX_DIR = Path("artifacts/indexes/demo")
MiB = 1 << 20
_FUSION = FusionDefaults()  # the pipeline's defaults are the server's


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    services: tuple[str, ...] = SERVICES
    host: str = "127.0.0.1"
    port: int = 50051  # 0 = any free port (tests)
    encoder_model: Path = DEFAULT_MODELS_DIR / "bi-encoder" / "int8"
    # name=manifest-directory pairs; the first is the default reranker
    rerank_models: tuple[tuple[str, Path], ...] = (
        ("default", DEFAULT_MODELS_DIR / "cross-encoder" / "int8"),
    )
    index_dir: Path = DEFAULT_INDEX_DIR
    # where the search service finds the other stages; empty = this process. A gRPC target
    # each: several replicas as `ipv4:HOST:PORT,HOST:PORT` or a DNS name with several A
    # records (round robin). Several index addresses = one per shard, in shard order
    # (separated by ',' or, when a shard is itself a multi-address target, by ';').
    encoder_address: str = ""
    index_address: str = ""
    rerank_address: str = ""
    # how the search service calls stages that live in this process: "inprocess" (direct calls
    # on the stage engines) or "grpc" (over loopback gRPC, as a separate deployment would; for
    # measuring what the transport costs)
    local_stages: str = "inprocess"
    # time a shard has to answer before the search goes on without it (partial result);
    # capped by the caller's deadline; 0 = the caller's deadline only
    shard_timeout_ms: int = 1000
    # hybrid mode's fusion when a request does not choose: "rrf" or "convex", the dense
    # weight of convex fusion, and its per-list normalisation ("minmax" or "zscore");
    # defaults chosen on the development collections (docs/quality.md, "Fusion")
    fusion: FusionMethod = _FUSION.method
    fusion_weight: float = _FUSION.dense_weight
    fusion_normalization: Normalization = _FUSION.normalization
    # threads: ONNX Runtime intra-op per model, and usearch per query; see README "Threads"
    encoder_threads: int = 1
    rerank_threads: int = 2
    index_threads: int = 1
    # No wait window by default: a lone request runs at once, and under load a batch forms from
    # what queued while the model was busy (a window only added latency: benchmarks/results).
    # Token budgets (padded rows x length per model call): large requests are cut into chunks
    # of at most this many tokens, so one chunk holds a model for a bounded time and memory
    # (measured in docs/operating.md, "Worst-case requests").
    encoder_batching: BatchingSettings = BatchingSettings(
        max_batch_items=64, max_wait_us=0, max_batch_tokens=2048
    )
    rerank_batching: BatchingSettings = BatchingSettings(
        max_batch_items=128, max_wait_us=1000, max_queue_items=4000, max_batch_tokens=2048
    )
    # ONNX Runtime's CPU arena (models.session.ARENA_MODES): "shrink" gives memory back after
    # large calls (docs/operating.md, "Memory")
    model_arena: ArenaMode = "shrink"
    max_message_bytes: int = 16 * MiB
    # HTTP/2 streams per connection. Past it a client waits for a free stream (the server's
    # overload protection, which refuses them with UNAVAILABLE "Stream removed", is off).
    max_concurrent_streams: int = 4096
    # Unary RPCs running at once in this process; past it a call is answered at once with
    # RESOURCE_EXHAUSTED + RetryInfo (health and reflection are never shed). Below
    # max_concurrent_streams, so a flood on one connection meets this cap, not the transport's.
    max_in_flight_rpcs: int = 2048
    # > 0: servers close connections older than this (after a grace), so clients re-resolve
    # DNS and find new replicas; 0 = never (the gRPC default)
    max_connection_age_s: float = 0.0
    grace_period_s: float = 10.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # CA the search service trusts for its downstream stages
    auth_token: str = dataclasses.field(default="", repr=False)  # never printed
    metrics_port: int = -1  # -1 = off, 0 = any free port
    log_format: str = "json"
    access_log: str = "errors"  # "off", "errors" (calls that did not end OK) or "all"
    tracing: str = "off"  # "off", "otlp" or "console" (needs the `tracing` extra)

    def describe(self) -> dict[str, object]:
        """Settings as printed at start; the token shows only whether it is set."""
        shown = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "auth_token"
        }
        shown["auth_token"] = "set" if self.auth_token else "unset"
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in shown.items()}


def _env(name: str, default: str) -> str:
    return os.environ.get(f"NEURALIR_{name.upper()}", default)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag also reads NEURALIR_<FLAG> from the environment (flag wins)."""
    d = ServerSettings()
    add = parser.add_argument
    add("--host", default=_env("host", d.host))
    add("--port", type=int, default=int(_env("port", str(d.port))))
    add("--encoder-model", type=Path, default=Path(_env("encoder_model", str(d.encoder_model))))
    add(
        "--rerank-model",
        action="append",
        default=None,
        metavar="NAME=DIR",
        help="reranker manifest directory, repeatable; the first is the default "
        "(env NEURALIR_RERANK_MODELS, comma-separated; default: "
        f"default={d.rerank_models[0][1]}, and small={DEFAULT_MODELS_DIR}/cross-encoder-small/int8 "
        "where built)",
    )
    add("--index-dir", type=Path, default=Path(_env("index_dir", str(d.index_dir))))
    add("--encoder-address", default=_env("encoder_address", ""))
    add("--index-address", default=_env("index_address", ""))
    add("--rerank-address", default=_env("rerank_address", ""))
    add(
        "--local-stages",
        choices=LOCAL_STAGE_TRANSPORTS,
        default=_env("local_stages", d.local_stages),
        help="how the search service calls stages served by the same process: direct calls "
        "(inprocess, the default) or loopback gRPC (grpc: what a separate deployment pays)",
    )
    add(
        "--shard-timeout-ms",
        type=int,
        default=int(_env("shard_timeout_ms", str(d.shard_timeout_ms))),
        help="with several index addresses: time a shard has before the search goes on "
        "without it and flags the response partial (capped by the caller's deadline; 0 = none)",
    )
    add(
        "--fusion",
        choices=FUSIONS,
        default=_env("fusion", d.fusion),
        help="hybrid mode's fusion when a request sets none: reciprocal rank fusion or a convex "
        "combination of normalised scores",
    )
    add(
        "--fusion-weight",
        type=float,
        default=float(_env("fusion_weight", str(d.fusion_weight))),
        help="convex fusion's weight of the dense list, 0 to 1, when a request sets none",
    )
    add(
        "--fusion-normalization",
        choices=NORMALIZATIONS,
        default=_env("fusion_normalization", d.fusion_normalization),
        help="how convex fusion normalises each list's scores",
    )
    add("--encoder-threads", type=int, default=int(_env("encoder_threads", str(d.encoder_threads))))
    add("--rerank-threads", type=int, default=int(_env("rerank_threads", str(d.rerank_threads))))
    add("--index-threads", type=int, default=int(_env("index_threads", str(d.index_threads))))
    add("--batching", choices=("on", "off"), default=_env("batching", "on"))
    # Defaults come from ServerSettings, so a flag and the dataclass cannot drift apart.
    enc, rr = d.encoder_batching, d.rerank_batching

    def add_int(flag: str, default: int) -> None:
        name = flag.removeprefix("--").replace("-", "_")
        add(flag, type=int, default=int(_env(name, str(default))))

    add_int("--encoder-max-batch", enc.max_batch_items)
    add_int("--encoder-max-wait-us", enc.max_wait_us)
    add_int("--rerank-max-batch", rr.max_batch_items)
    add_int("--rerank-max-wait-us", rr.max_wait_us)
    add_int("--encoder-max-batch-tokens", enc.max_batch_tokens)
    add_int("--rerank-max-batch-tokens", rr.max_batch_tokens)
    add(
        "--model-arena",
        choices=ARENA_MODES,
        default=_env("model_arena", d.model_arena),
        help="ONNX Runtime's CPU memory arena: shrink (give memory back after large calls), "
        "default (keeps its peak), same-as-requested, off",
    )
    add_int("--encoder-queue", enc.max_queue_items)
    add_int("--rerank-queue", rr.max_queue_items)
    add_int("--max-message-mib", d.max_message_bytes // MiB)
    add_int("--max-concurrent-streams", d.max_concurrent_streams)
    add_int("--max-in-flight-rpcs", d.max_in_flight_rpcs)
    add("--grace-period", type=float, default=float(_env("grace_period", str(d.grace_period_s))))
    add(
        "--max-connection-age-s",
        type=float,
        default=float(_env("max_connection_age_s", str(d.max_connection_age_s))),
        help="close client connections after this long (clients then re-resolve DNS and reach "
        "replicas added since); 0 = never",
    )
    add("--tls-cert", type=Path, default=_optional_path(_env("tls_cert", "")))
    add("--tls-key", type=Path, default=_optional_path(_env("tls_key", "")))
    add("--tls-client-ca", type=Path, default=_optional_path(_env("tls_client_ca", "")))
    add(
        "--auth-token-file",
        type=Path,
        default=_optional_path(_env("auth_token_file", "")),
        help="file holding the shared bearer token (or env NEURALIR_AUTH_TOKEN)",
    )
    add("--metrics-port", type=int, default=int(_env("metrics_port", "-1")))
    add("--log-format", choices=("json", "text"), default=_env("log_format", "json"))
    add(
        "--access-log",
        choices=("off", "errors", "all"),
        default=_env("access_log", d.access_log),
        help="log a line per RPC: all, only those not OK (default), or none",
    )
    add(
        "--tracing",
        choices=("off", "otlp", "console"),
        default=_env("tracing", d.tracing),
        help="OpenTelemetry traces (needs the `tracing` extra; OTEL_* variables configure it)",
    )


def _optional_path(value: str) -> Path | None:
    return Path(value) if value else None


def default_rerank_models(models_dir: Path = DEFAULT_MODELS_DIR) -> tuple[tuple[str, Path], ...]:
    """The 6-layer reranker as "default", and the small one as "small" where it was built
    (`neuralir models build` builds both): callers choose per request."""
    models = [("default", models_dir / "cross-encoder" / "int8")]
    small = models_dir / "cross-encoder-small" / "int8"
    if (small / "manifest.json").is_file():
        models.append(("small", small))
    return tuple(models)


def _rerank_models(values: Sequence[str] | None) -> tuple[tuple[str, Path], ...]:
    raw = list(values or [])
    if not raw and os.environ.get("NEURALIR_RERANK_MODELS"):
        raw = os.environ["NEURALIR_RERANK_MODELS"].split(",")
    if not raw:
        return default_rerank_models()
    pairs = []
    for value in raw:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = "default", value
        pairs.append((name.strip(), Path(path.strip())))
    return tuple(pairs)


def settings_from_args(args: argparse.Namespace, services: Sequence[str]) -> ServerSettings:
    batching_on = args.batching == "on"
    token = os.environ.get("NEURALIR_AUTH_TOKEN", "")
    if args.auth_token_file is not None:
        token = args.auth_token_file.read_text().strip()
    return ServerSettings(
        services=tuple(services),
        host=args.host,
        port=args.port,
        encoder_model=args.encoder_model,
        rerank_models=_rerank_models(args.rerank_model),
        index_dir=args.index_dir,
        encoder_address=args.encoder_address,
        index_address=args.index_address,
        rerank_address=args.rerank_address,
        local_stages=args.local_stages,
        shard_timeout_ms=args.shard_timeout_ms,
        fusion=args.fusion,
        fusion_weight=args.fusion_weight,
        fusion_normalization=args.fusion_normalization,
        encoder_threads=args.encoder_threads,
        rerank_threads=args.rerank_threads,
        index_threads=args.index_threads,
        encoder_batching=BatchingSettings(
            batching_on,
            args.encoder_max_batch,
            args.encoder_max_wait_us,
            args.encoder_queue,
            args.encoder_max_batch_tokens,
        ),
        rerank_batching=BatchingSettings(
            batching_on,
            args.rerank_max_batch,
            args.rerank_max_wait_us,
            args.rerank_queue,
            args.rerank_max_batch_tokens,
        ),
        model_arena=args.model_arena,
        max_message_bytes=args.max_message_mib * MiB,
        max_concurrent_streams=args.max_concurrent_streams,
        max_in_flight_rpcs=args.max_in_flight_rpcs,
        max_connection_age_s=args.max_connection_age_s,
        grace_period_s=args.grace_period,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        auth_token=token,
        metrics_port=args.metrics_port,
        log_format=args.log_format,
        access_log=args.access_log,
        tracing=args.tracing,
    )
