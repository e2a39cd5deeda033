"""ms-swift dataset loader for coordexp JSONL files (SPEC §1): strict validation with file:line errors.

:func:`register_datasets` (called by the plugin at start-up, before the model loads) resolves every ``dataset`` /
``val_dataset`` entry the way ms-swift does (``DatasetSyntax``: ``file.jsonl``, ``file.jsonl#N`` subsample;
relative paths against the **working directory**, like every other ms-swift path) and registers
:class:`CoordExpDatasetLoader` for it, so ``swift sft`` reads the raw records through
:func:`coordexp_swift.data.records.load_records` (never Arrow's JSON reader, whose errors name neither line nor
object) and renders the SPEC §1.4 runtime sample; ms-swift then applies ``#N``. An entry that is not a local file
(missing file, directory, hub id) fails here with a clear message.

Bad samples (``custom.data.on_bad_sample``), all found before the first training step: a missing image file when
the file is read (:func:`load_rows`); a sample whose encoding (the run's ms-swift template, images included — what
training sees) is longer than ``max_length``, or that the template cannot encode, in the start-up check
:func:`install_start_check` adds to ``SwiftSft._encode_dataset``: one ``template.encode`` per train/val record with
``lazy_tokenize`` (ms-swift's multimodal default) or streaming; with ``lazy_tokenize: false`` ms-swift's own up-front
encode is used and only the samples it dropped are re-encoded, to name them. ``fail`` (default) raises ``ValueError``
naming ``<file>:<line>``, the reason, the length and the limit, and the fix; ``skip`` leaves them out, logs one INFO
line with per-reason counts at start, writes every skipped sample to ``<output_dir>/coordexp_skipped.jsonl`` and the
counts to ``coordexp_config.json`` (``data_skipped``, :func:`skip_summary`). ms-swift's ``strict`` is switched on,
so no sample is ever silently replaced by a random other one during training (:func:`install_encode_guard`).
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import re
import time
from collections import Counter
from typing import Any, Iterable, Iterator

from swift.dataset.loader import DatasetLoader

from coordexp_swift.config.text_literals import tokenizer_added_literals
from coordexp_swift.data.coordjson import to_swift_row
from coordexp_swift.data.records import load_records
from coordexp_swift.data.rollout_request import ROLLOUT_REQUEST_COLUMN, rollout_request

logger = logging.getLogger("coordexp_swift")
info_logger = logging.getLogger("swift.coordexp_swift")  # a child of ms-swift's logger: its INFO lines are shown

#: row column carrying ``"<abs file>:<line>"`` of the record (for over-length messages).
WHERE_COLUMN = "coordexp_where"
SKIPPED_FILE = "coordexp_skipped.jsonl"

#: every sample left out in this process (``on_bad_sample: skip``), in order: ``{"reason", "where", "length",
#: "max_length", "detail"}`` (``length`` / ``max_length``: ints for ``over_length``, else None).
SKIPPED: list[dict[str, Any]] = []
#: reason -> count of :data:`SKIPPED` (kept equal to it by :func:`_note_skip`).
SKIP_COUNTS: dict[str, int] = {}
_STATE: dict[str, Any] = {"args": None, "policy": "fail", "checking": False, "list_path": None}
#: per-record log lines for skipped samples before the rest goes to the detailed list only.
LOG_LIMIT = 10


def _note_skip(reason: str, where: str, detail: str, length: int | None = None,
               max_length: int | None = None) -> None:
    entry = {"reason": reason, "where": where, "length": length, "max_length": max_length, "detail": detail}
    SKIPPED.append(entry)
    SKIP_COUNTS[reason] = SKIP_COUNTS.get(reason, 0) + 1
    if len(SKIPPED) <= LOG_LIMIT:
        logger.warning("coordexp data: %s: %s (skipped: %s) [custom.data.on_bad_sample: skip]", where, detail, reason)
    elif len(SKIPPED) == LOG_LIMIT + 1:
        logger.warning("coordexp data: more samples skipped; the full list goes to <output_dir>/%s", SKIPPED_FILE)


def skip_summary() -> dict[str, Any]:
    """``coordexp_config.json`` → ``data_skipped``: ``{"counts": reason -> n, "total": n, "list": path of
    <output_dir>/coordexp_skipped.jsonl or None}`` (the list is written under ``on_bad_sample: skip`` only)."""
    return {"counts": dict(SKIP_COUNTS), "total": len(SKIPPED), "list": _STATE["list_path"]}


def load_rows(path: str, *, stage: str, user_prompt: str, system_prompt: str | None, field_order: str,
              literals: frozenset[str] | None = None, on_bad_sample: str = "fail") -> list[dict]:
    """All kept records of ``path`` as ms-swift rows; ``metadata`` / ``assistant_payload`` as JSON strings
    (Arrow-safe); skipped records counted in :data:`SKIP_COUNTS` and logged. ValueError names file and line."""
    kwargs = {} if literals is None else {"literals": literals}
    loaded = load_records(path, stage=stage, on_bad_sample=on_bad_sample, **kwargs)
    for reason, where, detail in loaded.skipped_samples:
        _note_skip(reason, where, detail)
    if loaded.skipped:
        logger.warning("coordexp data: %s: skipped %s (custom.data.on_bad_sample: skip)", loaded.path,
                       dict(loaded.skipped))
    rows = []
    for rec, where in zip(loaded.records, loaded.locations):
        row = to_swift_row(rec, user_prompt=user_prompt, system_prompt=system_prompt, field_order=field_order)
        row["metadata"] = json.dumps(row.get("metadata") or {}, ensure_ascii=False)
        row["assistant_payload"] = json.dumps(row["assistant_payload"], ensure_ascii=False)
        row[WHERE_COLUMN] = where
        row[ROLLOUT_REQUEST_COLUMN] = rollout_request(row)
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
    """Start-up: check every dataset entry (ValueError for non-files), register the strict loader for each, switch
    ms-swift's ``strict`` on (no silent random replacement of a failing sample), and install the start-up sample
    check and the encode guard (``custom.data.on_bad_sample`` decides fail or skip)."""
    from swift.dataset import DatasetMeta, register_dataset

    for path, _n in check_dataset_entries(ctx.dataset_entries()):
        register_dataset(DatasetMeta(dataset_path=path, loader=CoordExpDatasetLoader), exist_ok=True)
    policy = ctx.config.custom.data.on_bad_sample
    args = _find_swift_args()
    _STATE["args"], _STATE["policy"] = args, policy
    if args is not None and not getattr(args, "strict", True):
        args.strict = True  # ms-swift's non-strict path swallows a failing sample or replaces it by a random one
    install_start_check()
    install_encode_guard()


# --- the start-up sample check ----------------------------------------------------------------------------------

_LENGTH_RE = re.compile(r"Current length of row\((\d+)\)")


def fix_hint(reason: str = "over_length") -> str:
    """The fix named in a ``fail`` message for ``reason``."""
    fix = ("raise max_length, shrink the images (max_pixels)" if reason == "over_length"
           else "fix or remove the record (e.g. re-save its image)")
    return f"{fix}, or set custom.data.on_bad_sample: skip to leave such samples out, counted"


def bad_sample_message(where: str, reason: str, detail: str, length: int | None, max_length: int | None) -> str:
    """``"<file>:<line>: over_length: encoded length N > max_length M ..."`` (or ``encode_error: ...``)."""
    if reason == "over_length":
        size = f"encoded length {length}" if length is not None else "encoded length"
        return (f"{where}: over_length: {size} > max_length {max_length} (the run's template encoding, image "
                f"tokens included)")
    return f"{where}: {reason}: {detail}"


def encode_outcome(template: Any, row: Any) -> tuple[str, int | None, str] | None:
    """``None`` when ``template.encode(row, return_length=True)`` (exactly the call ms-swift's datasets make)
    succeeds; else ``(reason, length, detail)``: ``over_length`` (ms-swift's ``MaxLengthError``; ``length`` read
    from its message) or ``encode_error`` (any other exception, e.g. an unreadable image)."""
    from swift.template import MaxLengthError

    checking, _STATE["checking"] = _STATE["checking"], True  # the encode guard lets MaxLengthError through
    try:
        template.encode(row, return_length=True)
    except MaxLengthError as exc:
        m = _LENGTH_RE.search(str(exc))
        return "over_length", int(m.group(1)) if m else None, str(exc)
    except Exception as exc:  # noqa: BLE001 - any failure to encode a sample is reported with its file and line
        return "encode_error", None, f"{type(exc).__name__}: {exc}"
    finally:
        _STATE["checking"] = checking
    return None


def _where_of(row: Any, index: int) -> str:
    if isinstance(row, dict) and row.get(WHERE_COLUMN):
        return str(row[WHERE_COLUMN])
    return f"sample {index} (no {WHERE_COLUMN} column)"


def scan_rows(template: Any, rows: Iterable[Any]) -> Iterator[tuple[int, str, str, int | None, str]]:
    """``(index, where, reason, length, detail)`` of every row :func:`encode_outcome` rejects."""
    for i, row in enumerate(rows):
        bad = encode_outcome(template, row)
        if bad is not None:
            yield (i, _where_of(row, i), *bad)


def apply_policy(bad: list[tuple[int, str, str, int | None, str]], *, max_length: int | None, policy: str,
                 name: str) -> None:
    """``fail``: ``ValueError`` naming the first bad sample (file:line, reason, length, limit, fix) and listing up to
    20 more; ``skip``: each is recorded (:data:`SKIPPED`)."""
    if not bad:
        return
    if policy == "skip":
        for _i, where, reason, length, detail in bad:
            if reason == "over_length":
                _note_skip(reason, where, f"encoded length {length} > max_length {max_length}", length, max_length)
            else:
                _note_skip(reason, where, detail)
        return
    _i, where, reason, length, detail = bad[0]
    msg = f"{bad_sample_message(where, reason, detail, length, max_length)}; {fix_hint(reason)}"
    if len(bad) > 1:
        more = "; ".join(f"{w} ({r}{f', {n} tokens' if n is not None else ''})" for _, w, r, n, _d in bad[1:21])
        msg += f". {len(bad) - 1} more {name} samples fail the same check: {more}{'; ...' if len(bad) > 21 else ''}"
    raise ValueError(msg)


def check_dataset(template: Any, dataset: Any, *, policy: str, name: str) -> Any:
    """Encode every sample of ``dataset`` once (an ``HfDataset`` or a streaming ``IterableDataset``) and apply the
    policy; returns the dataset without the skipped samples (the same object when none is)."""
    from datasets import Dataset as HfDataset

    if dataset is None:
        return None
    t0 = time.perf_counter()
    bad = list(scan_rows(template, dataset))
    n = len(dataset) if isinstance(dataset, HfDataset) else None
    info_logger.info("coordexp data: encoded %s %s samples once to check them against max_length %s in %.1f s",
                     n if n is not None else "all", name, template.max_length, time.perf_counter() - t0)
    apply_policy(bad, max_length=template.max_length, policy=policy, name=name)
    if not bad:
        return dataset
    if isinstance(dataset, HfDataset):
        drop = {i for i, *_ in bad}
        if len(drop) == len(dataset):
            raise ValueError(f"every {name} sample was left out ({dict(Counter(r for _, _, r, _, _ in bad))}); "
                             f"see the skipped samples above")
        return dataset.select([i for i in range(len(dataset)) if i not in drop])
    gone = {w for _, w, *_ in bad}
    return dataset.filter(lambda row: str(row.get(WHERE_COLUMN)) not in gone)


def _dropped_rows(before: Any, after: Any) -> list[tuple[int, Any]]:
    """Rows of ``before`` that ms-swift's up-front encode left out of ``after`` (matched by :data:`WHERE_COLUMN`,
    as a multiset: ``#N`` may repeat a record)."""
    kept = Counter() if after is None else Counter(after[WHERE_COLUMN])
    out = []
    for i, where in enumerate(before[WHERE_COLUMN]):
        if kept[where] > 0:
            kept[where] -= 1
        else:
            out.append((i, before[i]))
    return out


def _write_skip_list(args: Any) -> None:
    from swift.utils import is_master

    out_dir = getattr(args, "output_dir", None)
    if not out_dir:
        return
    path = os.path.join(os.path.abspath(out_dir), SKIPPED_FILE)
    _STATE["list_path"] = path
    if not is_master():
        return
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for entry in SKIPPED:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")


def checked_encode_dataset(original: Any, sft: Any, train_dataset: Any, val_dataset: Any, pre_process: bool = True):
    """``SwiftSft._encode_dataset`` with every train/val sample checked before training (see the module doc)."""
    args, template = sft.args, sft.template
    policy = _STATE["policy"]
    if not pre_process:
        return original(sft, train_dataset, val_dataset, pre_process)
    check_val = not getattr(args, "predict_with_generate", False)  # ms-swift encodes val for training only then
    _STATE["checking"] = True
    try:
        if not args.lazy_tokenize and not args.streaming:
            # ms-swift encodes every sample up front here: let it drop what it cannot encode, then name those
            strict = args.strict
            args.strict = False
            try:
                out = original(sft, train_dataset, val_dataset, pre_process)
            finally:
                args.strict = strict
            for name, before, after, check in (("train", train_dataset, out[0], True),
                                               ("val", val_dataset, out[1], check_val)):
                if before is None or not check:
                    continue
                if after is not None and WHERE_COLUMN not in after.column_names:
                    raise RuntimeError(f"ms-swift's encoded {name} dataset lost the {WHERE_COLUMN} column")
                dropped = _dropped_rows(before, after)
                bad = []
                for i, row in dropped:
                    outcome = encode_outcome(template, row)
                    if outcome is None:  # cannot happen: ms-swift dropped it for a reason
                        raise RuntimeError(f"{_where_of(row, i)}: dropped by ms-swift's encode but encodes now")
                    bad.append((i, _where_of(row, i), *outcome))
                apply_policy(bad, max_length=template.max_length, policy=policy, name=name)
                if after is None:
                    raise ValueError(f"every {name} sample was left out; see the skipped samples above")
        else:
            train_dataset = check_dataset(template, train_dataset, policy=policy, name="train")
            if check_val:
                val_dataset = check_dataset(template, val_dataset, policy=policy, name="val")
            out = original(sft, train_dataset, val_dataset, pre_process)
    finally:
        _STATE["checking"] = False
    if policy == "skip":
        _write_skip_list(args)
        info_logger.info("coordexp data: %d samples left out before training (custom.data.on_bad_sample: skip): %s; "
                         "list: %s", len(SKIPPED), dict(SKIP_COUNTS) or "none", _STATE["list_path"])
    return out


def install_start_check() -> None:
    """Wrap ``swift.pipelines.train.sft.SwiftSft._encode_dataset`` once with :func:`checked_encode_dataset`."""
    from swift.pipelines.train.sft import SwiftSft

    if getattr(SwiftSft._encode_dataset, "_coordexp_check", False):
        return
    original = SwiftSft._encode_dataset

    def _encode_dataset(self, train_dataset, val_dataset, pre_process=True):
        return checked_encode_dataset(original, self, train_dataset, val_dataset, pre_process)

    _encode_dataset._coordexp_check = True  # type: ignore[attr-defined]
    SwiftSft._encode_dataset = _encode_dataset


def _where(inputs: Any) -> str:
    if isinstance(inputs, dict):
        if inputs.get(WHERE_COLUMN):
            return str(inputs[WHERE_COLUMN])
        return f"sample_id {inputs.get('sample_id')} (image {inputs.get('images')})"
    return "a sample"


def install_encode_guard() -> None:
    """Wrap ``swift.template.Template.encode`` once: outside the start-up check, a ``MaxLengthError`` (a sample
    longer than ``max_length`` that the check did not see, e.g. a dataset built after it) becomes
    ``ValueError("<file>:<line>: over_length: ...")`` whatever the policy (the check already removed the samples
    ``skip`` leaves out, so nothing is skipped silently mid-training). Idempotent."""
    from swift.template import MaxLengthError, Template

    if getattr(Template.encode, "_coordexp_guard", False):
        return
    original = Template.encode

    def encode(self, inputs, *args, **kwargs):
        try:
            return original(self, inputs, *args, **kwargs)
        except MaxLengthError as exc:
            if _STATE["checking"]:
                raise
            m = _LENGTH_RE.search(str(exc))
            msg = bad_sample_message(_where(inputs), "over_length", str(exc), int(m.group(1)) if m else None,
                                     self.max_length)
            raise ValueError(f"{msg}; {fix_hint()}") from None

    encode._coordexp_guard = True  # type: ignore[attr-defined]
    Template.encode = encode
