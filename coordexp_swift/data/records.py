"""The JSONL record contract (SPEC §1.1) and its strict validation (SPEC §1.5).

A record on disk (one JSON object per line)::

    {"images": ["images/train_000000.png"], "width": 128, "height": 128,
     "objects": [{"desc": "red circle", "bbox_2d": ["<|coord_12|>", "<|coord_40|>", "<|coord_80|>", "<|coord_99|>"]}],
     "metadata": {...}}

Decisions fixed here:

* Coordinates are norm1000 **bins** (ints 0..999, bin k <-> k/999); a value is either a coord-token string
  ``"<|coord_k|>"`` or an integral JSON number (``3`` or ``3.0``; ``3.5``, booleans, numeric strings rejected).
* ``poly_points`` is an alias of ``poly`` (same flat ``[x1, y1, x2, y2, ...]`` bins, even length >= 6); it is stored
  as geometry ``"poly"``. Giving both ``poly`` and ``poly_points`` is two geometry keys (rejected).
* Object keys are exactly ``desc`` + one geometry key; any other key is rejected.
* Top-level keys other than ``images``/``width``/``height``/``objects``/``summary``/``metadata`` are ignored.
* ``images`` is a list holding exactly one relative path (relative to the JSONL's directory); :func:`iter_jsonl`
  does not touch the image, :func:`load_records` checks that the file exists (``custom.data.on_bad_sample``).
* ``x2 < x1`` / ``y2 < y1`` is checked in Stage-2 only (SPEC §1.5 table); equality is always allowed.
* :func:`iter_jsonl` skips whitespace-only lines; ``sample_id`` is the 0-based *physical* line index
  (``line_number - 1``), so an error or a sample id always points at the right line of the file.
* Text: each line must be UTF-8 (a BOM at the start of the file is accepted); a JSON object may not repeat a key
  (``json`` would keep the last one silently); no string anywhere in a record may hold a lone surrogate (it
  cannot be written as UTF-8 and breaks Arrow); a ``desc`` may not contain a special/added-token literal of the
  tokenizer nor an ms-swift template tag (``config.text_literals``; coord literals have their own message).
* ``width`` / ``height`` are ints in ``1..MAX_IMAGE_SIDE``.
* :func:`load_records` (the one reader of training data: ``validate-config --data`` and the ms-swift loader) adds
  the image-file check and the ``custom.data.on_bad_sample`` policy, and rejects a file without records.

Every ``ValueError`` message starts with the caller's ``where`` (e.g. ``"/abs/train.jsonl:12"``, 1-based line).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from coordexp_swift.config.strict import closest_key
from coordexp_swift.config.text_literals import FORBIDDEN_LITERALS, find_forbidden_literal, find_lone_surrogate
from coordexp_swift.coord.codec import COORD_TOKEN_RE, MAX_BIN, coord_token, parse_coord_token

__all__ = [
    "DuplicateKeyError",
    "GEOMETRY_ARITY",
    "GEOMETRY_KEYS",
    "GTObject",
    "Record",
    "Stage",
    "LoadedRecords",
    "check_stage2_encoding",
    "iter_jsonl",
    "no_duplicate_keys",
    "load_records",
    "object_sort_key",
    "validate_record",
]

Stage = Literal["stage1", "stage2"]
STAGES: tuple[str, ...] = ("stage1", "stage2")

#: geometry key in the JSONL -> canonical geometry name stored on :class:`GTObject`.
GEOMETRY_KEYS: dict[str, str] = {"bbox_2d": "bbox_2d", "poly": "poly", "poly_points": "poly"}
#: geometries each stage accepts.
STAGE_GEOMETRIES: dict[str, frozenset[str]] = {
    "stage1": frozenset({"bbox_2d", "poly"}),
    "stage2": frozenset({"bbox_2d"}),
}
#: human-readable arity per canonical geometry (used in the "bad arity" message).
GEOMETRY_ARITY: dict[str, str] = {
    "bbox_2d": "exactly 4 values [x1, y1, x2, y2]",
    "poly": "a flat list [x1, y1, x2, y2, ...] of even length >= 6",
}
REQUIRED_FIELDS: tuple[str, ...] = ("images", "width", "height", "objects")
#: largest accepted ``width`` / ``height`` in pixels (a bigger value is a data error, not an image).
MAX_IMAGE_SIDE: int = 1 << 20


def _arity_ok(geometry: str, n: int) -> bool:
    if geometry == "bbox_2d":
        return n == 4
    return n >= 6 and n % 2 == 0


@dataclass(frozen=True)
class GTObject:
    """One ground-truth object.

    ``bins``: norm1000 bins (ints in 0..999; bin k <-> k/999 of the image side): ``(x1, y1, x2, y2)`` for
    ``geometry == "bbox_2d"``, flat ``(x1, y1, x2, y2, ...)`` for ``"poly"``.
    """

    desc: str
    geometry: str
    bins: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.geometry not in GEOMETRY_ARITY:
            raise ValueError(f"GTObject.geometry {self.geometry!r}: expected one of {', '.join(GEOMETRY_ARITY)}")
        bins = tuple(self.bins)
        if not _arity_ok(self.geometry, len(bins)):
            raise ValueError(f"GTObject.bins {bins!r}: {self.geometry} needs {GEOMETRY_ARITY[self.geometry]}")
        if not all(type(k) is int and 0 <= k <= MAX_BIN for k in bins):
            raise ValueError(f"GTObject.bins {bins!r}: every bin must be an int in the norm1000 range 0..{MAX_BIN}")
        object.__setattr__(self, "bins", bins)

    def tokens(self) -> list[str]:
        """The bins as coord-token literals ``"<|coord_k|>"``."""
        return [coord_token(k) for k in self.bins]

    def to_json(self) -> dict[str, Any]:
        """The on-disk object (``desc`` then the geometry, values as coord-token strings)."""
        return {"desc": self.desc, self.geometry: self.tokens()}


@dataclass(frozen=True)
class Record:
    """One validated sample.

    ``image`` is the absolute, normalised path; ``width``/``height`` are the pixel size of that image (no runtime
    resize); ``objects`` keep the JSONL order; ``metadata`` is passed through untouched (``{}`` when absent);
    ``sample_id`` is the 0-based line index in the JSONL.
    """

    sample_id: int
    image: str
    width: int
    height: int
    objects: tuple[GTObject, ...]
    metadata: Any = field(default_factory=dict)

    def to_json(self, base_dir: str) -> dict[str, Any]:
        """The on-disk record, with ``images`` relative to ``base_dir`` (the JSONL's directory)."""
        rel = os.path.relpath(self.image, os.path.abspath(base_dir))
        out: dict[str, Any] = {
            "images": [rel.replace(os.sep, "/")],
            "width": self.width,
            "height": self.height,
            "objects": [o.to_json() for o in self.objects],
        }
        if self.metadata:
            out["metadata"] = self.metadata
        return out


def object_sort_key(obj: GTObject) -> tuple[int, int, int, int, str]:
    """Canonical object order: top-left first, ``(y1, x1)`` in bins, ties by ``(y2, x2, desc)``."""
    b = obj.bins
    return (b[1], b[0], b[3], b[2], obj.desc)


def _is_positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _coerce_value(value: Any, *, prefix: str) -> int:
    """One coord value -> bin (int in 0..999); ``prefix`` is ``"<where>: objects[i].<key>[j]"``."""
    fix = f"use '<|coord_k|>' strings or integral numbers in the norm1000 range 0..{MAX_BIN} (convert pixels offline)"
    if isinstance(value, str):
        if COORD_TOKEN_RE.fullmatch(value) is None:
            raise ValueError(f"{prefix}: malformed coord token {value!r}; {fix}")
        try:
            return parse_coord_token(value)
        except ValueError:
            raise ValueError(
                f"{prefix}: coord token {value!r} is outside the norm1000 range 0..{MAX_BIN}; {fix}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{prefix}: value {value!r} ({type(value).__name__}) is not a coord value; {fix}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ValueError(f"{prefix}: value {value!r} is non-integral; {fix}")
    k = value if isinstance(value, int) else int(round(value))  # = int(round(float(x))) without int overflow
    if not 0 <= k <= MAX_BIN:
        raise ValueError(f"{prefix}: value {value!r} is outside the norm1000 range 0..{MAX_BIN}; {fix}")
    return k


_ANY_COORD_LITERAL = re.compile(r"<\|coord_[0-9]+\|>")


def _validate_object(raw: Any, i: int, *, stage: str, where: str,
                     literals: frozenset[str] = FORBIDDEN_LITERALS) -> GTObject:
    at = f"{where}: objects[{i}]"
    if not isinstance(raw, Mapping):
        raise ValueError(f"{at}: an object must be a JSON object with 'desc' and one geometry, got {raw!r}")
    desc = raw.get("desc")
    if not isinstance(desc, str) or not desc.strip():
        raise ValueError(f"{at}.desc: desc must be a non-empty string, got {desc!r}")
    if _ANY_COORD_LITERAL.search(desc):
        raise ValueError(
            f"{at}.desc: desc {desc!r} contains a coord-token literal; descs must be plain text (the tokenizer "
            f"would turn it into a coord token)"
        )
    lit = find_forbidden_literal(desc, literals)
    if lit is not None:
        raise ValueError(
            f"{at}.desc: desc {desc!r} contains the special-token / template-tag literal {lit!r}; descs must be plain "
            f"text (it would put that token inside the answer)"
        )
    others = [k for k in raw if k != "desc"]
    geo_keys = [k for k in others if k in GEOMETRY_KEYS]
    unknown = [k for k in others if k not in GEOMETRY_KEYS]
    if unknown or len(geo_keys) != 1:
        found = ", ".join(repr(k) for k in others) or "none"
        hints = [f"{k!r} -> {c!r}?" for k in unknown if (c := closest_key(k, GEOMETRY_KEYS)) is not None]
        hint = f" (did you mean {', '.join(hints)})" if hints else ""
        raise ValueError(
            f"{at}: an object needs exactly one geometry field (bbox_2d or poly) besides 'desc'; "
            f"found keys {found}{hint}"
        )
    key = geo_keys[0]
    geometry = GEOMETRY_KEYS[key]
    if geometry not in STAGE_GEOMETRIES[stage]:
        raise ValueError(
            f"{at}.{key}: Stage-2 is bbox-only ('{key}' given); filter polygons upstream "
            f"(drop or convert them to bbox_2d before Stage-2)"
        )
    values = raw[key]
    if not isinstance(values, Sequence) or isinstance(values, (str, bytes)):
        raise ValueError(f"{at}.{key}: expected a list with {GEOMETRY_ARITY[geometry]}, got {values!r}")
    if not _arity_ok(geometry, len(values)):
        raise ValueError(
            f"{at}.{key}: bad arity {len(values)}: expected {GEOMETRY_ARITY[geometry]}, got {list(values)!r}"
        )
    bins = tuple(_coerce_value(v, prefix=f"{at}.{key}[{j}]") for j, v in enumerate(values))
    if stage == "stage2":
        x1, y1, x2, y2 = bins
        if x2 < x1 or y2 < y1:
            raise ValueError(
                f"{at}.{key}: invalid bbox ordering {list(bins)} (need x1 <= x2 and y1 <= y2; equality allowed); "
                f"fix the box upstream"
            )
    return GTObject(desc=desc, geometry=geometry, bins=bins)


def validate_record(
    raw: Mapping[str, Any],
    *,
    stage: Stage,
    where: str,
    base_dir: str,
    sample_id: int = 0,
    literals: frozenset[str] = FORBIDDEN_LITERALS,
) -> Record:
    """Validate one raw JSONL record per SPEC §1.1/§1.5 and return a :class:`Record`.

    ``where`` prefixes every error (e.g. ``"/abs/train.jsonl:12"``); ``base_dir`` is the directory the ``images``
    path is relative to; ``sample_id`` is the record's line index (0-based). Raises ``ValueError`` on any
    violation, naming ``objects[i]``, the key and the value. ``literals``: text a desc may not contain (the
    tokenizer's special/added tokens and ms-swift's template tags; default: Qwen3-VL's).
    """
    if stage not in STAGES:
        raise ValueError(f"{where}: unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    rec = f"{where}: record {sample_id}"
    if not isinstance(raw, Mapping):
        raise ValueError(f"{rec}: a record must be a JSON object, got {type(raw).__name__}")
    for name in REQUIRED_FIELDS:
        if name not in raw:
            raise ValueError(f"{rec}: missing required field '{name}' (required: {', '.join(REQUIRED_FIELDS)})")

    images = raw["images"]
    if (
        not isinstance(images, list)
        or len(images) != 1
        or not isinstance(images[0], str)
        or not images[0].strip()
    ):
        raise ValueError(
            f"{rec}: field 'images' must be a list with exactly 1 image path (relative to the JSONL dir), "
            f"got {images!r}"
        )
    if os.path.isabs(images[0]):
        raise ValueError(
            f"{rec}: field 'images' path {images[0]!r} must be relative to the JSONL dir {base_dir!r}, not absolute"
        )
    image = os.path.normpath(os.path.join(os.path.abspath(base_dir), images[0]))

    surrogate = _find_surrogate_path(raw, "")
    if surrogate is not None:
        raise ValueError(f"{rec}: {surrogate} contains a lone surrogate (e.g. an unpaired \\ud800 escape), which "
                         f"cannot be encoded as UTF-8; fix the string upstream")
    for name in ("width", "height"):
        if not _is_positive_int(raw[name]) or raw[name] > MAX_IMAGE_SIDE:
            shown = raw[name] if not isinstance(raw[name], int) or raw[name] < 10**12 else f"{str(raw[name])[:12]}…"
            raise ValueError(f"{rec}: field '{name}' must be an int in 1..{MAX_IMAGE_SIDE} (pixels), got {shown!r}")

    objects_raw = raw["objects"]
    if not isinstance(objects_raw, list):
        raise ValueError(f"{rec}: field 'objects' must be a list, got {type(objects_raw).__name__}")
    if stage == "stage2" and not objects_raw:
        raise ValueError(
            f"{where}: sample_id {sample_id}: no GT objects (Stage-2 needs >= 1 object per sample; "
            f"filter empty records upstream)"
        )
    objects = tuple(_validate_object(o, i, stage=stage, where=where, literals=literals)
                    for i, o in enumerate(objects_raw))
    metadata = raw.get("metadata")
    return Record(
        sample_id=sample_id,
        image=image,
        width=raw["width"],
        height=raw["height"],
        objects=objects,
        metadata={} if metadata is None else metadata,
    )


def _find_surrogate_path(value: Any, path: str) -> str | None:
    """Dotted path of the first string (key or value) in ``value`` holding a lone surrogate, else ``None``."""
    if isinstance(value, str):
        return (path or "a value") if find_lone_surrogate(value) is not None else None
    if isinstance(value, Mapping):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            if isinstance(k, str) and find_lone_surrogate(k) is not None:
                return f"key {sub!r}"
            hit = _find_surrogate_path(v, sub)
            if hit is not None:
                return hit
    elif isinstance(value, list):
        for i, v in enumerate(value):
            hit = _find_surrogate_path(v, f"{path}[{i}]")
            if hit is not None:
                return hit
    return None


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` ``object_pairs_hook`` that raises :class:`DuplicateKeyError` on a repeated key (JSONL agrees
    with the strict YAML loader: a record never silently keeps the last value)."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise DuplicateKeyError(k)
        out[k] = v
    return out


class DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def decode_jsonl_line(raw: bytes, where: str) -> Any | None:
    """One physical JSONL line (bytes) → its JSON value, ``None`` for a blank line; ``ValueError`` starting with
    ``where`` for non-UTF-8 bytes, malformed JSON, duplicate keys, too-deep nesting and over-long integers."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where}: not valid UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1} "
                         f"({exc.reason}); save the file as UTF-8") from None
    if not line.strip():
        return None
    try:
        return json.loads(line, object_pairs_hook=no_duplicate_keys)
    except DuplicateKeyError as exc:
        raise ValueError(f"{where}: duplicate key {exc.key!r} in a JSON object (JSON readers would silently keep "
                         f"the last value); remove one") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # int-string limit, nesting deeper than the parser's stack
        raise ValueError(f"{where}: malformed JSON ({type(exc).__name__}: {str(exc)[:120]})") from None


def iter_jsonl(path: str | os.PathLike[str], *, stage: Stage,
               literals: frozenset[str] = FORBIDDEN_LITERALS) -> Iterator[Record]:
    """Yield validated records of a JSONL file (UTF-8, optional BOM), lazily.

    Whitespace-only lines are skipped; ``sample_id`` = 0-based physical line index; ``images`` are resolved
    against the file's directory. Bad bytes, malformed JSON, duplicate keys or an invalid record raise
    ``ValueError`` starting with ``"<abs path>:<1-based line>"``. A missing file raises ``ValueError`` naming it.
    """
    abspath = os.path.abspath(os.fspath(path))
    base_dir = os.path.dirname(abspath)
    try:
        fh = open(abspath, "rb")
    except OSError as exc:
        raise ValueError(f"{abspath}: cannot read the JSONL file ({exc.strerror or exc})") from None
    with fh:
        for line_no, raw_line in enumerate(fh, start=1):
            if line_no == 1 and raw_line.startswith(b"\xef\xbb\xbf"):
                raw_line = raw_line[3:]
            where = f"{abspath}:{line_no}"
            raw = decode_jsonl_line(raw_line, where)
            if raw is None:
                continue
            yield validate_record(raw, stage=stage, where=where, base_dir=base_dir, sample_id=line_no - 1,
                                  literals=literals)


@dataclass(frozen=True)
class LoadedRecords:
    """What :func:`load_records` read: the kept ``records``, ``locations[i]`` = ``"<abs path>:<line>"`` of
    ``records[i]``, and the skipped samples (``skipped``: reason → count; ``skip_messages``: one line each;
    ``skipped_samples``: one ``(reason, "<abs path>:<line>", detail)`` each, in file order)."""

    path: str
    records: tuple[Record, ...]
    locations: tuple[str, ...]
    skipped: Mapping[str, int]
    skip_messages: tuple[str, ...]
    skipped_samples: tuple[tuple[str, str, str], ...] = ()


#: reasons a sample can be left out for under ``on_bad_sample: skip``: ``missing_image`` (:func:`load_records`);
#: ``over_length`` / ``encode_error`` (the template's own encode, in the start-up pass of ``data.swift_loader``).
SKIP_REASONS: tuple[str, ...] = ("missing_image", "over_length", "encode_error")


def load_records(path: str | os.PathLike[str], *, stage: Stage, literals: frozenset[str] = FORBIDDEN_LITERALS,
                 on_bad_sample: str = "fail") -> LoadedRecords:
    """All records of a training JSONL, checked as training needs them: :func:`iter_jsonl`, then the image file of
    each record must exist (``missing_image``). ``on_bad_sample="fail"``: ``ValueError("<file>:<line>: record
    <id>: image file not found: <path> ...")``; ``"skip"``: the record is left out and counted. A file with no
    (kept) record raises ``ValueError("<file>: no records")``."""
    if on_bad_sample not in ("fail", "skip"):
        raise ValueError(f"custom.data.on_bad_sample: invalid value {on_bad_sample!r}; accepted values: 'fail', "
                         f"'skip'")
    abspath = os.path.abspath(os.fspath(path))
    records: list[Record] = []
    locations: list[str] = []
    skipped: dict[str, int] = {}
    messages: list[str] = []
    samples: list[tuple[str, str, str]] = []
    for rec in iter_jsonl(abspath, stage=stage, literals=literals):
        where = f"{abspath}:{rec.sample_id + 1}"
        if not os.path.isfile(rec.image):
            msg = f"{where}: record {rec.sample_id}: image file not found: {rec.image}"
            if on_bad_sample == "fail":
                raise ValueError(f"{msg} (fix the path, or set custom.data.on_bad_sample: skip to leave such "
                                 f"samples out, counted)")
            skipped["missing_image"] = skipped.get("missing_image", 0) + 1
            messages.append(f"{msg} (skipped: missing_image)")
            samples.append(("missing_image", where, f"record {rec.sample_id}: image file not found: {rec.image}"))
            continue
        records.append(rec)
        locations.append(where)
    if not records:
        detail = f" ({sum(skipped.values())} skipped: {skipped})" if skipped else ""
        raise ValueError(f"{abspath}: no records{detail}")
    return LoadedRecords(abspath, tuple(records), tuple(locations), skipped, tuple(messages), tuple(samples))


def check_stage2_encoding(sample_id: int, n_objects: int, n_coord_tokens: int) -> None:
    """Stage-2 invariant: the encoded assistant text holds exactly ``4 * n_objects`` coord tokens.

    Raises ``ValueError`` naming the sample id and both counts (e.g. a desc that itself contains a coord literal,
    or a template that dropped part of the answer).
    """
    if n_coord_tokens != 4 * n_objects:
        raise ValueError(
            f"sample_id {sample_id}: encoded assistant text has {n_coord_tokens} coord tokens but {n_objects} GT "
            f"objects need 4*{n_objects} = {4 * n_objects} (Stage-2 is bbox-only); check that no desc contains a "
            f"'<|coord_k|>' literal and that the template keeps the whole answer"
        )
