"""``coordexp-swift visualize``: box overlays for ``gt_vs_pred`` records and training-curve plots.

- :func:`draw_overlays`: a grid PNG of the first ``max_images`` records, GT boxes green, predictions red, each
  labelled with its desc (predictions also with the score). Boxes go through the evaluator's own conversion
  (:func:`coordexp_swift.eval.coco_eval.object_xyxy`), so what is drawn is exactly what is evaluated; objects
  the evaluator would drop are not drawn.
- :func:`plot_training_curves`: panels for whatever exists among the loss, the token accuracies, the
  ``loss/coord_reg/*`` breakdown (softCE / W1 / gates), the other ``loss/<component>`` keys and the rollout
  eval keys in an ms-swift ``logging.jsonl`` (one JSON dict per line; the step comes from
  ``"global_step/max_steps": "5/100"``).

Rendering uses PIL and matplotlib's object API (``Figure`` → Agg), never pyplot's global state.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from coordexp_swift.eval.coco_eval import COORD_MODES, DroppedObject, is_finite_number, object_xyxy, record_size

logger = logging.getLogger(__name__)

GT_COLOR = (0, 200, 0)
PRED_COLOR = (230, 0, 0)
TILE = 320  # max tile side in pixels
HEADER = 14  # caption strip above each tile
LABEL_CHARS = 40  # longest drawn desc
MAX_BOXES = 500  # boxes drawn per list (gt / pred) of one record


def _load_image(image_root: Path, rec: Mapping[str, Any], size: tuple[int, int]):
    """The record's image scaled to the tile ``size``, or a grey tile; never decodes more than needed (JPEG draft
    mode) and never allocates a canvas of the record's own (possibly huge) size."""
    from PIL import Image

    image = rec.get("image", "")
    path = image_root / image if isinstance(image, str) else None
    try:
        if path is None:
            raise ValueError(f"image field is a {type(image).__name__}, not a path")
        with Image.open(path) as im:
            im.draft("RGB", size)
            return im.convert("RGB").resize(size)
    except Exception as exc:  # noqa: BLE001 - any unreadable / bomb / odd file: a grey tile, never a crash
        logger.warning("draw_overlays: cannot open %s (%s); drawing on a blank canvas", path, type(exc).__name__)
        return Image.new("RGB", size, (128, 128, 128))


def _label(obj: Mapping[str, Any], key: str) -> str:
    desc = obj.get("desc", "")
    label = (desc if isinstance(desc, str) else "")[:LABEL_CHARS]
    score = obj.get("score")
    if key == "pred" and is_finite_number(score):
        label += f" {float(score):.2f}"
    return label.encode("ascii", "replace").decode("ascii")  # the default bitmap font is Latin-1 only


def _draw_record(rec: Mapping[str, Any], image_root: Path):
    """One record → an RGB tile (≤ TILE px per side plus a caption strip), or None if its size is unusable."""
    from PIL import Image, ImageDraw

    size, mode = record_size(rec), rec.get("coord_mode")
    if size is None or not isinstance(mode, str) or mode not in COORD_MODES:
        return None
    w, h = size
    scale = min(TILE / w, TILE / h)
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    img = _load_image(image_root, rec, (tw, th))
    draw = ImageDraw.Draw(img)
    for key, color in (("gt", GT_COLOR), ("pred", PRED_COLOR)):
        objs = rec.get(key) if isinstance(rec.get(key), list) else []
        for obj in objs[:MAX_BOXES]:
            try:
                x1, y1, x2, y2 = object_xyxy(obj, mode, w, h)
            except DroppedObject:
                continue
            # clamp to the tile (pixel-mode boxes may lie far outside the image)
            box = [min(max(v * scale, -2.0), t + 2.0) for v, t in ((x1, tw), (y1, th), (x2, tw), (y2, th))]
            draw.rectangle(box, outline=color, width=2)
            ty = box[1] - 11 if key == "gt" else box[3] + 1
            draw.text((box[0] + 2, max(0, ty)), _label(obj, key), fill=color)
    tile = Image.new("RGB", (img.width, img.height + HEADER), (255, 255, 255))
    tile.paste(img, (0, HEADER))
    caption = rec.get("image", "")
    caption = (caption if isinstance(caption, str) else "")[-48:].encode("ascii", "replace").decode("ascii")
    ImageDraw.Draw(tile).text((2, 1), caption, fill=(0, 0, 0))
    return tile


