"""COCO import (instances JSON -> SPEC §1 JSONL, ``coordexp-swift convert-coco``) and export (records -> COCO GT).

Pixel <-> bin conventions (SPEC §1.2): ``c = x/(W-1)``, bin = ``pixel_to_bin(x, W)`` (x with the width, y with
the height), clamped to 0..999; back: ``bin_to_pixel(k, W)`` = ``round(k/999·(W-1))``. A COCO box
``[x, y, w, h]`` becomes ``(x, y, x+w, y+h)`` before binning; :func:`records_to_coco` writes
``[x1, y1, x2-x1, y2-y1]`` so that the two are inverse on integer pixel-index boxes when ``W, H <= 1000``.

Import rules: crowd boxes (``iscrowd``) and boxes with ``w <= 0`` or ``h <= 0`` are skipped and counted; an image
whose file is missing (or unreadable, or whose pixel size differs from the JSON) is skipped and counted — the
converter never stops on bad data. ``desc`` = the category name (stripped). Objects are sorted top-left first
(:func:`object_sort_key`). With ``max_objects`` the largest boxes (by pixel area, ties by order in the file) are
kept, then sorted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from PIL import Image

from coordexp_swift.coord.codec import bin_to_pixel, pixel_to_bin
from coordexp_swift.data.records import GTObject, Record, object_sort_key

__all__ = ["COUNTER_KEYS", "convert_coco", "main", "records_to_coco"]

#: every counter :func:`convert_coco` returns (all present, 0 when nothing happened).
COUNTER_KEYS: tuple[str, ...] = (
    "images_total",
    "images_written",
    "images_malformed",
    "images_missing",
    "images_unreadable",
    "images_size_mismatch",
    "images_empty",
    "annotations_total",
    "objects_written",
    "crowd_skipped",
    "zero_area_skipped",
    "malformed_skipped",
    "unknown_category_skipped",
    "orphan_skipped",
    "max_objects_truncated",
)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _image_size(path: str) -> tuple[int, int] | None:
    """``(width, height)`` from the file header, or ``None`` if PIL cannot read it."""
    try:
        with Image.open(path) as im:
            return im.size
    except OSError:
        return None


def convert_coco(
    instances_json: str,
    images_dir: str,
    out_jsonl: str,
    *,
    max_objects: int | None = None,
    image_root_relative: bool = True,
    skip_empty: bool = False,
) -> dict[str, int]:
    """Convert a COCO instances file to a SPEC §1 JSONL (bbox_2d as coord-token strings); return the counters.

    ``images_dir``: where the COCO ``file_name``s live. ``image_root_relative=True`` writes each image path
    relative to ``out_jsonl``'s directory (valid wherever the two live); ``False`` writes the COCO ``file_name``
    verbatim (for a JSONL placed in ``images_dir`` itself). ``skip_empty`` drops images left with no object
    (Stage-2 needs >= 1; Stage-1 accepts empty ones); they are counted as ``images_empty`` either way.
    Each record carries ``metadata = {"image_id", "file_name"}`` from the COCO file. Counter keys:
    :data:`COUNTER_KEYS`.
    """
    if max_objects is not None and max_objects < 1:
        raise ValueError(f"max_objects={max_objects}: must be >= 1 (or None for no limit)")
    with open(instances_json, encoding="utf-8") as fh:
        coco = json.load(fh)
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise ValueError(f"{instances_json}: not a COCO instances file (missing list '{key}')")
    counters: Counter[str] = Counter({k: 0 for k in COUNTER_KEYS})
    cat_names = {
        c.get("id"): str(c.get("name", "")).strip() for c in coco["categories"] if isinstance(c, dict)
    }
    image_ids = {img.get("id") for img in coco["images"] if isinstance(img, dict)}
    by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for ann in coco["annotations"]:
        counters["annotations_total"] += 1
        if not isinstance(ann, dict):
            counters["malformed_skipped"] += 1
        elif ann.get("image_id") not in image_ids:
            counters["orphan_skipped"] += 1
        else:
            by_image[ann["image_id"]].append(ann)

    images_dir = os.path.abspath(images_dir)
    out_dir = os.path.dirname(os.path.abspath(out_jsonl))
    os.makedirs(out_dir, exist_ok=True)
    lines: list[str] = []
    for img in coco["images"]:
        counters["images_total"] += 1
        if not isinstance(img, dict):
            counters["images_malformed"] += 1
            continue
        file_name, width, height = img.get("file_name"), img.get("width"), img.get("height")
        if not (isinstance(file_name, str) and file_name and _is_positive_int(width) and _is_positive_int(height)):
            counters["images_malformed"] += 1
            continue
        path = os.path.join(images_dir, file_name)
        if not os.path.isfile(path):
            counters["images_missing"] += 1
            continue
        size = _image_size(path)
        if size is None:
            counters["images_unreadable"] += 1
            continue
        if size != (width, height):
            counters["images_size_mismatch"] += 1
            continue
        kept: list[tuple[float, GTObject]] = []
        for ann in by_image.get(img.get("id"), []):
            box = ann.get("bbox")
            if ann.get("iscrowd", 0):
                counters["crowd_skipped"] += 1
            elif not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
                counters["malformed_skipped"] += 1
            elif box[2] <= 0 or box[3] <= 0:
                counters["zero_area_skipped"] += 1
            elif ann.get("category_id") not in cat_names or not cat_names[ann["category_id"]]:
                counters["unknown_category_skipped"] += 1
            else:
                x, y, w, h = (float(v) for v in box)
                bins = (
                    pixel_to_bin(x, width),
                    pixel_to_bin(y, height),
                    pixel_to_bin(x + w, width),
                    pixel_to_bin(y + h, height),
                )
                kept.append((w * h, GTObject(desc=cat_names[ann["category_id"]], geometry="bbox_2d", bins=bins)))
        if max_objects is not None and len(kept) > max_objects:
            counters["max_objects_truncated"] += len(kept) - max_objects
            order = sorted(range(len(kept)), key=lambda j: (-kept[j][0], j))
            kept = [kept[j] for j in sorted(order[:max_objects])]
        objects = sorted((o for _, o in kept), key=object_sort_key)
        if not objects:
            counters["images_empty"] += 1
            if skip_empty:
                continue
        rel = os.path.relpath(path, out_dir).replace(os.sep, "/") if image_root_relative else file_name
        record = {
            "images": [rel],
            "width": width,
            "height": height,
            "objects": [o.to_json() for o in objects],
            "metadata": {"image_id": img.get("id"), "file_name": file_name},
        }
        lines.append(json.dumps(record, ensure_ascii=False))
        counters["images_written"] += 1
        counters["objects_written"] += len(objects)
    with open(out_jsonl, "w", encoding="utf-8") as fh:
        fh.write("".join(line + "\n" for line in lines))
    return {k: counters[k] for k in COUNTER_KEYS}


def _pixel_box(obj: GTObject, width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel-index ``(x1, y1, x2, y2)`` of a bbox (or of a polygon's bounding box)."""
    xs = [bin_to_pixel(k, width) for k in obj.bins[0::2]]
    ys = [bin_to_pixel(k, height) for k in obj.bins[1::2]]
    return min(xs), min(ys), max(xs), max(ys)


