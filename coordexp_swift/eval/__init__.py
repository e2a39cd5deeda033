"""Evaluation: the shared COCO evaluator (SPEC §7.2), the offline CLI and visualisation.

``evaluate_records`` is exported lazily so that importing ``coordexp_swift.eval`` costs nothing; pycocotools is
imported only when an evaluation actually runs.
"""
from __future__ import annotations

from typing import Any

__all__ = ["evaluate_records"]


def __getattr__(name: str) -> Any:
    if name == "evaluate_records":
        from coordexp_swift.eval.coco_eval import evaluate_records

        return evaluate_records
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
