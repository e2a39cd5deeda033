"""ms-swift dataset loader for coordexp JSONL files (SPEC §1): strict validation with file:line errors.

:func:`register_datasets` (called by the plugin at start-up, before the model loads) resolves every ``dataset`` /
``val_dataset`` entry the way ms-swift does (``DatasetSyntax``: ``file.jsonl``, ``file.jsonl#N`` subsample;
relative paths against the **working directory**, like every other ms-swift path) and registers
:class:`CoordExpDatasetLoader` for it, so ``swift sft`` reads the raw records through
:func:`coordexp_swift.data.records.load_records` (never Arrow's JSON reader, whose errors name neither line nor
object) and renders the SPEC §1.4 runtime sample; ms-swift then applies ``#N``. An entry that is not a local file
(missing file, directory, hub id) fails here with a clear message.

Bad samples (``custom.data.on_bad_sample``): a missing image file fails (or is skipped and counted) when the file is
read; a sample longer than ``max_length`` is caught where ms-swift encodes it (:func:`install_encode_guard`): ``fail``
turns ms-swift's silent skip into an error naming file, line and length (ms-swift's ``strict`` is switched on so the
error is not swallowed); ``skip`` logs it and appends it to ``<output_dir>/coordexp_skipped.jsonl``.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
from typing import Any

from swift.dataset.loader import DatasetLoader

from coordexp_swift.config.text_literals import tokenizer_added_literals
from coordexp_swift.data.coordjson import to_swift_row
from coordexp_swift.data.records import load_records

logger = logging.getLogger("coordexp_swift")

#: row column carrying ``"<abs file>:<line>"`` of the record (for over-length messages).
WHERE_COLUMN = "coordexp_where"
SKIPPED_FILE = "coordexp_skipped.jsonl"

#: reason -> count of samples left out in this process (``on_bad_sample: skip``); also in coordexp_config.json.
SKIP_COUNTS: dict[str, int] = {}
_STATE: dict[str, Any] = {"args": None, "policy": "fail", "guard": False}


def load_rows(path: str, *, stage: str, user_prompt: str, system_prompt: str | None, field_order: str,
              literals: frozenset[str] | None = None, on_bad_sample: str = "fail") -> list[dict]:
    """All kept records of ``path`` as ms-swift rows; ``metadata`` / ``assistant_payload`` as JSON strings
    (Arrow-safe); skipped records counted in :data:`SKIP_COUNTS` and logged. ValueError names file and line."""
    kwargs = {} if literals is None else {"literals": literals}
    loaded = load_records(path, stage=stage, on_bad_sample=on_bad_sample, **kwargs)
    for msg in loaded.skip_messages:
        logger.warning("coordexp data: %s", msg)
    for reason, n in loaded.skipped.items():
        SKIP_COUNTS[reason] = SKIP_COUNTS.get(reason, 0) + n
    if loaded.skipped:
        logger.warning("coordexp data: %s: skipped %s (custom.data.on_bad_sample: skip)", loaded.path,
                       dict(loaded.skipped))
    rows = []
    for rec, where in zip(loaded.records, loaded.locations):
        row = to_swift_row(rec, user_prompt=user_prompt, system_prompt=system_prompt, field_order=field_order)
        row["metadata"] = json.dumps(row.get("metadata") or {}, ensure_ascii=False)
        row["assistant_payload"] = json.dumps(row["assistant_payload"], ensure_ascii=False)
        row[WHERE_COLUMN] = where
        rows.append(row)
    return rows


class CoordExpDatasetLoader(DatasetLoader):
    """``DatasetLoader`` whose local-file path goes through the strict coordexp reader."""

    def _load_dataset_path(self, dataset_path, dataset_meta):
        from datasets import Dataset as HfDataset

        from coordexp_swift.run_context import current

        ctx = current()
        cfg = ctx.config
        custom = cfg.custom
        ns = ctx.swift_namespace
        literals = tokenizer_added_literals(getattr(ns, "model", None)) if ns is not None else None
        rows = load_rows(dataset_path, stage="stage1" if cfg.variant == "stage1" else "stage2",
                         user_prompt=custom.user_prompt, system_prompt=custom.system_prompt,
                         field_order=custom.object_field_order, literals=literals,
                         on_bad_sample=custom.data.on_bad_sample)
        return HfDataset.from_list(rows)


def resolve_dataset_entry(entry: str) -> tuple[str, int | None]:
    """``(path as ms-swift will look it up, #N or None)`` for one ``dataset`` entry; ``ValueError`` when the entry
    is not a local JSONL file (relative paths resolve against the working directory, as in ms-swift)."""
    from swift.dataset.dataset_syntax import DatasetSyntax

    try:
        syntax = DatasetSyntax.parse(entry)
    except ValueError as exc:  # e.g. '#abc'
        raise ValueError(f"dataset entry {entry!r}: cannot parse it ({exc}); use 'file.jsonl' or "
                         f"'file.jsonl#N'") from None
    path = syntax.dataset
    if os.path.isfile(path):
        if syntax.subsets:
            raise ValueError(f"dataset entry {entry!r}: subsets are not supported by the coordexp loader")
        return path, syntax.dataset_sample
    cwd = os.getcwd()
    if os.path.isdir(path):
        raise ValueError(f"dataset entry {entry!r}: {os.path.abspath(path)} is a directory; the coordexp loader "
                         f"reads one JSONL file per entry")
    looks_local = path.endswith((".jsonl", ".json")) or path.startswith((".", "/", "~"))
    looks_hub = syntax.use_hf is not None or path.count("/") == 1
    if looks_local or not looks_hub:
        raise ValueError(f"dataset entry {entry!r}: file not found: {os.path.abspath(path)} (relative paths are "
                         f"resolved against the working directory {cwd}, as ms-swift does)")
    raise ValueError(f"dataset entry {entry!r} looks like a hub dataset id, which is not supported by the coordexp "
                     f"loader: it reads local JSONL files (SPEC §1); download and convert the data first")


def check_dataset_entries(entries: list[str]) -> list[tuple[str, int | None]]:
    """:func:`resolve_dataset_entry` of every entry (first problem raises)."""
    return [resolve_dataset_entry(e) for e in entries]


def _find_swift_args() -> Any:
    """The ms-swift arguments object whose ``__post_init__`` is importing the plugin (None when not found)."""
    from swift.arguments import BaseArguments

    frame = inspect.currentframe()
    while frame is not None:
        obj = frame.f_locals.get("self")
        if isinstance(obj, BaseArguments):
            return obj
        frame = frame.f_back
    return None


def register_datasets(ctx: Any) -> None:
    """Start-up: check every dataset entry (ValueError for non-files), register the strict loader for each, apply
    ``custom.data.on_bad_sample`` to ms-swift (``fail`` → ``strict``), and install the encode guard."""
    from swift.dataset import DatasetMeta, register_dataset

    for path, _n in check_dataset_entries(ctx.dataset_entries()):
        register_dataset(DatasetMeta(dataset_path=path, loader=CoordExpDatasetLoader), exist_ok=True)
    policy = ctx.config.custom.data.on_bad_sample
    args = _find_swift_args()
    _STATE["args"], _STATE["policy"] = args, policy
    if args is not None and policy == "fail" and not getattr(args, "strict", True):
        args.strict = True  # ms-swift's non-strict path would swallow (or silently replace) a failing sample
    install_encode_guard()


def _record_skip(reason: str, where: str, detail: str) -> None:
    SKIP_COUNTS[reason] = SKIP_COUNTS.get(reason, 0) + 1
    logger.warning("coordexp data: %s: %s (skipped: %s; custom.data.on_bad_sample: skip)", where, detail, reason)
    args = _STATE["args"]
    out_dir = getattr(args, "output_dir", None)
    if out_dir:
        try:
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, SKIPPED_FILE), "a", encoding="utf-8") as f:
                f.write(json.dumps({"reason": reason, "where": where, "detail": detail}) + "\n")
        except OSError as exc:
            logger.warning("coordexp data: cannot append to %s (%s)", SKIPPED_FILE, exc)


def _where(inputs: Any) -> str:
    if isinstance(inputs, dict):
        if inputs.get(WHERE_COLUMN):
            return str(inputs[WHERE_COLUMN])
        return f"sample_id {inputs.get('sample_id')} (image {inputs.get('images')})"
    return "a sample"


def install_encode_guard() -> None:
    """Wrap ``swift.template.Template.encode`` once: a ``MaxLengthError`` (sample longer than ``max_length``)
    becomes ``ValueError("<file>:<line>: over_length: ...")`` under ``on_bad_sample: fail``, or is logged, counted
    and re-raised for ms-swift to skip under ``skip``. Idempotent."""
    from swift.template import MaxLengthError, Template

    if getattr(Template.encode, "_coordexp_guard", False):
        return
    original = Template.encode

    def encode(self, inputs, *args, **kwargs):
        try:
            return original(self, inputs, *args, **kwargs)
        except MaxLengthError as exc:
            where = _where(inputs)
            if _STATE["policy"] == "skip":
                _record_skip("over_length", where, str(exc))
                raise
            raise ValueError(f"{where}: over_length: {exc} (raise max_length, shorten the sample, or set "
                             f"custom.data.on_bad_sample: skip to leave such samples out, counted)") from None

    encode._coordexp_guard = True  # type: ignore[attr-defined]
    Template.encode = encode