def records_to_coco(records: Iterable[Record], *, categories: Sequence[str] | None = None) -> dict[str, Any]:
    """COCO GT instances from records: ``image id = sample_id + 1``, boxes ``[x1, y1, x2-x1, y2-y1]`` in pixels.

    Bins go back to pixels with ``bin_to_pixel`` (k/999·(W-1), rounded). ``categories``: the desc list (id =
    index + 1); default = the sorted set of descs seen. ``area`` = ``w*h``. A desc missing from a given
    ``categories`` list raises ``ValueError``.
    """
    records = list(records)
    names = list(categories) if categories is not None else sorted({o.desc for r in records for o in r.objects})
    cat_ids = {name: i + 1 for i, name in enumerate(names)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for r in records:
        images.append({"id": r.sample_id + 1, "file_name": r.image, "width": r.width, "height": r.height})
        for i, o in enumerate(r.objects):
            if o.desc not in cat_ids:
                raise ValueError(f"sample_id {r.sample_id}: objects[{i}].desc {o.desc!r} is not in categories")
            x1, y1, x2, y2 = _pixel_box(o, r.width, r.height)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": r.sample_id + 1,
                    "category_id": cat_ids[o.desc],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": "coordexp-swift records"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n} for n, i in cat_ids.items()],
    }


def main(argv: list[str] | None = None) -> int:
    """CLI: ``coordexp-swift convert-coco --instances F --images DIR --out F [--max-objects N]``; prints counters."""
    p = argparse.ArgumentParser(prog="coordexp-swift convert-coco", description=__doc__.split("\n")[0])
    p.add_argument("--instances", required=True, help="COCO instances JSON")
    p.add_argument("--images", required=True, help="directory holding the COCO file_names")
    p.add_argument("--out", required=True, help="output JSONL")
    p.add_argument("--max-objects", type=int, default=None, help="keep at most N largest boxes per image")
    p.add_argument("--skip-empty", action="store_true", help="drop images with no object left (Stage-2 data)")
    p.add_argument(
        "--verbatim-paths",
        action="store_true",
        help="write COCO file_names as is instead of paths relative to the output JSONL's directory",
    )
    a = p.parse_args(argv)
    try:
        counters = convert_coco(
            a.instances,
            a.images,
            a.out,
            max_objects=a.max_objects,
            image_root_relative=not a.verbatim_paths,
            skip_empty=a.skip_empty,
        )
    except (OSError, ValueError) as exc:
        print(f"coordexp-swift convert-coco: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(counters, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
