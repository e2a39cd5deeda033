"""Metric naming contract (SPEC §8.1) and DDP-safe aggregation (SPEC §8.3)."""
from coordexp_swift.metrics.buffer import MetricsBuffer
from coordexp_swift.metrics.keys import (
    RATE_RULES,
    F1Rule,
    KeyClass,
    RatioRule,
    classify,
    is_log_weight,
    naming_violations,
    rate_rule,
)

__all__ = ["MetricsBuffer", "RATE_RULES", "F1Rule", "KeyClass", "RatioRule", "classify", "is_log_weight",
           "naming_violations", "rate_rule"]
