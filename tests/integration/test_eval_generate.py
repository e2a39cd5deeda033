"""``eval --model`` generation path: rollouts over a JSONL -> SPEC §7.2 ``gt_vs_pred`` records -> evaluate_records.

A model-free "teacher" backend answers with the GT CoordJSON, so the records must evaluate to AP 1.0; corrupted
teacher answers must surface as parse errors. One test runs the real tiny model end to end.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import pytest

from coordexp_swift.coord.codec import parse_coord_token
from coordexp_swift.eval import evaluate_records
from coordexp_swift.eval.generate import generate_records, load_eval_rows, make_record
from coordexp_swift.rollout.backends import DecodeOptions, RolloutOutput
from coordexp_swift.rollout.seeds import RolloutSeeds


class TeacherBackend:
    """Answers each row with ``answer(i, gt_text)`` (default: the GT assistant text) + ``<|im_end|>``."""

    name = "teacher"

    def __init__(self, answer: Callable[[int, str], tuple[str, bool]] | None = None) -> None:
        self.answer = answer or (lambda i, gt: (gt + "<|im_end|>", False))
        self.calls: list[tuple[int, RolloutSeeds]] = []
        self.seen = 0

    def generate(self, samples: Sequence[dict], *, decode: DecodeOptions, seeds: RolloutSeeds) -> list[RolloutOutput]:
        assert len(samples) <= decode.batch_size
        self.calls.append((len(samples), seeds))
        outs = []
        for row in samples:
            text, truncated = self.answer(self.seen, row["messages"][-1]["content"])
            self.seen += 1
            outs.append(RolloutOutput((), (), text, truncated))
        return outs


def _raw_gt(jsonl) -> list[list[dict]]:
    """GT straight from the file with json + the coord-token regex (independent of Record / to_swift_row)."""
    out = []
    for line in open(jsonl, encoding="utf-8"):
        if line.strip():
            out.append([{"desc": o["desc"], "bbox_2d": [parse_coord_token(v) for v in o["bbox_2d"]]}
                        for o in json.loads(line)["objects"]])
    return out


def test_teacher_records_evaluate_to_ap_one(shapes_dir, tmp_path):
    """SPEC §7.2: generated records (image, width, height, coord_mode norm1000, gt, pred, errors) of a teacher
    that answers the GT evaluate to AP = AP50 = 1.0; the JSONL written equals the returned records."""
    jsonl = shapes_dir / "val.jsonl"
    teacher = TeacherBackend()
    out = tmp_path / "sub" / "gt_vs_pred.jsonl"
    records = generate_records(None, jsonl, backend=teacher, out_jsonl=out, batch_size=3, progress=False)
    gt = _raw_gt(jsonl)
    assert len(records) == len(gt) == 8
    assert [n for n, _ in teacher.calls] == [3, 3, 2]  # batches <= batch_size, in order
    assert [s.micro_idx for _, s in teacher.calls] == [0, 1, 2]
    for rec, g in zip(records, gt):
        assert rec["coord_mode"] == "norm1000" and rec["width"] == 128 and rec["height"] == 128
        assert rec["gt"] == g and rec["pred"] == g
        assert rec["errors"] == [] and rec["parse"]["invalid_rollout"] is False
        assert rec["raw_text"].endswith("<|im_end|>")
    assert [json.loads(line) for line in out.read_text().splitlines()] == records
    result = evaluate_records(records)
    assert result["metrics"]["bbox_AP"] == pytest.approx(1.0)
    assert result["metrics"]["bbox_AP50"] == pytest.approx(1.0)
    assert result["counters"]["record_errors"] == 0


def test_corrupted_answers_become_errors(shapes_dir):
    """SPEC §3.6 B1 / §7.2: an invalid rollout gives no predictions and an ``invalid_rollout`` error; a response
    cut by max_new_tokens keeps its complete records; a bad record is dropped and counted; AP drops below 1."""

    def answer(i: int, gt: str) -> tuple[str, bool]:
        if i == 0:
            return "I see shapes.<|im_end|>", False  # no opener
        if i == 1:
            cut = gt.index("}, {") + 4 + 3  # first record complete, second cut inside its key
            return gt[:cut], True
        if i == 2:  # first record with a missing desc
            return gt.replace('"desc": "', '"label": "', 1) + "<|im_end|>", False
        return gt + "<|im_end|>", False

    jsonl = shapes_dir / "val.jsonl"
    gt = _raw_gt(jsonl)
    assert len(gt[1]) >= 2 and len(gt[2]) >= 1
    records = generate_records(None, jsonl, backend=TeacherBackend(answer), batch_size=4, progress=False)
    assert records[0]["pred"] == [] and records[0]["errors"] == ["invalid_rollout"]
    assert records[1]["pred"] == gt[1][:1]
    assert records[1]["errors"] == ["max_new_tokens", "truncated_record"]
    assert records[1]["parse"]["max_new_tokens"] is True
    assert records[2]["pred"] == gt[2][1:]
    assert records[2]["errors"] == ["dropped:unexpected_keys"]
    assert records[2]["parse"]["drop_counts"]["unexpected_keys"] == 1
    result = evaluate_records(records)
    assert result["counters"]["record_errors"] == 4
    assert result["counters"]["empty_pred"] == 1
    assert result["metrics"]["bbox_AP"] < 1.0


def test_make_record_keeps_poly_gt_and_field_order(shapes_dir):
    """SPEC §7.2: geometry_first answers parse under object_field_order geometry_first only."""
    (rec, row), = load_eval_rows(shapes_dir / "val.jsonl", limit=1, object_field_order="geometry_first")
    text = row["messages"][-1]["content"] + "<|im_end|>"
    assert text.startswith('{"objects": [{"bbox_2d": [')
    good = make_record(rec, text, object_field_order="geometry_first")
    assert good["pred"] == good["gt"] and good["errors"] == []
    bad = make_record(rec, text, object_field_order="desc_first")
    assert bad["pred"] == [] and bad["errors"] == ["dropped:order_violation"] * len(rec.objects)


def test_tiny_model_end_to_end(tiny_model_dir, shapes_dir, tmp_path):
    """SPEC §7.2 via the real HF backend: the random tiny model's garbage yields invalid rollouts (no preds),
    records still evaluate (AP 0.0, empty_pred counted)."""
    out = tmp_path / "gt_vs_pred.jsonl"
    records = generate_records(tiny_model_dir, shapes_dir / "val.jsonl", out_jsonl=out, limit=2, batch_size=2,
                               max_new_tokens=4, progress=False)
    assert len(records) == 2 and len(out.read_text().splitlines()) == 2
    for rec in records:
        assert rec["pred"] == []
        assert "invalid_rollout" in rec["errors"] and "max_new_tokens" in rec["errors"]
        assert rec["raw_text"] and rec["gt"]
    result = evaluate_records(records)
    assert result["metrics"]["bbox_AP"] == 0.0
    assert result["counters"]["empty_pred"] == 2
