"""COCO import (convert_coco counters, bins, ordering, max_objects) and export (records_to_coco), round trips."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from PIL import Image

from coordexp_swift.data import coco as coco_mod
from coordexp_swift.data.coco import COUNTER_KEYS, convert_coco, records_to_coco
from coordexp_swift.data.records import GTObject, iter_jsonl
from coordexp_swift.data.shapes import make_shapes


def _png(path: str, size: tuple[int, int]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, (200, 200, 200)).save(path)


@pytest.fixture()
def hand_made(tmp_path: Any) -> dict[str, str]:
    """Images: 1 ok (101x51) with 7 annotations, 2 missing file, 3 size mismatch, 4 ok and empty, 5 malformed."""
    img_dir = str(tmp_path / "imgs")
    _png(os.path.join(img_dir, "a.png"), (101, 51))
    _png(os.path.join(img_dir, "c.png"), (100, 50))  # JSON claims 101x51
    _png(os.path.join(img_dir, "sub", "d.png"), (20, 10))
    instances = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 101, "height": 51},
            {"id": 2, "file_name": "b.png", "width": 101, "height": 51},
            {"id": 3, "file_name": "c.png", "width": 101, "height": 51},
            {"id": 4, "file_name": "sub/d.png", "width": 20, "height": 10},
            {"id": 5, "file_name": "e.png"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 5, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 8, "bbox": [0, 0, 30, 30], "iscrowd": 1},  # crowd
            {"id": 3, "image_id": 1, "category_id": 7, "bbox": [50, 20, 0, 10], "iscrowd": 0},  # zero width
            {"id": 4, "image_id": 1, "category_id": 7, "bbox": [50, 20, 4, -1]},  # negative height
            {"id": 5, "image_id": 1, "category_id": 99, "bbox": [1, 1, 2, 2]},  # unknown category
            {"id": 6, "image_id": 1, "category_id": 8, "bbox": [1, 1, 2]},  # malformed
            {"id": 7, "image_id": 1, "category_id": 8, "bbox": [0, 0, 100, 4.5]},  # kept; top-left first
            {"id": 8, "image_id": 2, "category_id": 7, "bbox": [1, 1, 2, 2]},  # on the missing image
            {"id": 9, "image_id": 42, "category_id": 7, "bbox": [1, 1, 2, 2]},  # orphan
        ],
        "categories": [{"id": 7, "name": "dog"}, {"id": 8, "name": " hot dog "}],
    }
    path = str(tmp_path / "instances.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(instances, fh)
    return {"instances": path, "images": img_dir, "out": str(tmp_path / "out" / "conv.jsonl")}


def test_counters_and_records(hand_made: dict[str, str]) -> None:
    """Crowd, zero-area, missing image, size mismatch, malformed, unknown category, orphan: skipped and counted."""
    counters = convert_coco(hand_made["instances"], hand_made["images"], hand_made["out"])
    assert list(counters) == list(COUNTER_KEYS)
    assert counters == {
        "images_total": 5,
        "images_written": 2,
        "images_malformed": 1,
        "images_missing": 1,
        "images_unreadable": 0,
        "images_size_mismatch": 1,
        "images_empty": 1,
        "annotations_total": 9,
        "objects_written": 2,
        "crowd_skipped": 1,
        "zero_area_skipped": 2,
        "malformed_skipped": 1,
        "unknown_category_skipped": 1,
        "orphan_skipped": 1,
        "max_objects_truncated": 0,
    }
    recs = list(iter_jsonl(hand_made["out"], stage="stage1"))
    assert [r.image for r in recs] == [
        os.path.join(hand_made["images"], "a.png"),
        os.path.join(hand_made["images"], "sub", "d.png"),
    ]
    # By hand, W=101 (W-1=100), H=51 (H-1=50):
    #   ann 1 xyxy (10,5,30,15): 10/100*999=99.9->100, 5/50*999=99.9->100, 30/100*999=299.7->300, 15/50*999->300
    #   ann 7 xyxy (0,0,100,4.5): 0, 0, 999, 4.5/50*999=89.91->90; sorted first (y1=0)
    assert recs[0].objects == (
        GTObject("hot dog", "bbox_2d", (0, 0, 999, 90)),
        GTObject("dog", "bbox_2d", (100, 100, 300, 300)),
    )
    assert recs[0].metadata == {"image_id": 1, "file_name": "a.png"}
    assert recs[1].objects == ()
    with open(hand_made["out"], encoding="utf-8") as fh:
        assert json.loads(fh.readline())["images"] == ["../imgs/a.png"]


def test_skip_empty_and_verbatim_paths(hand_made: dict[str, str]) -> None:
    out = os.path.join(hand_made["images"], "conv.jsonl")
    counters = convert_coco(hand_made["instances"], hand_made["images"], out, skip_empty=True,
                            image_root_relative=False)
    assert counters["images_written"] == 1 and counters["images_empty"] == 1
    recs = list(iter_jsonl(out, stage="stage2"))
    assert len(recs) == 1 and recs[0].image == os.path.join(hand_made["images"], "a.png")


def test_max_objects_keeps_largest_then_sorts(tmp_path: Any) -> None:
    _png(str(tmp_path / "a.png"), (1000, 1000))
    inst = {
        "images": [{"id": 1, "file_name": "a.png", "width": 1000, "height": 1000}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 900, 10, 10], "iscrowd": 0},  # area 100
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [500, 500, 50, 50], "iscrowd": 0},  # 2500
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 0},  # 25
            {"id": 4, "image_id": 1, "category_id": 1, "bbox": [100, 100, 20, 20], "iscrowd": 0},  # 400
        ],
        "categories": [{"id": 1, "name": "box"}],
    }
    path = str(tmp_path / "i.json")
    json.dump(inst, open(path, "w"))
    out = str(tmp_path / "o.jsonl")
    counters = convert_coco(path, str(tmp_path), out, max_objects=2)
    assert counters["max_objects_truncated"] == 2 and counters["objects_written"] == 2
    (r,) = iter_jsonl(out, stage="stage2")
    # W=1000: bin = round(x*999/999) = x, so bins equal pixels here; kept: areas 2500 and 400, sorted by (y1, x1)
    assert [o.bins for o in r.objects] == [(100, 100, 120, 120), (500, 500, 550, 550)]
    with pytest.raises(ValueError, match="max_objects"):
        convert_coco(path, str(tmp_path), out, max_objects=0)


def test_not_coco(tmp_path: Any) -> None:
    path = str(tmp_path / "x.json")
    json.dump({"images": []}, open(path, "w"))
    with pytest.raises(ValueError, match="annotations"):
        convert_coco(path, str(tmp_path), str(tmp_path / "o.jsonl"))


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory: Any) -> str:
    out = str(tmp_path_factory.mktemp("shapes_rt"))
    make_shapes(out, n_train=0, n_val=12, seed=11, image_size=96)
    return out


def test_round_trip_shapes_coco_to_records(shapes_dir: str, tmp_path: Any) -> None:
    """shapes val_coco.json -> convert_coco -> equal bins, descs and order as the shapes JSONL.

    Tolerance is zero: both sides bin the same integer pixel-index edges (COCO x2 = x + w exactly), with the same
    pixel_to_bin and the same sort key, so any difference is a bug.
    """
    out = str(tmp_path / "conv" / "val.jsonl")
    counters = convert_coco(os.path.join(shapes_dir, "val_coco.json"), shapes_dir, out)
    assert counters["images_written"] == 12 and counters["images_missing"] == 0
    ref = list(iter_jsonl(os.path.join(shapes_dir, "val.jsonl"), stage="stage2"))
    got = list(iter_jsonl(out, stage="stage2"))
    assert [r.objects for r in got] == [r.objects for r in ref]
    assert [r.image for r in got] == [r.image for r in ref]
    assert counters["objects_written"] == sum(len(r.objects) for r in ref)


def test_records_to_coco_inverts_pixels(shapes_dir: str) -> None:
    """Export: bins -> pixels with round(k/999·(W-1)) reproduces the generator's pixel boxes exactly (W <= 1000:
    the bin error <= 0.5 maps back to <= 0.5·95/999 < 0.5 px)."""
    recs = list(iter_jsonl(os.path.join(shapes_dir, "val.jsonl"), stage="stage2"))
    ref = json.load(open(os.path.join(shapes_dir, "val_coco.json"), encoding="utf-8"))
    names = [c["name"] for c in ref["categories"]]
    exported = records_to_coco(recs, categories=names)
    strip = lambda anns: [(a["image_id"], a["category_id"], a["bbox"]) for a in anns]  # noqa: E731
    assert strip(exported["annotations"]) == strip(ref["annotations"])
    assert [i["id"] for i in exported["images"]] == [i["id"] for i in ref["images"]]
    with pytest.raises(ValueError, match="not in categories"):
        records_to_coco(recs, categories=["nothing"])


def test_cli_main(hand_made: dict[str, str], capsys: Any) -> None:
    rc = coco_mod.main(["--instances", hand_made["instances"], "--images", hand_made["images"], "--out",
                        hand_made["out"], "--max-objects", "1"])
    assert rc == 0
    counters = json.loads(capsys.readouterr().out)
    assert counters["max_objects_truncated"] == 1 and counters["objects_written"] == 1
    assert coco_mod.main(["--instances", hand_made["instances"] + ".nope", "--images", "x", "--out", "y"]) == 2
