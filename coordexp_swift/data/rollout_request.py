"""The raw generation request of a dataset row, kept for rollout backends that encode it themselves (vLLM).

ms-swift consumes a row's ``messages`` and ``images`` when it encodes it; every other column reaches the trainer in
``encoded["_extra_kwargs"]`` (``remove_unused_columns: false``). The coordexp dataset loader
(:func:`coordexp_swift.data.swift_loader.load_rows`) therefore also writes :data:`ROLLOUT_REQUEST_COLUMN`: a JSON
string ``{"messages": [system?, user], "images": [absolute paths]}`` — the row's messages without the assistant
answer, and its images — from which Channel-B builds the vLLM requests.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

__all__ = ["ROLLOUT_REQUEST_COLUMN", "rollout_request"]

#: the row column carrying the generation request (JSON string, Arrow-safe).
ROLLOUT_REQUEST_COLUMN = "coordexp_rollout_request"


def rollout_request(row: Mapping[str, Any]) -> str:
    """:data:`ROLLOUT_REQUEST_COLUMN` of an ms-swift row: its messages without the assistant turn, and its images."""
    messages = [dict(m) for m in row["messages"] if m.get("role") != "assistant"]
    return json.dumps({"messages": messages, "images": list(row.get("images") or [])}, ensure_ascii=False)
