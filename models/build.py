"""One command builds every model: export -> quantize -> verify -> manifest, idempotently.

    neuralir models build [--out artifacts/models] [--bi-encoder SRC] [--cross-encoder SRC]
                          [--graph fused|plain] [--only ROLE ...]

An adapted bi-encoder (`neuralir models adapt`) takes the same path into a tree of its own:
    neuralir models build --bi-encoder CHECKPOINT --only bi-encoder --out artifacts/adapted/NAME

Layout written (each directory has its own manifest.json and loads on its own):
    OUT/bi-encoder/fp32/   OUT/bi-encoder/int8/   OUT/bi-encoder/int8-plain/
    OUT/cross-encoder/fp32/   OUT/cross-encoder/int8/   OUT/cross-encoder/int8-plain/
    OUT/cross-encoder-small/...   (the same, when a small one is given)

int8/ is the served model: by default the fused graph (models/optimize.py: transformer-optimized
fp32, then int8) when it passes verify, else the plain one (the export quantized as is), with the
reason in its manifest. int8-plain/ is the plain graph beside a fused int8/, for side-by-side
benchmarks and as a fallback to serve; `--graph plain` serves the plain graph and writes no
int8-plain/.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from neuralir.models.cross_encoder import CrossEncoder
from neuralir.models.encoder import Encoder
from neuralir.models.manifest import (
    Manifest,
    ManifestError,
    ModelKind,
    load_manifest,
    sha256_file,
)
from neuralir.models.sources import source_fingerprint
from neuralir.models.verify import verify_bi_encoder, verify_cross_encoder

log = logging.getLogger(__name__)

RUNTIME_FILES = ("model.onnx", "tokenizer.json")
GRAPHS = ("fused", "plain")
DEFAULT_GRAPH = "fused"
PLAIN_DIR = "int8-plain"  # the plain int8 graph beside a fused int8/


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: ModelKind
    source: str
    max_length: int = 256
    pooling: str = "mean"
    per_channel: bool = True
    directory: str = ""  # under the output root; default: the kind
    weight_matmuls_only: bool = False  # keep attention's activation MatMuls in fp32
    graph: str = DEFAULT_GRAPH  # "fused" (when it passes verify) or "plain"; see GRAPHS


SMALL_CROSS_ENCODER = "cross-encoder-small"


def _versions() -> dict[str, str]:
    names = (
        "onnxruntime",
        "optimum",
        "optimum-onnx",
        "onnx",
        "transformers",
        "torch",
        "tokenizers",
    )
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _dimension(source_config: dict[str, Any]) -> int:
    return int(source_config.get("hidden_size", 0))


def _is_current(directory: Path, fingerprint: str, graph: str | None = None) -> bool:
    """The manifest loads (checksums match) and was built from this source; with `graph`, also
    for this graph choice (a fused build that fell back to plain is current for "fused")."""
    try:
        manifest = load_manifest(directory)
    except ManifestError:
        return False
    if graph is not None and manifest.graph.get("requested", manifest.graph_name) != graph:
        return False
    return manifest.source_fingerprint == fingerprint


def _manifest_for(
    spec: ModelSpec, directory: Path, precision: str, fingerprint: str, **extra: Any
) -> Manifest:
    """Describes the runtime files in `directory` and writes the manifest beside them."""
    manifest = Manifest(
        name=spec.name,
        kind=spec.kind,
        source=spec.source,
        source_fingerprint=fingerprint,
        onnx_file="model.onnx",
        files={name: sha256_file(directory / name) for name in RUNTIME_FILES},
        max_length=spec.max_length,
        dimension=_dimension(_read_json(directory / "config.json"))
        if spec.kind == "bi-encoder"
        else 0,
        pooling=spec.pooling if spec.kind == "bi-encoder" else "none",
        normalize=spec.kind == "bi-encoder",
        precision=precision,
        versions=_versions(),
        **extra,
    )
    manifest.write(directory)
    return manifest


def _publish(staging: Path, target: Path) -> None:
    """Replaces `target` with the finished `staging` directory (a rename, never a partial copy)."""
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(target)


def _recipe(source: str) -> dict[str, Any]:
    return _read_json(Path(source) / "recipe.json") if Path(source).is_dir() else {}


def build_model(spec: ModelSpec, out_root: Path, force: bool = False) -> tuple[Manifest, Manifest]:
    """Builds fp32 and int8 ONNX models for `spec` under out_root/<directory or kind>/ (and the
    plain int8 graph in int8-plain/ when int8/ is fused); returns the fp32 and int8 manifests."""
    from neuralir.models.export import export_onnx

    if spec.graph not in GRAPHS:
        raise ValueError(f"unknown graph {spec.graph!r}; choose one of {', '.join(GRAPHS)}")
    base = out_root / (spec.directory or spec.kind)
    fp32_dir, int8_dir, plain_dir = base / "fp32", base / "int8", base / PLAIN_DIR
    fingerprint = source_fingerprint(spec.source)
    if (
        not force
        and _is_current(fp32_dir, fingerprint)
        and _is_current(int8_dir, fingerprint, spec.graph)
    ):
        served = load_manifest(int8_dir)
        if served.graph_name == "plain" or _is_current(plain_dir, fingerprint, "plain"):
            log.info("%s: up to date in %s (checksums verified), skipping", spec.name, base)
            return load_manifest(fp32_dir), served

    base.mkdir(parents=True, exist_ok=True)
    recipe = _recipe(spec.source)
    with tempfile.TemporaryDirectory(dir=base, prefix=".build-") as tmp:
        fp32_stage = Path(tmp) / "fp32"
        log.info("%s: exporting %s to ONNX", spec.name, spec.source)
        export_onnx(spec.source, spec.kind, fp32_stage)
        plain_stage = _quantize_plain(spec, Path(tmp), fp32_stage)
        for stray in fp32_stage.glob("*"):
            if stray.name not in (*RUNTIME_FILES, "config.json"):
                (shutil.rmtree if stray.is_dir() else Path.unlink)(stray)
        fp32 = _manifest_for(spec, fp32_stage, "fp32", fingerprint, recipe=recipe)
        plain = _verify_plain(spec, plain_stage, fp32_stage, fingerprint, recipe)
        fused = None
        if spec.graph == "fused":
            try:
                fused = _build_fused(spec, Path(tmp), fp32_stage, fingerprint, recipe)
            except Exception as exc:  # any failure of the optional graph: serve the plain one
                reason = f"{type(exc).__name__}: {exc}"
                log.warning("%s: fused graph not used, serving plain: %s", spec.name, reason)
                graph = {**plain.graph, "requested": "fused", "fallback_reason": reason}
                plain = dataclasses.replace(plain, graph=graph)
                plain.write(plain_stage)
        _publish(fp32_stage, fp32_dir)
        if fused is not None:
            _publish(Path(tmp) / "int8-fused", int8_dir)
            _publish(plain_stage, plain_dir)
            return fp32, fused
        _publish(plain_stage, int8_dir)
        if plain_dir.exists():  # a plain int8/ needs no plain copy beside it
            shutil.rmtree(plain_dir)
    return fp32, plain


def _int8_stage(fp32_stage: Path, stage: Path) -> None:
    for name in ("tokenizer.json", "config.json"):
        shutil.copy2(fp32_stage / name, stage / name)


def _quantize_plain(spec: ModelSpec, tmp: Path, fp32_stage: Path) -> Path:
    """The export quantized as is, with optimum's quantizer (as before graphs were chosen)."""
    from neuralir.models.export import quantize_int8

    stage = tmp / "int8-plain"
    log.info("%s: quantizing the plain graph to int8 (per_channel=%s)", spec.name, spec.per_channel)
    quantize_int8(fp32_stage, stage, spec.per_channel, spec.weight_matmuls_only)
    _int8_stage(fp32_stage, stage)
    return stage


