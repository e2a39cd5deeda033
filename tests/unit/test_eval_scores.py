"""``score_mode: token_prob`` scores and F1 at IoU 0.5 beside AP (issue 12 item 6; SPEC §7.1 ``score_mode``).

Golden values are written out by hand in each docstring (products of the chosen probabilities, raised to 1/n).
"""
from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from coordexp_swift.eval import evaluate_records
from coordexp_swift.eval.generate import generate_records
from coordexp_swift.rollout.backends import DecodeOptions, RolloutOutput
from coordexp_swift.rollout.seeds import RolloutSeeds

LOG_STRUCT = math.log(0.01)  # structure tokens: excluded from the score (would pull it towards 0.01)


def _coords(bins):
    return [f"<|coord_{b}|>" for b in bins]


class ScriptedBackend:
    """Answers sample i with the i-th scripted ``(ids, logprobs)``; carries the tokenizer (the token view needs it).
    Records the DecodeOptions it was called with."""

    name = "scripted"

    def __init__(self, tokenizer, script):
        self.tokenizer, self.script, self.i, self.decodes = tokenizer, script, 0, []

    def generate(self, samples, *, decode: DecodeOptions, seeds: RolloutSeeds):
        self.decodes.append(decode)
        outs = []
        for _ in samples:
            ids, lps = self.script[self.i]
            self.i += 1
            text = self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            outs.append(RolloutOutput((), tuple(ids), text, False, tuple(lps) if decode.logprobs else None))
        return outs


def _response(tok, objects):
    """ids + logprobs of ``{"objects": [obj, ...]}<|im_end|>`` built chunk by chunk, so the desc ids are exactly
    ``tok.encode(desc)``; ``objects``: (desc, bins, desc token probs, 4 coord probs)."""
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    ids, lps = [], []

    def add(chunk_ids, probs=None):
        ids.extend(chunk_ids)
        lps.extend([LOG_STRUCT] * len(chunk_ids) if probs is None else [math.log(p) for p in probs])

    for k, (desc, bins, p_desc, p_coord) in enumerate(objects):
        add(enc('{"objects": [{"desc": "' if k == 0 else ', {"desc": "'))
        d = enc(desc)
        assert len(d) == len(p_desc), (desc, d)
        add(d, p_desc)
        add(enc('", "bbox_2d": ['))
        for j, c in enumerate(_coords(bins)):
            if j:
                add(enc(", "))
            add(enc(c), [p_coord[j]])
        add(enc("]}"))
    add(enc("]}"))
    add(enc("<|im_end|>"))
    return ids, lps


def _jsonl(tmp_path, gts):
    Image.new("RGB", (1000, 1000)).save(tmp_path / "img.png")
    path = tmp_path / "val.jsonl"
    path.write_text("".join(json.dumps({"images": ["img.png"], "width": 1000, "height": 1000,
                                        "objects": [{"desc": d, "bbox_2d": _coords(b)} for d, b in gt]}) + "\n"
                            for gt in gts))
    return path


def test_token_prob_scores_and_ap_change(tmp_path, tiny_tokenizer):
    """issue 12 item 6. Image 0 (GT cat at bins [100,100,300,300]) answers A = cat at [600,600,800,800] (FP) first,
    then B = the exact cat (TP); image 1 (GT red circle [50,50,250,250]) answers C = the exact red circle.
    Probabilities (structure tokens all 0.01, excluded):
      A: desc 0.5, coords 0.4 ×4       → score (0.5·0.4⁴)^(1/5)            = 0.0128^(1/5)  ≈ 0.4183
      B: desc 0.9, coords 0.9,0.8,0.9,0.8 → (0.9³·0.8²)^(1/5)             = 0.46656^(1/5) ≈ 0.8586
      C: desc 'red',' circle' 0.5, 0.2; coords 1 ×4 → (0.5·0.2)^(1/6)      = 0.1^(1/6)     ≈ 0.6813
    AP: constant scores keep output order, FP first on the cat → cat AP 1/2, red circle 1 → AP 0.75 at every IoU;
    token_prob ranks B above A → AP 1.0. F1 at 0.5 (either mode): TP 2, FP 1, FN 0 → P 2/3, R 1, F1 0.8."""
    a = ("cat", [600, 600, 800, 800], [0.5], [0.4] * 4)
    b = ("cat", [100, 100, 300, 300], [0.9], [0.9, 0.8, 0.9, 0.8])
    c = ("red circle", [50, 50, 250, 250], [0.5, 0.2], [1.0] * 4)
    script = [_response(tiny_tokenizer, [a, b]), _response(tiny_tokenizer, [c])]
    jsonl = _jsonl(tmp_path, [[("cat", b[1])], [("red circle", c[1])]])

    backend = ScriptedBackend(tiny_tokenizer, script)
    scored = generate_records(None, jsonl, backend=backend, score_mode="token_prob", progress=False, batch_size=2)
    assert backend.decodes[0].logprobs is True
    got = [p["score"] for r in scored for p in r["pred"]]
    assert got == pytest.approx([0.0128 ** 0.2, 0.46656 ** 0.2, 0.1 ** (1 / 6)], rel=1e-9)
    assert all(r["errors"] == [] for r in scored)

    const = generate_records(None, jsonl, backend=ScriptedBackend(tiny_tokenizer, script), progress=False)
    assert all("score" not in p for r in const for p in r["pred"])
    res_c, res_t = evaluate_records(const), evaluate_records(scored)
    assert res_c["metrics"]["bbox_AP"] == pytest.approx(0.75)
    assert res_t["metrics"]["bbox_AP"] == pytest.approx(1.0)
    for res in (res_c, res_t):
        assert res["f1_iou50"] == pytest.approx({"tp": 2, "fp": 1, "fn": 0, "precision": 2 / 3, "recall": 1.0,
                                                 "f1": 0.8})