def draw_overlays(records: Iterable[Any], image_root: str | Path, out_png: str | Path,
                  max_images: int = 16) -> Path:
    """Write a grid PNG of the first ``max_images`` drawable records (GT green, pred red, with labels).

    Records without a usable ``width``/``height``/``coord_mode`` (or that fail to draw) are skipped; a missing or
    unreadable image is drawn as a grey tile. Time and memory are bounded by the tiles (≤ TILE px a side, at most
    ``MAX_BOXES`` boxes per list, labels cut to ``LABEL_CHARS``), whatever the record says. Raises ValueError if no
    record is drawable or ``max_images < 1``.
    """
    from PIL import Image

    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    root = Path(image_root)
    tiles = []
    for i, rec in enumerate(records):
        if len(tiles) >= max_images:
            break
        try:
            tile = _draw_record(rec, root) if isinstance(rec, Mapping) else None
        except Exception as exc:  # noqa: BLE001 - a record that cannot be drawn is skipped, never a crash
            logger.warning("draw_overlays: record %d not drawn (%s: %s)", i, type(exc).__name__, str(exc)[:200])
            tile = None
        if tile is not None:
            tiles.append(tile)
    if not tiles:
        raise ValueError("draw_overlays: no drawable record (each needs integral width, height > 0 and "
                         f"coord_mode in {sorted(COORD_MODES)})")
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    cell_w, cell_h = max(t.width for t in tiles), max(t.height for t in tiles)
    grid = Image.new("RGB", (cols * cell_w, rows * cell_h), (255, 255, 255))
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % cols) * cell_w, (i // cols) * cell_h))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out, format="PNG")
    return out


# panel title -> predicate on the logging key (first matching panel wins)
CURVE_PANELS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("loss", lambda k: k in ("loss", "eval_loss")),
    ("token accuracy", lambda k: k in ("token_acc", "coord_token_acc", "eval_token_acc", "eval_coord_token_acc")),
    ("coord_reg breakdown (softCE / W1)", lambda k: k.removeprefix("eval_").startswith("loss/coord_reg/")),
    ("loss components", lambda k: k.removeprefix("eval_").startswith("loss/")),
    ("rollout eval", lambda k: k.startswith("eval_rollout/")),
)


def _step_of(row: Mapping[str, Any], fallback: int) -> float:
    gs = row.get("global_step/max_steps")
    head = gs.split("/", 1)[0].strip() if isinstance(gs, str) else ""
    if head.isdigit():
        return float(head)
    for key in ("global_step", "step"):
        if isinstance(row.get(key), (int, float)):
            return float(row[key])
    return float(fallback)


def read_logging_jsonl(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """``key -> [(step, value)]`` for every finite numeric value in an ms-swift ``logging.jsonl``.

    Undecodable / non-object lines are skipped with one warning naming their line numbers.
    """
    series: dict[str, list[tuple[float, float]]] = {}
    bad: list[int] = []
    with Path(path).open(encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad.append(lineno)
                continue
            if not isinstance(row, dict):
                bad.append(lineno)
                continue
            step = _step_of(row, lineno)
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    series.setdefault(k, []).append((step, float(v)))
    if bad:
        logger.warning("%s: skipped %d unreadable line(s): %s", path, len(bad), bad[:10])
    return series


def plot_training_curves(logging_jsonl: str | Path, out_png: str | Path) -> list[str]:
    """Plot the loss / accuracy / coord_reg / loss-component / rollout-eval keys that exist; return them.

    One panel per non-empty group of :data:`CURVE_PANELS`; ``eval_*`` series are drawn with markers. Raises
    ValueError (naming the file and the keys it has) when none of those keys is present.
    """
    from matplotlib.figure import Figure

    series = read_logging_jsonl(logging_jsonl)
    groups: list[tuple[str, list[str]]] = []
    taken: set[str] = set()
    for title, pred in CURVE_PANELS:
        keys = sorted(k for k in series if k not in taken and pred(k))
        taken.update(keys)
        if keys:
            groups.append((title, keys))
    if not groups:
        raise ValueError(f"{logging_jsonl}: no plottable key (loss, token_acc, coord_token_acc, loss/*, "
                         f"eval_rollout/*); keys present: {sorted(series)[:20]}")
    fig = Figure(figsize=(8, 2.8 * len(groups)), layout="constrained")
    axes = fig.subplots(len(groups), 1, squeeze=False)[:, 0]
    for ax, (title, keys) in zip(axes, groups):
        for k in keys:
            xs, ys = zip(*series[k])
            ax.plot(xs, ys, marker="o" if k.startswith("eval_") else None, markersize=3, label=k)
        ax.set_title(title)
        ax.set_xlabel("global step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return [k for _, keys in groups for k in keys]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coordexp-swift visualize",
                                description="draw GT/pred boxes over images, or plot training curves")
    p.add_argument("--pred_jsonl", help="gt_vs_pred.jsonl whose boxes to draw (needs --image_root)")
    p.add_argument("--image_root", help="directory the records' `image` paths are relative to")
    p.add_argument("--max_images", type=int, default=16)
    p.add_argument("--logging_jsonl", help="ms-swift logging.jsonl to plot")
    p.add_argument("--out", required=True, help="output PNG path")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if (args.pred_jsonl is None) == (args.logging_jsonl is None):
        parser.error("give exactly one of --pred_jsonl (with --image_root) or --logging_jsonl")
    try:
        if args.logging_jsonl is not None:
            keys = plot_training_curves(args.logging_jsonl, args.out)
            print(f"plotted {len(keys)} series ({', '.join(keys)}) to {args.out}")
            return 0
        if args.image_root is None:
            parser.error("--pred_jsonl needs --image_root (the directory image paths are relative to)")
        from coordexp_swift.eval.records_io import read_gt_vs_pred

        read = read_gt_vs_pred(args.pred_jsonl)
        for bad in read.malformed:
            print(f"skipped {bad.location}: {bad.reason}", file=sys.stderr)
        draw_overlays(read.records, args.image_root, args.out, max_images=args.max_images)
    except (FileNotFoundError, ValueError) as exc:
        print(f"coordexp-swift visualize: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