def _verify_plain(
    spec: ModelSpec, stage: Path, fp32_stage: Path, fingerprint: str, recipe: dict[str, Any]
) -> Manifest:
    """Verifies the plain int8 graph against fp32 and writes its manifest."""
    from neuralir.models.export import quantization_settings
    from neuralir.models.optimize import operator_counts

    graph = {
        "name": "plain",
        "tool": "none: the optimum export as is (ONNX Runtime's own fusions at session load)",
        "operators": operator_counts(stage / "model.onnx"),
    }
    quantization = quantization_settings(spec.per_channel, spec.weight_matmuls_only)
    return _verified_int8(spec, stage, fp32_stage, fingerprint, recipe, graph, quantization)


def _build_fused(
    spec: ModelSpec, tmp: Path, fp32_stage: Path, fingerprint: str, recipe: dict[str, Any]
) -> Manifest:
    """Transformer-optimized fp32 -> dynamic int8, verified against fp32 (raises when it fails)."""
    from neuralir.models.export import fused_quantization_settings, quantize_fused_int8
    from neuralir.models.optimize import operator_counts, optimize_fp32

    stage, optimized = tmp / "int8-fused", tmp / "fused-fp32.onnx"
    stage.mkdir()
    log.info("%s: optimizing the fp32 graph (transformer fusions)", spec.name)
    config = _read_json(fp32_stage / "config.json")
    settings = optimize_fp32(fp32_stage / "model.onnx", optimized, spec.kind, config, spec.pooling)
    log.info("%s: quantizing the fused graph to int8", spec.name)
    quantize_fused_int8(optimized, stage / "model.onnx", spec.per_channel)
    _int8_stage(fp32_stage, stage)
    graph = {
        "name": "fused",
        "requested": "fused",
        **settings,
        "operators": operator_counts(stage / "model.onnx"),
    }
    quantization = fused_quantization_settings(spec.per_channel)
    return _verified_int8(spec, stage, fp32_stage, fingerprint, recipe, graph, quantization)


