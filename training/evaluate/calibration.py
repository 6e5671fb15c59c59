"""Calibration of the tag heads' confidences (offline: export and ``benchmarks/explanations.py``).

``fit_temperature`` / ``temperature_scale`` rescale a head's probabilities (``softmax(log p / T)``,
the same as dividing its logits by ``T``); export records one ``T`` per level in the bundle's metrics
(``tag_temperatures``), and ``benchmarks/explanations.py`` fits ``T`` per level on validation
recommendations and reports the calibration error with and without. The service serves the heads'
own probabilities and never imports this module.
"""

from __future__ import annotations

import numpy as np

__all__ = ["expected_calibration_error", "fit_temperature", "temperature_scale"]


def temperature_scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row-wise for probabilities ``(N, C)``: dividing the logits by ``T``.
    The argmax (so the path shown) never changes; ``T > 1`` softens, ``T < 1`` sharpens."""
    logits = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The ``T`` in [0.05, 20] minimising the negative log-likelihood of ``labels`` (N,) under
    ``temperature_scale(probs, T)`` (N, C): a grid over log T (one parameter, no optimiser needed)."""
    if probs.shape[0] == 0:
        return 1.0
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 241))
    rows = np.arange(probs.shape[0])
    logits = np.log(np.clip(probs, 1e-12, 1.0))  # ``temperature_scale``'s first step, done once
    nll = []
    for t in grid:  # ``temperature_scale(probs, t)`` at the labels only
        scaled = logits / t
        scaled -= scaled.max(axis=1, keepdims=True)
        exp = np.exp(scaled)
        nll.append(-np.log(exp[rows, labels] / exp.sum(axis=1) + 1e-12).mean())
    return float(grid[int(np.argmin(nll))])


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = 10
) -> tuple[float, list[dict[str, float]]]:
    """ECE over equal-width confidence bins, and the reliability diagram's bins
    (``lo``, ``hi``, ``count``, ``confidence``, ``accuracy``; empty bins left out)."""
    if confidence.shape[0] == 0:
        return 0.0, []
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)  # (N,)
    ece, diagram = 0.0, []
    for b in range(bins):
        member = which == b
        count = int(member.sum())
        if count == 0:
            continue
        conf, acc = float(confidence[member].mean()), float(correct[member].mean())
        ece += count / confidence.shape[0] * abs(acc - conf)
        diagram.append(
            {"lo": edges[b], "hi": edges[b + 1], "count": count, "confidence": conf, "accuracy": acc}
        )
    return float(ece), diagram
