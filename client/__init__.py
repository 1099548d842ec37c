"""Typed Python client for the neural-ir-serve services (sync and asyncio)."""

from neuralir.client.client import AsyncNeuralIRClient, ClientSettings, NeuralIRClient
from neuralir.client.types import (
    EncodeResult,
    IndexHit,
    Passage,
    RerankedPassage,
    RerankResult,
    SearchHit,
    SearchResult,
    StageTime,
)

__all__ = [
    "AsyncNeuralIRClient",
    "ClientSettings",
    "EncodeResult",
    "IndexHit",
    "NeuralIRClient",
    "Passage",
    "RerankResult",
    "RerankedPassage",
    "SearchHit",
    "SearchResult",
    "StageTime",
]
