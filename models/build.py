"""One command builds every model: export -> quantize -> verify -> manifest, idempotently.

    neuralir models build [--out artifacts/models] [--bi-encoder SRC] [--cross-encoder SRC]

Layout written (each directory has its own manifest.json and loads on its own):
    OUT/bi-encoder/fp32/   OUT/bi-encoder/int8/
    OUT/cross-encoder/fp32/   OUT/cross-encoder/int8/
    OUT/cross-encoder-small/fp32/   OUT/cross-encoder-small/int8/   (when a small one is given)
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


def _is_current(directory: Path, fingerprint: str) -> bool:
    try:
        manifest = load_manifest(directory)
    except ManifestError:
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
    """Builds fp32 and int8 ONNX models for `spec` under out_root/<directory or kind>/;
    returns both."""
    from neuralir.models.export import export_onnx, quantization_settings, quantize_int8

    base = out_root / (spec.directory or spec.kind)
    fp32_dir, int8_dir = base / "fp32", base / "int8"
    fingerprint = source_fingerprint(spec.source)
    if not force and _is_current(fp32_dir, fingerprint) and _is_current(int8_dir, fingerprint):
        log.info("%s: up to date in %s (checksums verified), skipping", spec.name, base)
        return load_manifest(fp32_dir), load_manifest(int8_dir)

    base.mkdir(parents=True, exist_ok=True)
    recipe = _recipe(spec.source)
    with tempfile.TemporaryDirectory(dir=base, prefix=".build-") as tmp:
        fp32_stage, int8_stage = Path(tmp) / "fp32", Path(tmp) / "int8"
        log.info("%s: exporting %s to ONNX", spec.name, spec.source)
        export_onnx(spec.source, spec.kind, fp32_stage)
        log.info("%s: quantizing to int8 (per_channel=%s)", spec.name, spec.per_channel)
        quantize_int8(fp32_stage, int8_stage, spec.per_channel, spec.weight_matmuls_only)
        for name in ("tokenizer.json", "config.json"):
            shutil.copy2(fp32_stage / name, int8_stage / name)
        for stray in fp32_stage.glob("*"):
            if stray.name not in (*RUNTIME_FILES, "config.json"):
                (shutil.rmtree if stray.is_dir() else Path.unlink)(stray)

        fp32 = _manifest_for(spec, fp32_stage, "fp32", fingerprint, recipe=recipe)
        _manifest_for(spec, int8_stage, "int8", fingerprint, recipe=recipe)
        figures = _verify(spec.kind, fp32_stage, int8_stage)
        log.info("%s: int8 vs fp32: %s", spec.name, figures)
        quantization = quantization_settings(spec.per_channel, spec.weight_matmuls_only)
        int8 = _manifest_for(
            spec,
            int8_stage,
            "int8",
            fingerprint,
            recipe=recipe,
            quantization=quantization,
            verify=figures,
        )
        _publish(fp32_stage, fp32_dir)
        _publish(int8_stage, int8_dir)
    return fp32, int8


def _verify(kind: ModelKind, fp32_dir: Path, int8_dir: Path) -> dict[str, float]:
    if kind == "bi-encoder":
        return verify_bi_encoder(Encoder(fp32_dir), Encoder(int8_dir))
    return verify_cross_encoder(CrossEncoder(fp32_dir), CrossEncoder(int8_dir))


def _cross_encoder_spec(
    source: str, directory: str = "", weight_matmuls_only: bool = False
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
    )


def build_all(
    out_root: Path,
    bi_encoder_source: str,
    cross_encoder_source: str,
    force: bool = False,
    small_cross_encoder_source: str | None = None,
) -> dict[str, Manifest]:
    """Builds the default models (and a small reranker when given a source); returns the int8
    and fp32 manifests by role ("bi-encoder", "cross-encoder", "cross-encoder-small")."""
    specs = {
        "bi-encoder": ModelSpec("all-MiniLM-L6-v2", "bi-encoder", bi_encoder_source, 256, "mean"),
        "cross-encoder": _cross_encoder_spec(cross_encoder_source),
    }
    if small_cross_encoder_source:
        # Three layers average less quantization noise out: its attention MatMuls stay fp32.
        specs[SMALL_CROSS_ENCODER] = _cross_encoder_spec(
            small_cross_encoder_source, SMALL_CROSS_ENCODER, weight_matmuls_only=True
        )
    built: dict[str, Manifest] = {}
    for role, spec in specs.items():
        fp32, int8 = build_model(spec, out_root, force=force)
        built[f"{role}/fp32"], built[f"{role}/int8"] = fp32, int8
    return built
