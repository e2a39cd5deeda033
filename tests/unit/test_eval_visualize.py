"""`coordexp-swift visualize`: box overlays (SPEC §0 tool) and training-curve plots."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from coordexp_swift.eval.visualize import GT_COLOR, HEADER, PRED_COLOR, draw_overlays, main, plot_training_curves


def test_overlays_draw_gt_green_pred_red_in_a_grid(tmp_path: Path) -> None:
    """GT / pred boxes land on the scaled pixel grid: 100×80 image → scale min(320/100, 320/80) = 3.2, so the GT
    left edge x=10 is at 32 px and the pred left edge x=60 at 192 px (+HEADER rows of caption above)."""
    Image.new("RGB", (100, 80), (255, 255, 255)).save(tmp_path / "a.png")
    recs = [
        {"image": "a.png", "width": 100, "height": 80, "coord_mode": "pixel",
         "gt": [{"desc": "cat", "bbox_2d": [10, 10, 50, 50]}],
         "pred": [{"desc": "cat", "bbox_2d": [60, 20, 90, 70], "score": 0.5}]},
        {"image": "missing.png", "width": 100, "height": 80, "coord_mode": "norm1000", "gt": [], "pred": []},
        {"image": "bad.png", "coord_mode": "pixel", "gt": [], "pred": []},  # no size: skipped
    ]
    out = draw_overlays(recs, tmp_path, tmp_path / "grid.png")
    grid = Image.open(out).convert("RGB")
    assert grid.size == (2 * 320, 256 + HEADER)  # 2 drawable tiles → 2 columns × 1 row
    assert grid.getpixel((32, HEADER + 100)) == GT_COLOR
    assert grid.getpixel((192, HEADER + 150)) == PRED_COLOR
    assert grid.getpixel((320 + 160, HEADER + 128)) == (128, 128, 128)  # missing image → grey canvas
    with pytest.raises(ValueError, match="no drawable record"):
        draw_overlays([recs[2]], tmp_path, tmp_path / "none.png")


def test_training_curves_plot_present_keys(tmp_path: Path) -> None:
    """ms-swift logging.jsonl: loss, coord_token_acc and the softCE/W1 breakdown are plotted, string and
    bookkeeping keys are ignored, a bad line is skipped; a file without such keys is rejected."""
    rows = [{"loss": 2.0 - 0.1 * s, "token_acc": 0.5, "coord_token_acc": 0.1 * s, "loss/coord_reg/soft_ce": 1.0,
             "loss/coord_reg/w1": 0.2, "learning_rate": 1e-4, "global_step/max_steps": f"{s}/10",
             "elapsed_time": "1m"} for s in range(1, 6)]
    rows.append({"eval_loss": 1.5, "eval_rollout/mAP": 0.1, "global_step/max_steps": "5/10"})
    log = tmp_path / "logging.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in rows[:3]) + "\n{broken\n"
                   + "\n".join(json.dumps(r) for r in rows[3:]) + "\n")
    png = tmp_path / "curves.png"
    keys = plot_training_curves(log, png)
    assert keys == ["eval_loss", "loss", "coord_token_acc", "token_acc", "loss/coord_reg/soft_ce",
                    "loss/coord_reg/w1", "eval_rollout/mAP"]
    assert Image.open(png).size[0] > 0
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"learning_rate": 1.0}) + "\n")
    with pytest.raises(ValueError, match="no plottable key"):
        plot_training_curves(empty, tmp_path / "x.png")


def test_visualize_cli(tmp_path: Path, capsys) -> None:
    """CLI: --logging_jsonl mode writes the curves PNG — pixel-identical to ``plot_training_curves`` on the same
    file, and not blank (issue 8 item 8: a file's existence alone is not checked); giving both modes is a usage
    error."""
    log = tmp_path / "logging.jsonl"
    log.write_text("\n".join(json.dumps({"loss": 2.0 / s, "global_step/max_steps": f"{s}/3"}) for s in (1, 2, 3))
                   + "\n")
    assert main(["--logging_jsonl", str(log), "--out", str(tmp_path / "c.png")]) == 0
    assert plot_training_curves(log, tmp_path / "direct.png") == ["loss"]
    cli_png, direct = Image.open(tmp_path / "c.png").convert("RGB"), Image.open(tmp_path / "direct.png").convert("RGB")
    assert cli_png.size == direct.size and cli_png.tobytes() == direct.tobytes()
    assert len(cli_png.getcolors(maxcolors=1 << 20)) > 2  # a drawn plot, not a blank canvas
    with pytest.raises(SystemExit):
        main(["--logging_jsonl", str(log), "--pred_jsonl", str(log), "--out", str(tmp_path / "d.png")])
    assert main(["--logging_jsonl", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "e.png")]) == 2
