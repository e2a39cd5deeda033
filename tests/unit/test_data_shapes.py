"""Synthetic shapes generator: determinism, validity, tight boxes, bins by k/999, COCO side files, curriculum."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pytest
from PIL import Image

from coordexp_swift.data import shapes as shapes_mod
from coordexp_swift.data.records import iter_jsonl, object_sort_key
from coordexp_swift.data.shapes import COLORS, make_shapes


def _files(root: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def _bin(x: int, size: int) -> int:
    """Independent norm1000 reference: c = x/(W-1), bin = floor(999*c + 0.5)."""
    return int(np.floor(x * 999 / (size - 1) + 0.5))


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory: Any) -> str:
    out = str(tmp_path_factory.mktemp("shapes"))
    make_shapes(out, n_train=8, n_val=5, seed=3)
    return out


def test_deterministic_same_bytes(shapes_dir: str, tmp_path: Any) -> None:
    """Same arguments -> byte-identical output tree."""
    again = str(tmp_path / "again")
    make_shapes(again, n_train=8, n_val=5, seed=3)
    a, b = _files(shapes_dir), _files(again)
    assert sorted(a) == sorted(b)
    assert len(a) == 8 + 5 + 5  # images + 2 jsonl + 2 coco + summary
    assert all(a[k] == b[k] for k in a)


def test_other_seed_differs_and_val_independent_of_n_train(shapes_dir: str, tmp_path: Any) -> None:
    other = str(tmp_path / "other")
    make_shapes(other, n_train=2, n_val=5, seed=4)
    assert _files(other)["images/val_000000.png"] != _files(shapes_dir)["images/val_000000.png"]
    fewer = str(tmp_path / "fewer")
    make_shapes(fewer, n_train=2, n_val=5, seed=3)
    a, b = _files(shapes_dir), _files(fewer)
    assert all(a[k] == b[k] for k in b if k.startswith("images/val_") or k.startswith("val"))


def test_every_record_validates(shapes_dir: str) -> None:
    """seed 000 2.2: the written train/val JSONL (coord-token mode) pass §1 validation, Stage-1 and Stage-2."""
    for split, n in (("train", 8), ("val", 5)):
        path = os.path.join(shapes_dir, f"{split}.jsonl")
        for stage in ("stage1", "stage2"):
            recs = list(iter_jsonl(path, stage=stage))  # type: ignore[arg-type]
            assert [r.sample_id for r in recs] == list(range(n))
            for r in recs:
                assert os.path.isfile(r.image) and r.image.endswith(f"{split}_{r.sample_id:06d}.png")
                assert (r.width, r.height) == (128, 128) == Image.open(r.image).size
                assert 1 <= len(r.objects) <= 3
                assert list(r.objects) == sorted(r.objects, key=object_sort_key)
        with open(path, encoding="utf-8") as fh:
            raw = json.loads(fh.readline())
        assert all(isinstance(v, str) and v.startswith("<|coord_") for v in raw["objects"][0]["bbox_2d"])


def test_boxes_tight_and_bins_by_999(shapes_dir: str) -> None:
    """seed 001 1.8.2: boxes are the shapes' tight pixel bounds (checked on the pixels); bins = round(999·x/(W-1))."""
    coco = json.load(open(os.path.join(shapes_dir, "train_coco.json"), encoding="utf-8"))
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    recs = list(iter_jsonl(os.path.join(shapes_dir, "train.jsonl"), stage="stage2"))
    anns_by_image: dict[int, list[dict[str, Any]]] = {}
    for a in coco["annotations"]:
        anns_by_image.setdefault(a["image_id"], []).append(a)
    for r in recs:
        arr = np.asarray(Image.open(r.image).convert("RGB")).astype(int)
        anns = anns_by_image[r.metadata["image_id"]]
        assert len(anns) == len(r.objects)
        for obj, ann in zip(r.objects, anns):
            x, y, w, h = ann["bbox"]
            assert cats[ann["category_id"]] == obj.desc
            # bins recomputed independently from the COCO pixel box (index convention x2 = x + w)
            assert obj.bins == (_bin(x, 128), _bin(y, 128), _bin(x + w, 128), _bin(y + h, 128))
            # tightness: pixels of the shape's colour inside the box grown by 1 px span exactly the box
            color = np.array(COLORS[obj.desc.split()[0]])
            y0, x0 = max(y - 1, 0), max(x - 1, 0)
            region = np.all(arr[y0 : y + h + 2, x0 : x + w + 2] == color, axis=-1)
            ys, xs = np.nonzero(region)
            assert (xs.min() + x0, ys.min() + y0, xs.max() + x0, ys.max() + y0) == (x, y, x + w, y + h)
            assert ann["area"] == int(region.sum()) and ann["iscrowd"] == 0


