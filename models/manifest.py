"""The manifest that describes a built model directory; servers load models only through it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1

ModelKind = Literal["bi-encoder", "cross-encoder"]


class ManifestError(RuntimeError):
    """A manifest is missing, malformed, or does not match the files beside it."""


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Manifest:
    name: str
    kind: ModelKind
    source: str
    # sha256 over the source weights and tokenizer: a rebuild is skipped while it matches
    source_fingerprint: str
    onnx_file: str
    # file name -> sha256 of every file the runtime reads
    files: dict[str, str]
    max_length: int
    # bi-encoder only: embedding size, pooling ("mean" or "cls") and L2 normalisation
    dimension: int = 0
    pooling: str = "mean"
    normalize: bool = True
    query_prefix: str = ""
    passage_prefix: str = ""
    precision: str = "int8"
    quantization: dict[str, Any] = dataclasses.field(default_factory=dict)
    verify: dict[str, Any] = dataclasses.field(default_factory=dict)
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    # free-form facts from the model's recipe (e.g. a reranker's recommended blend weight)
    recipe: dict[str, Any] = dataclasses.field(default_factory=dict)
    # which ONNX graph this is: {"name": "plain"} (the export as is) or "fused" (transformer-
    # optimized before int8), with the optimizer's settings, operator counts and the ONNX
    # Runtime session optimizers the runtime must leave off ("session_disabled_optimizers")
    graph: dict[str, Any] = dataclasses.field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def model_id(self) -> str:
        """Stable id: name plus the first 12 hex digits of the ONNX file's checksum."""
        return f"{self.name}@{self.files[self.onnx_file][:12]}"

    @property
    def graph_name(self) -> str:
        """ "fused" or "plain" (manifests written before graphs were recorded are plain)."""
        return str(self.graph.get("name", "plain"))

    @property
    def session_disabled_optimizers(self) -> tuple[str, ...]:
        return tuple(self.graph.get("session_disabled_optimizers", ()))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    def write(self, directory: Path) -> Path:
        path = directory / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)
        return path


def read_manifest(directory: Path) -> Manifest:
    """Reads `directory/manifest.json` without checking the files (see `load_manifest`)."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(
            f"no {MANIFEST_NAME} in {directory}: build the model with `neuralir models build`"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise ManifestError(
            f"{path} has schema_version {raw.get('schema_version')!r}, expected {SCHEMA_VERSION}"
        )
    known = {field.name for field in dataclasses.fields(Manifest)}
    try:
        return Manifest(**{key: value for key, value in raw.items() if key in known})
    except TypeError as exc:
        raise ManifestError(f"{path} is missing fields: {exc}") from exc


def load_manifest(directory: Path) -> Manifest:
    """Reads a manifest and refuses it when any listed file is missing or its checksum differs."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest.onnx_file not in manifest.files:
        raise ManifestError(
            f"{directory}: manifest does not list its ONNX file {manifest.onnx_file}"
        )
    for name, expected in manifest.files.items():
        path = directory / name
        if not path.is_file():
            raise ManifestError(f"{directory}: file {name} listed in the manifest is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ManifestError(
                f"{directory}: checksum of {name} is {actual[:12]}…, the manifest says "
                f"{expected[:12]}…; the file was changed or corrupted: rebuild the model"
            )
    return manifest
