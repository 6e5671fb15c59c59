"""Evaluation of generator runs: full ranking (constrained beam top-k), sampled-100, breakdowns, tables.

``metrics`` (pure numpy metric maths), ``ranking`` (scoring users with a model), ``report`` (one run's
metrics and merging them into metrics.json), ``calibration`` (the tag heads' temperatures and their
calibration error) and ``cli`` (``python -m training evaluate``).
"""

from training.evaluate.metrics import ranking_metrics, sampled_ranks, target_ranks

__all__ = ["ranking_metrics", "sampled_ranks", "target_ranks"]