def _verified_int8(
    spec: ModelSpec,
    stage: Path,
    fp32_stage: Path,
    fingerprint: str,
    recipe: dict[str, Any],
    graph: dict[str, Any],
    quantization: dict[str, Any],
) -> Manifest:
    """Verifies the int8 model in `stage` against fp32 (raises VerificationError below the
    thresholds) and writes its manifest with the figures."""
    _manifest_for(spec, stage, "int8", fingerprint, recipe=recipe, graph=graph)  # to load it
    figures = _verify(spec.kind, fp32_stage, stage)
    log.info("%s: %s int8 vs fp32: %s (%s)", spec.name, graph["name"], figures, graph["operators"])
    return _manifest_for(
        spec,
        stage,
        "int8",
        fingerprint,
        recipe=recipe,
        quantization=quantization,
        verify=figures,
        graph=graph,
    )


def _verify(kind: ModelKind, fp32_dir: Path, int8_dir: Path) -> dict[str, float]:
    if kind == "bi-encoder":
        return verify_bi_encoder(Encoder(fp32_dir), Encoder(int8_dir))
    return verify_cross_encoder(CrossEncoder(fp32_dir), CrossEncoder(int8_dir))


def _cross_encoder_spec(
    source: str, directory: str = "", weight_matmuls_only: bool = False, graph: str = DEFAULT_GRAPH
) -> ModelSpec:
    recipe = _recipe(source)
    name = Path(source).name or source
    return ModelSpec(
        name,
        "cross-encoder",
        source,
        int(recipe.get("max_length", 256)),
        pooling="none",
        directory=directory,
        weight_matmuls_only=weight_matmuls_only,
        graph=graph,
    )


def _bi_encoder_name(source: str) -> str:
    """An adapted checkpoint names itself in its recipe (`neuralir models adapt`)."""
    return str(_recipe(source).get("name") or "all-MiniLM-L6-v2")


def build_all(
    out_root: Path,
    bi_encoder_source: str,
    cross_encoder_source: str,
    force: bool = False,
    small_cross_encoder_source: str | None = None,
    graph: str = DEFAULT_GRAPH,
    only: tuple[str, ...] = (),
) -> dict[str, Manifest]:
    """Builds the default models (and a small reranker when given a source); returns the int8
    and fp32 manifests by role ("bi-encoder", "cross-encoder", "cross-encoder-small").
    `graph`: the served int8 graph, "fused" (falls back to plain when it fails verify) or
    "plain". `only`: the roles to build (default all), e.g. ("bi-encoder",) for an adapted
    bi-encoder built into a tree of its own."""
    specs = {
        "bi-encoder": ModelSpec(
            _bi_encoder_name(bi_encoder_source),
            "bi-encoder",
            bi_encoder_source,
            256,
            "mean",
            graph=graph,
        ),
        "cross-encoder": _cross_encoder_spec(cross_encoder_source, graph=graph),
    }
    if small_cross_encoder_source:
        # Three layers average less quantization noise out: in the plain graph its attention
        # MatMuls stay fp32 (the fused graph keeps them fp32 inside the fused attention anyway).
        specs[SMALL_CROSS_ENCODER] = _cross_encoder_spec(
            small_cross_encoder_source, SMALL_CROSS_ENCODER, weight_matmuls_only=True, graph=graph
        )
    built: dict[str, Manifest] = {}
    for role, spec in specs.items():
        if only and role not in only:
            continue
        fp32, int8 = build_model(spec, out_root, force=force)
        built[f"{role}/fp32"], built[f"{role}/int8"] = fp32, int8
    return built
