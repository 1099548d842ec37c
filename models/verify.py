"""Compare an int8 model with its fp32 original on a fixed text set; fail below thresholds."""

from __future__ import annotations

import numpy as np

from neuralir.models.cross_encoder import CrossEncoder
from neuralir.models.encoder import Encoder

MIN_MEAN_COSINE = 0.99
MIN_SPEARMAN = 0.95


class VerificationError(RuntimeError):
    """The quantized model disagrees with fp32 more than the thresholds allow."""


# Fixed texts: queries and passages of mixed length and domain, so the check sees short
# and long inputs, numbers and rare words.
VERIFY_QUERIES = [
    "how do I run a shell command and capture its output",
    "treatment of type 2 diabetes with metformin",
    "boundary layer transition on a flat plate at supersonic speed",
    "what is the capital of France",
    "vitamin D deficiency and bone fractures in older adults",
    "indexing and retrieval of scientific documents",
    "parse JSON from a string in Python",
    "does aspirin reduce the risk of heart attack",
]
VERIFY_PASSAGES = [
    "subprocess.run executes a command, waits for it to finish and can capture stdout and stderr.",
    "Metformin lowers blood glucose by reducing hepatic glucose production in type 2 diabetes.",
    "Measurements of skin friction show transition of the boundary layer at Mach 2.5 on a plate.",
    "Paris is the capital and most populous city of France.",
    "Low serum 25-hydroxyvitamin D was associated with a higher rate of hip fractures in women "
    "over 65 years in a prospective cohort of 9,704 participants.",
    "Automatic indexing assigns descriptors to documents so that a retrieval system can match "
    "them against user requests; precision and recall measure its effectiveness.",
    "json.loads deserializes a str instance containing a JSON document to a Python object.",
    "Daily low-dose aspirin reduced the incidence of myocardial infarction in a randomized trial.",
    "The heat equation describes how temperature evolves in a solid over time.",
    "Tokenizers split text into subword units before it is fed to a transformer network.",
    "A sonnet is a fourteen-line poem written in iambic pentameter.",
    "Gradient descent updates parameters in the direction that lowers the loss.",
]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks_a = np.argsort(np.argsort(a)).astype(np.float64)
    ranks_b = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def verify_bi_encoder(fp32: Encoder, int8: Encoder) -> dict[str, float]:
    texts = VERIFY_QUERIES + VERIFY_PASSAGES
    reference = fp32.encode(texts)
    quantized = int8.encode(texts)
    cosines = (reference * quantized).sum(axis=1)
    q_ref, p_ref = fp32.encode(VERIFY_QUERIES), fp32.encode(VERIFY_PASSAGES, "passage")
    q_int, p_int = int8.encode(VERIFY_QUERIES), int8.encode(VERIFY_PASSAGES, "passage")
    agreement = float(np.mean((q_ref @ p_ref.T).argmax(1) == (q_int @ p_int.T).argmax(1)))
    figures = {
        "texts": float(len(texts)),
        "mean_cosine": float(cosines.mean()),
        "min_cosine": float(cosines.min()),
        "nearest_neighbour_agreement": agreement,
    }
    if figures["mean_cosine"] < MIN_MEAN_COSINE:
        raise VerificationError(
            f"int8 bi-encoder mean cosine to fp32 is {figures['mean_cosine']:.4f} "
            f"< {MIN_MEAN_COSINE}: quantization lost too much (is per_channel on?)"
        )
    return figures


def verify_cross_encoder(fp32: CrossEncoder, int8: CrossEncoder) -> dict[str, float]:
    spearmans, top1 = [], []
    all_ref, all_int = [], []
    for query in VERIFY_QUERIES:
        reference = fp32.score(query, VERIFY_PASSAGES)
        quantized = int8.score(query, VERIFY_PASSAGES)
        spearmans.append(_spearman(reference, quantized))
        top1.append(float(reference.argmax() == quantized.argmax()))
        all_ref.append(reference)
        all_int.append(quantized)
    figures = {
        "lists": float(len(VERIFY_QUERIES)),
        "mean_spearman": float(np.mean(spearmans)),
        "min_spearman": float(np.min(spearmans)),
        "pooled_spearman": _spearman(np.concatenate(all_ref), np.concatenate(all_int)),
        "top1_agreement": float(np.mean(top1)),
        "max_abs_logit_diff": float(
            np.max(np.abs(np.concatenate(all_ref) - np.concatenate(all_int)))
        ),
    }
    if figures["mean_spearman"] < MIN_SPEARMAN:
        raise VerificationError(
            f"int8 cross-encoder mean Spearman to fp32 is {figures['mean_spearman']:.4f} "
            f"< {MIN_SPEARMAN}: quantization changed the rankings too much"
        )
    return figures
