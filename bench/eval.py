"""Benchmark: ``evaluate_records`` (SPEC §7.2) with faster-coco-eval vs pycocotools, same run (issue 12 item 7).

Builds N synthetic norm1000 records (default 5,000 images × 10 objects, 10 categories, predictions = jittered GT
plus one false positive per image, random scores), then measures in one process, alternating the evaluators
``--repeats`` times (the best time of each counts):

- ``evaluate_records(..., evaluator="pycocotools")`` end to end — the baseline;
- ``evaluate_records(..., evaluator="faster_coco_eval")`` end to end (the ``auto`` default when installed);
- inside each call, the evaluator core (COCO index + evaluate + accumulate + IoU-0.5 matches), timed by wrapping
  ``coco_eval._run_cocoeval``; the remainder is our parsing / conversion / summary.

Reports the ratios pycocotools / faster (end to end and core; > 1 = faster-coco-eval is faster) and checks the
12 metrics agree within 1e-9. Prints a table and writes ``bench/results/eval.json``.
Usage: ``python bench/eval.py [--images N] [--objects K] [--repeats R]``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

from coordexp_swift.coord.codec import MAX_BIN
from coordexp_swift.eval import coco_eval
from coordexp_swift.eval.coco_eval import evaluate_records

RESULTS = Path(__file__).resolve().parent / "results" / "eval.json"


def synthetic_records(n_images: int, n_objects: int, n_classes: int = 10, seed: int = 0) -> list[dict[str, Any]]:
    """Deterministic norm1000 records; boxes are bins in 0..999, preds jitter each GT corner by ≤ 15 bins."""
    rng = random.Random(seed)
    recs = []
    for i in range(n_images):
        gt, pred = [], []
        for _ in range(n_objects):
            x1, y1 = rng.randint(0, 800), rng.randint(0, 800)
            x2, y2 = rng.randint(x1 + 20, min(MAX_BIN, x1 + 400)), rng.randint(y1 + 20, min(MAX_BIN, y1 + 400))
            desc = f"class_{rng.randrange(n_classes)}"
            gt.append({"desc": desc, "bbox_2d": [x1, y1, x2, y2]})
            j = [min(MAX_BIN, max(0, v + rng.randint(-15, 15))) for v in (x1, y1, x2, y2)]
            j[2], j[3] = max(j[2], j[0] + 1), max(j[3], j[1] + 1)
            pred.append({"desc": desc, "bbox_2d": j, "score": round(rng.random(), 4)})
        pred.append({"desc": f"class_{rng.randrange(n_classes)}", "bbox_2d": [0, 0, 100, 100], "score": 0.5})
        recs.append({"image": f"img_{i:06d}.png", "width": 640, "height": 480, "coord_mode": "norm1000",
                     "gt": gt, "pred": pred})
    return recs


def _timed_eval(recs: list[dict[str, Any]], evaluator: str) -> tuple[float, float, dict[str, Any]]:
    """(end-to-end seconds, evaluator-core seconds, result) of one ``evaluate_records`` call."""
    core_times: list[float] = []
    inner = coco_eval._run_cocoeval

    def timed(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return inner(*a, **kw)
        finally:
            core_times.append(time.perf_counter() - t)

    coco_eval._run_cocoeval = timed
    try:
        t0 = time.perf_counter()
        res = evaluate_records(recs, evaluator=evaluator)
        total = time.perf_counter() - t0
    finally:
        coco_eval._run_cocoeval = inner
    return total, sum(core_times), res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--objects", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)

    recs = synthetic_records(args.images, args.objects)
    try:
        coco_eval.resolve_evaluator("faster_coco_eval")
        evaluators = ["pycocotools", "faster_coco_eval"]
    except ImportError:
        evaluators = ["pycocotools"]
    best: dict[str, tuple[float, float]] = {}
    results: dict[str, dict[str, Any]] = {}
    for _ in range(args.repeats):
        for name in evaluators:
            total, core, res = _timed_eval(recs, name)
            results[name] = res
            if name not in best or total < best[name][0]:
                best[name] = (total, core)

    base = results["pycocotools"]
    print(f"evaluate_records on {args.images} images x {args.objects} objects "
          f"({base['counters']['gt_objects']} GT, {base['counters']['pred_objects']} preds), bbox_AP "
          f"{base['metrics']['bbox_AP']:.4f}, F1@0.5 {base['f1_iou50']['f1']:.4f}; best of {args.repeats}")
    print(f"{'evaluator':18s} {'end_to_end_s':>12s} {'core_s':>8s} {'ours_s':>8s} {'records/s':>10s}")
    for name, (total, core) in best.items():
        print(f"{name:18s} {total:12.3f} {core:8.3f} {max(total - core, 0.0):8.3f} {args.images / total:10.1f}")
    out: dict[str, Any] = {
        "images": args.images, "objects_per_image": args.objects, "repeats": args.repeats,
        "seconds": {name: {"end_to_end": t, "core": c, "ours": max(t - c, 0.0)} for name, (t, c) in best.items()},
        "bbox_AP": base["metrics"]["bbox_AP"], "f1_iou50": base["f1_iou50"]["f1"],
        "python": platform.python_version(), "machine": platform.machine(),
        "load_avg_1min": os.getloadavg()[0]}
    if "faster_coco_eval" in best:
        fast = results["faster_coco_eval"]
        diff = max(abs(fast["metrics"][k] - base["metrics"][k]) for k in coco_eval.METRIC_KEYS)
        (tp, cp), (tf, cf) = best["pycocotools"], best["faster_coco_eval"]
        out["ratio_pycocotools_over_faster"] = {"end_to_end": tp / tf, "core": cp / cf}
        out["max_metric_abs_diff"] = diff
        print(f"ratio pycocotools / faster_coco_eval: end to end {tp / tf:.2f}x, core {cp / cf:.2f}x; "
              f"max |metric diff| {diff:.2e}")
        if diff > 1e-9:
            print("WARNING: the evaluators disagree by more than 1e-9")
    else:
        out["ratio_pycocotools_over_faster"] = None
        print("faster_coco_eval is not installed (pip install 'coordexp-swift[fast-eval]'): no ratio")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
