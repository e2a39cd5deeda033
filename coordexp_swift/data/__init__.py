"""Data layer: the JSONL record contract and validation (SPEC §1), canonical CoordJSON rendering, the synthetic
shapes set (:mod:`.shapes`) and COCO import/export (:mod:`.coco`).

Only the light modules are re-exported here; ``shapes`` and ``coco`` (PIL, numpy) are imported explicitly.
"""

from coordexp_swift.data.coordjson import (
    assistant_payload,
    render_object,
    render_objects,
    render_record,
    to_swift_row,
)
from coordexp_swift.data.records import (
    GTObject,
    Record,
    check_stage2_encoding,
    iter_jsonl,
    object_sort_key,
    validate_record,
)

__all__ = [
    "GTObject",
    "Record",
    "assistant_payload",
    "check_stage2_encoding",
    "iter_jsonl",
    "object_sort_key",
    "render_object",
    "render_objects",
    "render_record",
    "to_swift_row",
    "validate_record",
]
