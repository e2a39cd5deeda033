"""COCO bbox evaluation of ``gt_vs_pred`` records (SPEC §7.2); shared by the offline CLI and the Stage-2 eval
step (SPEC §7.1: trainers call :func:`evaluate_records` and read ``result["metrics"]["bbox_AP"]``).

Record (one per image): ``image`` (str), ``width``/``height`` (int > 0, pixels), ``coord_mode`` (``norm1000`` |
``pixel``), ``gt`` and ``pred`` (lists of ``{desc, bbox_2d}``; preds may carry ``score``), optional ``errors``.

- ``norm1000``: ``bbox_2d`` values are bins k ∈ 0..999 (integral numbers or ``"<|coord_k|>"`` strings), mapped to
  pixels by SPEC §1.2: ``x = round(k/999·(W−1))`` clamped to ``[0, W−1]`` (y with H).
- ``pixel``: finite numbers, used as-is (no clamping).

An object is kept iff (checked in this order, the first failure is counted): it has exactly one geometry field
and that field is a 4-value ``bbox_2d`` (else ``invalid_geometry``); every value parses in its coord mode (else
``invalid_coord``); ``x2 ≥ x1`` and ``y2 ≥ y1`` (else ``invalid_geometry``); the pixel box has non-zero area
(else ``degenerate``); ``desc`` is a string that is non-empty after normalisation (else ``invalid_desc``); a pred's
``score`` is absent/None (→ 1.0) or a finite number (else ``invalid_score``). Preds whose normalised desc is not a
GT category are dropped as ``unknown_dropped``. Records without ``width``/``height`` (or with non-positive /
non-integral ones, or ones above ``MAX_IMAGE_SIDE``) are dropped as ``missing_size``; other unusable records (not an
object, unknown ``coord_mode``, ``gt``/``pred`` not lists, …) as ``malformed_records``; both are NAMED in
``result["malformed"]``. ``empty_pred`` counts evaluated records whose ``pred`` list is empty. Nothing here raises
on bad data.

Categories: normalised GT desc (lowercase, trimmed, ``_`` and ``/`` → space, whitespace collapsed), ids 1, 2, …
by first appearance over records in order. ``image_id`` = index of the record in ``records``. Boxes are pixel
``[x, y, w, h]`` with ``area = w·h`` and ``iscrowd = 0``; detections keep record order, and COCOeval's stable
(mergesort) score sort keeps that order on ties.

Beside them, ``f1_iou50`` (precision / recall / F1 at IoU 0.5, the figure other VLM detectors report; see
:func:`evaluate_records`). The COCOeval implementation is faster-coco-eval when installed (``fast-eval`` extra), else
pycocotools (:func:`resolve_evaluator`); both fill the same arrays.

Metrics ``bbox_{AP,AP50,AP75,APs,APm,APl,AR1,AR10,AR100,ARs,ARm,ARl}`` are read from COCOeval's accumulated
``precision``/``recall`` arrays exactly as ``COCOeval.summarize`` does. AP/AR average over ``iou_thrs`` (COCO's
0.50:0.05:0.95 when None); AP50/AP75 are always at IoU 0.5/0.75 (those thresholds are added to the evaluation
when missing from ``iou_thrs``, without entering the AP average). COCO's −1 sentinel ("no GT in this area range")
is clamped to 0.0, and every metric is 0.0 when there is no valid prediction. pycocotools' prints are captured
and logged at DEBUG level.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from coordexp_swift.coord.codec import COORD_TOKEN_RE, MAX_BIN, bin_to_pixel
from coordexp_swift.eval.records_io import MalformedRecord

logger = logging.getLogger(__name__)

METRIC_KEYS: tuple[str, ...] = tuple(
    f"bbox_{k}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"))
DROP_REASONS: tuple[str, ...] = (
    "invalid_geometry", "invalid_coord", "degenerate", "invalid_desc", "invalid_score", "unknown_dropped")
COUNTER_KEYS: tuple[str, ...] = (
    "records_total", "records_evaluated", "malformed_records", "missing_size", "empty_pred", "record_errors",
    "categories", "gt_objects", "pred_objects", "gt_dropped", "pred_dropped") + DROP_REASONS
GEOMETRY_KEYS: tuple[str, ...] = ("bbox_2d", "poly", "poly_points", "bbox", "polygon", "line", "points")
COCO_DEFAULT_IOU_THRS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
_WS = re.compile(r"\s+")

XYXY = tuple[float, float, float, float]


def normalize_desc(desc: str) -> str:
    """Category key of a desc: lowercase, ``_`` and ``/`` → space, whitespace runs collapsed, trimmed."""
    return _WS.sub(" ", desc.lower().replace("_", " ").replace("/", " ")).strip()


class DroppedObject(ValueError):
    """An object that cannot be evaluated; ``reason`` is one of :data:`DROP_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def is_finite_number(v: Any) -> bool:
    """A JSON number that is finite as a float (a 400-digit integer is not: it overflows)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def _norm1000_to_pixels(values: Sequence[Any], width: int, height: int) -> XYXY:
    bins: list[int] = []
    for v in values:
        if isinstance(v, str):
            m = COORD_TOKEN_RE.fullmatch(v.strip())
            k = int(m.group(1)) if m else None
        elif is_finite_number(v) and float(v).is_integer():
            k = int(v)
        else:
            k = None
        if k is None or not 0 <= k <= MAX_BIN:
            raise DroppedObject("invalid_coord", f"value {_short(v)} is not a bin in the norm1000 range 0..{MAX_BIN}")
        bins.append(k)
    x1, y1, x2, y2 = bins
    return (float(bin_to_pixel(x1, width)), float(bin_to_pixel(y1, height)),
            float(bin_to_pixel(x2, width)), float(bin_to_pixel(y2, height)))


def _pixel_values(values: Sequence[Any], width: int, height: int) -> XYXY:
    for v in values:
        if not is_finite_number(v):
            raise DroppedObject("invalid_coord", f"value {_short(v)} is not a finite pixel number")
    x1, y1, x2, y2 = (float(v) for v in values)
    if not math.isfinite((x2 - x1) * (y2 - y1)):
        raise DroppedObject("invalid_coord", f"pixel box {values!r} has a non-finite area")
    return (x1, y1, x2, y2)


# coord_mode -> (bbox_2d values, width, height) -> pixel xyxy
COORD_MODES: dict[str, Callable[[Sequence[Any], int, int], XYXY]] = {
    "norm1000": _norm1000_to_pixels,
    "pixel": _pixel_values,
}


def object_xyxy(obj: Any, coord_mode: str, width: int, height: int) -> XYXY:
    """Pixel ``(x1, y1, x2, y2)`` of a record object; raises :class:`DroppedObject` (geometry/coord/degenerate)."""
    if not isinstance(obj, Mapping):
        raise DroppedObject("invalid_geometry", f"object is {type(obj).__name__}, expected a JSON object")
    geoms = [k for k in GEOMETRY_KEYS if k in obj]
    if geoms != ["bbox_2d"]:
        raise DroppedObject("invalid_geometry", f"geometry fields {geoms}; evaluation needs exactly one bbox_2d")
    vals = obj["bbox_2d"]
    if not isinstance(vals, (list, tuple)) or len(vals) != 4:
        raise DroppedObject("invalid_geometry", f"bbox_2d {_short(vals)} is not a list of 4 values")
    x1, y1, x2, y2 = COORD_MODES[coord_mode](vals, width, height)
    if x2 < x1 or y2 < y1:
        raise DroppedObject("invalid_geometry", f"invalid bbox ordering {_short(vals)}")
    if x2 == x1 or y2 == y1:
        raise DroppedObject("degenerate", f"zero-area pixel box {(x1, y1, x2, y2)} from {_short(vals)}")
    return (x1, y1, x2, y2)


def _object_desc(obj: Mapping[str, Any]) -> str:
    desc = obj.get("desc")
    norm = normalize_desc(desc) if isinstance(desc, str) else ""
    if not norm:
        raise DroppedObject("invalid_desc", f"desc {_short(desc)} is not a non-empty string")
    return norm


def _object_score(obj: Mapping[str, Any]) -> float:
    score = obj.get("score")
    if score is None:
        return 1.0
    if not is_finite_number(score):
        raise DroppedObject("invalid_score", f"score {_short(score)} is not a finite number")
    return float(score)


#: largest accepted ``width`` / ``height`` in pixels (as for training records).
MAX_IMAGE_SIDE = 1 << 20


def _size(v: Any) -> int | None:
    if is_finite_number(v) and float(v).is_integer() and 0 < v <= MAX_IMAGE_SIDE:
        return int(v)
    return None


def record_size(rec: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(width, height)`` of a record if both are integral numbers in ``1..MAX_IMAGE_SIDE``, else None
    (→ ``missing_size``)."""
    w, h = _size(rec.get("width")), _size(rec.get("height"))
    return None if w is None or h is None else (w, h)


@dataclass
class _Record:
    index: int
    location: str
    image: str
    width: int
    height: int
    coord_mode: str
    gt: list[tuple[str, XYXY]] = field(default_factory=list)
    pred: list[tuple[str, XYXY, float]] = field(default_factory=list)
    gt_drops: Counter = field(default_factory=Counter)
    pred_drops: Counter = field(default_factory=Counter)
    errors: int = 0
    raw_pred: int = 0


def _short(v: Any, limit: int = 60) -> str:
    """``repr`` of a value cut to ``limit`` characters (huge numbers / strings stay readable in reports)."""
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 10**limit:
        return f"<int with {len(str(abs(v)))} digits>"
    text = repr(v) if not isinstance(v, (dict, list)) or len(v) < 50 else f"<{type(v).__name__} of {len(v)}>"
    return text if len(text) <= limit else text[:limit] + "…"


def _parse_record(index: int, location: str, rec: Any) -> _Record | MalformedRecord:
    """Validate the record fields and convert its objects (no category lookup yet)."""
    if not isinstance(rec, Mapping):
        return MalformedRecord(location, f"record is {type(rec).__name__}, expected a JSON object")
    size = record_size(rec)
    if size is None:
        return MalformedRecord(location, f"missing_size: width={_short(rec.get('width'))} "
                                         f"height={_short(rec.get('height'))} (need integers in 1..{MAX_IMAGE_SIDE} "
                                         "pixels)", counter="missing_size")
    w, h = size
    mode = rec.get("coord_mode")
    if not isinstance(mode, str) or mode not in COORD_MODES:
        return MalformedRecord(location, f"coord_mode {_short(mode)} is not one of {sorted(COORD_MODES)}")
    for key in ("gt", "pred"):
        if not isinstance(rec.get(key), list):
            what = "missing" if key not in rec else f"a {type(rec[key]).__name__}"
            return MalformedRecord(location, f"field {key!r} is {what}, expected a list of objects")
    image = rec.get("image", "")
    if not isinstance(image, str):
        return MalformedRecord(location, f"field 'image' is a {type(image).__name__}, expected a path string")
    errors = rec.get("errors")
    out = _Record(index, location, image, w, h, mode, raw_pred=len(rec["pred"]),
                  errors=0 if errors is None else (len(errors) if isinstance(errors, list) else 1))
    for obj in rec["gt"]:
        try:
            box = object_xyxy(obj, mode, w, h)
            out.gt.append((_object_desc(obj), box))
        except DroppedObject as exc:
            out.gt_drops[exc.reason] += 1
    for obj in rec["pred"]:
        try:
            box = object_xyxy(obj, mode, w, h)
            out.pred.append((_object_desc(obj), box, _object_score(obj)))
        except DroppedObject as exc:
            out.pred_drops[exc.reason] += 1
    return out


def _validate_iou_thrs(iou_thrs: Sequence[float] | None) -> list[float]:
    if iou_thrs is None:
        return list(COCO_DEFAULT_IOU_THRS)
    thrs = list(iou_thrs)
    if not thrs or not all(is_finite_number(t) and 0.0 < t <= 1.0 for t in thrs):
        raise ValueError(f"iou_thrs {iou_thrs!r} must be a non-empty list of numbers in (0, 1], "
                         "e.g. --iou_thrs 0.5 0.75 (or omit for COCO's 0.50:0.05:0.95)")
    out: list[float] = []
    for t in thrs:
        if not any(math.isclose(t, u, abs_tol=1e-9) for u in out):
            out.append(float(t))
    return sorted(out)


#: evaluator backends of :func:`evaluate_records`, in ``"auto"`` preference order.
EVALUATORS: tuple[str, ...] = ("faster_coco_eval", "pycocotools")


def resolve_evaluator(evaluator: str = "auto") -> str:
    """The COCOeval implementation to use: ``"auto"`` → ``faster_coco_eval`` when importable (the ``fast-eval``
    extra), else ``pycocotools``; an explicit name must be importable. ValueError for an unknown name, ImportError
    when the package is missing."""
    import importlib

    if evaluator not in ("auto",) + EVALUATORS:
        raise ValueError(f"evaluator {evaluator!r} is not one of {['auto', *EVALUATORS]}")
    for name in (EVALUATORS if evaluator == "auto" else (evaluator,)):
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        return name
    hint = {"faster_coco_eval": "pip install 'coordexp-swift[fast-eval]'", "pycocotools": "pip install pycocotools"}
    raise ImportError(f"evaluator {evaluator!r}: package not installed ({hint.get(evaluator, hint['pycocotools'])})")


@dataclass
class _CocoRun:
    """What :func:`evaluate_records` reads from an accumulated COCOeval (either backend).

    ``precision`` [T,R,K,A,M] and ``recall`` [T,K,A,M] as in COCOeval.eval (A: all, s, m, l; M: maxDets);
    ``cat_ids`` the K category ids; ``max_dets`` M; ``tp50[image_id]`` detections matched at IoU 0.5 (area
    ``all``, top ``max_dets[-1]`` by score, COCO's greedy class-aware matching)."""

    precision: Any
    recall: Any
    cat_ids: list[int]
    max_dets: list[int]
    tp50: Counter


def _coco_pair(COCO: Any, coco_gt: dict, dt_anns: list[dict]) -> tuple[Any, Any]:
    """GT and detection COCO objects over copies of the annotation dicts (COCOeval writes ``ignore`` /
    ``_ignore`` into them; the returned ``coco_gt`` stays as built)."""
    gt = COCO()
    gt.dataset = {**coco_gt, "annotations": [dict(a) for a in coco_gt["annotations"]]}
    gt.createIndex()
    dt = COCO()
    dt.dataset = {"images": coco_gt["images"], "categories": coco_gt["categories"],
                  "annotations": [dict(a) for a in dt_anns]}
    dt.createIndex()
    return gt, dt


def _run_pycocotools(coco_gt: dict, dt_anns: list[dict], eval_thrs: list[float], i50: int) -> _CocoRun:
    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ev = COCOeval(*_coco_pair(COCO, coco_gt, dt_anns), iouType="bbox")
    ev.params.iouThrs = np.asarray(eval_thrs, dtype=np.float64)
    ev.evaluate()
    ev.accumulate()
    tp50: Counter = Counter()
    all_rng, max_det = ev.params.areaRng[0], ev.params.maxDets[-1]
    for e in ev.evalImgs:
        if e is not None and e["aRng"] == all_rng and e["maxDet"] == max_det:
            tp50[e["image_id"]] += int((e["dtMatches"][i50] > 0).sum())
    return _CocoRun(ev.eval["precision"], ev.eval["recall"], [int(c) for c in ev.params.catIds],
                    list(ev.params.maxDets), tp50)


def _run_faster_coco_eval(coco_gt: dict, dt_anns: list[dict], eval_thrs: list[float], i50: int) -> _CocoRun:
    """faster-coco-eval's C++ evaluate+accumulate. Its ``eval["matched"]`` (``"<dt id>_<gt id>"`` → IoU) holds the
    matches at the FIRST IoU threshold (area all, last maxDet); when that is not 0.5 a second run at 0.5 gives
    ``tp50``."""
    import numpy as np
    from faster_coco_eval import COCO, COCOeval_faster

    def run(thrs: list[float]) -> Any:
        ev = COCOeval_faster(*_coco_pair(COCO, coco_gt, dt_anns), iouType="bbox", print_function=logger.debug)
        ev.params.iouThrs = np.asarray(thrs, dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
        return ev

    ev = run(eval_thrs)
    matched = ev.eval["matched"] if i50 == 0 else run([eval_thrs[i50]]).eval["matched"]
    tp50: Counter = Counter(dt_anns[int(key.split("_", 1)[0]) - 1]["image_id"] for key in matched)
    return _CocoRun(ev.eval["precision"], ev.eval["recall"], [int(c) for c in ev.params.catIds],
                    list(ev.params.maxDets), tp50)


_EVALUATOR_RUNS: dict[str, Callable[[dict, list[dict], list[float], int], _CocoRun]] = {
    "pycocotools": _run_pycocotools, "faster_coco_eval": _run_faster_coco_eval}


def _run_cocoeval(coco_gt: dict, dt_anns: list[dict], eval_thrs: list[float], i50: int, evaluator: str) -> _CocoRun:
    """COCOeval (bbox) with ``eval_thrs`` by ``evaluator`` (a resolved name); prints go to the DEBUG log.
    ``dt_anns[i]["id"]`` must be ``i + 1``."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        run = _EVALUATOR_RUNS[evaluator](coco_gt, dt_anns, eval_thrs, i50)
    if sink.getvalue():
        logger.debug("%s: %s", evaluator, sink.getvalue().strip())
    return run


def _mean_valid(arr: Any) -> float:
    """Mean over entries > −1 (COCO's summarize rule); −1 (nothing to average) is clamped to 0.0."""
    valid = arr[arr > -1]
    return max(float(valid.mean()), 0.0) if valid.size else 0.0


def _summary(ev: _CocoRun, avg_idx: list[int], idx50: int, idx75: int) -> dict[str, float]:
    prec, rec = ev.precision, ev.recall  # [T,R,K,A,M], [T,K,A,M]; A: all,s,m,l; M: 1,10,100
    m100 = len(ev.max_dets) - 1
    out = {
        "bbox_AP": _mean_valid(prec[avg_idx, :, :, 0, m100]),
        "bbox_AP50": _mean_valid(prec[[idx50], :, :, 0, m100]),
        "bbox_AP75": _mean_valid(prec[[idx75], :, :, 0, m100]),
    }
    for suffix, a in (("s", 1), ("m", 2), ("l", 3)):
        out[f"bbox_AP{suffix}"] = _mean_valid(prec[avg_idx, :, :, a, m100])
    for mi, md in enumerate(ev.max_dets):
        out[f"bbox_AR{md}"] = _mean_valid(rec[avg_idx, :, 0, mi])
    for suffix, a in (("s", 1), ("m", 2), ("l", 3)):
        out[f"bbox_AR{suffix}"] = _mean_valid(rec[avg_idx, :, a, m100])
    return {k: out[k] for k in METRIC_KEYS}


def evaluate_records(records: Iterable[Any], iou_thrs: Sequence[float] | None = None, *,
                     locations: Sequence[str] | None = None,
                     upstream_malformed: Sequence[MalformedRecord] = (),
                     evaluator: str = "auto") -> dict[str, Any]:
    """COCO-evaluate ``gt_vs_pred`` records (module docstring has the full contract).

    Args:
        records: one mapping per image; ``image_id`` = position in this iterable. Non-mappings are reported.
        iou_thrs: IoU thresholds averaged into AP/AR (None → COCO's ten); ValueError if not in (0, 1].
        locations: optional names of the records for problem reports (default ``"record <i>"``).
        upstream_malformed: problems found before this call (e.g. undecodable JSONL lines), merged into the
            report and counted in ``records_total`` / ``malformed_records``.
        evaluator: COCOeval implementation (:func:`resolve_evaluator`): ``auto`` (faster-coco-eval when installed,
            else pycocotools), ``faster_coco_eval`` or ``pycocotools``; both give the same numbers.

    Returns a dict (all JSON-serialisable):
        ``metrics``: ``{bbox_AP, …, bbox_ARl}`` Python floats in [0, 1];
        ``counters``: ints (see :data:`COUNTER_KEYS`);
        ``iou_thrs``: the thresholds averaged into AP/AR;
        ``per_class``: ``[{category_id, name, num_gt, num_pred, AP, AP50, AP75}]`` in id order;
        ``per_image``: ``[{image_id, image, location, width, height, coord_mode, num_gt, num_pred, tp_iou50,
        fp_iou50, fn_iou50, gt_dropped{reason: n}, pred_dropped{reason: n}, errors}]`` for evaluated records;
        ``malformed``: ``[{location, reason}]`` for every record not evaluated;
        ``coco_gt``: the COCO ground-truth dataset dict; ``coco_preds``: COCO results list
        ``[{image_id, category_id, bbox, score}]``;
        ``f1_iou50``: ``{tp, fp, fn, precision, recall, f1}`` over all evaluated records at IoU 0.5 — TP = the
        per-image ``tp_iou50`` sum (COCO's class-aware greedy matching, area ``all``, top 100 by score), FP = valid
        predictions − TP, FN = GT − TP; ``precision = TP/(TP+FP)``, ``recall = TP/(TP+FN)``, ``f1 = 2PR/(P+R)``,
        each 0.0 when undefined. No score threshold: every kept prediction counts (scores only decide which
        prediction claims a GT first);
        ``evaluator``: the backend that ran (``None`` when there was no valid prediction).
    """
    thrs = _validate_iou_thrs(iou_thrs)
    if evaluator not in ("auto",) + EVALUATORS:
        raise ValueError(f"evaluator {evaluator!r} is not one of {['auto', *EVALUATORS]}")
    used = None
    counters: Counter = Counter({k: 0 for k in COUNTER_KEYS})
    malformed: list[MalformedRecord] = list(upstream_malformed)
    counters["records_total"] += len(malformed)
    counters.update(m.counter for m in malformed)

    parsed: list[_Record] = []
    for i, rec in enumerate(records):
        counters["records_total"] += 1
        loc = locations[i] if locations is not None and i < len(locations) else f"record {i}"
        r = _parse_record(i, loc, rec)
        if isinstance(r, MalformedRecord):
            malformed.append(r)
            counters[r.counter] += 1
        else:
            parsed.append(r)

    categories: dict[str, int] = {}
    for r in parsed:
        for desc, _ in r.gt:
            categories.setdefault(desc, len(categories) + 1)

    images, gt_anns, preds, dt_anns = [], [], [], []
    for r in parsed:
        images.append({"id": r.index, "file_name": r.image, "width": r.width, "height": r.height})
        for desc, (x1, y1, x2, y2) in r.gt:
            w, h = x2 - x1, y2 - y1
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": r.index, "category_id": categories[desc],
                            "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0})
        for desc, (x1, y1, x2, y2), score in r.pred:
            if desc not in categories:
                r.pred_drops["unknown_dropped"] += 1
                continue
            w, h = x2 - x1, y2 - y1
            preds.append({"image_id": r.index, "category_id": categories[desc], "bbox": [x1, y1, w, h],
                          "score": score})
            dt_anns.append({**preds[-1], "id": len(dt_anns) + 1, "area": w * h, "iscrowd": 0})
        counters["records_evaluated"] += 1
        counters["empty_pred"] += int(r.raw_pred == 0)
        counters["record_errors"] += r.errors
        counters.update(r.gt_drops)
        counters.update(r.pred_drops)
        counters["gt_dropped"] += sum(r.gt_drops.values())
        counters["pred_dropped"] += sum(r.pred_drops.values())
    counters["gt_objects"], counters["pred_objects"] = len(gt_anns), len(dt_anns)
    counters["categories"] = len(categories)
    coco_gt = {"info": {"description": "coordexp-swift gt_vs_pred", "coord_units": "pixel"}, "images": images,
               "annotations": gt_anns,
               "categories": [{"id": cid, "name": name} for name, cid in categories.items()]}

    metrics = {k: 0.0 for k in METRIC_KEYS}
    class_ap: dict[int, tuple[float, float, float]] = {}
    tp50: Counter = Counter()
    if dt_anns:
        eval_thrs = sorted(set(thrs) | {t for t in (0.5, 0.75) if not any(math.isclose(t, u) for u in thrs)})
        idx = [next(j for j, u in enumerate(eval_thrs) if math.isclose(u, t)) for t in thrs]
        i50, i75 = (next(j for j, u in enumerate(eval_thrs) if math.isclose(u, t)) for t in (0.5, 0.75))
        used = resolve_evaluator(evaluator)
        ev = _run_cocoeval(coco_gt, dt_anns, eval_thrs, i50, used)
        metrics = _summary(ev, idx, i50, i75)
        prec = ev.precision
        m100 = len(ev.max_dets) - 1
        for k, cid in enumerate(ev.cat_ids):
            class_ap[cid] = (_mean_valid(prec[idx, :, k, 0, m100]), _mean_valid(prec[[i50], :, k, 0, m100]),
                             _mean_valid(prec[[i75], :, k, 0, m100]))
        tp50 = ev.tp50

    n_gt_cls = Counter(a["category_id"] for a in gt_anns)
    n_dt_cls = Counter(a["category_id"] for a in dt_anns)
    per_class = [{"category_id": cid, "name": name, "num_gt": n_gt_cls[cid], "num_pred": n_dt_cls[cid],
                  "AP": class_ap.get(cid, (0.0,) * 3)[0], "AP50": class_ap.get(cid, (0.0,) * 3)[1],
                  "AP75": class_ap.get(cid, (0.0,) * 3)[2]} for name, cid in categories.items()]
    n_gt_img = Counter(a["image_id"] for a in gt_anns)
    n_dt_img = Counter(a["image_id"] for a in dt_anns)
    per_image = [{"image_id": r.index, "image": r.image, "location": r.location, "width": r.width,
                  "height": r.height, "coord_mode": r.coord_mode, "num_gt": n_gt_img[r.index],
                  "num_pred": n_dt_img[r.index], "tp_iou50": tp50[r.index],
                  "fp_iou50": n_dt_img[r.index] - tp50[r.index], "fn_iou50": n_gt_img[r.index] - tp50[r.index],
                  "gt_dropped": dict(r.gt_drops), "pred_dropped": dict(r.pred_drops), "errors": r.errors}
                 for r in parsed]
    tp, n_dt, n_gt = sum(tp50.values()), len(dt_anns), len(gt_anns)
    precision = tp / n_dt if n_dt else 0.0
    recall = tp / n_gt if n_gt else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    f1_iou50 = {"tp": tp, "fp": n_dt - tp, "fn": n_gt - tp, "precision": precision, "recall": recall, "f1": f1}
    if counters["records_total"] == 0:
        logger.warning("evaluate_records: no records to evaluate; every metric is 0.0")
    if malformed:
        logger.warning("evaluate_records: %d record(s) not evaluated, first: %s — %s", len(malformed),
                       malformed[0].location, malformed[0].reason)
    return {"metrics": metrics, "counters": {k: int(counters[k]) for k in COUNTER_KEYS}, "iou_thrs": thrs,
            "per_class": per_class, "per_image": per_image, "malformed": [m.as_dict() for m in malformed],
            "coco_gt": coco_gt, "coco_preds": preds, "f1_iou50": f1_iou50, "evaluator": used}
