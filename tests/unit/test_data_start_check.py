"""The start-up sample check of ``data.swift_loader`` (issue 13 item 3) on the real ms-swift ``qwen3_vl`` template of
the tiny model (processor only, no weights): every record is encoded once with the template's own ``encode``; an
over-length or unencodable sample fails naming ``<file>:<line>``, the length and the limit, or is left out and
counted under ``custom.data.on_bad_sample: skip``.

Golden lengths: the same record encoded by a second template built with ``max_length=None`` (no limit), whose
``input_ids`` length is the number ms-swift compares with ``max_length`` (its ``_get_length`` is the longer of
``input_ids`` / ``labels``, which have equal length in train mode)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

MAX_LENGTH = 512


@pytest.fixture(scope="module")
def templates(tiny_model_dir):
    from swift.model import get_processor
    from swift.template import get_template

    processor = get_processor(str(tiny_model_dir), model_type="qwen3_vl")
    out = []
    for max_length in (MAX_LENGTH, None):
        t = get_template(processor, template_type="qwen3_vl", max_length=max_length)
        t.set_mode("train")
        out.append(t)
    return tuple(out)


@pytest.fixture(autouse=True)
def _fresh_skips():
    from coordexp_swift.data import swift_loader as L

    L.SKIPPED.clear()
    L.SKIP_COUNTS.clear()
    yield
    L.SKIPPED.clear()
    L.SKIP_COUNTS.clear()


def _data(shapes_dir: Path, tmp_path: Path, *, long_line: int | None = 4, corrupt_line: int | None = None,
          n: int = 6) -> Path:
    """``n`` shapes train records; the one at 1-based ``long_line`` repeats its objects 60 times (> 512 tokens);
    the one at ``corrupt_line`` points at an image file that is not an image."""
    lines = (shapes_dir / "train.jsonl").read_text().splitlines()[:n]
    (tmp_path / "images").symlink_to(shapes_dir / "images")
    if long_line is not None:
        rec = json.loads(lines[long_line - 1])
        rec["objects"] = rec["objects"] * 60
        lines[long_line - 1] = json.dumps(rec)
    if corrupt_line is not None:
        (tmp_path / "broken.png").write_bytes(b"not a png at all")
        rec = json.loads(lines[corrupt_line - 1])
        rec["images"] = ["broken.png"]
        lines[corrupt_line - 1] = json.dumps(rec)
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _dataset(path: Path):
    from datasets import Dataset

    from coordexp_swift.data.swift_loader import load_rows

    rows = load_rows(str(path), stage="stage1", user_prompt="Detect all objects as JSON.", system_prompt=None,
                     field_order="desc_first")
    return Dataset.from_list(rows)


def _golden_length(unlimited, path: Path, line: int) -> int:
    ds = _dataset(path)
    row = next(r for r in ds if r["coordexp_where"] == f"{path}:{line}")
    return len(unlimited.encode(row, return_length=True)["input_ids"])


def test_fail_names_file_line_length_limit_and_fix(templates, shapes_dir, tmp_path):
    """issue 13 item 3: default policy: the over-length record at line 4 fails with ``<file>:4``, its encoded length
    (golden: unlimited template), the limit and the fix; nothing is counted as skipped."""
    from coordexp_swift.data import swift_loader as L

    limited, unlimited = templates
    path = _data(shapes_dir, tmp_path, long_line=4)
    n = _golden_length(unlimited, path, 4)
    assert n > MAX_LENGTH
    with pytest.raises(ValueError) as err:
        L.check_dataset(limited, _dataset(path), policy="fail", name="train")
    msg = str(err.value)
    assert msg.startswith(f"{path}:4: over_length: encoded length {n} > max_length {MAX_LENGTH} "), msg
    assert "raise max_length" in msg and "max_pixels" in msg and "on_bad_sample: skip" in msg
    assert L.SKIPPED == [] and L.SKIP_COUNTS == {}


def test_fail_lists_every_bad_sample(templates, shapes_dir, tmp_path):
    """issue 13 item 3: two bad samples (over-length at line 2, unreadable image at line 5): the error names the
    first and lists the other with its reason; an unreadable image alone fails as ``encode_error`` with its fix."""
    from coordexp_swift.data import swift_loader as L

    path = _data(shapes_dir, tmp_path, long_line=2, corrupt_line=5)
    with pytest.raises(ValueError) as err:
        L.check_dataset(templates[0], _dataset(path), policy="fail", name="train")
    msg = str(err.value)
    assert msg.startswith(f"{path}:2: over_length: encoded length "), msg
    assert f"1 more train samples fail the same check: {path}:5 (encode_error)" in msg
    (tmp_path / "b").mkdir()
    path = _data(shapes_dir, tmp_path / "b", long_line=None, corrupt_line=3)
    with pytest.raises(ValueError) as err:
        L.check_dataset(templates[0], _dataset(path), policy="fail", name="train")
    msg = str(err.value)
    assert msg.startswith(f"{path}:3: encode_error: ") and "fix or remove the record" in msg, msg


def test_skip_leaves_out_and_counts(templates, shapes_dir, tmp_path):
    """issue 13 item 3: ``skip``: the returned dataset is the other records in order; one ``SKIPPED`` entry per
    bad record (reason, file:line, length for over-length) and the counts equal the list."""
    from coordexp_swift.data import swift_loader as L

    limited, unlimited = templates
    path = _data(shapes_dir, tmp_path, long_line=3, corrupt_line=6)
    n = _golden_length(unlimited, path, 3)
    ds = _dataset(path)
    kept = L.check_dataset(limited, ds, policy="skip", name="train")
    assert kept["coordexp_where"] == [f"{path}:{i}" for i in (1, 2, 4, 5)]
    assert [(s["reason"], s["where"], s["length"], s["max_length"]) for s in L.SKIPPED] == [
        ("over_length", f"{path}:3", n, MAX_LENGTH), ("encode_error", f"{path}:6", None, None)]
    assert L.SKIP_COUNTS == {"over_length": 1, "encode_error": 1}
    assert L.skip_summary()["counts"] == L.SKIP_COUNTS and L.skip_summary()["total"] == 2


def test_skip_on_streaming_dataset(templates, shapes_dir, tmp_path):
    """issue 13 item 3: the same check on a streaming (``IterableDataset``) split filters the bad record out."""
    from coordexp_swift.data import swift_loader as L

    path = _data(shapes_dir, tmp_path, long_line=2)
    kept = L.check_dataset(templates[0], _dataset(path).to_iterable_dataset(), policy="skip", name="train")
    assert [r["coordexp_where"] for r in kept] == [f"{path}:{i}" for i in (1, 3, 4, 5, 6)]
    assert L.SKIP_COUNTS == {"over_length": 1}


def test_all_samples_bad_fails_even_under_skip(templates, shapes_dir, tmp_path):
    """issue 13 item 3: ``skip`` never trains on nothing: a split whose every sample is left out fails."""
    from coordexp_swift.data import swift_loader as L

    path = _data(shapes_dir, tmp_path, long_line=1, n=1)
    with pytest.raises(ValueError, match="every train sample was left out"):
        L.check_dataset(templates[0], _dataset(path), policy="skip", name="train")


def test_dropped_rows_is_a_multiset_difference(shapes_dir, tmp_path):
    """issue 13 item 3 (``lazy_tokenize: false``): the rows ms-swift's up-front encode dropped are found by their
    ``coordexp_where`` as a multiset (``#N`` can repeat a record: one of two copies kept, the other reported)."""
    from datasets import Dataset

    from coordexp_swift.data.swift_loader import _dropped_rows

    before = Dataset.from_list([{"coordexp_where": w} for w in ("f:1", "f:2", "f:2", "f:3")])
    after = Dataset.from_list([{"coordexp_where": w} for w in ("f:1", "f:2")])
    assert [(i, r["coordexp_where"]) for i, r in _dropped_rows(before, after)] == [(2, "f:2"), (3, "f:3")]
    assert [i for i, _ in _dropped_rows(before, None)] == [0, 1, 2, 3]



def test_encode_guard_outside_the_check(templates, shapes_dir, tmp_path):
    """issue 13 item 3: with the plugin's encode guard installed, an over-length sample met outside the start-up
    check (e.g. a fetch during training) raises ValueError naming ``<file>:<line>``, length and limit — never
    ms-swift's silent skip — while the check itself still classifies it as ``over_length``."""
    from coordexp_swift.data import swift_loader as L

    limited, unlimited = templates
    path = _data(shapes_dir, tmp_path, long_line=4)
    n = _golden_length(unlimited, path, 4)
    L.install_encode_guard()
    ds = _dataset(path)
    with pytest.raises(ValueError) as err:
        limited.encode(ds[3], return_length=True)
    assert str(err.value).startswith(f"{path}:4: over_length: encoded length {n} > max_length {MAX_LENGTH} ")
    assert [(w, r, k) for _i, w, r, k, _d in L.scan_rows(limited, ds)] == [(f"{path}:4", "over_length", n)]
