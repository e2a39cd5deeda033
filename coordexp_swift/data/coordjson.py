"""Canonical CoordJSON rendering (SPEC §1.3) and the ms-swift runtime sample (SPEC §1.4).

Canonical form, byte for byte::

    {"objects": [{"desc": "red circle", "bbox_2d": [<|coord_12|>, <|coord_40|>, <|coord_80|>, <|coord_99|>]}]}

* separators ``", "`` and ``": "``; no newline or indent; ``{"objects": []}`` when empty;
* ``desc`` is a JSON string produced by ``json.dumps(desc, ensure_ascii=False)`` (quotes/backslashes/control
  characters escaped, non-ASCII kept as is);
* coord literals ``<|coord_k|>`` are **bare** (unquoted), so the text is not JSON until they are substituted;
* ``field_order``: ``"desc_first"`` (default) or ``"geometry_first"`` (the geometry key before ``desc``).

The Stage-2 rollout parser and FN fragment builder must agree with :func:`render_object` (one object's text).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from coordexp_swift.config.text_literals import find_forbidden_literal, find_lone_surrogate
from coordexp_swift.coord.codec import COORD_TOKEN_RE
from coordexp_swift.data.records import GTObject, Record

__all__ = [
    "FIELD_ORDERS",
    "field_slots",
    "FieldOrder",
    "assistant_payload",
    "check_desc_text",
    "render_object",
    "render_objects",
    "render_record",
    "to_swift_row",
]

FieldOrder = Literal["desc_first", "geometry_first"]

#: field order name -> slot order of an object's two fields (``"desc"`` and the object's geometry key).
FIELD_ORDERS: dict[str, tuple[str, str]] = {
    "desc_first": ("desc", "geometry"),
    "geometry_first": ("geometry", "desc"),
}


def field_slots(field_order: str) -> tuple[str, str]:
    """Slot order (``"desc"``, ``"geometry"``) of ``custom.object_field_order``; ValueError naming the valid values."""
    try:
        return FIELD_ORDERS[field_order]
    except KeyError:
        raise ValueError(
            f"unknown object field order {field_order!r} (custom.object_field_order); "
            f"expected one of {', '.join(FIELD_ORDERS)}"
        ) from None


def _ordered_fields(obj: GTObject, field_order: str, desc_value: Any, geometry_value: Any) -> list[tuple[str, Any]]:
    """``[(key, value), (key, value)]`` for ``desc`` and the geometry key, in ``field_order``."""
    slots = {"desc": ("desc", desc_value), "geometry": (obj.geometry, geometry_value)}
    return [slots[name] for name in field_slots(field_order)]


def check_desc_text(desc: str) -> None:
    """``ValueError`` if ``desc`` holds a coord literal, a special-token literal / ms-swift template tag
    (``config.text_literals.FORBIDDEN_LITERALS``) or a lone surrogate: rendered into the answer, the tokenizer
    would read it as a token (or fail to encode it)."""
    lit = find_forbidden_literal(desc)
    if lit is None and COORD_TOKEN_RE.search(desc):
        lit = COORD_TOKEN_RE.search(desc).group(0)
    if lit is not None:
        raise ValueError(f"desc {desc!r} contains the token literal {lit!r}; it cannot be rendered as text")
    if find_lone_surrogate(desc) is not None:
        raise ValueError(f"desc {desc!r} contains a lone surrogate; it cannot be encoded as UTF-8")


def render_object(obj: GTObject, field_order: FieldOrder = "desc_first") -> str:
    """One object's canonical text, e.g. ``{"desc": "red circle", "bbox_2d": [<|coord_1|>, ...]}``.

    Raises ``ValueError`` for a desc that :func:`check_desc_text` rejects."""
    check_desc_text(obj.desc)
    pairs = _ordered_fields(
        obj, field_order, json.dumps(obj.desc, ensure_ascii=False), "[" + ", ".join(obj.tokens()) + "]"
    )
    return "{" + ", ".join(f'"{k}": {v}' for k, v in pairs) + "}"


def render_objects(objects: Iterable[GTObject], field_order: FieldOrder = "desc_first") -> str:
    """The full canonical assistant text ``{"objects": [...]}`` (without ``<|im_end|>``), objects in given order."""
    field_slots(field_order)
    return '{"objects": [' + ", ".join(render_object(o, field_order) for o in objects) + "]}"


def render_record(record: Record, field_order: FieldOrder = "desc_first") -> str:
    """:func:`render_objects` of a record's objects (JSONL order, never re-sorted)."""
    return render_objects(record.objects, field_order)


def assistant_payload(objects: Sequence[GTObject], field_order: FieldOrder = "desc_first") -> dict[str, Any]:
    """``{"objects": [{"desc": ..., "bbox_2d": ["<|coord_k|>", ...]}, ...]}`` with keys in ``field_order``.

    Dict insertion order follows ``field_order``; geometry values are coord-token strings (4 for ``bbox_2d``,
    the flat list for ``poly``). Stage-2 reads its GT only from this payload.
    """
    field_slots(field_order)
    out: list[dict[str, Any]] = [dict(_ordered_fields(o, field_order, o.desc, o.tokens())) for o in objects]
    return {"objects": out}


def to_swift_row(
    record: Record,
    *,
    user_prompt: str,
    system_prompt: str | None = None,
    field_order: FieldOrder = "desc_first",
) -> dict[str, Any]:
    """The ms-swift dataset row for one record (SPEC §1.4).

    ``messages``: optional system turn, user ``"<image>" + user_prompt``, assistant = canonical CoordJSON.
    Also ``images`` (``[absolute path]``), ``width``, ``height``, ``sample_id``, ``metadata`` and
    ``assistant_payload``.
    """
    messages: list[dict[str, str]] = []
    if system_prompt is not None:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": "<image>" + user_prompt})
    messages.append({"role": "assistant", "content": render_record(record, field_order)})
    return {
        "messages": messages,
        "images": [record.image],
        "width": record.width,
        "height": record.height,
        "sample_id": record.sample_id,
        "metadata": record.metadata,
        "assistant_payload": assistant_payload(record.objects, field_order),
    }
