"""ms-swift dataset loader for coordexp JSONL files (SPEC §1): strict validation with file:line errors.

Registered by the plugin for every path given as ``dataset`` / ``val_dataset``, so ``swift sft --dataset FILE``
reads the raw records through :func:`coordexp_swift.data.records.iter_jsonl` (never Arrow's JSON reader, whose
errors name neither line nor object) and renders the SPEC §1.4 runtime sample.
"""
from __future__ import annotations

import json

from swift.dataset.loader import DatasetLoader

from coordexp_swift.data.coordjson import to_swift_row
from coordexp_swift.data.records import iter_jsonl


def load_rows(path: str, *, stage: str, user_prompt: str, system_prompt: str | None, field_order: str) -> list[dict]:
    """All records of ``path`` as ms-swift rows; ``metadata`` / ``assistant_payload`` as JSON strings (Arrow-safe)."""
    rows = []
    for rec in iter_jsonl(path, stage=stage):
        row = to_swift_row(rec, user_prompt=user_prompt, system_prompt=system_prompt, field_order=field_order)
        row["metadata"] = json.dumps(row.get("metadata") or {}, ensure_ascii=False)
        row["assistant_payload"] = json.dumps(row["assistant_payload"], ensure_ascii=False)
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no records")
    return rows


class CoordExpDatasetLoader(DatasetLoader):
    """``DatasetLoader`` whose local-file path goes through the strict coordexp reader."""

    def _load_dataset_path(self, dataset_path, dataset_meta):
        from datasets import Dataset as HfDataset

        from coordexp_swift.run_context import current

        cfg = current().config
        custom = cfg.custom
        rows = load_rows(dataset_path, stage="stage1" if cfg.variant == "stage1" else "stage2",
                         user_prompt=custom.user_prompt, system_prompt=custom.system_prompt,
                         field_order=custom.object_field_order)
        return HfDataset.from_list(rows)
