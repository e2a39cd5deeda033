"""Synthetic detection data: filled coloured shapes on a light background (``coordexp-swift make-shapes``).

Output layout (``out_dir``)::

    images/train_000000.png ...  images/val_000000.png ...
    train.jsonl  val.jsonl          SPEC §1 records; bbox_2d as coord-token strings; images relative to out_dir
    train_coco.json  val_coco.json  COCO instances (pixel xywh boxes, one category per desc, shared ids)
    summary.json                    the generator config + per-split counts (deterministic, no timings)

Conventions:

* Pixel boxes are **pixel-index extents**: ``x1`` is the first and ``x2`` the last column the shape covers
  (inclusive), both in ``[0, W-1]``; bins are ``pixel_to_bin(x, W)`` (``c = x/(W-1)``, bin = round(999·c)).
  COCO boxes use the same convention: ``[x1, y1, x2 - x1, y2 - y1]``; ``area`` is the shape's pixel count.
  For ``W <= 1000`` the pixel -> bin -> pixel round trip is exact (the bin error ≤ 0.5 maps back to
  ≤ 0.5·(W-1)/999 < 0.5 px).
* Objects never overlap: each shape's bounding square keeps a gap of ``GAP_PX`` pixels from the others; an object
  that finds no free spot in ``PLACEMENT_TRIES`` draws is dropped (counted as ``objects_dropped``).
* Objects are sorted by :func:`coordexp_swift.data.records.object_sort_key` (top-left ``(y1, x1)`` in bins).
* Deterministic: image ``i`` of split ``s`` draws from ``numpy.random.default_rng([seed, SPLIT_CODE[s], i])``, so
  the same arguments give the same bytes, and changing ``n_train`` does not change the val images.
* Curriculum knobs: ``min_objects``/``max_objects``, ``min_size_frac``/``max_size_frac`` (shape side as a fraction
  of the image side), ``colors``, ``shapes`` and ``background`` — e.g. ``min_objects=max_objects=1,
  min_size_frac=0.4`` gives one big shape per image.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from coordexp_swift.coord.codec import pixel_to_bin
from coordexp_swift.data.records import GTObject, object_sort_key

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "SHAPES",
    "ShapesConfig",
    "generate_image",
    "main",
    "make_shapes",
]

GAP_PX = 2
PLACEMENT_TRIES = 100
SPLIT_CODE: dict[str, int] = {"train": 0, "val": 1}

#: colour name -> RGB (saturated, far from the light background).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 0),
    "purple": (140, 40, 170),
    "orange": (245, 120, 0),
    "black": (20, 20, 20),
}
DEFAULT_COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow")

Box = tuple[int, int, int, int]


def _circle(draw: ImageDraw.ImageDraw, x0: int, y0: int, s: int, fill: Any) -> None:
    draw.ellipse([x0, y0, x0 + s - 1, y0 + s - 1], fill=fill)


def _square(draw: ImageDraw.ImageDraw, x0: int, y0: int, s: int, fill: Any) -> None:
    draw.rectangle([x0, y0, x0 + s - 1, y0 + s - 1], fill=fill)


def _triangle(draw: ImageDraw.ImageDraw, x0: int, y0: int, s: int, fill: Any) -> None:
    e = s - 1
    draw.polygon([(x0 + e / 2, y0), (x0 + e, y0 + e), (x0, y0 + e)], fill=fill)


def _diamond(draw: ImageDraw.ImageDraw, x0: int, y0: int, s: int, fill: Any) -> None:
    e = s - 1
    draw.polygon([(x0 + e / 2, y0), (x0 + e, y0 + e / 2), (x0 + e / 2, y0 + e), (x0, y0 + e / 2)], fill=fill)


#: shape name -> drawer(draw, x0, y0, side, fill) filling the shape inside the square [x0, x0+side-1]².
SHAPES: dict[str, Callable[[ImageDraw.ImageDraw, int, int, int, Any], None]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "diamond": _diamond,
}
DEFAULT_SHAPES: tuple[str, ...] = ("circle", "square", "triangle")


def _plain(rng: np.random.Generator, size: int) -> Image.Image:
    level = int(rng.integers(215, 246))
    return Image.new("RGB", (size, size), (level, level, level))


def _noise(rng: np.random.Generator, size: int) -> Image.Image:
    level = int(rng.integers(215, 246))
    grain = rng.integers(-8, 9, size=(size, size, 1), dtype=np.int16)
    arr = np.clip(level + grain, 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(arr, 3, axis=2), "RGB")


#: background name -> factory(rng, size) of a light RGB canvas (plain grey, or grey with per-pixel grain).
BACKGROUNDS: dict[str, Callable[[np.random.Generator, int], Image.Image]] = {"plain": _plain, "noise": _noise}


@dataclass(frozen=True)
class ShapesConfig:
    """Generator knobs (validated by :meth:`validate`; ``ValueError`` names the argument and a fix)."""

    image_size: int = 128
    min_objects: int = 1
    max_objects: int = 3
    colors: tuple[str, ...] = DEFAULT_COLORS
    shapes: tuple[str, ...] = DEFAULT_SHAPES
    min_size_frac: float = 0.15
    max_size_frac: float = 0.35
    background: str = "noise"

    def validate(self) -> None:
        if not 16 <= self.image_size <= 1000:
            raise ValueError(f"image_size={self.image_size}: must be in 16..1000 pixels")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"min_objects={self.min_objects}, max_objects={self.max_objects}: need 1 <= min_objects <= max_objects"
            )
        if not 0 < self.min_size_frac <= self.max_size_frac <= 1:
            raise ValueError(
                f"min_size_frac={self.min_size_frac}, max_size_frac={self.max_size_frac}: "
                f"need 0 < min_size_frac <= max_size_frac <= 1"
            )
        if round(self.min_size_frac * self.image_size) < 4:
            raise ValueError(
                f"min_size_frac={self.min_size_frac}: shapes would be under 4 px at image_size={self.image_size}"
            )
        for arg, names, known in (("colors", self.colors, COLORS), ("shapes", self.shapes, SHAPES)):
            if not names:
                raise ValueError(f"{arg}: empty; choose from {', '.join(known)}")
            bad = [n for n in names if n not in known]
            if bad or len(set(names)) != len(names):
                raise ValueError(f"{arg}={list(names)}: unknown or repeated {bad}; choose from {', '.join(known)}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background={self.background!r}: choose from {', '.join(BACKGROUNDS)}")

    def categories(self) -> list[str]:
        """All descs ``"<colour> <shape>"`` in a fixed order (COCO category id = index + 1)."""
        return [f"{c} {s}" for c, s in itertools.product(self.colors, self.shapes)]


@dataclass(frozen=True)
class ShapeInstance:
    """One drawn shape: ``desc``, tight pixel-index box ``(x1, y1, x2, y2)`` (inclusive), ``area`` in pixels."""

    desc: str
    box: Box
    area: int


def _overlaps(a: Box, b: Box) -> bool:
    return not (a[2] + GAP_PX < b[0] or b[2] + GAP_PX < a[0] or a[3] + GAP_PX < b[1] or b[3] + GAP_PX < a[1])


def generate_image(cfg: ShapesConfig, rng: np.random.Generator) -> tuple[Image.Image, list[ShapeInstance], int]:
    """Draw one image. Returns ``(RGB image, shapes in drawing order, number of dropped objects)``."""
    size = cfg.image_size
    img = BACKGROUNDS[cfg.background](rng, size)
    draw = ImageDraw.Draw(img)
    lo = max(4, round(cfg.min_size_frac * size))
    hi = max(lo, round(cfg.max_size_frac * size))
    n_objects = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    placed: list[Box] = []
    out: list[ShapeInstance] = []
    dropped = 0
    for _ in range(n_objects):
        color = cfg.colors[int(rng.integers(len(cfg.colors)))]
        shape = cfg.shapes[int(rng.integers(len(cfg.shapes)))]
        side = int(rng.integers(lo, hi + 1))
        spot: Box | None = None
        for _ in range(PLACEMENT_TRIES):
            x0 = int(rng.integers(0, size - side + 1))
            y0 = int(rng.integers(0, size - side + 1))
            cand = (x0, y0, x0 + side - 1, y0 + side - 1)
            if not any(_overlaps(cand, p) for p in placed):
                spot = cand
                break
        if spot is None:
            dropped += 1
            continue
        placed.append(spot)
        mask = Image.new("L", (size, size), 0)
        SHAPES[shape](ImageDraw.Draw(mask), spot[0], spot[1], side, 255)
        SHAPES[shape](draw, spot[0], spot[1], side, COLORS[color])
        left, top, right, bottom = mask.getbbox()  # right/bottom exclusive
        out.append(ShapeInstance(f"{color} {shape}", (left, top, right - 1, bottom - 1), mask.histogram()[255]))
    return img, out, dropped


def _write_split(out_dir: str, split: str, n: int, seed: int, cfg: ShapesConfig) -> dict[str, Any]:
    size = cfg.image_size
    cat_ids = {name: i + 1 for i, name in enumerate(cfg.categories())}
    coco: dict[str, Any] = {
        "info": {"description": f"coordexp-swift synthetic shapes ({split}, seed {seed})"},
        "licenses": [],
        "images": [],
        "annotations": [],
        "categories": [{"id": i, "name": name, "supercategory": "shape"} for name, i in cat_ids.items()],
    }
    per_desc: Counter[str] = Counter()
    dropped_total = 0
    lines: list[str] = []
    for i in range(n):
        rng = np.random.default_rng([seed, SPLIT_CODE[split], i])
        img, instances, dropped = generate_image(cfg, rng)
        dropped_total += dropped
        rel = f"images/{split}_{i:06d}.png"
        img.save(os.path.join(out_dir, rel), format="PNG", compress_level=1)
        pairs = []
        for inst in instances:
            bins = tuple(pixel_to_bin(v, size) for v in inst.box)
            pairs.append((GTObject(desc=inst.desc, geometry="bbox_2d", bins=bins), inst))
        pairs.sort(key=lambda p: object_sort_key(p[0]))
        image_id = i + 1
        record = {
            "images": [rel],
            "width": size,
            "height": size,
            "objects": [o.to_json() for o, _ in pairs],
            "metadata": {"image_id": image_id, "split": split},
        }
        lines.append(json.dumps(record, ensure_ascii=False))
        coco["images"].append({"id": image_id, "file_name": rel, "width": size, "height": size})
        for obj, inst in pairs:
            x1, y1, x2, y2 = inst.box
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": cat_ids[obj.desc],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": inst.area,
                    "iscrowd": 0,
                }
            )
            per_desc[obj.desc] += 1
    with open(os.path.join(out_dir, f"{split}.jsonl"), "w", encoding="utf-8") as fh:
        fh.write("".join(line + "\n" for line in lines))
    with open(os.path.join(out_dir, f"{split}_coco.json"), "w", encoding="utf-8") as fh:
        json.dump(coco, fh, ensure_ascii=False)
    return {
        "images": n,
        "objects": sum(per_desc.values()),
        "objects_dropped": dropped_total,
        "per_desc": dict(sorted(per_desc.items())),
        "jsonl": f"{split}.jsonl",
        "coco": f"{split}_coco.json",
    }


def make_shapes(
    out_dir: str,
    *,
    n_train: int,
    n_val: int,
    seed: int,
    image_size: int = ShapesConfig.image_size,
    min_objects: int = ShapesConfig.min_objects,
    max_objects: int = ShapesConfig.max_objects,
    colors: Sequence[str] = DEFAULT_COLORS,
    shapes: Sequence[str] = DEFAULT_SHAPES,
    min_size_frac: float = ShapesConfig.min_size_frac,
    max_size_frac: float = ShapesConfig.max_size_frac,
    background: str = ShapesConfig.background,
) -> dict[str, Any]:
    """Write the synthetic set into ``out_dir`` (created if needed) and return the summary (also ``summary.json``).

    Summary: ``{"out_dir", "seed", "config", "categories", "train": {...}, "val": {...}}`` where each split holds
    ``images``, ``objects``, ``objects_dropped``, ``per_desc`` and the file names. Raises ``ValueError`` for bad
    arguments.
    """
    if n_train < 0 or n_val < 0:
        raise ValueError(f"n_train={n_train}, n_val={n_val}: image counts must be >= 0")
    cfg = ShapesConfig(
        image_size=image_size,
        min_objects=min_objects,
        max_objects=max_objects,
        colors=tuple(colors),
        shapes=tuple(shapes),
        min_size_frac=float(min_size_frac),
        max_size_frac=float(max_size_frac),
        background=background,
    )
    cfg.validate()
    out_dir = os.path.abspath(out_dir)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    summary: dict[str, Any] = {
        "out_dir": out_dir,
        "seed": seed,
        "config": dataclasses.asdict(cfg),
        "categories": cfg.categories(),
        "train": _write_split(out_dir, "train", n_train, seed, cfg),
        "val": _write_split(out_dir, "val", n_val, seed, cfg),
    }
    on_disk = {k: v for k, v in summary.items() if k != "out_dir"}
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(on_disk, fh, ensure_ascii=False, indent=1)
    return summary


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> int:
    """CLI: ``coordexp-swift make-shapes --out DIR --train N --val M --seed S [...]``; prints the summary JSON."""
    d = ShapesConfig()
    p = argparse.ArgumentParser(prog="coordexp-swift make-shapes", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--train", type=int, required=True, help="number of train images")
    p.add_argument("--val", type=int, required=True, help="number of val images")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--min-objects", type=int, default=d.min_objects)
    p.add_argument("--max-objects", type=int, default=d.max_objects)
    p.add_argument("--min-size-frac", type=float, default=d.min_size_frac, help="min shape side / image side")
    p.add_argument("--max-size-frac", type=float, default=d.max_size_frac, help="max shape side / image side")
    p.add_argument("--colors", default=",".join(d.colors), help=f"comma list from {', '.join(COLORS)}")
    p.add_argument("--shapes", default=",".join(d.shapes), help=f"comma list from {', '.join(SHAPES)}")
    p.add_argument("--background", default=d.background, choices=sorted(BACKGROUNDS))
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        summary = make_shapes(
            a.out,
            n_train=a.train,
            n_val=a.val,
            seed=a.seed,
            image_size=a.image_size,
            min_objects=a.min_objects,
            max_objects=a.max_objects,
            colors=_names(a.colors),
            shapes=_names(a.shapes),
            min_size_frac=a.min_size_frac,
            max_size_frac=a.max_size_frac,
            background=a.background,
        )
    except ValueError as exc:
        print(f"coordexp-swift make-shapes: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - t0
    n = a.train + a.val
    summary["elapsed_s"] = round(elapsed, 3)
    summary["images_per_s"] = round(n / elapsed, 1) if elapsed > 0 else None
    print(json.dumps(summary, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
