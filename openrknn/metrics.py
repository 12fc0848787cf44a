"""Similarity measures between a reference tensor and a test tensor, with one rule for all-zero tensors."""

from __future__ import annotations

import numpy as np


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity in float64. Two all-zero tensors agree (1.0); one all-zero tensor against another does
    not (0.0)."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def euclidean(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b||_2 in float64."""
    return float(np.linalg.norm(np.ravel(a).astype(np.float64) - np.ravel(b).astype(np.float64)))