def test_f1_iou50_hand_values():
    """issue 12 item 6, F1 at IoU 0.5 (class-aware COCO matching). GT: cats A [0,0,10,10], B [20,20,30,30],
    C [40,40,50,50] and a dog D [80,0,90,9]; preds: exact A, exact B, a dog on C's box, a cat at [60,60,70,70]
    → TP 2, FP 2, FN 2 (C, D): P = R = F1 = 1/2. Without the dog GT, 'dog' is no category, the dog pred is dropped
    (unknown_dropped): TP 2, FP 1, FN 1 → P = R = F1 = 2/3. No predictions: all 0.0 (not NaN)."""
    cats = [{"desc": "cat", "bbox_2d": b} for b in ([0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50])]
    dog = {"desc": "dog", "bbox_2d": [80, 0, 90, 9]}
    pred = [{"desc": "cat", "bbox_2d": [0, 0, 10, 10]}, {"desc": "cat", "bbox_2d": [20, 20, 30, 30]},
            {"desc": "dog", "bbox_2d": [40, 40, 50, 50]}, {"desc": "cat", "bbox_2d": [60, 60, 70, 70]}]
    rec = {"image": "a.png", "width": 100, "height": 100, "coord_mode": "pixel", "gt": cats + [dog], "pred": pred}
    f = evaluate_records([rec])["f1_iou50"]
    assert (f["tp"], f["fp"], f["fn"]) == (2, 2, 2)
    assert (f["precision"], f["recall"], f["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    res = evaluate_records([dict(rec, gt=cats)])
    assert res["counters"]["unknown_dropped"] == 1
    f = res["f1_iou50"]
    assert (f["tp"], f["fp"], f["fn"]) == (2, 1, 1)
    assert (f["precision"], f["recall"], f["f1"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    empty = evaluate_records([dict(rec, gt=cats, pred=[])])["f1_iou50"]
    assert empty == {"tp": 0, "fp": 0, "fn": 3, "precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_beam_has_no_logprobs():
    """issue 12 item 6: token_prob needs per-token log-probs, which beam search does not give: a ValueError."""
    with pytest.raises(ValueError, match="token_prob"):
        DecodeOptions(mode="beam", num_beams=2, logprobs=True)


@pytest.mark.integration
def test_hf_token_logprobs_equal_teacher_forced_forward(tiny_model_dir, shapes_dir, tmp_path):
    """issue 12 item 6: the HF backend's ``token_logprobs`` (greedy, batch of 2 with left padding) equal an
    independent full forward of prompt + response on the real tiny model: ``log_softmax(logits[p-1+t])[r_t]`` for
    response id ``r_t`` (logits at position i predict token i+1), within 1e-4; greedy ⇒ each is its step's max.
    Without ``logprobs`` the field is None. Then ``eval --model --score_mode token_prob`` runs end to end and
    writes ``score_mode`` and ``f1_iou50`` into metrics.json."""
    import torch

    from coordexp_swift.eval.cli import main as eval_main
    from coordexp_swift.eval.generate import load_eval_rows
    from coordexp_swift.rollout.hf_backend import HFRolloutBackend

    backend = HFRolloutBackend.from_pretrained(tiny_model_dir)
    rows = [row for _, row in load_eval_rows(shapes_dir / "val.jsonl", limit=2)]
    decode = DecodeOptions(max_new_tokens=6, batch_size=2, logprobs=True)
    outs = backend.generate(rows, decode=decode, seeds=RolloutSeeds(1))
    plain = backend.generate(rows, decode=DecodeOptions(max_new_tokens=6, batch_size=2), seeds=RolloutSeeds(1))
    assert [o.response_ids for o in plain] == [o.response_ids for o in outs] and plain[0].token_logprobs is None
    for prompt, out in zip(backend.encoder.encode_many(rows), outs):
        assert len(out.token_logprobs) == len(out.response_ids) > 0
        ids = torch.tensor([list(prompt.input_ids) + list(out.response_ids)])
        mm = torch.cat([prompt.mm_token_type_ids, torch.zeros(len(out.response_ids), dtype=torch.long)])
        with torch.no_grad():
            logits = backend.model(input_ids=ids, pixel_values=prompt.pixel_values, mm_token_type_ids=mm[None],
                                   image_grid_thw=prompt.image_grid_thw).logits[0].float()
        p = len(prompt.input_ids)
        ref = torch.log_softmax(logits[p - 1:p - 1 + len(out.response_ids)], dim=-1)
        want = ref.gather(1, torch.tensor(out.response_ids)[:, None]).squeeze(1)
        assert torch.allclose(torch.tensor(out.token_logprobs), want, atol=1e-4)
        assert torch.allclose(want, ref.max(dim=-1).values, atol=1e-5)

    out_dir = tmp_path / "eval"
    assert eval_main(["--model", str(tiny_model_dir), "--jsonl", str(shapes_dir / "val.jsonl"), "--out_dir",
                      str(out_dir), "--limit", "2", "--max_new_tokens", "4", "--overlays", "0",
                      "--score_mode", "token_prob"]) == 0
    summary = json.loads((out_dir / "metrics.json").read_text())
    assert summary["score_mode"] == "token_prob"
    assert set(summary["f1_iou50"]) == {"tp", "fp", "fn", "precision", "recall", "f1"}