def test_bin_golden_values() -> None:
    """seed 001 1.8.2: by hand, W=128: x=0 -> 0, x=127 -> 999, x=64 -> round(503.43) = 503 (k/999 with W-1)."""
    assert [_bin(v, 128) for v in (0, 127, 64)] == [0, 999, 503]
    from coordexp_swift.coord.codec import pixel_to_bin

    assert [pixel_to_bin(v, 128) for v in (0, 127, 64)] == [0, 999, 503]


def test_coco_files_load_and_share_categories(shapes_dir: str) -> None:
    from pycocotools.coco import COCO

    train = json.load(open(os.path.join(shapes_dir, "train_coco.json"), encoding="utf-8"))
    val = json.load(open(os.path.join(shapes_dir, "val_coco.json"), encoding="utf-8"))
    assert train["categories"] == val["categories"]
    assert [c["name"] for c in val["categories"]] == [
        f"{c} {s}" for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "triangle")
    ]
    api = COCO(os.path.join(shapes_dir, "val_coco.json"))
    assert len(api.getImgIds()) == 5
    summary = json.load(open(os.path.join(shapes_dir, "summary.json"), encoding="utf-8"))
    assert summary["val"]["objects"] == len(val["annotations"]) == len(api.getAnnIds())
    assert summary["train"]["objects"] == len(train["annotations"])


def test_curriculum_one_big_object(tmp_path: Any) -> None:
    """Easier data through arguments: 1 object per image, side >= 60% of the image, one shape kind, plain bg."""
    out = str(tmp_path / "easy")
    s = make_shapes(out, n_train=6, n_val=0, seed=0, image_size=64, min_objects=1, max_objects=1,
                    min_size_frac=0.6, max_size_frac=0.8, shapes=["square"], colors=["red", "blue"],
                    background="plain")
    assert s["train"]["objects"] == 6 and s["train"]["objects_dropped"] == 0
    coco = json.load(open(os.path.join(out, "train_coco.json"), encoding="utf-8"))
    for ann in coco["annotations"]:
        # a square of side s covers s pixels: x2 - x1 = s - 1 >= round(0.6*64) - 1 = 37
        assert ann["bbox"][2] == ann["bbox"][3] >= 37
        assert ann["area"] == (ann["bbox"][2] + 1) ** 2
    for r in iter_jsonl(os.path.join(out, "train.jsonl"), stage="stage2"):
        assert len(r.objects) == 1 and r.objects[0].desc in ("red square", "blue square")
        assert len(np.unique(np.asarray(Image.open(r.image)).reshape(-1, 3), axis=0)) == 2  # plain bg + shape


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"colors": ["red", "mauve"]}, "colors"),
        ({"shapes": ["hexagon"]}, "shapes"),
        ({"min_objects": 3, "max_objects": 2}, "min_objects"),
        ({"min_size_frac": 0.5, "max_size_frac": 0.2}, "min_size_frac"),
        ({"background": "stripes"}, "background"),
        ({"image_size": 8}, "image_size"),
    ],
)
def test_bad_arguments(tmp_path: Any, kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        make_shapes(str(tmp_path), n_train=1, n_val=1, seed=0, **kwargs)


def test_cli_main(tmp_path: Any, capsys: Any) -> None:
    out = str(tmp_path / "cli")
    rc = shapes_mod.main(["--out", out, "--train", "3", "--val", "2", "--seed", "1", "--image-size", "96",
                          "--max-objects", "2", "--colors", "red,blue"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train"]["images"] == 3 and summary["val"]["images"] == 2
    assert summary["config"]["image_size"] == 96 and summary["config"]["colors"] == ["red", "blue"]
    assert summary["images_per_s"] > 0
    assert len(list(iter_jsonl(os.path.join(out, "val.jsonl"), stage="stage2"))) == 2
    assert shapes_mod.main(["--out", out, "--train", "1", "--val", "1", "--seed", "1", "--colors", "mauve"]) == 2
