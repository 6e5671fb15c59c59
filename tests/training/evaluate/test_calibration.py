"""Calibration of the tag heads (``training.evaluate.calibration``)."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluate.calibration import expected_calibration_error, fit_temperature, temperature_scale


def test_calibration_helpers() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 5)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=p) for p in temperature_scale(probs, 2.0)])  # truth is softer
    assert fit_temperature(probs, labels) == pytest.approx(2.0, rel=0.15)
    assert (temperature_scale(probs, 2.0).argmax(1) == probs.argmax(1)).all()
    ece, diagram = expected_calibration_error(np.array([0.9, 0.9, 0.2, 0.2]), np.array([1, 0, 0, 0]))
    assert ece == pytest.approx(0.5 * 0.4 + 0.5 * 0.2)
    assert [(b["count"], b["accuracy"]) for b in diagram] == [(2, 0.0), (2, 0.5)]
