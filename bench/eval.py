"""Benchmark: ``evaluate_records`` throughput (SPEC §7.2) on synthetic records.

Builds N synthetic norm1000 records (default 5,000 images × 10 objects, 10 categories, predictions = jittered GT
plus one false positive per image, random scores), then measures in one process:

- ``evaluate_records`` end to end (records/s) — the baseline;
- inside that same call, the time spent in the pycocotools core (COCO index + ``evaluate`` + ``accumulate``,
  timed by wrapping ``coco_eval._run_cocoeval``), so the remainder is our parsing / conversion / summary;
- the same core through ``faster_coco_eval`` when it is importable (ratio vs pycocotools), else a note.

Prints a table and writes ``bench/results/eval.json``. Usage: ``python bench/eval.py [--images N] [--objects K]``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
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


def _core_faster(coco_gt: dict, preds: list[dict]) -> float:
    from faster_coco_eval import COCO, COCOeval_faster

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = coco_gt
        gt.createIndex()
        dt = gt.loadRes(preds)
        ev = COCOeval_faster(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--objects", type=int, default=10)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)

    recs = synthetic_records(args.images, args.objects)
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
        res = evaluate_records(recs)
        total = time.perf_counter() - t0
    finally:
        coco_eval._run_cocoeval = inner
    core = sum(core_times)

    rows = [("evaluate_records (end to end)", total, 1.0),
            ("  pycocotools core (index+evaluate+accumulate)", core, core / total),
            ("  our parsing/conversion/summary (difference)", max(total - core, 0.0), max(total - core, 0.0) / total)]
    faster: dict[str, Any]
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        faster = {"available": False, "note": "faster_coco_eval is not installed"}
    else:
        try:
            t_fast = _core_faster(res["coco_gt"], res["coco_preds"])
            faster = {"available": True, "core_s": t_fast, "speedup_vs_pycocotools_core": core / t_fast}
            rows.append(("  faster_coco_eval core", t_fast, t_fast / total))
        except Exception as exc:  # report, do not fail the benchmark
            faster = {"available": True, "error": f"{type(exc).__name__}: {exc}"}

    print(f"evaluate_records on {args.images} images x {args.objects} objects "
          f"({res['counters']['gt_objects']} GT, {res['counters']['pred_objects']} preds), bbox_AP "
          f"{res['metrics']['bbox_AP']:.4f}")
    print(f"{'stage':52s} {'seconds':>9s} {'share':>7s}")
    for name, sec, share in rows:
        print(f"{name:52s} {sec:9.3f} {share:7.2f}")
    print(f"throughput: {args.images / total:.1f} records/s")
    if not faster["available"]:
        print(faster["note"])
    elif "speedup_vs_pycocotools_core" in faster:
        print(f"faster_coco_eval core speed-up vs pycocotools core: {faster['speedup_vs_pycocotools_core']:.2f}x")
    else:
        print(f"faster_coco_eval failed: {faster['error']}")

    out = {"images": args.images, "objects_per_image": args.objects, "end_to_end_s": total,
           "records_per_s": args.images / total, "pycocotools_core_s": core, "overhead_s": max(total - core, 0.0),
           "bbox_AP": res["metrics"]["bbox_AP"], "faster_coco_eval": faster,
           "python": platform.python_version(), "machine": platform.machine()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
