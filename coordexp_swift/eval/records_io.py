"""Reading ``gt_vs_pred.jsonl`` (SPEC §7.2) without ever crashing on a bad line.

Each non-blank line must be one JSON value; lines that do not decode are not records: they are returned as
:class:`MalformedRecord` entries naming the file, the 1-based line number and the decoder's reason, so the
evaluator can count and report them. Everything that does decode is passed through untouched (the evaluator
validates the record's fields and names its problems itself).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordexp_swift.data.records import DuplicateKeyError, no_duplicate_keys


@dataclass(frozen=True)
class MalformedRecord:
    """A record excluded from evaluation: ``location`` (e.g. ``"preds.jsonl:7"`` or ``"record 3"``) + reason;
    ``counter`` names the evaluator counter it is counted in (``malformed_records`` or ``missing_size``)."""

    location: str
    reason: str
    counter: str = "malformed_records"

    def as_dict(self) -> dict[str, str]:
        return {"location": self.location, "reason": self.reason}


@dataclass(frozen=True)
class RecordsFile:
    """Decoded lines of a JSONL file.

    ``records[i]`` came from ``locations[i]`` (``"<path>:<line>"``); ``malformed`` lists lines that were not
    valid JSON; ``n_lines`` counts non-blank lines (= ``len(records) + len(malformed)``).
    """

    path: str
    records: tuple[Any, ...]
    locations: tuple[str, ...]
    malformed: tuple[MalformedRecord, ...]

    @property
    def n_lines(self) -> int:
        return len(self.records) + len(self.malformed)


def read_gt_vs_pred(path: str | Path) -> RecordsFile:
    """Read a ``gt_vs_pred.jsonl`` file; undecodable lines become :class:`MalformedRecord` entries.

    Raises FileNotFoundError (with the path) if the file is missing; a file that is not UTF-8 is decoded with
    replacement characters, so its bad lines are reported as malformed rather than raising. A leading UTF-8 BOM is
    accepted; a line whose JSON repeats a key, nests too deep or holds an over-long integer is malformed.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"gt_vs_pred file not found: {str(p)!r}; pass --pred_jsonl <existing .jsonl>")
    records: list[Any] = []
    locations: list[str] = []
    malformed: list[MalformedRecord] = []
    with p.open("r", encoding="utf-8-sig", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            loc = f"{p}:{lineno}"
            try:
                records.append(json.loads(line, object_pairs_hook=no_duplicate_keys))
            except json.JSONDecodeError as exc:
                malformed.append(MalformedRecord(loc, f"invalid JSON ({exc.msg} at column {exc.colno})"))
                continue
            except DuplicateKeyError as exc:
                malformed.append(MalformedRecord(loc, f"duplicate key {str(exc)[:60]!r} in a JSON object"))
                continue
            except (ValueError, RecursionError) as exc:  # int-string limit, nesting deeper than the parser's stack
                malformed.append(MalformedRecord(loc, f"invalid JSON ({type(exc).__name__}: {str(exc)[:100]})"))
                continue
            locations.append(loc)
    return RecordsFile(str(p), tuple(records), tuple(locations), tuple(malformed))
